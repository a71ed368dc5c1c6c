"""The prediction service under load: ``:score`` latency and throughput, batching on and off, against a naive server.

A wide & deep model of the example pipeline's shape (tests/engines/tensorflow/samples.py: age,
city, their cross, a hashed user id, a normalized click-through rate) is trained briefly and
exported by the TensorFlow engine itself, then published into a model repository. Three servers
take turns on 127.0.0.1, each loaded from another process by the same load generator (asyncio,
raw HTTP/1.1 keep-alive connections, one instance of raw features per request):

- ``weiflow serve`` with batching on (``--enable_batching`` and the parameters below);
- ``weiflow serve`` with batching off;
- what a team would otherwise write: a FastAPI endpoint that maps the row with the same feature
  map (OnlineFeatures) and calls the SavedModel's signature per request.

Figures: a single client, serial (p50, p99 of ``:score``), and 32 concurrent clients (requests/s,
p99). Targets (issue 13): serial p50 < 3 ms and p99 < 10 ms; 32 clients, batching on >= 3x off;
and >= 3x the naive server's throughput at no worse p99. Last, a new version published at 100%
while 8 clients score: no failed request, and the server's peak memory (VmHWM) during the swap
under 2.5x its memory with one version loaded.

    .venv/bin/python bench/bench_serving.py [--seconds 10] [--clients 32] [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # the synthetic samples live with the tests that also use them
sys.path.insert(0, str(REPO / "bench"))

ROW = {"age": 31.5, "city": "city7", "uid": 1234, "hist_ctr": 0.12}
BATCHING = """
max_batch_size { value: 64 }
batch_timeout_micros { value: 0 }
num_batch_threads { value: 1 }
max_enqueued_batches { value: 1000 }
"""

NAIVE_SERVER = """
import os
import numpy as np
import tensorflow as tf
from fastapi import FastAPI, Request
from weiflow.features.featuremap import FeatureMap
from weiflow.features.online import OnlineFeatures

model_dir = os.environ["NAIVE_MODEL_DIR"]
loaded = tf.saved_model.load(model_dir)
signature = loaded.signatures["serving_default"]
inputs = signature.structured_input_signature[1]
online = OnlineFeatures(FeatureMap.from_json(open(model_dir + "/assets.extra/featuremap.json").read()))
app = FastAPI()


@app.post("/v1/models/ctr:score")
def score(body: dict) -> dict:
    rows = body["instances"]
    mapped = online.transform_columns({s: [row.get(s) for row in rows] for s in online.sources})
    feed = {name: tf.constant(np.asarray(mapped[name]), dtype=spec.dtype) for name, spec in inputs.items()}
    probability = signature(**feed)["probability"].numpy().reshape(-1)
    return {"scores": probability.tolist(), "model_version": "1"}
"""


# -- the load generator (run as a separate process: python bench_serving.py --client ...) ---------------


async def _client(address: tuple[str, int], request: bytes, deadline: float, limit: int, out: list[float]) -> int:
    reader, writer = await asyncio.open_connection(*address)
    failures = 0
    try:
        while time.perf_counter() < deadline and len(out) < limit:
            started = time.perf_counter()
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":", 1)[1])
            await reader.readexactly(length)
            if not head.startswith(b"HTTP/1.1 200"):
                failures += 1
            out.append(time.perf_counter() - started)
    finally:
        writer.close()
    return failures


async def _load(url: str, path: str, clients: int, seconds: float, limit: int) -> dict[str, Any]:
    host, port = url.removeprefix("http://").split(":")
    body = json.dumps({"instances": [ROW]}).encode()
    request = (
        f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    latencies: list[float] = []
    started = time.perf_counter()
    deadline = started + seconds
    failures = await asyncio.gather(
        *(_client((host, int(port)), request, deadline, limit, latencies) for _ in range(clients))
    )
    elapsed = time.perf_counter() - started
    latencies.sort()
    return {
        "requests": len(latencies),
        "failures": sum(failures),
        "per_s": len(latencies) / elapsed,
        "p50_ms": 1000 * latencies[len(latencies) // 2],
        "p99_ms": 1000 * latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))],
    }


def load(url: str, path: str, *, clients: int, seconds: float, limit: int = 10**9) -> dict[str, Any]:
    """Run the load generator in its own process (the server's CPU is not the client's)."""
    argv = [sys.executable, __file__, "--client", url, path, str(clients), str(seconds), str(limit)]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 120, check=True)
    result: dict[str, Any] = json.loads(done.stdout)
    return result


# -- the model and the servers ---------------------------------------------------------------------------


def prepare_model(work: Path, rows: int, steps: int) -> Path:
    """Train a wide & deep model briefly and export it with the TensorFlow engine; publish it as version 1."""
    from wide_deep import TF_ENV, TRAINER, train

    from tests.engines.tensorflow.samples import write_samples
    from tests.modelrepo.conftest import manifest_for
    from weiflow.modelrepo import FEATURE_MAP_PATH, FileRepository, update_routing

    samples_dir = write_samples(work / "samples", rows, files=2)
    job_file, _result = train(work, samples_dir, ps=0, workers=1, steps=steps, every=steps, cache_dir=work / "cache")
    export = work / "export"
    subprocess.run([*TRAINER, "export", str(job_file), str(export)], check=True, env={**os.environ, **TF_ENV})
    (export / FEATURE_MAP_PATH).parent.mkdir(exist_ok=True)
    shutil.copy(samples_dir / "_featuremap.json", export / FEATURE_MAP_PATH)
    repository = FileRepository(str(work / "models"))
    version = repository.add_version("ctr", export, manifest_for(export))
    update_routing(repository, "ctr", lambda r, v: r.publish(version, 100, existing=v, who="bench"))
    return work / "models"


@contextlib.contextmanager
def server(argv: list[str], port: int, log: Path, ready_path: str, **env: str) -> Iterator[str]:
    """The server on 127.0.0.1:``port`` once ``ready_path`` answers anything but a 5xx (FastAPI has no ready URL)."""
    from weiflow.processes import ServerNotReady, running_server

    url = f"http://127.0.0.1:{port}"
    try:
        with running_server(
            argv,
            ready_url=url + ready_path,
            log=log,
            timeout_s=180,
            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", **env},
            accept=lambda status: status < 500,
        ):
            yield url
    except ServerNotReady as exc:
        raise SystemExit(str(exc)) from exc


def _memory_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise LookupError(field)


def reload_under_load(models: Path, work: Path, seconds: float) -> dict[str, Any]:
    """A new version published at 100% while 8 clients score: failed requests, and peak memory over one version's.

    The peak is the server process's VmHWM, reset (``/proc/PID/clear_refs``) just before the publish.
    """
    import httpx

    from tests.modelrepo.conftest import manifest_for
    from weiflow.modelrepo import FileRepository, update_routing
    from weiflow.processes import free_port

    port = free_port()
    argv = [sys.executable, "-m", "weiflow", "serve", f"--repository={models}", "--file_system_poll_wait_seconds=1"]
    with server([*argv, f"--rest_api_port={port}"], port, work / "reload.log", "/v2/health/ready") as url:
        pid = int(subprocess.check_output(["pgrep", "-f", f"rest_api_port={port}"]).split()[0])
        load(url, "/v1/models/ctr:score", clients=4, seconds=2)
        one_version = _memory_kib(pid, "VmRSS")
        Path(f"/proc/{pid}/clear_refs").write_text("5")  # the peak (VmHWM) starts again from now
        argv = [sys.executable, __file__, "--client", url, "/v1/models/ctr:score", "8", str(seconds + 10), str(10**9)]
        clients = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
        time.sleep(2)
        repository = FileRepository(str(models))
        source = models / "ctr" / "1"
        version = repository.add_version("ctr", source, manifest_for(source))
        update_routing(repository, "ctr", lambda r, v: r.publish(version, 100, existing=v, who="bench"))
        deadline = time.monotonic() + 120
        while True:
            states = {
                s["version"]: s["state"] for s in httpx.get(f"{url}/v1/models/ctr").json()["model_version_status"]
            }
            if states.get(str(version)) == "AVAILABLE" and states.get("1") == "END":
                break
            if time.monotonic() > deadline:
                raise SystemExit(f"the new version did not take over: {states}")
            time.sleep(0.2)
        peak = _memory_kib(pid, "VmHWM")
        out, _ = clients.communicate(timeout=seconds + 120)
        result: dict[str, Any] = json.loads(out)
    return {**result, "one_version_mib": one_version / 1024, "peak_mib": peak / 1024, "ratio": peak / one_version}


def measure(url: str, path: str, clients: int, seconds: float, serial_requests: int) -> dict[str, Any]:
    load(url, path, clients=4, seconds=2)  # warm-up: connections, first batches, TensorFlow's lazy init
    serial = load(url, path, clients=1, seconds=seconds, limit=serial_requests)
    concurrent = load(url, path, clients=clients, seconds=seconds)
    return {"serial": serial, "concurrent": concurrent}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="per measurement")
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--quick", action="store_true", help="short runs: checks the script works")
    args, unknown = parser.parse_known_args()
    if unknown:
        print(f"bench_serving: ignoring options for other benches: {' '.join(unknown)}", file=sys.stderr)
    seconds, serial_requests, rows, steps = (2.0, 300, 5_000, 50) if args.quick else (args.seconds, 2000, 50_000, 300)
    from weiflow.processes import free_port

    with tempfile.TemporaryDirectory(prefix="weiflow-bench-serving-") as tmp:
        work = Path(tmp)
        print(f"training a wide & deep model ({steps} steps on {rows:,} rows) and exporting it ...", flush=True)
        models = prepare_model(work, rows, steps)
        (work / "batching.txt").write_text(BATCHING)
        path = "/v1/models/ctr:score"
        serve = [sys.executable, "-m", "weiflow", "serve", f"--repository={models}"]
        variants = {
            "weiflow serve, batching on": [
                *serve,
                "--enable_batching",
                f"--batching_parameters_file={work / 'batching.txt'}",
            ],
            "weiflow serve, batching off": serve,
        }
        results: dict[str, dict[str, Any]] = {}
        for name, argv in variants.items():
            port = free_port()
            with server([*argv, f"--rest_api_port={port}"], port, work / "serve.log", "/v2/health/ready") as url:
                results[name] = measure(url, path, args.clients, seconds, serial_requests)
        (work / "naive.py").write_text(NAIVE_SERVER)
        port = free_port()
        naive = [sys.executable, "-m", "uvicorn", "--app-dir", str(work), "naive:app", "--port", str(port)]
        with server(
            [*naive, "--log-level", "warning"],
            port,
            work / "naive.log",
            "/docs",
            NAIVE_MODEL_DIR=str(models / "ctr" / "1"),
        ) as url:
            results["FastAPI, signature per request"] = measure(url, path, args.clients, seconds, serial_requests)
        reload = reload_under_load(models, work, seconds)

    print(
        f"\n:score, one instance per request; {args.clients} clients for {seconds:g} s; load {os.getloadavg()[0]:.2f}"
    )
    print(f"{'server':34s} {'serial p50':>11s} {'serial p99':>11s} {'32 clients/s':>13s} {'p99':>9s} {'failed':>7s}")
    for name, r in results.items():
        s, c = r["serial"], r["concurrent"]
        print(
            f"{name:34s} {s['p50_ms']:>9.2f}ms {s['p99_ms']:>9.2f}ms {c['per_s']:>13,.0f} {c['p99_ms']:>7.1f}ms "
            f"{s['failures'] + c['failures']:>7d}"
        )
    on = results["weiflow serve, batching on"]
    off = results["weiflow serve, batching off"]
    naive_r = results["FastAPI, signature per request"]
    checks = [
        ("serial p50 < 3 ms", on["serial"]["p50_ms"] < 3.0),
        ("serial p99 < 10 ms", on["serial"]["p99_ms"] < 10.0),
        ("batching on >= 3x off", on["concurrent"]["per_s"] >= 3 * off["concurrent"]["per_s"]),
        ("on >= 3x naive throughput", on["concurrent"]["per_s"] >= 3 * naive_r["concurrent"]["per_s"]),
        ("on p99 <= naive p99", on["concurrent"]["p99_ms"] <= naive_r["concurrent"]["p99_ms"]),
        ("reload: no failed request", reload["failures"] == 0),
        ("reload: peak < 2.5x one version", reload["ratio"] < 2.5),
    ]
    print(
        f"hot reload under 8 clients: {reload['requests']:,} requests, {reload['failures']} failed; memory with one "
        f"version {reload['one_version_mib']:.0f} MiB, peak during the swap {reload['peak_mib']:.0f} MiB "
        f"({reload['ratio']:.2f}x)"
    )
    for label, ok in checks:
        print(f"  {label:30s} {'OK' if ok else 'MISSED'}")
    print(f"bench_serving: {'OK' if all(ok for _, ok in checks) else 'MISSED'}")


if __name__ == "__main__":
    if sys.argv[1:2] == ["--client"]:
        url, path, clients, seconds, limit = sys.argv[2:7]
        print(json.dumps(asyncio.run(_load(url, path, int(clients), float(seconds), int(limit)))))
    else:
        main()
