"""A run's two-level DAG as inline SVG: outer nodes as boxes, their modules (and the module DAG) inside.

Pure string building from :func:`weiflow.center.repository.run_detail`'s ``nodes``, so the
console needs no JavaScript, no layout library and nothing from the network. The layout is
layered: a node's column is the length of the longest upstream path to it, both for outer
nodes and for modules inside a node, which keeps every edge pointing right.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from html import escape
from typing import Any

__all__ = ["STATE_COLOURS", "layers", "render_dag_svg"]

# state -> (stroke, fill); the legend in the console reads the same table.
STATE_COLOURS: dict[str, tuple[str, str]] = {
    "succeeded": ("#2e7d32", "#e8f5e9"),
    "failed": ("#c62828", "#ffebee"),
    "running": ("#1565c0", "#e3f2fd"),
    "queued": ("#757575", "#f5f5f5"),
    "skipped": ("#b08800", "#fff8e1"),
}

MODULE_W, MODULE_H = 150, 34
MODULE_GAP_X, MODULE_GAP_Y = 28, 10
PAD, HEADER = 12, 40
NODE_GAP_X, NODE_GAP_Y = 64, 28
MARGIN = 16


def layers(items: Sequence[str], upstream: Mapping[str, Sequence[str]]) -> dict[str, int]:
    """Column of each item: 0 without (known) upstream, else one more than its deepest upstream.

    Unknown upstream ids are ignored and a cycle (never in a compiled DAG, but the data comes
    from events) stops at the item being visited, so bad data still draws.
    """
    known = set(items)
    found: dict[str, int] = {}
    visiting: set[str] = set()

    def depth(item: str) -> int:
        if item in found:
            return found[item]
        visiting.add(item)
        ups = [u for u in upstream.get(item, ()) if u in known and u not in visiting]
        value = 1 + max(depth(u) for u in ups) if ups else 0
        visiting.discard(item)
        found[item] = value
        return value

    for item in items:
        depth(item)
    return found


@dataclass
class _Box:
    x: float = 0.0
    y: float = 0.0
    w: float = 0.0
    h: float = 0.0
    modules: dict[str, tuple[float, float]] = field(default_factory=dict)  # module -> (x, y) inside the box


def _columns(items: Sequence[str], column: Mapping[str, int]) -> list[list[str]]:
    count = max(column.values(), default=-1) + 1
    out: list[list[str]] = [[] for _ in range(count)]
    for item in items:
        out[column[item]].append(item)
    return out


def _inner(node: Mapping[str, Any]) -> _Box:
    modules = [str(m["id"]) for m in node.get("modules", [])]
    inputs = {str(m["id"]): [str(i) for i in m.get("inputs") or []] for m in node.get("modules", [])}
    columns = _columns(modules, layers(modules, inputs))
    box = _Box()
    for c, members in enumerate(columns):
        for r, module in enumerate(members):
            box.modules[module] = (PAD + c * (MODULE_W + MODULE_GAP_X), HEADER + r * (MODULE_H + MODULE_GAP_Y))
    rows = max((len(c) for c in columns), default=0)
    box.w = max(2 * PAD + len(columns) * MODULE_W + max(len(columns) - 1, 0) * MODULE_GAP_X, 2 * PAD + MODULE_W)
    box.h = HEADER + max(rows * MODULE_H + max(rows - 1, 0) * MODULE_GAP_Y, 0) + PAD
    return box


def _edge(x1: float, y1: float, x2: float, y2: float, css: str) -> str:
    bend = max((x2 - x1) / 2, 12)
    return (
        f'<path class="{css}" d="M{x1:.0f},{y1:.0f} C{x1 + bend:.0f},{y1:.0f} {x2 - bend:.0f},{y2:.0f} '
        f'{x2:.0f},{y2:.0f}" marker-end="url(#wf-arrow)"/>'
    )


def _colours(state: str) -> tuple[str, str]:
    return STATE_COLOURS.get(state, STATE_COLOURS["queued"])


def _tooltip(kind: str, ident: str, item: Mapping[str, Any]) -> str:
    parts = [f"{kind} {ident}: {item.get('state')}"]
    if item.get("attempt") and item["attempt"] != 1:
        parts.append(f"attempt {item['attempt']}")
    if item.get("duration_s") is not None:
        parts.append(f"{item['duration_s']:.1f} s")
    if item.get("error"):
        parts.append(str(item["error"])[:300])
    return escape(" · ".join(parts))


def render_dag_svg(nodes: Sequence[Mapping[str, Any]]) -> str:
    """The ``<svg>`` element for a run's nodes (each with ``id``, ``state``, ``upstream``, ``modules``)."""
    ids = [str(n["id"]) for n in nodes]
    by_id = {str(n["id"]): n for n in nodes}
    upstream = {str(n["id"]): [str(u) for u in n.get("upstream") or []] for n in nodes}
    boxes = {i: _inner(by_id[i]) for i in ids}
    x = float(MARGIN)
    height = 0.0
    for members in _columns(ids, layers(ids, upstream)):
        y = float(MARGIN)
        for node_id in members:
            box = boxes[node_id]
            box.x, box.y = x, y
            y += box.h + NODE_GAP_Y
        height = max(height, y - NODE_GAP_Y + MARGIN)
        x += max(boxes[m].w for m in members) + NODE_GAP_X
    width = max(x - NODE_GAP_X + MARGIN, 2 * MARGIN)
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="dag" width="{width:.0f}" height="{max(height, 60):.0f}" '
        f'viewBox="0 0 {width:.0f} {max(height, 60):.0f}" role="img" aria-label="two-level DAG of this run">',
        '<defs><marker id="wf-arrow" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="7" markerHeight="7" '
        'orient="auto-start-reverse"><path d="M0,0 L10,5 L0,10 z" fill="#555"/></marker></defs>',
    ]
    for node_id in ids:  # outer edges first, so boxes are drawn over their ends
        box = boxes[node_id]
        for up in upstream[node_id]:
            if up in boxes:
                src = boxes[up]
                out.append(_edge(src.x + src.w, src.y + src.h / 2, box.x, box.y + box.h / 2, "edge outer"))
    for node_id in ids:
        node, box = by_id[node_id], boxes[node_id]
        state = str(node.get("state") or "queued")
        stroke, fill = _colours(state)
        engine = f" · {node['engine']}" if node.get("engine") else ""
        out.append(
            f'<g class="node state-{escape(state)}" data-node="{escape(node_id)}" data-state="{escape(state)}" '
            f'transform="translate({box.x:.0f},{box.y:.0f})"><title>{_tooltip("node", node_id, node)}</title>'
            f'<rect width="{box.w:.0f}" height="{box.h:.0f}" rx="8" fill="{fill}" stroke="{stroke}" '
            f'stroke-width="2"/><text x="{PAD}" y="18" class="node-id">{escape(node_id)}</text>'
            f'<text x="{PAD}" y="32" class="node-meta">{escape(state + engine)}</text>'
        )
        modules = {str(m["id"]): m for m in node.get("modules", [])}
        for module_id, module in modules.items():
            mx, my = box.modules[module_id]
            for source in module.get("inputs") or []:
                if str(source) in box.modules:
                    sx, sy = box.modules[str(source)]
                    out.append(_edge(sx + MODULE_W, sy + MODULE_H / 2, mx, my + MODULE_H / 2, "edge inner"))
        for module_id, module in modules.items():
            mx, my = box.modules[module_id]
            m_state = str(module.get("state") or "queued")
            m_stroke, m_fill = _colours(m_state)
            label = module_id if len(module_id) <= 18 else module_id[:17] + "…"
            kind = f" ({module['type']})" if module.get("type") else ""
            out.append(
                f'<g class="module state-{escape(m_state)}" data-module="{escape(node_id)}/{escape(module_id)}" '
                f'data-state="{escape(m_state)}" transform="translate({mx:.0f},{my:.0f})">'
                f"<title>{_tooltip('module', module_id + kind, module)}</title>"
                f'<rect width="{MODULE_W}" height="{MODULE_H}" rx="5" fill="{m_fill}" stroke="{m_stroke}"/>'
                f'<text x="8" y="15" class="module-id">{escape(label)}</text>'
                f'<text x="8" y="28" class="module-meta">{escape(m_state + kind)}</text></g>'
            )
        out.append("</g>")
    out.append("</svg>")
    return "".join(out)
