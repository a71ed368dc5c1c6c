"""Control center under event load and slow clients: ingestion throughput, and whether reads stay fast.

Starts ``weiflow center serve`` (one worker per CPU, at most 4) on 127.0.0.1 over a fresh database
and, with an owner's token:

1. posts ``--batches`` batches of 500 events (the runtime spool's batch size) one after another:
   events applied per second;
2. posts 8 such batches at once while a probe asks ``GET /api/v1/me`` every 50 ms: the probe's
   latencies (issue 11 measured this stalling for 15 s before ingestion was bounded per worker);
3. opens 20 connections that trickle an event body a byte at a time while the probe runs: its
   latencies, and whether each trickler got 408 once the body timeout passed;
4. 20 runs report at once, each its own stream of batches (as 20 spools would), while a reader
   lists runs (``GET /api/v1/runs``) every 50 ms: nothing lost (every event posted is ingested
   once, every module of every run stored) and the list's latencies (issue 15).

Targets: the probe's p99 under 100 ms and its worst under 1 s, in 2, 3 and 4, on SQLite and on
PostgreSQL (127.0.0.1:5432, database test, a schema of its own, dropped after).

    .venv/bin/python bench/bench_center_ingest.py [--batches 6] [--backends sqlite,postgres] [--quick]
        [--report docs/reliability.md]   (appends phase 4's figures to the fault matrix)
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import socket
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from bench_center import PG_URL, fresh_database, pct, serve  # noqa: E402
from report import put_section  # noqa: E402

from weiflow.center.db import make_sessionmaker  # noqa: E402
from weiflow.center.models import Role  # noqa: E402
from weiflow.center.repository import create_token, create_user  # noqa: E402
from weiflow.processes import stop_groups  # noqa: E402
from weiflow.tracking import Event, EventKind  # noqa: E402

BATCH = 500
BODY_TIMEOUT_S = 10.0  # weiflow center serve's default


def batch(pipeline: str, run: str) -> bytes:
    events = [Event(EventKind.RUN_STARTED, run, pipeline, detail={"owner": "bench"})]
    events += [
        Event(EventKind.MODULE_STARTED, run, pipeline, node=f"n{i // 50}", module=f"m{i}") for i in range(BATCH - 1)
    ]
    return ("[" + ",".join(e.to_json() for e in events) + "]").encode()


def post(base: str, token: str, body: bytes) -> tuple[int, dict[str, object]]:
    request = urllib.request.Request(f"{base}/api/v1/events", data=body, method="POST")
    request.add_header("Authorization", f"Bearer {token}")
    request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=300) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as exc:
        return exc.code, {}


class Probe:
    """``GET path`` (``/api/v1/me`` by default) every 50 ms in a thread, keeping each latency."""

    def __init__(self, base: str, token: str, path: str = "/api/v1/me") -> None:
        self.base, self.token, self.path = base, token, path
        self.latencies: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            request = urllib.request.Request(f"{self.base}{self.path}")
            request.add_header("Authorization", f"Bearer {self.token}")
            started = time.perf_counter()
            with urllib.request.urlopen(request, timeout=60) as answer:
                answer.read()
            self.latencies.append((time.perf_counter() - started) * 1000)
            self._stop.wait(0.05)

    def __enter__(self) -> Probe:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def summary(self) -> str:
        ms = self.latencies
        return f"p50 {pct(ms, 0.5):.1f} ms, p99 {pct(ms, 0.99):.1f} ms, max {max(ms):.1f} ms over {len(ms)} probes"


def bench(backend: str, args: argparse.Namespace) -> list[str]:
    with (
        tempfile.TemporaryDirectory(prefix="weiflow-bench-ingest-") as tmp,
        fresh_database(backend, tmp, args.postgres_url, "bench_center_ingest") as database,
    ):
        if database is None:
            return [f"{backend}: skipped (no server)"]
        url, schema, engine = database
        with make_sessionmaker(engine)() as session:
            create_user(session, "bench", Role.OWNER)
            token = create_token(session, "bench")
        process, base = serve(url, schema, args.workers)
        try:
            verdicts = measure(backend, base, token, args)
            return verdicts + concurrent_runs(backend, base, token, make_sessionmaker(engine), args)
        finally:
            stop_groups([process], 10)


RUNS, RUN_BATCHES, RUN_BATCH = 20, 5, 100


def run_batches(run: str) -> list[bytes]:
    """One run's events as its spool would post them: RUN_BATCHES batches of RUN_BATCH, a module per event."""
    bodies = []
    for b in range(RUN_BATCHES):
        events = [Event(EventKind.RUN_STARTED, run, "bench", detail={"owner": "bench"})] if b == 0 else []
        events += [
            Event(EventKind.MODULE_STARTED, run, "bench", node=f"n{b}", module=f"m{b}_{i}")
            for i in range(RUN_BATCH - len(events))
        ]
        bodies.append(("[" + ",".join(e.to_json() for e in events) + "]").encode())
    return bodies


def concurrent_runs(backend: str, base: str, token: str, sessions: Any, args: argparse.Namespace) -> list[str]:
    """Phase 4: RUNS runs report at once while the run list is read; then count what was stored."""
    from sqlalchemy import func, select

    from weiflow.center.models import IngestedEvent, ModuleRun, NodeRun, Run

    failures: list[str] = []

    def report(run: str) -> None:
        for body in run_batches(run):
            status, answer = post(base, token, body)
            if status != 200 or answer.get("applied") != RUN_BATCH:
                failures.append(f"{run}: {status} {answer}")

    names = [f"conc{i:02d}" for i in range(RUNS)]
    with Probe(base, token, "/api/v1/runs?limit=50") as lists:
        reporters = [threading.Thread(target=report, args=(name,)) for name in names]
        for reporter in reporters:
            reporter.start()
        for reporter in reporters:
            reporter.join()
    with sessions() as session:
        stored_runs = session.scalar(select(func.count()).select_from(Run).where(Run.run_id.in_(names)))
        modules = session.scalar(
            select(func.count())
            .select_from(ModuleRun)
            .join(NodeRun, ModuleRun.node_run_id == NodeRun.id)
            .join(Run, NodeRun.run_pk == Run.id)
            .where(Run.run_id.in_(names))
        )
        events = session.scalar(select(func.count()).select_from(IngestedEvent))
    posted = RUNS * RUN_BATCHES * RUN_BATCH
    expected_modules = RUNS * (RUN_BATCHES * RUN_BATCH - 1)  # the first batch holds the run.started
    lost = failures or stored_runs != RUNS or modules != expected_modules
    print(
        f"[{backend}] {RUNS} runs at once, {posted:,} events: {stored_runs} runs and {modules:,} modules stored "
        f"(of {expected_modules:,}), {events:,} events ingested in all; GET /api/v1/runs {lists.summary()}",
        flush=True,
    )
    p99, worst = pct(lists.latencies, 0.99), max(lists.latencies)
    ok = not lost and p99 < args.target_p99_ms and worst < args.target_max_ms
    return [
        f"{backend}: {RUNS} runs reporting at once ({posted:,} events): "
        f"{'nothing lost' if not lost else 'LOST: ' + '; '.join(failures[:3])}; "
        f"GET /api/v1/runs p99 {p99:.1f} ms, max {worst:.0f} ms "
        f"(target < {args.target_p99_ms:g} ms, < {args.target_max_ms:g} ms) {'OK' if ok else 'MISSED'}"
    ]


def measure(backend: str, base: str, token: str, args: argparse.Namespace) -> list[str]:
    bodies = [batch("bench", f"seq{i}") for i in range(args.batches)]
    started = time.perf_counter()
    for body in bodies:
        status, answer = post(base, token, body)
        if status != 200 or answer.get("applied") != BATCH:
            raise SystemExit(f"bench_center_ingest: a batch got {status} {answer}")
    rate = args.batches * BATCH / (time.perf_counter() - started)
    print(f"[{backend}] {args.batches} batches of {BATCH} events, one after another: {rate:,.0f} events/s", flush=True)

    statuses: list[int] = []
    together = [batch("bench", f"par{i}") for i in range(8)]
    with Probe(base, token) as under_ingest:
        posters = [threading.Thread(target=lambda b=b: statuses.append(post(base, token, b)[0])) for b in together]
        for poster in posters:
            poster.start()
        for poster in posters:
            poster.join()
    print(
        f"[{backend}] 8 batches at once (answers {sorted(statuses)}): /api/v1/me {under_ingest.summary()}", flush=True
    )

    host, port = base.removeprefix("http://").split(":")
    head = (
        f"POST /api/v1/events HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n"
        "Content-Type: application/json\r\nContent-Length: 100000\r\n\r\n["
    ).encode()
    slow = [socket.create_connection((host, int(port))) for _ in range(20)]
    for client in slow:
        client.sendall(head)
    with Probe(base, token) as under_slow:
        deadline = time.monotonic() + BODY_TIMEOUT_S + 1
        while time.monotonic() < deadline:
            for client in slow:
                with contextlib.suppress(OSError):
                    client.send(b" ")
            time.sleep(0.25)
    timed_out = 0
    for client in slow:
        client.settimeout(5)
        with contextlib.suppress(OSError):
            timed_out += client.recv(20).startswith(b"HTTP/1.1 408")
        client.close()
    print(f"[{backend}] 20 trickling clients ({timed_out} answered 408): /api/v1/me {under_slow.summary()}", flush=True)

    verdicts = []
    for label, probe in (("under 8 concurrent batches", under_ingest), ("beside 20 slow clients", under_slow)):
        p99, worst = pct(probe.latencies, 0.99), max(probe.latencies)
        ok = p99 < args.target_p99_ms and worst < args.target_max_ms
        verdicts.append(
            f"{backend}: /api/v1/me {label}: p99 {p99:.1f} ms, max {worst:.0f} ms "
            f"(target < {args.target_p99_ms:g} ms, < {args.target_max_ms:g} ms) {'OK' if ok else 'MISSED'}"
        )
    verdicts.append(f"{backend}: ingestion {rate:,.0f} events/s (figure, no target)")
    return verdicts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batches", type=int, default=6, help="batches of 500 posted one after another")
    parser.add_argument("--workers", type=int, help="server processes (default: weiflow center serve's)")
    parser.add_argument("--backends", default="sqlite,postgres")
    parser.add_argument("--postgres-url", default=os.environ.get("WEIFLOW_TEST_POSTGRES_URL", PG_URL))
    parser.add_argument("--target-p99-ms", type=float, default=100.0)
    parser.add_argument("--target-max-ms", type=float, default=1000.0)
    parser.add_argument("--quick", action="store_true", help="2 sequential batches")
    parser.add_argument("--report", type=Path, help="append the concurrent runs' figures to this markdown file")
    args, unknown = parser.parse_known_args()
    if unknown:
        print(f"bench_center_ingest: ignoring options for other benches: {' '.join(unknown)}", file=sys.stderr)
    if args.quick:
        args.batches = 2
    verdicts: list[str] = []
    for backend in [b.strip() for b in args.backends.split(",") if b.strip()]:
        if backend not in ("sqlite", "postgres"):
            raise SystemExit(f"bench_center_ingest: unknown backend '{backend}' (sqlite, postgres)")
        verdicts += bench(backend, args)
    load_avg = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"load average {load_avg}; {os.cpu_count()} CPUs")
    for line in verdicts:
        print(line)
    if args.report:
        lines = [line for line in verdicts if "runs reporting at once" in line]
        put_section(
            args.report,
            "Load: 20 runs reporting to the center at once (bench/bench_center_ingest.py)",
            "".join(f"- {line}\n" for line in lines) + f"- load average {load_avg}; {os.cpu_count()} CPUs",
        )
    if any(line.endswith("MISSED") for line in verdicts):
        sys.exit(1)


if __name__ == "__main__":
    main()
