"""An Airflow DAG run seen as a WeiFlow run: its date and params as ``weiflow run-node`` takes them.

The operator (in each task) and the run listener (in the scheduler) both turn a DAG run into the
arguments of one WeiFlow run; both use these functions, so the run the listener reports (its
params, its resolved dataset URIs) is exactly the run the tasks execute.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import date, datetime
from typing import Any

__all__ = ["given_params", "param_text", "run_date"]


def param_text(value: Any) -> str:
    """A param value as ``run-node --param`` reads it (JSON booleans are true/false there)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, datetime | date):
        return value.isoformat()[:10]
    return str(value)


def run_date(logical_date: datetime | None, run_after: datetime) -> str:
    """The run's ``ds``: its logical date, or, for an Airflow 3 manual run without one, when it was due."""
    return param_text(logical_date or run_after)


def given_params(params: Mapping[str, Any], names: Iterable[str]) -> dict[str, str]:
    """The spec params (``names``) that the run sets, as ``--param`` values.

    A param left empty (None, or an empty string from the trigger form) is not given, so that
    ``run-node`` resolves the spec's default for the run (``${ds}`` and the like).
    """
    given: dict[str, str] = {}
    for name in names:
        value = params.get(name)
        if value is not None and value != "":
            given[name] = param_text(value)
    return given
