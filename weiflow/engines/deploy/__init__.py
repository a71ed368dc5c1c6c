"""The deploy engine's declarations: publish a model version, shift traffic to it, roll it back.

Nothing here imports TensorFlow or fsspec: the executor (executor.py) and the shared actions
(actions.py) do, and the load check runs TensorFlow in a child process (loadcheck.py).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from weiflow.registry import AttrDecl, ModuleType, Plugin
from weiflow.spec.model import ModuleSpec
from weiflow.spec.report import Reporter

__all__ = ["PLUGIN", "Requirement", "parse_require"]

_NUMBER = r"[-+]?[0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?"
_REQUIREMENT = re.compile(rf"\s*([A-Za-z_][A-Za-z0-9_.-]*)\s*(>=|<=|==|>|<)\s*({_NUMBER})\s*")


@dataclass(frozen=True)
class Requirement:
    """One gate of ``require=``: ``metric op threshold``."""

    metric: str
    op: str
    threshold: float

    def holds(self, value: float) -> bool:
        return {
            ">=": value >= self.threshold,
            "<=": value <= self.threshold,
            ">": value > self.threshold,
            "<": value < self.threshold,
            "==": value == self.threshold,
        }[self.op]

    def __str__(self) -> str:
        return f"{self.metric}{self.op}{self.threshold:g}"


def parse_require(text: str) -> list[Requirement]:
    """``"auc>=0.72,logloss<=0.5"`` as requirements; ``ValueError`` with a message fit for the user."""
    requirements: list[Requirement] = []
    for part in text.split(","):
        match = _REQUIREMENT.fullmatch(part)
        if match is None:
            raise ValueError(
                f"'{part.strip()}' is not a requirement: write METRIC OP NUMBER with OP one of >= <= > < ==, "
                'comma-separated, e.g. require="auc>=0.72,logloss<=0.5"'
            )
        metric, op, number = match.groups()
        if any(r.metric == metric for r in requirements):
            raise ValueError(f"metric '{metric}' is required twice: give each metric one bound")
        requirements.append(Requirement(metric, op, float(number)))
    return requirements


def _check_publish(module: ModuleSpec, report: Reporter) -> None:
    require = module.attrs.get("require")
    if require is None or "$" in require.value:
        return  # templated: the executor checks the resolved value
    try:
        parse_require(require.value)
    except ValueError as exc:
        report.error(require.pos, f"module '{module.id}': require='{require.value}': {exc}")


_MODEL_NAME = AttrDecl("model-name", required=True, help="the model in the repository (<repository>/<model>/)")
_REPOSITORY = AttrDecl("repository", help="the model repository (a path or URI); default: ${storage}/models")
_TRAFFIC = AttrDecl(
    "traffic",
    "int",
    default=100,
    min=0,
    max=100,
    help="percent of traffic to the version: a whole number from 0 to 100",
)

PLUGIN = Plugin(
    engine="deploy",
    help="publishes exported models to the model repository; promotes and rolls back their versions",
    executor="weiflow.engines.deploy.executor:DeployExecutor",
    formats=("savedmodel",),
    modules=(
        ModuleType(
            "publish",
            (
                AttrDecl("dataset", "dataset", required=True, role="read", help="an export module's output"),
                _MODEL_NAME,
                _TRAFFIC,
                AttrDecl(
                    "require",
                    help="gates on this run's evaluate metrics, e.g. auc>=0.72,logloss<=0.5 (ops: >= <= > < ==)",
                ),
                AttrDecl(
                    "keep-last",
                    "int",
                    min=1,
                    help="after the publish, keep only the newest N versions that route nothing (live, labelled "
                    "and rollback's target always stay); default: the dataset's retention keep-last:N, else all",
                ),
                _REPOSITORY,
            ),
            check=_check_publish,
            help="gated: the require= thresholds, then a load check in a separate process; then a new version",
        ),
        ModuleType(
            "promote",
            (
                _MODEL_NAME,
                AttrDecl(
                    "version", "int", min=1, help="a version the repository holds (1 or more); default: the newest"
                ),
                _TRAFFIC,
                _REPOSITORY,
            ),
            inputs=(0, 1),
        ),
        ModuleType(
            "rollback",
            (_MODEL_NAME, _REPOSITORY),
            inputs=(0, 1),
            help="all traffic back to the previous fully live version",
        ),
    ),
)
