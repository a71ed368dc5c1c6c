"""Property tests of DAG ordering and cycle finding, on the bare graph and through XML specs.

Graphs are drawn as: ``n`` names in spec order, a random rank per node (a permutation), and
edges only from a lower-ranked node to a higher-ranked one, so every drawn graph is acyclic
while its spec order is not a topological order. Cycles are injected by adding a back edge
from the end of an existing path to its start.
"""

from __future__ import annotations

import heapq
import itertools
import re
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from weiflow.dag import CycleFound, compile_file, topological_order
from weiflow.errors import SpecError

NS = "urn:weiflow:pipeline:1"
XML_SETTINGS = settings(
    max_examples=120,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@dataclass(frozen=True)
class Graph:
    nodes: list[str]  # spec order
    edges: list[tuple[str, str]]


# --- strategies -------------------------------------------------------------------------


@st.composite
def dags(draw: st.DrawFn, min_nodes: int = 1, max_nodes: int = 12, prefix: str = "n") -> Graph:
    """An acyclic graph whose spec order is unrelated to its edges and to its names."""
    n = draw(st.integers(min_nodes, max_nodes))
    # Names are a shuffle of their own, so sorting by name is not sorting by spec order.
    names = [f"{prefix}{i}" for i in draw(st.permutations(range(n)))]
    rank = draw(st.permutations(range(n)))  # rank[i]: position of spec node i in a hidden order
    pairs = [(i, j) for i in range(n) for j in range(n) if rank[i] < rank[j]]
    chosen = draw(st.lists(st.sampled_from(pairs), max_size=3 * n, unique=True)) if pairs else []
    edges = [(names[i], names[j]) for i, j in chosen]
    return Graph(names, edges)


@st.composite
def cyclic_graphs(draw: st.DrawFn, prefix: str = "n", allow_self_loop: bool = True) -> tuple[Graph, list[str]]:
    """A DAG plus one back edge from a descendant to an ancestor; returns the injected ring."""
    graph = draw(dags(min_nodes=1 if allow_self_loop else 2, prefix=prefix))
    succ: dict[str, list[str]] = {name: [] for name in graph.nodes}
    for a, b in graph.edges:
        succ[a].append(b)
    starts = [name for name in graph.nodes if succ[name]]
    if not starts or (allow_self_loop and draw(st.integers(0, 9)) == 0):
        if not allow_self_loop:
            # No path to close: force one edge between the first two nodes.
            a, b = graph.nodes[0], graph.nodes[1]
            graph = Graph(graph.nodes, [*graph.edges, (a, b)])
            succ[a].append(b)
            starts = [a]
        else:
            node = draw(st.sampled_from(graph.nodes))
            return Graph(graph.nodes, [*graph.edges, (node, node)]), [node, node]
    path = [draw(st.sampled_from(starts))]
    while True:
        path.append(draw(st.sampled_from(succ[path[-1]])))
        if not succ[path[-1]] or draw(st.booleans()):
            break
    back = (path[-1], path[0])
    edges = [*graph.edges, back]
    # Insert the back edge anywhere, so it is not always the last one seen.
    edges.insert(draw(st.integers(0, len(graph.edges))), edges.pop())
    return Graph(graph.nodes, edges), [*path, path[0]]


# --- reference implementation -----------------------------------------------------------


def smallest_order(nodes: list[str], edges: list[tuple[str, str]]) -> list[str]:
    """Kahn's algorithm with a min-heap on spec index: the lexicographically smallest order."""
    index = {name: i for i, name in enumerate(nodes)}
    indegree = dict.fromkeys(nodes, 0)
    succ: dict[str, list[str]] = {name: [] for name in nodes}
    for a, b in edges:
        succ[a].append(b)
        indegree[b] += 1
    heap = [index[name] for name in nodes if indegree[name] == 0]
    heapq.heapify(heap)
    order: list[str] = []
    while heap:
        name = nodes[heapq.heappop(heap)]
        order.append(name)
        for nxt in succ[name]:
            indegree[nxt] -= 1
            if indegree[nxt] == 0:
                heapq.heappush(heap, index[nxt])
    assert len(order) == len(nodes), "reference called on a cyclic graph"
    return order


def assert_is_topological(order: list[str], graph: Graph) -> None:
    assert sorted(order) == sorted(graph.nodes), "every node exactly once"
    assert len(order) == len(set(order))
    where = {name: i for i, name in enumerate(order)}
    for a, b in graph.edges:
        assert where[a] < where[b], f"edge {a} -> {b} violated in {order}"


def assert_is_ring(cycle: list[str], graph: Graph) -> None:
    assert len(cycle) >= 2, cycle
    assert cycle[0] == cycle[-1], cycle
    edge_set = set(graph.edges)
    for a, b in itertools.pairwise(cycle):
        assert (a, b) in edge_set, f"{a} -> {b} of cycle {cycle} is not an edge"
    ring = cycle[:-1]
    assert len(ring) == len(set(ring)), f"cycle {cycle} is not simple"


# --- the bare graph ---------------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(dags(min_nodes=0))
def test_order_is_topological_and_complete(graph: Graph) -> None:
    order = topological_order(graph.nodes, graph.edges)
    assert_is_topological(order, graph)


@settings(max_examples=200, deadline=None)
@given(dags(min_nodes=0))
def test_ties_keep_spec_order(graph: Graph) -> None:
    """A node never comes before an earlier-listed one unless edges force it."""
    assert topological_order(graph.nodes, graph.edges) == smallest_order(graph.nodes, graph.edges)


def test_ties_keep_spec_order_minimal_example() -> None:
    # c is ready first, but b is listed before c and is free once a is done.
    assert topological_order(["a", "b", "c"], [("a", "b")]) == ["a", "b", "c"]


@settings(max_examples=100, deadline=None)
@given(dags(min_nodes=1), st.lists(st.tuples(st.sampled_from(["x", "y", "n99"]), st.integers(0, 20))))
def test_edges_to_unknown_names_are_ignored(graph: Graph, extra: list[tuple[str, int]]) -> None:
    strays = []
    for unknown, i in extra:
        known = graph.nodes[i % len(graph.nodes)]
        strays.append((unknown, known) if i % 2 else (known, unknown))
    assert topological_order(graph.nodes, [*graph.edges, *strays]) == topological_order(graph.nodes, graph.edges)


@settings(max_examples=200, deadline=None)
@given(cyclic_graphs())
def test_cycle_is_found_and_reported_along_edges(case: tuple[Graph, list[str]]) -> None:
    graph, injected = case
    with pytest.raises(CycleFound) as info:
        topological_order(graph.nodes, graph.edges)
    cycle = info.value.cycle
    assert_is_ring(cycle, graph)
    if injected[0] == injected[1]:
        # The only cycle is the self loop: a ring of one node.
        assert cycle == injected
    # Reproducible: the ring starts at its earliest node in spec order.
    index = {name: i for i, name in enumerate(graph.nodes)}
    assert index[cycle[0]] == min(index[name] for name in cycle)
    assert str(info.value) == " -> ".join(cycle)


# --- end to end through XML: the outer DAG ----------------------------------------------


def _module(mid: str, inputs: list[str] | None = None) -> str:
    attr = f' input="{",".join(inputs)}"' if inputs else ""
    return f'<module id="{mid}" type="call" callable="pkg.mod:fn"{attr}/>'


def outer_spec(graph: Graph, via_dataset: set[tuple[str, str]]) -> str:
    """Nodes in spec order; an edge becomes depends= or a dataset the source writes and the target reads."""
    depends: dict[str, list[str]] = {name: [] for name in graph.nodes}
    reads: dict[str, list[str]] = {name: [] for name in graph.nodes}
    writers: set[str] = set()
    for a, b in graph.edges:
        if (a, b) in via_dataset:
            writers.add(a)
            reads[b].append(f"d_{a}")
        else:
            depends[b].append(a)
    datasets = "".join(f'<dataset name="d_{w}" uri="file:///tmp/d_{w}" format="json"/>' for w in sorted(writers))
    lines = [f'<pipeline xmlns="{NS}" name="prop">']
    if datasets:
        lines.append(f"  <datasets>{datasets}</datasets>")
    for name in graph.nodes:
        attrs = f' depends="{",".join(dict.fromkeys(depends[name]))}"' if depends[name] else ""
        module = '<module id="m" type="call" callable="pkg.mod:fn"'
        if name in writers:
            module += f' writes="d_{name}"'
        if reads[name]:
            module += f' reads="{",".join(dict.fromkeys(reads[name]))}"'
        lines.append(f'  <node id="{name}" engine="python"{attrs}>')
        lines.append(f"    {module}/>")
        lines.append("  </node>")
    lines.append("</pipeline>")
    return "\n".join(lines) + "\n"


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "spec.xml"
    path.write_text(text, encoding="utf-8")
    return path


def _cycle_in(messages: list[str], prefix: str) -> list[str]:
    found = [m for m in messages if prefix in m]
    assert found, f"no '{prefix}' diagnostic in {messages}"
    return re.split(r"\s*->\s*", found[0].split(prefix, 1)[1].strip().rstrip("."))


@st.composite
def dataset_choice(draw: st.DrawFn, graph: Graph) -> set[tuple[str, str]]:
    if not graph.edges:
        return set()
    return set(draw(st.lists(st.sampled_from(graph.edges), unique=True)))


@XML_SETTINGS
@given(st.data())
def test_xml_node_order_respects_depends(tmp_path: Path, data: st.DataObject) -> None:
    graph = data.draw(dags(min_nodes=1, max_nodes=10))
    via = data.draw(dataset_choice(graph))
    dag = compile_file(_write(tmp_path, outer_spec(graph, via)))
    order = [node.id for node in dag.nodes]
    assert_is_topological(order, graph)
    assert order == topological_order(graph.nodes, graph.edges)
    compiled = {(e.source, e.target) for e in dag.edges}
    assert compiled == set(graph.edges)
    for edge in dag.edges:
        assert edge.via == (f"dataset:d_{edge.source}" if (edge.source, edge.target) in via else "depends")
    for node in dag.nodes:
        assert set(node.upstream) == {a for a, b in graph.edges if b == node.id}


@XML_SETTINGS
@given(st.data())
def test_xml_node_cycle_is_a_spec_error(tmp_path: Path, data: st.DataObject) -> None:
    graph, _ = data.draw(cyclic_graphs(allow_self_loop=False))
    via = data.draw(dataset_choice(graph))
    with pytest.raises(SpecError) as info:
        compile_file(_write(tmp_path, outer_spec(graph, via)))
    messages = [d.message for d in info.value.diagnostics if d.is_error]
    cycle = _cycle_in(messages, "nodes form a cycle:")
    assert_is_ring(cycle, graph)
    assert all(d.line >= 1 and d.col >= 1 for d in info.value.diagnostics)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.data())
def test_xml_node_depending_on_itself_is_a_spec_error(tmp_path: Path, data: st.DataObject) -> None:
    graph = data.draw(dags(min_nodes=1, max_nodes=6))
    node = data.draw(st.sampled_from(graph.nodes))
    looped = Graph(graph.nodes, [*graph.edges, (node, node)])
    with pytest.raises(SpecError) as info:
        compile_file(_write(tmp_path, outer_spec(looped, set())))
    assert any(f"node '{node}' depends on itself" in d.message for d in info.value.diagnostics)


# --- end to end through XML: the inner DAG ----------------------------------------------


def inner_spec(graph: Graph) -> str:
    inputs: dict[str, list[str]] = {name: [] for name in graph.nodes}
    for a, b in graph.edges:
        if a not in inputs[b]:
            inputs[b].append(a)
    modules = "\n".join(f"    {_module(name, inputs[name])}" for name in graph.nodes)
    return (
        f'<pipeline xmlns="{NS}" name="prop">\n  <node id="only" engine="python">\n{modules}\n  </node>\n</pipeline>\n'
    )


@XML_SETTINGS
@given(dags(min_nodes=1, max_nodes=10, prefix="m"))
def test_xml_module_order_respects_inputs(tmp_path: Path, graph: Graph) -> None:
    dag = compile_file(_write(tmp_path, inner_spec(graph)))
    (node,) = dag.nodes
    order = [module.id for module in node.modules]
    assert_is_topological(order, graph)
    assert order == topological_order(graph.nodes, graph.edges)
    for module in node.modules:
        assert {ref.module for ref in module.inputs} == {a for a, b in graph.edges if b == module.id}


@XML_SETTINGS
@given(cyclic_graphs(prefix="m"))
def test_xml_module_cycle_is_a_spec_error(tmp_path: Path, case: tuple[Graph, list[str]]) -> None:
    graph, injected = case
    with pytest.raises(SpecError) as info:
        compile_file(_write(tmp_path, inner_spec(graph)))
    messages = [d.message for d in info.value.diagnostics if d.is_error]
    assert all(d.line >= 1 and d.col >= 1 for d in info.value.diagnostics)
    assert all("node 'only'" in m for m in messages if "modules form a cycle" in m)
    cycle = _cycle_in(messages, "modules form a cycle:")
    assert_is_ring(cycle, graph)
    if injected[0] == injected[1]:
        assert cycle == injected
