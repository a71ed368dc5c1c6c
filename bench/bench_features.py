"""The features module against the same transformations hand-written, and as Python UDFs.

On N synthetic rows (default 5 million) with Spark local[2], all five feature functions:
  (a) WeiFlow: weiflow.engines.spark.features.apply_feature_map with a fitted map;
  (b) the same transformations hand-written in PySpark Column code;
  (c) the same transformations as Python UDFs (what the native path avoids).
Each variant is forced with the `noop` sink (computes every row, writes nothing), best of
--repeats runs. Prints rows/s and the ratios; targets: (a) >= 0.8 x (b), (a) >= 8 x (c).
The fit (vocabularies, statistics: one pass) is timed separately.

    .venv/bin/python bench/bench_features.py [--rows 5000000] [--repeats 2] [--quick]
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from typing import Any

os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
os.environ.setdefault("PYSPARK_PYTHON", sys.executable)  # UDF workers need this venv

from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from weiflow.engines.spark.executor import start_session
from weiflow.engines.spark.features import apply_feature_map, fit_feature_map
from weiflow.features.featuremap import FeatureMap
from weiflow.features.online import OnlineFeatures

FEATURES = [
    {"name": "age_b", "fn": "piecewise", "source": "age", "boundaries": "18,25,35,50"},
    {"name": "city", "fn": "pickcat", "source": "city", "top": "1000", "min-count": "5"},
    {"name": "ctr", "fn": "normalize", "source": "hist_ctr", "method": "zscore"},
    {"name": "age_city", "fn": "descartes", "sources": "age_b,city"},
    {"name": "u_item", "fn": "combinehash", "sources": "uid,item_id", "buckets": "1048576"},
]


def synthetic(spark: SparkSession, rows: int) -> DataFrame:
    frame = spark.range(rows, numPartitions=8).select(
        F.col("id"),
        (F.rand(1) * 70).alias("age"),
        F.concat(F.lit("c"), (F.abs(F.randn(2)) * 300).cast("int").cast("string")).alias("city"),
        F.when(F.rand(3) < 0.02, None).otherwise(F.rand(4)).alias("hist_ctr"),
        F.concat(F.lit("u"), (F.rand(5) * 1_000_000).cast("long").cast("string")).alias("uid"),
        (F.rand(6) * 100_000).cast("long").alias("item_id"),
        (F.rand(7) < 0.1).cast("int").alias("label"),
    )
    return frame.cache()


def fitted_parts(fmap: FeatureMap) -> dict[str, Any]:
    """The learned values the hand-written and UDF variants reuse, read through the online evaluator's view."""
    data: dict[str, Any] = {}
    for feature in fmap.features:
        data[feature.name] = feature
    return data


def hand_written(frame: DataFrame, fmap: FeatureMap) -> DataFrame:
    parts = fitted_parts(fmap)
    boundaries = list(parts["age_b"].boundaries)
    age = F.col("age")
    age_b = F.when(age.isNull() | F.isnan(age), len(boundaries) + 1).otherwise(
        sum((age >= b).cast("long") for b in boundaries)  # type: ignore[arg-type]
    )
    vocabulary = list(parts["city"].vocabulary)
    lookup = F.create_map(*[x for i, v in enumerate(vocabulary, 1) for x in (F.lit(v), F.lit(i))])
    city = F.coalesce(lookup[F.col("city")], F.lit(0)).cast("long")
    scaling = parts["ctr"].scaling()
    x = F.col("hist_ctr")
    finite = x.isNotNull() & ~F.isnan(x) & (F.abs(x) != float("inf"))
    ctr = F.when(finite, (x - scaling[0]) / F.lit(scaling[1])).otherwise(0.0) if scaling else F.lit(0.0)
    age_city = age_b * (len(vocabulary) + 1) + city
    u_item = F.pmod(F.xxhash64(F.col("uid").cast("string"), F.col("item_id").cast("string")), F.lit(1048576))
    return frame.select(
        F.col("label"),
        age_b.alias("age_b"),
        city.alias("city"),
        ctr.alias("ctr"),
        age_city.alias("age_city"),
        u_item.alias("u_item"),
    )


def python_udfs(frame: DataFrame, fmap: FeatureMap) -> DataFrame:
    online = OnlineFeatures(fmap)

    def one(row: Any) -> tuple[Any, ...]:
        out = online.transform_rows([row.asDict()])[0]
        return tuple(out[f["name"]] for f in FEATURES)

    schema = T.StructType(
        [T.StructField(f["name"], T.DoubleType() if f["fn"] == "normalize" else T.LongType()) for f in FEATURES]
    )
    features = F.udf(one, schema)  # the path WeiFlow's native expressions replace
    columns: list[Column] = [F.col(c) for c in ("age", "city", "hist_ctr", "uid", "item_id")]
    return frame.select(F.col("label"), features(F.struct(*columns)).alias("f")).select("label", "f.*")


def best_time(build: Any, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        build().write.format("noop").mode("overwrite").save()
        times.append(time.perf_counter() - started)
    return min(times)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=5_000_000)
    parser.add_argument("--udf-rows", type=int, default=500_000, help="UDFs are timed on fewer rows (rows/s compared)")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="200k rows, 1 repeat")
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        print(f"bench_features: ignoring options for other benches: {' '.join(unknown)}", file=sys.stderr)
    if args.quick:
        args.rows, args.udf_rows, args.repeats = 200_000, 50_000, 1
    spark = start_session(
        {"spark.master": "local[2]", "spark.driver.memory": "4g", "spark.sql.shuffle.partitions": "8"}
    )
    spark.sparkContext.setLogLevel("ERROR")
    frame = synthetic(spark, args.rows)
    print(f"rows: {frame.count():,} (cached), Spark local[2], python {sys.version.split()[0]}, {os.cpu_count()} cpu(s)")
    declared = FeatureMap.declare(FEATURES, label="label", keep=[])
    started = time.perf_counter()
    fmap = fit_feature_map(frame, declared)
    print(f"fit (vocabularies and statistics): {time.perf_counter() - started:.2f} s")

    weiflow = best_time(lambda: apply_feature_map(frame, fmap), args.repeats)
    hand = best_time(lambda: hand_written(frame, fmap), args.repeats)
    small = frame.limit(args.udf_rows).cache()
    small.count()
    udf = best_time(lambda: python_udfs(small, fmap), 1)
    rates = {"weiflow": args.rows / weiflow, "hand": args.rows / hand, "udf": args.udf_rows / udf}
    print(f"(a) WeiFlow features module : {rates['weiflow']:>12,.0f} rows/s  ({weiflow:.2f} s)")
    print(f"(b) hand-written Column code: {rates['hand']:>12,.0f} rows/s  ({hand:.2f} s)")
    print(f"(c) Python UDFs             : {rates['udf']:>12,.0f} rows/s  ({udf:.2f} s on {args.udf_rows:,} rows)")
    vs_hand, vs_udf = rates["weiflow"] / rates["hand"], rates["weiflow"] / rates["udf"]
    print(f"WeiFlow / hand-written = {vs_hand:.2f} (target >= 0.8) {'OK' if vs_hand >= 0.8 else 'MISSED'}")
    print(f"WeiFlow / Python UDF   = {vs_udf:.1f} (target >= 8) {'OK' if vs_udf >= 8 else 'MISSED'}")
    spark.stop()
    return 0 if math.isfinite(vs_hand) else 1


if __name__ == "__main__":
    sys.exit(main())
