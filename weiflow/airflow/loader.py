"""Specs in, Airflow DAGs out: one spec (an invalid one raises, naming file:line:col) or a folder.

``load_dag`` is what a per-spec DAG file runs (see :mod:`weiflow.airflow.bundle`): the
:class:`~weiflow.errors.SpecError` it raises becomes that file's import error in the Airflow UI.
``load_dags`` builds every valid spec of a folder and reports the others without raising,
because Airflow drops (and marks stale) every DAG of a file whose import raises.
"""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass, field
from pathlib import Path

from airflow.sdk import DAG, conf
from lxml import etree

from weiflow.airflow.mapping import NodeOperatorFactory, build_dag
from weiflow.config import load_settings
from weiflow.dag import compile_file
from weiflow.errors import WeiflowError
from weiflow.registry import default_registry

__all__ = [
    "BUNDLE_CLASSPATH",
    "LoadResult",
    "load_dag",
    "load_dags",
    "pipeline_name",
    "spec_bundle_configured",
    "spec_files",
]

log = logging.getLogger("weiflow.airflow")

BUNDLE_CLASSPATH = "weiflow.airflow.bundle.SpecBundle"


@dataclass
class LoadResult:
    """The DAGs built from a folder of specs, by DAG id, and each failing spec's message, by path."""

    dags: dict[str, DAG] = field(default_factory=dict)
    failures: dict[str, str] = field(default_factory=dict)


def spec_files(location: str | Path) -> list[Path]:
    """A spec file, or the ``*.xml`` files of a folder (not its subfolders, like ``weiflow validate``)."""
    path = Path(location)
    return sorted(path.glob("*.xml")) if path.is_dir() else [path]


def load_dag(path: str | Path, *, operator: NodeOperatorFactory) -> DAG:
    """Compile one spec and build its DAG; raises :class:`~weiflow.errors.WeiflowError` when it cannot."""
    settings = load_settings()
    compiled = compile_file(
        path, default_registry(), max_bytes=settings.max_spec_bytes, allowed_callables=settings.allowed_callables
    )
    for warning in compiled.warnings:
        log.warning("%s", warning)
    return build_dag(compiled, operator=operator, spec_path=path)


def pipeline_name(path: str | Path) -> str | None:
    """The ``name`` of a spec's root element, read without compiling it; None when unreadable."""
    try:
        with Path(path).open("rb") as handle:
            head = handle.read(64 * 1024)  # the root start tag is near the top of any real spec
        for _, element in etree.iterparse(
            io.BytesIO(head), events=("start",), resolve_entities=False, load_dtd=False, no_network=True
        ):
            name = element.get("name")
            return name.strip() if name else None
    except (OSError, etree.XMLSyntaxError):
        return None
    return None


def load_dags(location: str | Path, *, operator: NodeOperatorFactory, only: str | None = None) -> LoadResult:
    """Build the DAG of every valid spec in ``location``; an invalid spec is logged and skipped.

    ``only`` (a DAG id) skips, without compiling them, the specs whose pipeline has another
    name: a worker that runs one task needs one DAG, not the whole folder.
    """
    result = LoadResult()
    origin: dict[str, Path] = {}
    for path in spec_files(location):
        if only is not None:
            name = pipeline_name(path)
            if name is not None and name != only:
                continue
        try:
            dag = load_dag(path, operator=operator)
        except WeiflowError as exc:
            result.failures[str(path)] = str(exc)
            log.error("WeiFlow spec %s is not loaded:\n%s", path, exc)
            continue
        if dag.dag_id in result.dags:
            message = f"{path}: pipeline '{dag.dag_id}' is already defined by {origin[dag.dag_id]}; rename one"
            result.failures[str(path)] = message
            log.error("%s", message)
            continue
        result.dags[dag.dag_id] = dag
        origin[dag.dag_id] = path
    return result


def spec_bundle_configured() -> bool:
    """Whether Airflow is configured with WeiFlow's :class:`~weiflow.airflow.bundle.SpecBundle`.

    Then the bundle owns the specs, and a dags-folder loader must not define the same DAG ids
    a second time (two bundles with one DAG id make Airflow flip the DAG between them).
    """
    return BUNDLE_CLASSPATH in (conf.get("dag_processor", "dag_bundle_config_list", fallback="") or "")
