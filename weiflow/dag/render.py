"""Drawings of the two-level DAG: a text tree (always), DOT through the graphviz package."""

from __future__ import annotations

from weiflow.dag.compiler import Dag, ModulePlan

__all__ = ["to_dot", "to_text"]


def _module_line(module: ModulePlan) -> str:
    parts = [f"{module.id} ({module.type.name})"]
    if module.inputs:
        parts.append("<- " + ", ".join(str(r) for r in module.inputs))
    if module.reads:
        parts.append("reads " + ", ".join(module.reads))
    if module.writes:
        parts.append("writes " + ", ".join(module.writes))
    return "  ".join(parts)


def to_text(dag: Dag) -> str:
    """An indented tree: outer nodes in run order, each with its modules in run order."""
    lines = [f"{dag.name}  ({len(dag.nodes)} nodes)"]
    for i, node in enumerate(dag.nodes):
        last = i == len(dag.nodes) - 1
        upstream = [f"{e.source} via {e.via}" for e in dag.edges if e.target == node.id]
        head = f"{node.id} [{node.engine}]" + (f"  <- {', '.join(upstream)}" if upstream else "")
        lines.append(("└── " if last else "├── ") + head)
        for j, module in enumerate(node.modules):
            branch = "└── " if j == len(node.modules) - 1 else "├── "
            lines.append(("    " if last else "│   ") + branch + _module_line(module))
    return "\n".join(lines) + "\n"


def to_dot(dag: Dag) -> str:
    """DOT source: one cluster per outer node holding its inner DAG; outer edges between clusters."""
    import graphviz  # light and pure Python; imported here so `weiflow validate` never pays for it

    graph = graphviz.Digraph(
        dag.name,
        graph_attr={"rankdir": "LR", "compound": "true", "fontname": "Helvetica"},
        node_attr={"shape": "box", "style": "rounded", "fontname": "Helvetica"},
    )
    for node in dag.nodes:
        with graph.subgraph(name=f"cluster_{node.id}") as sub:
            sub.attr(label=f"{node.id} [{node.engine}]", style="rounded")
            for module in node.modules:
                sub.node(f"{node.id}/{module.id}", f"{module.id}\n({module.type.name})")
            for module in node.modules:
                for ref in module.inputs:
                    sub.edge(f"{node.id}/{ref.module}", f"{node.id}/{module.id}", label=ref.port or "")
    for edge in dag.edges:
        source, target = dag.node(edge.source), dag.node(edge.target)
        tail, heads = source.modules[-1].id, [target.modules[0].id]
        if edge.via.startswith("dataset:"):  # draw from the module that writes to the ones that read
            name = edge.via.removeprefix("dataset:")
            tail = dag.producers[name].module
            heads = [use.module for use in dag.consumers.get(name, []) if use.node == target.id]
        for head in heads:
            graph.edge(
                f"{source.id}/{tail}",
                f"{target.id}/{head}",
                ltail=f"cluster_{source.id}",
                lhead=f"cluster_{target.id}",
                label=edge.via,
                style="dashed",
            )
    return str(graph.source)
