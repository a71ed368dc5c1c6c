"""Feature functions: one definition, two implementations (Spark and online).

This package holds the engine-neutral part: each function's declaration (attributes,
whether it yields categorical ids) and the validate-time rules of shared/DESIGN.md. The
Spark builders live in the Spark engine; the online evaluators live beside these
declarations so the prediction service needs no Spark.
"""

from weiflow.features.functions import FUNCTIONS, FeatureFunction, check_features, max_cardinality

__all__ = ["FUNCTIONS", "FeatureFunction", "check_features", "max_cardinality"]
