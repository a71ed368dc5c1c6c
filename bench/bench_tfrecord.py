"""TFRecord against Parquet from the Spark engine: write and read throughput, size on disk.

TFRecord is written through the tensorflow package (tf.train.Example per row, inside Spark's
Python tasks), Parquet natively by Spark; both from the same cached synthetic feature rows
(ids, a real, a label, a string, an array), side by side in one run. No target: the figures
say what choosing tfrecord for a training dataset costs.

    .venv/bin/python bench/bench_tfrecord.py [--rows 2000000] [--quick]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

from weiflow.engines.spark.executor import start_session
from weiflow.engines.spark.tfrecord import read_tfrecord, write_tfrecord

ROWS_SQL = """
SELECT id, CAST(id % 7 AS int) AS age_b, id % 1000 AS city, rand(1) AS ctr, CAST(id % 2 AS int) AS label,
       xxhash64(id) % 1048576 AS u_item, concat('u', id % 5000) AS uid, array(id % 10, id % 100) AS recent
FROM range({rows})
"""


def size_mb(path: Path) -> float:
    return sum(f.stat().st_size for f in path.glob("part-*")) / 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=2_000_000)
    parser.add_argument("--quick", action="store_true", help="20,000 rows: checks the script runs")
    args, unknown = parser.parse_known_args()
    if unknown:
        print(f"bench_tfrecord: ignoring options for other benches: {' '.join(unknown)}", file=sys.stderr)
    rows = 20_000 if args.quick else args.rows
    spark = start_session({"spark.master": "local[2]", "spark.sql.shuffle.partitions": "4"})
    spark.sparkContext.setLogLevel("ERROR")
    frame = spark.sql(ROWS_SQL.format(rows=rows)).repartition(4).cache()
    frame.count()
    with tempfile.TemporaryDirectory(prefix="weiflow-bench-tfrecord-") as tmp:
        root = Path(tmp)
        for name in ("warm", "tfrecord"):
            (root / name).mkdir()
        # The first write starts the Python workers and imports tensorflow in them: not the steady state.
        write_tfrecord(spark, frame.limit(100).repartition(4), root / "warm", dataset="warm")
        started = time.perf_counter()
        written = write_tfrecord(spark, frame, root / "tfrecord", dataset="bench")
        tf_write = time.perf_counter() - started
        started = time.perf_counter()
        frame.write.parquet(str(root / "parquet"))
        pq_write = time.perf_counter() - started
        started = time.perf_counter()
        read_tfrecord(spark, str(root / "tfrecord"), "bench").selectExpr("sum(id)").collect()
        tf_read = time.perf_counter() - started
        started = time.perf_counter()
        spark.read.parquet(str(root / "parquet")).selectExpr("sum(id)").collect()
        pq_read = time.perf_counter() - started
        load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
        print(f"{written:,} rows, Spark local[2] (load {load})")
        print(f"  write  tfrecord {written / tf_write:>12,.0f} rows/s   parquet {written / pq_write:>12,.0f} rows/s")
        print(f"  read   tfrecord {written / tf_read:>12,.0f} rows/s   parquet {written / pq_read:>12,.0f} rows/s")
        tf_mb, pq_mb = size_mb(root / "tfrecord"), size_mb(root / "parquet")
        print(f"  size   tfrecord {tf_mb:>9,.0f} MB      parquet {pq_mb:>9,.0f} MB")
    spark.stop()


if __name__ == "__main__":
    main()
