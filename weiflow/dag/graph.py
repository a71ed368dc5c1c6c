"""Ordering and cycle finding for both DAG levels, on top of :mod:`graphlib`."""

from __future__ import annotations

import graphlib
from collections.abc import Iterable, Sequence

__all__ = ["CycleFound", "topological_order"]


class CycleFound(Exception):
    """The graph has a cycle; ``cycle`` lists it along the edges, first node repeated last."""

    def __init__(self, cycle: list[str]) -> None:
        self.cycle = cycle
        super().__init__(" -> ".join(cycle))


def topological_order(nodes: Sequence[str], edges: Iterable[tuple[str, str]]) -> list[str]:
    """Order ``nodes`` so every edge (source, target) has source first.

    Among nodes that are ready together, the one listed first in ``nodes`` (spec order)
    comes first, so the order is stable and reads like the file. Edges to or from names
    not in ``nodes`` are ignored (the caller reports unknown names separately).
    """
    index = {name: i for i, name in enumerate(nodes)}
    sorter: graphlib.TopologicalSorter[str] = graphlib.TopologicalSorter()
    for name in nodes:
        sorter.add(name)
    for source, target in edges:
        if source in index and target in index:
            sorter.add(target, source)
    try:
        sorter.prepare()
    except graphlib.CycleError as exc:
        raise CycleFound(_rotate(list(exc.args[1]), index)) from None
    order: list[str] = []
    while sorter.is_active():
        ready = sorted(sorter.get_ready(), key=index.__getitem__)
        order.extend(ready)
        sorter.done(*ready)
    return order


def _rotate(cycle: list[str], index: dict[str, int]) -> list[str]:
    """Start the cycle at its earliest node in spec order, so messages are reproducible."""
    ring = cycle[:-1]
    start = min(range(len(ring)), key=lambda i: index.get(ring[i], 0))
    ring = ring[start:] + ring[:start]
    return [*ring, ring[0]]
