"""Feature functions: one definition, two implementations (Spark and online).

This package holds the engine-neutral part: each function's declaration (attributes,
whether it yields categorical ids) and the validate-time rules of shared/DESIGN.md
(:mod:`~weiflow.features.functions`), the feature-map artifact that carries the fitted
vocabularies and statistics (:mod:`~weiflow.features.featuremap`), and the online
evaluator the prediction service uses (:mod:`~weiflow.features.online`). The Spark
builders live in the Spark engine (``weiflow.engines.spark.features``). Nothing here
imports pyspark; NumPy and xxhash load only when :class:`OnlineFeatures` is first used,
so validating a spec (which reads the declarations) does not pay for them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from weiflow.features.featuremap import FEATURE_MAP_SCHEMA, FeatureError, FeatureMap
from weiflow.features.functions import FUNCTIONS, FeatureFunction, check_features, max_cardinality

if TYPE_CHECKING:
    from weiflow.features.online import OnlineFeatures

__all__ = [
    "FEATURE_MAP_SCHEMA",
    "FUNCTIONS",
    "FeatureError",
    "FeatureFunction",
    "FeatureMap",
    "OnlineFeatures",
    "check_features",
    "max_cardinality",
]


def __getattr__(name: str) -> Any:
    if name == "OnlineFeatures":
        from weiflow.features.online import OnlineFeatures

        return OnlineFeatures
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
