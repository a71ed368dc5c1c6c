"""Control center at scale: the dataset list API under 20 concurrent clients, and one retention sweep.

Bulk-loads (SQLAlchemy core inserts) 100,000 datasets and 10,000 runs into a fresh database,
starts the center the way users do (``weiflow center serve``: one worker process per CPU, at
most 4, access log on) on 127.0.0.1, and drives 20 concurrent clients (asyncio + aiohttp in this
process, one keep-alive connection each, each sending its next request as soon as the last
answer arrives) against ``GET /api/v1/datasets``: the first page, deep keyset pages, and filters
by state, owner and name, 50 rows each, token-checked. It also prints the servers' CPU time per
request, the figure that moves least with other load on the machine. Then one retention sweep
over the same data: what a daily sweep finds, about 2% newly due for marking and 1% past their
grace period (with real files to delete), 1% of the runs still running and protecting what they
use. Targets: p99 < 50 ms, sweep < 5 s, each on SQLite and on PostgreSQL (127.0.0.1:5432,
database test, in a schema of its own, dropped after).

    .venv/bin/python bench/bench_center.py [--datasets 100000] [--runs 10000] [--clients 20]
        [--requests 200] [--workers N] [--backends sqlite,postgres] [--postgres-url URL] [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, insert, make_url, text

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from weiflow.center.db import make_engine, make_sessionmaker, migrate  # noqa: E402
from weiflow.center.models import Dataset, NodeRun, Pipeline, Role, Run, RunUse, State  # noqa: E402
from weiflow.center.repository import create_token, create_user  # noqa: E402
from weiflow.center.retention import sweep  # noqa: E402
from weiflow.processes import free_port, stop_groups  # noqa: E402

PG_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
PIPELINES = 200
WARM_UP = 25  # requests per client before the measured ones
NOW = datetime.now(UTC)


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


def serve(url: str, schema: str | None, workers: int | None) -> tuple[subprocess.Popen[bytes], str]:
    """``weiflow center serve`` on a free port, over ``url`` (in ``schema``: PostgreSQL's search_path)."""
    if schema is not None:
        url = str(make_url(url).update_query_dict({"options": f"-csearch_path={schema}"}))
    port = free_port()
    argv = [sys.executable, "-m", "weiflow", "center", "serve", "--port", str(port), "--sweep-every=0"]
    process = subprocess.Popen(
        [*argv, *(["--workers", str(workers)] if workers else [])],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO), "WEIFLOW_DATABASE_URL": url},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            with urllib.request.urlopen(f"{base}/api/openapi.json", timeout=1):
                return process, base
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                stop_groups([process], 5)
                raise SystemExit("bench_center: the center did not start") from None
            time.sleep(0.2)


def cpu_seconds(root: int) -> float:
    """User + system CPU of ``root`` and its children (the uvicorn workers), from /proc."""
    total, pending = 0.0, [root]
    while pending:
        pid = pending.pop()
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            pending += [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
        except (FileNotFoundError, ProcessLookupError):
            continue
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def drive(base: str, token: str, *, clients: int, requests: int, datasets: int) -> list[float]:
    """Latencies (s) of every request from ``clients`` concurrent clients, ``requests`` each, after a warm-up."""
    return asyncio.run(_drive(base, token, clients=clients, requests=requests, datasets=datasets))


async def _drive(base: str, token: str, *, clients: int, requests: int, datasets: int) -> list[float]:
    import aiohttp

    headers = {"Authorization": f"Bearer {token}"}
    latencies: list[float] = []
    failures: list[str] = []
    go = asyncio.Event()

    def params(rng: random.Random, i: int) -> dict[str, str]:
        kind, found = i % 5, {"limit": "50"}
        if kind == 1:
            found["before"] = str(rng.randrange(100, datasets))
        elif kind == 2:
            found["state"] = "pending-deletion"
        elif kind == 3:
            found["owner"] = f"team{rng.randrange(20)}"
            found["before"] = str(rng.randrange(100, datasets))
        elif kind == 4:
            found["name"] = f"ds{rng.randrange(50)}"
        return found

    async def client(seed: int, warm: asyncio.Event) -> None:
        rng = random.Random(seed)
        connector = aiohttp.TCPConnector(limit=1)  # one connection per client, kept alive
        async with aiohttp.ClientSession(base, headers=headers, connector=connector) as http:
            for i in range(WARM_UP):  # connections, pools, prepared statements and caches warm
                async with http.get("/api/v1/datasets", params=params(rng, i)) as response:
                    await response.read()
            warm.set()
            await go.wait()
            for i in range(requests):
                query = params(rng, i)
                start = time.perf_counter()
                async with http.get("/api/v1/datasets", params=query) as response:
                    body = await response.read()
                latencies.append(time.perf_counter() - start)
                # Every answer's status and first item are checked, every tenth is parsed whole:
                # parsing all of them would take CPU from the server the clients share cores with.
                ok = response.status == 200 and body.startswith(b'{"items":[{')
                if not ok or (i % 10 == 0 and not json.loads(body)["items"]):
                    failures.append(f"{query}: {response.status} {body[:200]!r}")

    ready = [asyncio.Event() for _ in range(clients)]
    tasks = [asyncio.create_task(client(seed, ready[seed])) for seed in range(clients)]
    await asyncio.gather(*(event.wait() for event in ready))
    go.set()
    await asyncio.gather(*tasks)
    if failures:
        raise SystemExit(f"bench_center: {len(failures)} bad responses, e.g. {failures[0]}")
    return latencies


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


@contextmanager
def fresh_database(
    backend: str, tmp: str, postgres_url: str, bench: str
) -> Iterator[tuple[str, str | None, Engine] | None]:
    """(url, schema, engine) of a migrated, empty database: a SQLite file in ``tmp``, or a PostgreSQL
    schema of its own, dropped afterwards; None when PostgreSQL does not answer (the caller skips)."""
    if backend == "sqlite":
        url, schema = f"sqlite:///{tmp}/center.db", None
    else:
        url, schema = postgres_url, f"{bench}_{os.getpid()}_{uuid.uuid4().hex[:6]}"
        admin = make_engine(url, connect_args={"connect_timeout": 3})
        try:
            with admin.begin() as conn:
                conn.execute(text(f'CREATE SCHEMA "{schema}"'))
        except Exception as exc:
            print(f"{bench}: PostgreSQL at {url} not usable, skipped: {exc}", file=sys.stderr)
            yield None
            return
    engine = make_engine(url, schema=schema)
    try:
        migrate(engine)
        yield url, schema, engine
    finally:
        engine.dispose()
        if schema is not None:
            with admin.begin() as conn:
                conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
            admin.dispose()


def bench(backend: str, args: argparse.Namespace, datasets: int, runs: int, requests: int) -> list[str]:
    with (
        tempfile.TemporaryDirectory(prefix="weiflow-bench-center-") as tmp,
        fresh_database(backend, tmp, args.postgres_url, "bench_center") as database,
    ):
        if database is None:
            return [f"{backend}: skipped (no server)"]
        url, schema, engine = database
        files_dir = Path(tmp) / "files"
        files_dir.mkdir()
        start = time.perf_counter()
        counts = load(engine, datasets=datasets, runs=runs, files_dir=files_dir)
        loaded = time.perf_counter() - start
        if backend == "postgres":
            # A settled database, as a long-running center has: otherwise autovacuum wakes up
            # for the 100,000 fresh rows and shares the two cores with the measurement.
            with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
                conn.execute(text("VACUUM ANALYZE"))
        sessions = make_sessionmaker(engine)
        with sessions() as session:
            create_user(session, "bench", Role.VIEWER)
            token = create_token(session, "bench")
        print(f"[{backend}] loaded {datasets:,} datasets and {runs:,} runs in {loaded:.1f} s", flush=True)
        process, base = serve(url, schema, args.workers)
        try:
            cpu_before, started = cpu_seconds(process.pid), time.perf_counter()
            latencies = drive(base, token, clients=args.clients, requests=requests, datasets=datasets)
            wall, cpu = time.perf_counter() - started, cpu_seconds(process.pid) - cpu_before
        finally:
            stop_groups([process], 10)
        ms = [x * 1000 for x in latencies]
        p50, p95, p99 = pct(ms, 0.50), pct(ms, 0.95), pct(ms, 0.99)
        print(
            f"[{backend}] GET /api/v1/datasets, {args.clients} clients x {requests}: p50 {p50:.1f} ms, "
            f"p95 {p95:.1f} ms, p99 {p99:.1f} ms, max {max(ms):.1f} ms, mean {statistics.mean(ms):.1f} ms, "
            f"{len(ms) / wall:,.0f} req/s, server CPU {cpu * 1000 / len(ms):.2f} ms per request",
            flush=True,
        )
        start = time.perf_counter()
        report = sweep(sessions, roots=[f"file://{files_dir}"], now=NOW)
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=10_000)
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--requests", type=int, default=200, help="per client")
    parser.add_argument("--workers", type=int, help="server processes (default: weiflow center serve's)")
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
