"""Control center at scale: the dataset list API under 20 concurrent clients, and one retention sweep.

Bulk-loads (SQLAlchemy core inserts) 100,000 datasets and 10,000 runs into a fresh database,
serves the center with uvicorn in a subprocess on 127.0.0.1, and drives 20 concurrent
clients (threads, one httpx connection each) against ``GET /api/v1/datasets``: the first
page, deep keyset pages, and filters by state, owner and name, 50 rows each, token-checked.
Then one retention sweep over the same data: what a daily sweep finds, about 2% newly due
for marking and 1% past their grace period (with real files to delete), 1% of the runs
still running and protecting what they use. Targets: p99 < 50 ms, sweep < 5 s, each on
SQLite and on PostgreSQL (127.0.0.1:5432, database test, in a schema of its own, dropped after).

    .venv/bin/python bench/bench_center.py [--datasets 100000] [--runs 10000] [--clients 20]
        [--requests 100] [--backends sqlite,postgres] [--postgres-url URL] [--quick]
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import Engine, insert, text

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from weiflow.center.db import make_engine, make_sessionmaker, migrate  # noqa: E402
from weiflow.center.models import Dataset, NodeRun, Pipeline, Role, Run, RunUse, State  # noqa: E402
from weiflow.center.repository import create_token, create_user  # noqa: E402
from weiflow.center.retention import sweep  # noqa: E402
from weiflow.processes import free_port  # noqa: E402

PG_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
PIPELINES = 200
NOW = datetime.now(UTC)

# The server: the same app `weiflow center serve` runs, one uvicorn process, no access log.
SERVER = """
import sys, uvicorn
from weiflow.center.api import create_app
from weiflow.center.db import make_engine, make_sessionmaker
url, schema, port = sys.argv[1], sys.argv[2] or None, int(sys.argv[3])
app = create_app(make_sessionmaker(make_engine(url, schema=schema, pool_size=25, max_overflow=5)))
uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)
"""


def load(engine: Engine, *, datasets: int, runs: int, files_dir: Path) -> dict[str, int]:
    """Bulk insert: pipelines, runs (1% running), node runs, datasets with every policy, some pending."""
    rng = random.Random(7)
    counts = {"due": 0, "protected": 0}
    with engine.begin() as conn:
        conn.execute(
            insert(Pipeline),
            [{"id": p + 1, "name": f"pipe{p}", "owner": f"team{p % 20}", "created_at": NOW} for p in range(PIPELINES)],
        )
        run_rows = []
        for r in range(runs):
            state = State.RUNNING if r % 100 == 0 else State.SUCCEEDED
            start = NOW - timedelta(days=90 * (runs - r) / runs)
            run_rows.append(
                {
                    "id": r + 1,
                    "run_id": f"run{r}",
                    "pipeline_id": r % PIPELINES + 1,
                    "state": state,
                    "params": {},
                    "upstream": {"make": [], "use": ["make"]},
                    "started_at": start,
                    "ended_at": None if state == State.RUNNING else start + timedelta(minutes=20),
                }
            )
        conn.execute(insert(Run), run_rows)
        conn.execute(
            insert(NodeRun),
            [
                {"run_pk": r + 1, "node": node, "state": State.SUCCEEDED, "plan": {}}
                for r in range(runs)
                for node in ("make", "use")
            ],
        )
        rows: list[dict[str, Any]] = []
        uses: list[dict[str, Any]] = []
        policies = ["ttl:30", "idle:60", "consumed", "keep-last:10", "pinned", None]
        for d in range(datasets):
            run_pk = d % runs + 1
            created = run_rows[run_pk - 1]["started_at"]
            policy = policies[d % len(policies)]
            uri = f"file:///bench/storage/pipe{(run_pk - 1) % PIPELINES}/ds{d}"
            row: dict[str, Any] = {
                "uri": uri,
                "name": f"ds{d % 50}",
                "pipeline_id": (run_pk - 1) % PIPELINES + 1,
                "owner": f"team{(run_pk - 1) % PIPELINES % 20}",
                "format": "parquet",
                "size_bytes": rng.randrange(1 << 20, 1 << 34),
                "files": rng.randrange(1, 200),
                "rows": rng.randrange(1000, 10**8),
                "producer_run_pk": run_pk,
                "producer_node": "make",
                "consumers_expected": ["use"] if policy == "consumed" else [],
                "retention": policy,
                "pinned": policy == "pinned",
                "state": "live",
                "created_at": created,
                "last_access": created + timedelta(hours=1),
                "updated_at": created,
                # Every row has every key: an executemany insert takes its columns from the first row.
                "reason": None,
                "marked_at": None,
                "delete_after": None,
            }
            # A daily sweep's share of the work: ~1% already marked and past grace (files on disk),
            # and policies that made ~2% newly due (ttl/idle data just past its limit, 'consumed').
            if d % 100 == 1 and policy not in ("pinned", None):
                path = files_dir / f"ds{d}"
                path.mkdir()
                (path / "part-0").write_bytes(b"x" * 64)
                row.update(
                    uri=f"file://{path}",
                    state="pending-deletion",
                    reason="bench",
                    marked_at=NOW - timedelta(days=4),
                    delete_after=NOW - timedelta(days=1),
                )
                counts["due"] += 1
            elif policy == "consumed" and d % 100 >= 4:
                row["consumers_expected"] = ["never-ran"]  # a consumer that has not succeeded: not due
            elif policy in ("ttl:30", "idle:60") and d % 100 >= 8:
                row["retention"] = "ttl:100000"  # not due in this sweep
            if run_rows[run_pk - 1]["state"] == State.RUNNING:
                uses.append({"run_pk": run_pk, "uri": row["uri"]})
                counts["protected"] += 1
            rows.append(row)
        for start in range(0, len(rows), 20_000):
            conn.execute(insert(Dataset), rows[start : start + 20_000])
        conn.execute(insert(RunUse), uses)
    return counts


def serve(url: str, schema: str | None) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-c", SERVER, url, schema or "", str(port)],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            httpx.get(f"{base}/api/openapi.json", timeout=1)
            return process, base
        except httpx.TransportError:
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                raise SystemExit("bench_center: the center did not start") from None
            time.sleep(0.1)


def drive(base: str, token: str, *, clients: int, requests: int, datasets: int) -> list[float]:
    """Latencies (s) of every request from ``clients`` threads, ``requests`` each, after a warm-up."""
    headers = {"Authorization": f"Bearer {token}"}
    latencies: list[float] = []
    lock = threading.Lock()
    barrier = threading.Barrier(clients)
    failures: list[str] = []

    def client(seed: int) -> None:
        rng = random.Random(seed)
        mine: list[float] = []
        with httpx.Client(base_url=base, headers=headers, timeout=30) as http:
            for _ in range(5):  # connection, server-side pool and caches warm
                http.get("/api/v1/datasets", params={"limit": 50})
            barrier.wait()
            for i in range(requests):
                kind = i % 5
                params: dict[str, Any] = {"limit": 50}
                if kind == 1:
                    params["before"] = rng.randrange(100, datasets)
                elif kind == 2:
                    params["state"] = "pending-deletion"
                elif kind == 3:
                    params["owner"] = f"team{rng.randrange(20)}"
                    params["before"] = rng.randrange(100, datasets)
                elif kind == 4:
                    params["name"] = f"ds{rng.randrange(50)}"
                start = time.perf_counter()
                response = http.get("/api/v1/datasets", params=params)
                mine.append(time.perf_counter() - start)
                if response.status_code != 200 or not response.json()["items"]:
                    failures.append(f"{params}: {response.status_code} {response.text[:200]}")
        with lock:
            latencies.extend(mine)

    threads = [threading.Thread(target=client, args=(seed,)) for seed in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if failures:
        raise SystemExit(f"bench_center: {len(failures)} bad responses, e.g. {failures[0]}")
    return latencies


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def bench(backend: str, args: argparse.Namespace, datasets: int, runs: int, requests: int) -> list[str]:
    schema: str | None = None
    with tempfile.TemporaryDirectory(prefix="weiflow-bench-center-") as tmp:
        if backend == "sqlite":
            url = f"sqlite:///{tmp}/center.db"
        else:
            url, schema = args.postgres_url, f"bench_center_{os.getpid()}_{uuid.uuid4().hex[:6]}"
            admin = make_engine(url, connect_args={"connect_timeout": 3})
            try:
                with admin.begin() as conn:
                    conn.execute(text(f'CREATE SCHEMA "{schema}"'))
            except Exception as exc:
                print(f"bench_center: PostgreSQL at {url} not usable, skipped: {exc}", file=sys.stderr)
                return [f"{backend}: skipped (no server)"]
        engine = make_engine(url, schema=schema)
        try:
            migrate(engine)
            files_dir = Path(tmp) / "files"
            files_dir.mkdir()
            start = time.perf_counter()
            counts = load(engine, datasets=datasets, runs=runs, files_dir=files_dir)
            loaded = time.perf_counter() - start
            if backend == "postgres":
                with engine.begin() as conn:
                    conn.execute(text("ANALYZE"))
            sessions = make_sessionmaker(engine)
            with sessions() as session:
                create_user(session, "bench", Role.VIEWER)
                token = create_token(session, "bench")
            print(f"[{backend}] loaded {datasets:,} datasets and {runs:,} runs in {loaded:.1f} s", flush=True)
            process, base = serve(url, schema)
            try:
                latencies = drive(base, token, clients=args.clients, requests=requests, datasets=datasets)
            finally:
                process.terminate()
                process.wait(10)
            ms = [x * 1000 for x in latencies]
            p50, p95, p99 = pct(ms, 0.50), pct(ms, 0.95), pct(ms, 0.99)
            wall = sum(latencies) / args.clients
            print(
                f"[{backend}] GET /api/v1/datasets, {args.clients} clients x {requests}: p50 {p50:.1f} ms, "
                f"p95 {p95:.1f} ms, p99 {p99:.1f} ms, max {max(ms):.1f} ms, mean {statistics.mean(ms):.1f} ms, "
                f"~{len(ms) / wall:,.0f} req/s",
                flush=True,
            )
            start = time.perf_counter()
            report = sweep(sessions, now=NOW)
            took = time.perf_counter() - start
            print(f"[{backend}] sweep: {report.summary()} in {took:.2f} s", flush=True)
            if len(report.deleted) < counts["due"] - counts["protected"] or report.failed:
                raise SystemExit(f"bench_center: sweep deleted {len(report.deleted)} of {counts['due']} due")
            return [
                f"{backend}: dataset list p99 {p99:.1f} ms at {args.clients} clients "
                f"(target < {args.target_p99_ms:g} ms) {'OK' if p99 < args.target_p99_ms else 'MISSED'}",
                f"{backend}: retention sweep over {datasets:,} datasets {took:.2f} s "
                f"(target < {args.target_sweep_s:g} s) {'OK' if took < args.target_sweep_s else 'MISSED'}",
            ]
        finally:
            engine.dispose()
            if schema is not None:
                with admin.begin() as conn:
                    conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
                admin.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=10_000)
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--requests", type=int, default=100, help="per client")
    parser.add_argument("--backends", default="sqlite,postgres")
    parser.add_argument("--postgres-url", default=os.environ.get("WEIFLOW_TEST_POSTGRES_URL", PG_URL))
    parser.add_argument("--target-p99-ms", type=float, default=50.0)
    parser.add_argument("--target-sweep-s", type=float, default=5.0)
    parser.add_argument("--quick", action="store_true", help="10,000 datasets, 1,000 runs, 20 requests per client")
    args, unknown = parser.parse_known_args()
    if unknown:
        print(f"bench_center: ignoring options for other benches: {' '.join(unknown)}", file=sys.stderr)
    datasets, runs, requests = (10_000, 1_000, 20) if args.quick else (args.datasets, args.runs, args.requests)
    verdicts: list[str] = []
    for backend in [b.strip() for b in args.backends.split(",") if b.strip()]:
        if backend not in ("sqlite", "postgres"):
            raise SystemExit(f"bench_center: unknown backend '{backend}' (sqlite, postgres)")
        verdicts += bench(backend, args, datasets, runs, requests)
    load_avg = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"load average {load_avg}; {os.cpu_count()} CPUs")
    for line in verdicts:
        print(line)


if __name__ == "__main__":
    main()
