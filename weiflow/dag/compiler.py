"""Semantic checks and compilation of a parsed spec into the two-level DAG.

The schema fixes the structure; this module checks what it cannot: names that must exist,
ids that must be unique, module types and attribute types (asked of the registry), dataset
flow, `${...}` references, and cycles at both levels. Every check runs, so one pass reports
every problem.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from croniter import croniter

from weiflow.dag.graph import CycleFound, topological_order
from weiflow.errors import Diagnostic, SpecError
from weiflow.registry import AttrDecl, ElementDecl, ModuleType, Registry, default_registry
from weiflow.spec import (
    CONTEXT_VARIABLES,
    DEFAULT_MAX_SPEC_BYTES,
    Attr,
    Element,
    ModuleSpec,
    NodeSpec,
    PipelineSpec,
    Reporter,
    TemplateError,
    closest,
    did_you_mean,
    parse_spec,
    references,
)
from weiflow.spec.params import PARAM_TYPES, parse_param_value
from weiflow.spec.parser import whole_number
from weiflow.spec.uris import uri_problem

__all__ = [
    "Dag",
    "DatasetUse",
    "Edge",
    "InputRef",
    "ModulePlan",
    "NodePlan",
    "check_file",
    "compile_file",
    "compile_spec",
]

SCHEDULE_PRESETS = frozenset(
    {"@once", "@continuous", "@hourly", "@daily", "@weekly", "@monthly", "@quarterly", "@yearly", "@annually"}
)


@dataclass(frozen=True)
class InputRef:
    """An inner edge: this module reads ``module``'s output (its named ``port`` when split)."""

    module: str
    port: str | None = None

    def __str__(self) -> str:
        return f"{self.module}.{self.port}" if self.port else self.module


@dataclass(frozen=True)
class Edge:
    """An outer edge; ``via`` is ``depends`` or ``dataset:<name>``."""

    source: str
    target: str
    via: str


@dataclass(frozen=True)
class DatasetUse:
    node: str
    module: str


@dataclass
class ModulePlan:
    spec: ModuleSpec
    type: ModuleType
    inputs: list[InputRef]
    reads: list[str]
    writes: list[str]

    @property
    def id(self) -> str:
        return self.spec.id


@dataclass
class NodePlan:
    spec: NodeSpec
    modules: list[ModulePlan]  # in inner topological order
    upstream: list[str]
    reads: list[str]
    writes: list[str]

    @property
    def id(self) -> str:
        return self.spec.id

    @property
    def engine(self) -> str:
        return self.spec.engine

    @property
    def retries(self) -> int | None:
        return whole_number(self.spec.element.get("retries"))


@dataclass
class Dag:
    """The compiled two-level DAG. Pure data: what runs where, in which order, on which datasets."""

    spec: PipelineSpec
    nodes: list[NodePlan]  # in outer topological order
    edges: list[Edge]
    producers: dict[str, DatasetUse]
    consumers: dict[str, list[DatasetUse]]
    warnings: list[Diagnostic] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.spec.name

    def node(self, node_id: str) -> NodePlan:
        for node in self.nodes:
            if node.id == node_id:
                return node
        raise KeyError(node_id)


def check_file(
    path: str | Path,
    registry: Registry | None = None,
    *,
    max_bytes: int = DEFAULT_MAX_SPEC_BYTES,
    allowed_callables: Sequence[str] = (),
) -> list[Diagnostic]:
    """Every problem in one spec file (errors and warnings), in file order."""
    try:
        return list(compile_file(path, registry, max_bytes=max_bytes, allowed_callables=allowed_callables).warnings)
    except SpecError as exc:
        return list(exc.diagnostics)


def compile_file(
    path: str | Path,
    registry: Registry | None = None,
    *,
    max_bytes: int = DEFAULT_MAX_SPEC_BYTES,
    allowed_callables: Sequence[str] = (),
) -> Dag:
    """Parse, check and compile one spec; raises :class:`SpecError` listing every problem.

    Warnings alone do not fail compilation; they are kept on ``Dag.warnings``. ``allowed_callables``
    (the operator's ``allowed_callables`` setting): when not empty, the only packages or modules a
    ``callable=`` may name.
    """
    spec, diagnostics = parse_spec(path, max_bytes=max_bytes)
    if spec is None:
        raise SpecError(diagnostics)
    return compile_spec(spec, registry, diagnostics, allowed_callables=allowed_callables)


def compile_spec(
    spec: PipelineSpec,
    registry: Registry | None = None,
    diagnostics: list[Diagnostic] | None = None,
    *,
    allowed_callables: Sequence[str] = (),
) -> Dag:
    compiler = _Compiler(spec, registry or default_registry(), tuple(allowed_callables))
    compiler.report.diagnostics.extend(diagnostics or [])
    dag = compiler.run()
    if compiler.report.has_errors or dag is None:
        raise SpecError(compiler.report.diagnostics)
    dag.warnings = sorted(compiler.report.diagnostics)
    return dag


class _Compiler:
    def __init__(self, spec: PipelineSpec, registry: Registry, allowed_callables: tuple[str, ...] = ()) -> None:
        self.spec = spec
        self.registry = registry
        self.allowed_callables = allowed_callables
        self.report = Reporter(spec.file)
        self.param_names = {p.name for p in spec.params if p.name}
        self.dataset_names = {d.name for d in spec.datasets if d.name}
        self.writers: dict[str, list[tuple[DatasetUse, Attr]]] = {}
        self.readers: dict[str, list[tuple[DatasetUse, Attr]]] = {}

    def run(self) -> Dag | None:
        self._check_pipeline()
        self._check_params()
        self._check_datasets()
        self._check_references()
        plans = self._check_nodes()
        self._check_dataset_flow()
        edges = self._outer_edges(plans)
        order = self._order_nodes(plans, edges)
        if self.report.has_errors or order is None:
            return None
        by_id = {plan.id: plan for plan in plans}
        position = {node_id: i for i, node_id in enumerate(order)}
        upstream: dict[str, set[str]] = {plan.id: set() for plan in plans}
        for edge in edges:
            upstream.setdefault(edge.target, set()).add(edge.source)
        for plan in plans:
            plan.upstream = sorted(upstream[plan.id], key=position.__getitem__)
        producers = {name: uses[0][0] for name, uses in self.writers.items()}
        consumers = {name: [use for use, _ in uses] for name, uses in self.readers.items()}
        return Dag(self.spec, [by_id[i] for i in order], edges, producers, consumers)

    # --- pipeline, params, datasets ---------------------------------------------------------

    def _check_pipeline(self) -> None:
        schedule = self.spec.schedule
        if schedule is not None:
            text = schedule.strip()
            if text.startswith("@"):
                if text not in SCHEDULE_PRESETS:
                    self.report.error(
                        self.spec.element.pos_of("schedule"),
                        f"unknown schedule preset '{text}'",
                        did_you_mean(text, SCHEDULE_PRESETS),
                    )
            elif len(text.split()) != 5 or not croniter.is_valid(text):  # Airflow takes five-field cron
                self.report.error(
                    self.spec.element.pos_of("schedule"),
                    f"schedule '{text}' is not a valid cron expression",
                    "use a preset such as @daily, or five cron fields: '0 3 * * *'",
                )

    def _check_params(self) -> None:
        seen: dict[str, Element] = {}
        for param in self.spec.params:
            if not param.name:
                continue
            at = param.element.pos_of("name")
            if param.name in seen:
                self.report.error(
                    at,
                    f"duplicate param '{param.name}'",
                    f"first declared on line {seen[param.name].pos.line}",
                )
                continue
            seen[param.name] = param.element
            if param.name in CONTEXT_VARIABLES:
                self.report.error(
                    at,
                    f"param '{param.name}' shadows the run-context variable of that name",
                    "rename the param; ${" + param.name + "} already means: " + CONTEXT_VARIABLES[param.name],
                )
            if param.default is None or "$" in param.default:
                continue
            if param.type not in PARAM_TYPES:
                continue  # the schema reported the type
            try:
                parse_param_value(param.type, param.default)
            except ValueError as exc:
                self.report.error(param.element.pos_of("default"), f"param '{param.name}': default: {exc}")

    def _check_datasets(self) -> None:
        seen: dict[str, Element] = {}
        formats = self.registry.formats
        for dataset in self.spec.datasets:
            if not dataset.name:
                continue
            if dataset.name in seen:
                self.report.error(
                    dataset.element.pos_of("name"),
                    f"duplicate dataset '{dataset.name}'",
                    f"first declared on line {seen[dataset.name].pos.line}",
                )
                continue
            seen[dataset.name] = dataset.element
            if formats and dataset.format not in formats:
                self.report.error(
                    dataset.element.pos_of("format"),
                    f"dataset '{dataset.name}': unknown format '{dataset.format}'",
                    did_you_mean(dataset.format, formats),
                )
            if "$" not in dataset.uri and (problem := uri_problem(dataset.uri)) is not None:
                self.report.error(dataset.element.pos_of("uri"), f"dataset '{dataset.name}': uri {problem}")
            if dataset.external and dataset.retention:
                self.report.warning(
                    dataset.element.pos_of("retention"),
                    f"dataset '{dataset.name}' is external: WeiFlow never deletes it, so its retention is ignored",
                    "remove retention= or external=",
                )

    def _check_references(self) -> None:
        """Every ``${name}`` anywhere in the spec names a param or a run-context variable."""
        known = set(CONTEXT_VARIABLES) | self.param_names
        order = [p.name for p in self.spec.params]
        for element, key, attr in self.spec.templated:
            try:
                refs = references(attr.value)
            except TemplateError as exc:
                self.report.error(attr.pos, f"{key}: {exc}")
                continue
            allowed = known
            if element.tag == "param" and key == "default":
                # A default may use the run context and params declared before it (no cycles).
                mine = element.get("name") or ""
                earlier = order[: order.index(mine)] if mine in order else []
                allowed = set(CONTEXT_VARIABLES) | set(earlier)
            for ref in refs:
                if ref.name in known and ref.name not in allowed:
                    declaring = element.get("name")
                    self.report.error(
                        attr.pos,
                        f"{key}: ${{{ref.name}}} names param '{ref.name}', which is declared after '{declaring}'",
                        f"a default may only use params declared before it: move '{ref.name}' up",
                    )
                elif ref.name not in allowed:
                    hint = did_you_mean(ref.name, allowed)
                    if hint is None:
                        hint = "declare it in <params>, or use one of: " + ", ".join(sorted(CONTEXT_VARIABLES))
                    self.report.error(attr.pos, f"{key}: undefined reference ${{{ref.name}}}", hint)

    # --- nodes and modules ------------------------------------------------------------------

    def _check_nodes(self) -> list[NodePlan]:
        plans: list[NodePlan] = []
        node_ids = [n.id for n in self.spec.nodes if n.id]
        seen: dict[str, NodeSpec] = {}
        for node in self.spec.nodes:
            if not node.id:
                continue
            if node.id in seen:
                self.report.error(
                    node.element.pos_of("id"),
                    f"duplicate node id '{node.id}'",
                    f"first defined on line {seen[node.id].element.pos.line}",
                )
                continue
            seen[node.id] = node
            for dep in node.depends:
                at = node.element.pos_of("depends")
                if dep == node.id:
                    self.report.error(at, f"node '{node.id}' depends on itself", "remove it from depends=")
                elif dep not in node_ids:
                    self.report.error(
                        at, f"node '{node.id}' depends on unknown node '{dep}'", did_you_mean(dep, node_ids)
                    )
            plan = self._check_node(node)
            if plan is not None:
                plans.append(plan)
        return plans

    def _check_node(self, node: NodeSpec) -> NodePlan | None:
        engine = self.registry.engine(node.engine) if node.engine else None
        if node.engine and engine is None:
            hint = did_you_mean(node.engine, self.registry.engines)
            if self.registry.problems:
                hint = (hint + "; " if hint else "") + "plug-in problems: " + "; ".join(self.registry.problems)
            self.report.error(node.element.pos_of("engine"), f"node '{node.id}': unknown engine '{node.engine}'", hint)
        if engine is not None:
            counts: dict[str, int] = {}
            for element in node.config:
                decl = engine.node_elements.get(element.tag)
                if decl is None:
                    allowed = ", ".join(f"<{t}>" for t in engine.node_elements) or "none"
                    self.report.error(
                        element.pos,
                        f"node '{node.id}': engine '{node.engine}' takes no <{element.tag}>",
                        f"allowed here: {allowed}",
                    )
                    continue
                counts[element.tag] = counts.get(element.tag, 0) + 1
                if decl.max_count is not None and counts[element.tag] > decl.max_count:
                    self.report.error(element.pos, f"node '{node.id}': at most {decl.max_count} <{element.tag}>")
                self._check_element_attrs(element, decl, f"node '{node.id}': <{element.tag}>")

        module_plans: list[ModulePlan] = []
        seen: dict[str, ModuleSpec] = {}
        for module in node.modules:
            if not module.id:
                continue
            if module.id in seen:
                self.report.error(
                    module.element.pos_of("id"),
                    f"duplicate module id '{module.id}' in node '{node.id}'",
                    f"first defined on line {seen[module.id].element.pos.line}",
                )
                continue
            seen[module.id] = module
        for module in seen.values():
            plan = self._check_module(node, module, seen, engine is not None)
            if plan is not None:
                module_plans.append(plan)

        inner_edges = [(ref.module, plan.id) for plan in module_plans for ref in plan.inputs]
        # A module that reads a dataset written in the same node runs after the writer.
        writer_of = {name: plan.id for plan in module_plans for name in plan.writes}
        inner_edges += [
            (writer_of[name], plan.id)
            for plan in module_plans
            for name in plan.reads
            if name in writer_of and writer_of[name] != plan.id
        ]
        try:
            order = topological_order([p.id for p in module_plans], inner_edges)
        except CycleFound as cycle:
            first = seen[cycle.cycle[0]]
            self.report.error(
                first.element.pos_of("input"),
                f"node '{node.id}': modules form a cycle: {cycle}",
                "a module's inputs (and the datasets it reads) must come before it; remove one edge of the cycle",
            )
            return None
        if engine is None or len(module_plans) != len(seen):
            return None
        by_id = {p.id: p for p in module_plans}
        modules = [by_id[i] for i in order]
        reads = _unique(d for m in modules for d in m.reads)
        writes = _unique(d for m in modules for d in m.writes)
        return NodePlan(node, modules, [], reads, writes)

    def _check_module(
        self, node: NodeSpec, module: ModuleSpec, siblings: dict[str, ModuleSpec], engine_known: bool
    ) -> ModulePlan | None:
        where = f"module '{module.id}'"
        mtype = self.registry.module_type(node.engine, module.type) if engine_known else None
        if engine_known and mtype is None and module.type:
            offered_by = self.registry.engines_offering(module.type)
            engine = self.registry.engine(node.engine)
            hint: str | None
            if offered_by:
                hint = (
                    f"'{module.type}' is a module type of engine {' and '.join(offered_by)}; put it in a node "
                    f'with engine="{offered_by[0]}"'
                )
            else:
                hint = did_you_mean(module.type, engine.modules if engine else [])
            self.report.error(
                module.element.pos_of("type"),
                f"{where}: engine '{node.engine}' has no module type '{module.type}'",
                hint,
            )

        inputs: list[InputRef] = []
        for raw in module.inputs:
            name, _, port = raw.partition(".")
            ref = InputRef(name, port or None)
            if name == module.id:
                self.report.error(
                    module.element.pos_of("input"),
                    f"node '{node.id}': modules form a cycle: {name} -> {name}",
                    "a module cannot read its own output",
                )
                continue
            if name not in siblings:
                elsewhere = [n.id for n in self.spec.nodes if n.id != node.id and any(m.id == name for m in n.modules)]
                hint = (
                    (
                        f"'{name}' is a module of node '{elsewhere[0]}'; data crosses nodes only through "
                        "datasets: write it to a dataset there and read it here"
                    )
                    if elsewhere
                    else did_you_mean(name, siblings)
                )
                self.report.error(
                    module.element.pos_of("input"), f"{where}: input '{name}' is not a module of node '{node.id}'", hint
                )
                continue
            if ref.port is not None:
                self._check_port(node, module, ref, siblings[name])
            inputs.append(ref)

        if mtype is None:
            return None
        low, high = mtype.inputs
        count = len(module.inputs)
        if count < low or (high is not None and count > high):
            want = _arity(low, high)
            self.report.error(
                module.element.pos_of("input") if count else module.element.pos,
                f"{where}: a '{mtype.name}' module takes {want}, got {count}",
                'list the upstream module ids in input="..."' if count < low else None,
            )

        reads: list[str] = []
        writes: list[str] = []
        for key, attr in module.attrs.items():
            decl = mtype.attr(key)
            if decl is None:
                if not mtype.extra_attrs:
                    self.report.error(
                        attr.pos,
                        f"{where}: '{mtype.name}' has no attribute '{key}'",
                        did_you_mean(key, [a.name for a in mtype.attrs]),
                    )
                continue
            value = self._parse_attr(decl, attr, where)
            if decl.kind in ("dataset", "datasets") and value is not None:
                names = [str(v) for v in value] if isinstance(value, list) else [str(value)]
                for dataset in names:
                    if dataset not in self.dataset_names:
                        self.report.error(
                            attr.pos,
                            f"{where}: unknown dataset '{dataset}'",
                            did_you_mean(dataset, self.dataset_names) or "declare it in <datasets>",
                        )
                        continue
                    use = (DatasetUse(node.id, module.id), attr)
                    if decl.role == "write":
                        writes.append(dataset)
                        self.writers.setdefault(dataset, []).append(use)
                    else:
                        reads.append(dataset)
                        self.readers.setdefault(dataset, []).append(use)
        # A misspelt required attribute is reported once, as the unknown attribute with its hint.
        for decl in mtype.attrs:
            if (
                decl.required
                and decl.name not in module.element.attrs
                and not _misspelt(decl, module.attrs, mtype.attrs)
            ):
                self.report.error(
                    module.element.pos,
                    f"{where}: '{mtype.name}' needs attribute '{decl.name}'",
                    f'add {decl.name}="..." ({decl.describe()})',
                )

        counts: dict[str, int] = {}
        for child in module.children:
            child_decl = mtype.child(child.tag)
            if child_decl is None:
                allowed = ", ".join(f"<{c.tag}>" for c in mtype.children) or "no child elements"
                self.report.error(
                    child.pos,
                    f"{where}: <{child.tag}> is not allowed in a '{mtype.name}' module",
                    f"a '{mtype.name}' module takes {allowed}",
                )
                continue
            counts[child.tag] = counts.get(child.tag, 0) + 1
            if child_decl.max_count is not None and counts[child.tag] > child_decl.max_count:
                self.report.error(child.pos, f"{where}: at most {child_decl.max_count} <{child.tag}>")
            if child_decl.attrs:
                self._check_element_attrs(child, child_decl, f"{where}: <{child.tag}>")
        if mtype.check is not None:
            mtype.check(module, self.report)
        return ModulePlan(module, mtype, inputs, _unique(reads), _unique(writes))

    def _check_port(self, node: NodeSpec, module: ModuleSpec, ref: InputRef, producer: ModuleSpec) -> None:
        ptype = self.registry.module_type(node.engine, producer.type)
        if ptype is None:
            return
        if ptype.outputs_attr is None:
            self.report.error(
                module.element.pos_of("input"),
                f"module '{module.id}': input '{ref}': module '{producer.id}' has one output, not named ones",
                f'write input="{producer.id}"',
            )
            return
        raw = producer.element.get(ptype.outputs_attr)
        if raw is None or "$" in raw:
            return
        ports = [p.strip() for p in raw.split(",") if p.strip()]
        if ref.port not in ports:
            self.report.error(
                module.element.pos_of("input"),
                f"module '{module.id}': input '{ref}': module '{producer.id}' has no output '{ref.port}'",
                did_you_mean(ref.port or "", ports),
            )

    def _check_element_attrs(self, element: Element, decl: ElementDecl, where: str) -> None:
        for key, attr in element.attrs.items():
            attr_decl = decl.attr(key)
            if attr_decl is None:
                self.report.error(
                    attr.pos,
                    f"{where} has no attribute '{key}'",
                    did_you_mean(key, [a.name for a in decl.attrs]),
                )
                continue
            self._parse_attr(attr_decl, attr, where)
        for attr_decl in decl.attrs:
            if (
                attr_decl.required
                and attr_decl.name not in element.attrs
                and not _misspelt(attr_decl, element.attrs, decl.attrs)
            ):
                self.report.error(element.pos, f"{where} needs attribute '{attr_decl.name}'")

    def _parse_attr(self, decl: AttrDecl, attr: Attr, where: str) -> object:
        if "${" in attr.value:
            if decl.kind in _SHAPE_KINDS:
                hint = (
                    "the callable decides what code runs, so validation must see it: name the function here, "
                    "and pass values to it in other attributes, where ${...} works"
                    if decl.kind == "callable"
                    else "dataset names decide the DAG's edges, so validation must see them: "
                    "put the ${...} in the dataset's uri instead"
                )
                self.report.error(attr.pos, f"{where}: {decl.name}: a {decl.kind} name cannot use ${{...}}", hint)
            return None  # typed at run time, once references are resolved
        try:
            value = decl.parse(attr.value)
        except ValueError as exc:
            self.report.error(attr.pos, f"{where}: {decl.name}: {exc}", decl.help or None)
            return None
        if decl.kind == "callable" and self.allowed_callables and not _allowed(attr.value, self.allowed_callables):
            module = attr.value.partition(":")[0]
            self.report.error(
                attr.pos,
                f"{where}: {decl.name}: module '{module}' is not one this installation allows "
                f"({', '.join(self.allowed_callables)}: the allowed_callables setting)",
                "put the function in an allowed package, or ask the operator to allow its package",
            )
            return None
        return value

    # --- datasets across nodes, and the outer DAG -------------------------------------------

    def _check_dataset_flow(self) -> None:
        for name, uses in self.writers.items():
            dataset = self.spec.dataset(name)
            if dataset.external:
                for use, attr in uses:
                    self.report.error(
                        attr.pos,
                        f"module '{use.module}' writes dataset '{name}', which is external",
                        'external datasets are read-only inputs; drop external="true" if this pipeline produces it',
                    )
            first, first_attr = uses[0]
            for _, attr in uses[1:]:
                self.report.error(
                    attr.pos,
                    f"dataset '{name}' is written twice",
                    f"already written by node '{first.node}', module '{first.module}' "
                    f"(line {first_attr.pos.line}); give each output its own dataset",
                )
        for name, uses in self.readers.items():
            dataset = self.spec.dataset(name)
            if not dataset.external and name not in self.writers:
                for use, attr in uses:
                    self.report.error(
                        attr.pos,
                        f"module '{use.module}' reads dataset '{name}', which no module "
                        "writes and which is not external",
                        'mark it external="true" if it comes from outside this pipeline',
                    )
        if self.report.has_errors:
            return  # with errors, modules went unchecked and "never used" would mislead
        for dataset in self.spec.datasets:
            if dataset.name and dataset.name not in self.writers and dataset.name not in self.readers:
                self.report.warning(
                    dataset.element.pos_of("name"),
                    f"dataset '{dataset.name}' is never used",
                    "remove it, or read or write it in a module",
                )

    def _outer_edges(self, plans: list[NodePlan]) -> list[Edge]:
        edges: list[Edge] = []
        known = {n.id for n in self.spec.nodes}
        for node in self.spec.nodes:
            for dep in node.depends:
                if dep in known and dep != node.id:
                    edges.append(Edge(dep, node.id, "depends"))
        for name, readers in self.readers.items():
            for writer, _ in self.writers.get(name, [])[:1]:
                for reader, _ in readers:
                    if writer.node != reader.node:
                        edges.append(Edge(writer.node, reader.node, f"dataset:{name}"))
        return list(dict.fromkeys(edges))

    def _order_nodes(self, plans: list[NodePlan], edges: list[Edge]) -> list[str] | None:
        ids = _unique(n.id for n in self.spec.nodes if n.id)
        try:
            order = topological_order(ids, [(e.source, e.target) for e in edges])
        except CycleFound as cycle:
            vias = {(e.source, e.target): e.via for e in edges}
            steps = [f"{a} -({vias.get((a, b), '?')})-> " for a, b in zip(cycle.cycle, cycle.cycle[1:], strict=False)]
            node = self.spec.node(cycle.cycle[0])
            self.report.error(
                node.element.pos,
                f"nodes form a cycle: {cycle}",
                "edges: " + "".join(steps) + cycle.cycle[0] + "; remove one depends= or dataset read of the cycle",
            )
            return None
        planned = {p.id for p in plans}
        return [i for i in order if i in planned]


# Attribute kinds that decide the DAG's edges or the code that runs: never templated.
_SHAPE_KINDS = frozenset({"dataset", "datasets", "callable"})


def _allowed(target: str, allowed: Sequence[str]) -> bool:
    """Whether ``package.module:function`` lies in an allowed package or module (a prefix of whole names)."""
    module = target.partition(":")[0]
    return any(module == name or module.startswith(name + ".") for name in allowed)


def _misspelt(missing: AttrDecl, written: Iterable[str], declared: Iterable[AttrDecl]) -> bool:
    """Whether an unknown attribute that was written is a misspelling of the missing one."""
    names = [d.name for d in declared]
    return any(closest(key, names) == missing.name for key in written if key not in names)


def _arity(low: int, high: int | None) -> str:
    if high == 0:
        return "no input"
    if low == high:
        return f"exactly {low} input{'s' if low != 1 else ''}"
    if high is None:
        return f"at least {low} input{'s' if low != 1 else ''}"
    return f"{low} to {high} inputs"


def _unique(items: Iterator[str] | list[str]) -> list[str]:
    return list(dict.fromkeys(items))
