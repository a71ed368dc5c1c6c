"""How a compiled WeiFlow pipeline becomes an Airflow 3 DAG: every mapping decision in one place.

==========================  ==============================================================
spec                        Airflow
==========================  ==============================================================
``name``                    ``dag_id``
``<description>``           ``description`` (and the top of ``doc_md``)
``owner``                   ``default_args["owner"]``
``schedule``                ``schedule`` (presets and five-field cron pass through)
``start-date``              ``start_date`` (midnight UTC); ``catchup=False`` always
``retries``                 ``default_args["retries"]``; a node's ``retries`` wins for its task
``tags``                    ``tags``, plus ``weiflow``
``priority``                ``priority_weight`` (absolute weight rule) and pool ``weiflow_<priority>``
``<param>``                 a DAG ``Param`` typed as JSON schema, so the trigger form asks for it
``<node>``                  one task (``task_id`` = node id), edges from the compiled upstream
``<node resources=>``       the task's ``queue``
``<dataset>``               an ``Asset`` named by its URI template; outlets of the writing
                            task, inlets of the reading tasks
``airflow:schedule-on``     the DAG is scheduled on those datasets' assets instead of a time
==========================  ==============================================================

Params whose default uses ``${...}`` (``default="${ds}"``) have no value Airflow could compute
at parse time, so they become optional (nullable) params with no default: left empty, the
operator does not pass them and ``weiflow run-node`` resolves the spec's default for the run,
exactly as ``weiflow run`` does.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Mapping
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

from airflow.sdk import DAG, Asset, AssetAll, BaseOperator, Param
from lxml import etree

from weiflow.dag import Dag, NodePlan
from weiflow.errors import Diagnostic, SpecError
from weiflow.spec import DatasetSpec, ParamSpec, did_you_mean, split_list
from weiflow.spec.params import parse_param_value

__all__ = [
    "AIRFLOW_NAMESPACE",
    "DEFAULT_POOL_SLOTS",
    "PRIORITY_WEIGHTS",
    "NodeOperatorFactory",
    "asset_for",
    "build_dag",
    "param_for",
    "pool_for",
]

# Extension attributes for Airflow live in their own namespace: the pipeline contract ignores
# attributes of other namespaces, so specs stay valid for every other WeiFlow tool.
AIRFLOW_NAMESPACE = "urn:weiflow:airflow:1"
_SCHEDULE_ON = "{" + AIRFLOW_NAMESPACE + "}schedule-on"

# Absolute weights: a high-priority task is queued before any medium one, whatever the shape
# of its DAG (Airflow's default "downstream" rule would favour long pipelines instead).
PRIORITY_WEIGHTS: Mapping[str, int] = {"high": 100, "medium": 10, "low": 1}
DEFAULT_POOL_SLOTS: Mapping[str, int] = {"high": 16, "medium": 8, "low": 4}

_JSON_TYPES: Mapping[str, str] = {
    "string": "string",
    "int": "integer",
    "float": "number",
    "bool": "boolean",
    "date": "string",
}

# What an operator class (or any factory) must accept to run one node: Airflow's own
# BaseOperator keyword arguments plus ``spec``, ``node`` and ``spec_params``. Keep ``spec`` among
# its template fields: that puts it in the serialized DAG, where WeiFlow's run listener finds it.
NodeOperatorFactory = Callable[..., BaseOperator]


def pool_for(priority: str) -> str:
    """The Airflow pool of a priority class (created by ``python -m weiflow.airflow setup``)."""
    return f"weiflow_{priority}"


def param_for(param: ParamSpec) -> Param:
    """A spec ``<param>`` as an Airflow ``Param``: JSON-schema typed, with its default when static."""
    json_type = _JSON_TYPES.get(param.type, "string")
    schema: dict[str, Any] = {}
    if param.type == "date":
        schema["format"] = "date"  # the trigger form shows a date picker
    description = param.description or None
    if param.default is not None and "$" in param.default:
        # A default such as ${ds} depends on the run; left empty, run-node resolves it.
        note = f"empty: {param.default}, resolved by WeiFlow for the run"
        description = f"{description} ({note})" if description else "E" + note[1:]
        return Param(None, description=description, type=["null", json_type], **schema)
    if param.default is None:
        return Param(description=description, type=json_type, **schema)
    value = parse_param_value(param.type, param.default)  # the compiler already checked it parses
    default = value.isoformat() if isinstance(value, date) else value  # JSON has no date type
    return Param(default, description=description, type=json_type, **schema)


def asset_for(dataset: DatasetSpec) -> Asset:
    """The Asset of a dataset: named by its URI template, the same in every pipeline that names it.

    The template (``${storage}/feed_ctr/samples/${day}``) rather than a resolved URI: an asset
    stands for every partition of the dataset, and two pipelines that spell the same template
    share one asset, which is what links a producer to its consumers across DAGs.
    """
    return Asset(name=dataset.uri.strip())


def _doc(compiled: Dag, spec_path: str) -> str:
    lines = [compiled.spec.description.strip(), "", f"WeiFlow spec: `{spec_path}`", ""]
    lines += ["| node | engine | modules |", "|---|---|---|"]
    lines += [f"| {n.id} | {n.engine} | {', '.join(m.id for m in n.modules)} |" for n in compiled.nodes]
    return "\n".join(lines).lstrip()


def _error(compiled: Dag, message: str, hint: str, attr: str | None = None) -> SpecError:
    element = compiled.spec.element
    pos = element.pos_of(attr) if attr else element.pos
    return SpecError([Diagnostic(compiled.spec.file, pos.line, pos.col, message, hint)])


def _root_extensions(path: str) -> dict[str, str]:
    """The ``<pipeline>`` element's Airflow-namespace attributes (the spec model drops foreign ones)."""
    data = Path(path).read_bytes()  # compile_file has already checked its size
    if AIRFLOW_NAMESPACE.encode() not in data:
        return {}  # the common case, without a second XML parse
    for _, element in etree.iterparse(
        io.BytesIO(data), events=("start",), resolve_entities=False, load_dtd=False, no_network=True
    ):
        return {k: v for k, v in element.attrib.items() if k.startswith("{" + AIRFLOW_NAMESPACE + "}")}
    return {}


def _schedule(compiled: Dag, spec_path: str, assets: Mapping[str, Asset]) -> str | AssetAll | None:
    spec = compiled.spec
    schedule_on = _root_extensions(spec_path).get(_SCHEDULE_ON)
    if schedule_on is None:
        return spec.schedule.strip() if spec.schedule else None
    names = split_list(schedule_on)
    if spec.schedule:
        raise _error(
            compiled,
            f"airflow:schedule-on and schedule='{spec.schedule}' both set",
            "a pipeline runs either on a time schedule or when its input datasets are updated: drop one",
            "schedule",
        )
    if not names:
        raise _error(compiled, "airflow:schedule-on is empty", "name at least one dataset this pipeline reads")
    read = sorted({name for node in compiled.nodes for name in node.reads})
    for name in names:
        if name not in read:
            raise _error(
                compiled,
                f"airflow:schedule-on names '{name}', which no node of this pipeline reads",
                did_you_mean(name, read)
                or "list the datasets whose updates should start a run: " + (", ".join(read) or "it reads none"),
            )
    return AssetAll(*(assets[name] for name in names))


def _check_params(compiled: Dag, schedule: object) -> None:
    if schedule is None:
        return
    for param in compiled.spec.params:
        if param.default is None:
            pos = param.element.pos
            raise SpecError(
                [
                    Diagnostic(
                        compiled.spec.file,
                        pos.line,
                        pos.col,
                        f"param '{param.name}' has no default, but the pipeline is scheduled",
                        "scheduled runs cannot fill in a param: give it a default, or drop the schedule "
                        "so that every run is triggered by hand",
                    )
                ]
            )


def _task_doc(node: NodePlan) -> str:
    description = node.spec.element.get("description") or ""
    modules = ", ".join(f"{m.id} ({m.spec.type})" for m in node.modules)
    return f"{description}\n\n{node.engine} node; modules: {modules}".strip()


def build_dag(compiled: Dag, *, operator: NodeOperatorFactory, spec_path: str | Path | None = None) -> DAG:
    """The Airflow DAG of a compiled pipeline, one ``operator`` task per outer node.

    Raises :class:`~weiflow.errors.SpecError` (with the file, line and column) for what is
    valid WeiFlow but cannot be an Airflow DAG: a scheduled pipeline with a param that has no
    default, or a bad ``airflow:schedule-on``.
    """
    spec = compiled.spec
    path = str(Path(spec_path or spec.file).resolve())
    assets = {dataset.name: asset_for(dataset) for dataset in spec.datasets}
    schedule = _schedule(compiled, path, assets)
    _check_params(compiled, schedule)
    default_args: dict[str, Any] = {"retries": spec.retries}
    if spec.owner:
        default_args["owner"] = spec.owner
    start = datetime.fromisoformat(spec.start_date).replace(tzinfo=UTC) if spec.start_date else None
    dag = DAG(
        spec.name,
        description=spec.description or None,
        doc_md=_doc(compiled, path),
        schedule=schedule,
        start_date=start,
        catchup=False,
        default_args=default_args,
        params={param.name: param_for(param) for param in spec.params},
        tags=sorted({"weiflow", *split_list(spec.element.get("tags"))}),
        # A continuous schedule starts the next run when the last ends; Airflow requires one at a time.
        max_active_runs=1 if schedule == "@continuous" else None,
    )
    param_names = [param.name for param in spec.params]
    tasks: dict[str, BaseOperator] = {}
    for node in compiled.nodes:  # topological order: upstream tasks exist already
        extra: dict[str, Any] = {}
        if node.retries is not None:
            extra["retries"] = node.retries
        resources = node.spec.element.get("resources")
        if resources:
            extra["queue"] = resources
        task = operator(
            task_id=node.id,
            spec=path,
            node=node.id,
            spec_params=param_names,
            dag=dag,
            pool=pool_for(spec.priority),
            priority_weight=PRIORITY_WEIGHTS.get(spec.priority, PRIORITY_WEIGHTS["medium"]),
            weight_rule="absolute",
            inlets=[assets[name] for name in node.reads if name not in node.writes],
            outlets=[assets[name] for name in node.writes],
            doc_md=_task_doc(node),
            **extra,
        )
        for upstream in node.upstream:
            tasks[upstream] >> task
        tasks[node.id] = task
    return dag
