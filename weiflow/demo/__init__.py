"""The demo: a feed-CTR data generator with a known Bayes-optimal AUC (``weiflow demo data``).

:mod:`~weiflow.demo.data` draws raw impressions from a known generative model and writes them
as a dataset; :mod:`~weiflow.demo.metrics` computes AUC and log loss in plain NumPy. Nothing
here imports Spark or TensorFlow; writing Parquet needs pyarrow (the [spark] or [tensorflow]
extra), which loads only when a dataset is written.
"""

from __future__ import annotations

from weiflow.demo.data import DEFAULT_ROWS, FeedModel, Impressions, generate, report, write_impressions
from weiflow.demo.metrics import auc_standard_error, log_loss, roc_auc

__all__ = [
    "DEFAULT_ROWS",
    "FeedModel",
    "Impressions",
    "auc_standard_error",
    "generate",
    "log_loss",
    "report",
    "roc_auc",
    "write_impressions",
]
