"""Ordering and cycle finding for both DAG levels."""

from __future__ import annotations

import graphlib
import heapq
from collections.abc import Iterable, Sequence

__all__ = ["CycleFound", "topological_order"]


class CycleFound(Exception):
    """The graph has a cycle; ``cycle`` lists it along the edges, first node repeated last."""

    def __init__(self, cycle: list[str]) -> None:
        self.cycle = cycle
        super().__init__(" -> ".join(cycle))


def topological_order(nodes: Sequence[str], edges: Iterable[tuple[str, str]]) -> list[str]:
    """Order ``nodes`` so every edge (source, target) has source first.

    Of all valid orders this is the one that lists nodes as early in spec order as the edges
    allow (Kahn's algorithm with a heap on spec position), so it reads like the file and is
    reproducible. Edges to or from names not in ``nodes`` are ignored (the caller reports
    unknown names itself). Raises :class:`CycleFound` naming one cycle.
    """
    index = {name: i for i, name in enumerate(nodes)}
    successors: dict[str, list[str]] = {name: [] for name in nodes}
    indegree = dict.fromkeys(nodes, 0)
    for source, target in edges:
        if source in index and target in index:
            successors[source].append(target)
            indegree[target] += 1
    ready = [index[name] for name, degree in indegree.items() if degree == 0]
    heapq.heapify(ready)
    order: list[str] = []
    while ready:
        name = nodes[heapq.heappop(ready)]
        order.append(name)
        for target in successors[name]:
            indegree[target] -= 1
            if indegree[target] == 0:
                heapq.heappush(ready, index[target])
    if len(order) < len(index):
        raise CycleFound(_find_cycle(nodes, successors, index))
    return order


def _find_cycle(nodes: Sequence[str], successors: dict[str, list[str]], index: dict[str, int]) -> list[str]:
    """One cycle, along the edges, started at its earliest node in spec order."""
    sorter: graphlib.TopologicalSorter[str] = graphlib.TopologicalSorter()
    for source, targets in successors.items():
        for target in targets:
            sorter.add(target, source)
    try:
        sorter.prepare()
    except graphlib.CycleError as exc:
        ring = list(exc.args[1])[:-1]
        start = min(range(len(ring)), key=lambda i: index[ring[i]])
        ring = ring[start:] + ring[:start]
        return [*ring, ring[0]]
    raise AssertionError("Kahn's algorithm stalled but graphlib found no cycle")  # pragma: no cover
