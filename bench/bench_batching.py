"""The prediction service's dynamic batcher: single-row submits per second, batching on and off.

Closed-loop clients (each thread submits one row and waits for its answer, as an HTTP client
does) at 1, 8 and 32 threads, against a trivial ``run`` (the batcher's own overhead) and a
``run`` that sleeps 1 ms per batch (a model whose cost is per call, as TensorFlow's is); each
with batching (max_batch_size 128, batch_timeout_micros 0) and with batching disabled
(max_batch_size 1), side by side. Both use 2 batch threads.

- **Target:** more than 20,000 single-row submits/s through the trivial ``run`` with 32 clients.

    .venv/bin/python bench/bench_batching.py [--seconds 1.0] [--quick]
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time
from collections.abc import Callable

import numpy as np

from weiflow.serving.batching import Batcher, BatchStats
from weiflow.serving.config import BatchingParameters

Arrays = dict[str, np.ndarray]
CLIENTS = (1, 8, 32)
TARGET_SUBMITS_PER_S = 20_000


def trivial_run(inputs: Arrays) -> Arrays:
    return {"score": inputs["x"].sum(axis=1)}


def sleepy_run(inputs: Arrays) -> Arrays:
    time.sleep(0.001)  # a fixed cost per call, whatever the batch size
    return {"score": inputs["x"].sum(axis=1)}


def measure(run: Callable[[Arrays], Arrays], max_batch_size: int, clients: int, seconds: float) -> tuple[float, float]:
    """Submits per second and mean batch size for ``clients`` closed-loop threads."""
    batch_sizes: list[int] = []

    def record(stats: BatchStats) -> None:
        batch_sizes.append(stats.size)  # list.append is atomic under the GIL

    params = BatchingParameters(max_batch_size=max_batch_size, max_enqueued_batches=10_000, num_batch_threads=2)
    batcher = Batcher(run, params, name="bench", on_batch=record)
    row = {"x": np.ones((1, 16), np.float32)}
    answered = [0] * clients
    start = threading.Barrier(clients + 1)
    stop_at = 0.0

    def client(index: int) -> None:
        start.wait()
        count = 0
        while time.monotonic() < stop_at:
            batcher.submit(row).result()
            count += 1
        answered[index] = count

    threads = [threading.Thread(target=client, args=(index,)) for index in range(clients)]
    for thread in threads:
        thread.start()
    stop_at = time.monotonic() + seconds
    began = time.monotonic()
    start.wait()
    for thread in threads:
        thread.join()
    elapsed = time.monotonic() - began
    batcher.close()
    return sum(answered) / elapsed, sum(batch_sizes) / max(len(batch_sizes), 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=1.0, help="per measurement (12 of them)")
    parser.add_argument("--quick", action="store_true", help="0.2 s per measurement: checks the script runs")
    args, unknown = parser.parse_known_args()
    if unknown:
        print(f"bench_batching: ignoring options for other benches: {' '.join(unknown)}", file=sys.stderr)
    seconds = 0.2 if args.quick else args.seconds

    print(f"load average {os.getloadavg()[0]:.2f}, {os.cpu_count()} CPUs, {seconds:g} s per measurement")
    print(f"{'run':<14}{'clients':>8}{'batched/s':>12}{'mean batch':>12}{'unbatched/s':>13}{'speed-up':>10}")
    trivial_at_most_clients = 0.0
    for label, run in (("trivial", trivial_run), ("sleep 1 ms", sleepy_run)):
        for clients in CLIENTS:
            batched, mean_batch = measure(run, 128, clients, seconds)
            unbatched, _ = measure(run, 1, clients, seconds)
            print(
                f"{label:<14}{clients:>8}{batched:>12,.0f}{mean_batch:>12.1f}{unbatched:>13,.0f}"
                f"{batched / unbatched:>9.1f}x"
            )
            if run is trivial_run and clients == CLIENTS[-1]:
                trivial_at_most_clients = batched
    verdict = "OK" if trivial_at_most_clients > TARGET_SUBMITS_PER_S else "MISSED"
    print(
        f"bench_batching: {trivial_at_most_clients:,.0f} single-row submits/s through a trivial run with "
        f"{CLIENTS[-1]} clients (target > {TARGET_SUBMITS_PER_S:,}) {verdict}"
    )


if __name__ == "__main__":
    main()
