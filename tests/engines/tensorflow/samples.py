"""Synthetic training samples with a known signal, mapped by a real feature map (no Spark needed).

Raw rows (age, city, user id, click-through history) go through the online feature
functions, exactly as the Spark features module would map them; the label depends on the
mapped ids, so a model that learns reaches a high AUC.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from weiflow.features.featuremap import FeatureMap, Normalize, NormalizeStats
from weiflow.features.online import OnlineFeatures
from weiflow.storage import SUCCESS_MARKER

CITIES = [f"city{i}" for i in range(20)]


def feature_map(hash_buckets: int = 1000) -> FeatureMap:
    declared = FeatureMap.declare(
        [
            {"name": "age_b", "fn": "piecewise", "source": "age", "boundaries": "18,25,35,50"},
            {"name": "city", "fn": "pickcat", "source": "city", "values": ",".join(CITIES)},
            {"name": "age_city", "fn": "descartes", "sources": "age_b,city"},
            {"name": "u_hash", "fn": "combinehash", "sources": "uid", "buckets": str(hash_buckets)},
            {"name": "ctr", "fn": "normalize", "source": "hist_ctr", "method": "zscore"},
        ],
        label="label",
        keep=[],
    )
    # What fitting on the data would store for ctr: the statistics of Exponential(0.1).
    stats = NormalizeStats.of(100_000, 0.1, 0.1, 0.0, 1.5)
    fitted = tuple(replace(f, stats=stats) if isinstance(f, Normalize) else f for f in declared.features)
    return replace(declared, features=fitted)


def write_samples(path: Path, rows: int, *, files: int = 4, seed: int = 0, hash_buckets: int = 1000) -> Path:
    """A complete Parquet dataset at ``path``: mapped feature ids, a label, the feature map beside them."""
    rng = np.random.default_rng(seed)
    raw = {
        "age": rng.uniform(10, 70, rows),
        "city": rng.choice(CITIES, rows).tolist(),
        "uid": rng.integers(0, 5000, rows).tolist(),
        "hist_ctr": rng.exponential(0.1, rows),
    }
    fmap = feature_map(hash_buckets)
    ids = OnlineFeatures(fmap).transform_columns(raw)
    city_effect = np.linspace(-2.0, 2.0, len(CITIES) + 1)
    signal = city_effect[ids["city"]] + 0.8 * (ids["age_b"] - 2) + 0.8 * ids["ctr"] - 0.4
    label = (rng.uniform(size=rows) < 1 / (1 + np.exp(-signal))).astype(np.int64)
    columns = {name: pa.array(values) for name, values in ids.items()}
    columns["label"] = pa.array(label)
    table = pa.table(columns)
    path.mkdir(parents=True, exist_ok=True)
    step = -(-rows // files)
    for i in range(files):
        pq.write_table(table.slice(i * step, step), path / f"part-{i:05d}.parquet")
    (path / "_featuremap.json").write_text(fmap.to_json())
    (path / SUCCESS_MARKER).write_text("{}")
    return path
