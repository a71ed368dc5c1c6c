"""The prediction service's dynamic batcher: TensorFlow Serving's batching semantics.

Timing never decides a test: a run that blocks behind a gate holds the batch threads busy so a
test can queue exactly the requests it wants, then asserts which batches ran (counts, order,
contents). Timeouts below are only upper bounds for a test that would otherwise hang.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import Future
from typing import Any

import numpy as np
import pytest

from weiflow.serving.batching import Batcher, BatcherClosed, BatchStats, BatchTooLarge, QueueFull
from weiflow.serving.config import BatchingParameters

WAIT_S = 10.0  # a bound for a result that is already due, never a measured duration
NEVER_MICROS = 600_000_000  # a batch timeout no test waits out

Arrays = dict[str, np.ndarray]


def rows(count: int, start: float = 0.0, width: int = 3) -> Arrays:
    """``count`` rows of distinct values, so a row out of place shows."""
    return {"x": (start + np.arange(count * width, dtype=np.float32)).reshape(count, width)}


def model(inputs: Mapping[str, np.ndarray]) -> Arrays:
    """A row-wise model with two outputs of different shapes and dtypes."""
    x = inputs["x"]
    return {"y": x * 2.0 + 1.0, "total": x.sum(axis=1).astype(np.float64)}


class GatedModel:
    """``model`` behind a gate: every call waits until the test opens it, and is recorded."""

    def __init__(self, compute: Callable[[Mapping[str, np.ndarray]], Mapping[str, Any]] = model) -> None:
        self.compute = compute
        self.gate = threading.Event()
        self.calls: list[Arrays] = []
        self._started = threading.Condition()

    def __call__(self, inputs: Arrays) -> Mapping[str, Any]:
        with self._started:
            self.calls.append({name: value.copy() for name, value in inputs.items()})
            self._started.notify_all()
        assert self.gate.wait(WAIT_S), "the test never opened the gate"
        return self.compute(inputs)

    def wait_started(self, calls: int) -> None:
        """Until ``calls`` calls have started (their threads are now busy)."""
        with self._started:
            assert self._started.wait_for(lambda: len(self.calls) >= calls, WAIT_S), self.calls

    def sizes(self) -> list[int]:
        return [len(next(iter(call.values()))) for call in self.calls]


@pytest.fixture
def batchers() -> Iterator[Callable[..., Batcher]]:
    """Builds batchers and closes every one after the test, so no thread outlives it."""
    made: list[Batcher] = []

    def make(
        run: Callable[[Arrays], Mapping[str, Any]],
        on_batch: Callable[[BatchStats], None] | None = None,
        **params: Any,
    ) -> Batcher:
        params.setdefault("num_batch_threads", 1)
        batcher = Batcher(run, BatchingParameters(**params), name="test", on_batch=on_batch)
        made.append(batcher)
        return batcher

    yield make
    for batcher in made:
        batcher.close(drain=False, timeout=WAIT_S)


def assert_model_result(future: Future[Arrays], inputs: Arrays) -> None:
    expected = model(inputs)
    result = future.result(WAIT_S)
    assert sorted(result) == sorted(expected)
    for name, value in expected.items():
        assert result[name].dtype == value.dtype
        np.testing.assert_array_equal(result[name], value)


# ---------------------------------------------------------------------------------------------
# Merging and splitting
# ---------------------------------------------------------------------------------------------


def test_concurrent_requests_get_exactly_their_own_rows(batchers: Callable[..., Batcher]) -> None:
    stats: list[BatchStats] = []
    batcher = batchers(model, stats.append, max_batch_size=8, num_batch_threads=2, max_enqueued_batches=10_000)
    submitted: list[tuple[Future[Arrays], Arrays]] = []
    lock = threading.Lock()

    def client(seed: int) -> None:
        generator = np.random.default_rng(seed)
        for _ in range(100):
            inputs = {"x": generator.normal(size=(int(generator.integers(1, 5)), 3)).astype(np.float32)}
            future = batcher.submit(inputs)
            with lock:
                submitted.append((future, inputs))

    clients = [threading.Thread(target=client, args=(seed,)) for seed in range(16)]
    for thread in clients:
        thread.start()
    for thread in clients:
        thread.join()
    for future, inputs in submitted:
        assert_model_result(future, inputs)
    batcher.close()
    assert sum(batch.size for batch in stats) == sum(len(inputs["x"]) for _, inputs in submitted)
    assert all(1 <= batch.size == batch.padded_size <= 8 for batch in stats)


def test_requests_queued_behind_a_busy_thread_run_as_one_batch(batchers: Callable[..., Batcher]) -> None:
    run = GatedModel()
    batcher = batchers(run, max_batch_size=10)  # batch_timeout_micros 0: run when a thread is free
    first = batcher.submit(rows(1))
    run.wait_started(1)
    queued = [(batcher.submit(inputs), inputs) for inputs in (rows(2, 10), rows(1, 20), rows(3, 30))]
    assert batcher.queued_rows == 6
    run.gate.set()
    assert_model_result(first, rows(1))
    for future, inputs in queued:
        assert_model_result(future, inputs)
    assert run.sizes() == [1, 6]
    np.testing.assert_array_equal(run.calls[1]["x"], np.concatenate([inputs["x"] for _, inputs in queued]))
    assert batcher.queued_rows == 0


def test_a_full_batch_runs_without_waiting_for_its_timeout(batchers: Callable[..., Batcher]) -> None:
    batcher = batchers(model, max_batch_size=4, batch_timeout_micros=NEVER_MICROS)
    futures = [(batcher.submit(inputs), inputs) for inputs in (rows(1), rows(2, 5), rows(1, 9))]
    for future, inputs in futures:
        assert_model_result(future, inputs)


def test_a_request_that_does_not_fit_closes_the_batch(batchers: Callable[..., Batcher]) -> None:
    run = GatedModel()
    run.gate.set()
    batcher = batchers(run, max_batch_size=4, batch_timeout_micros=NEVER_MICROS)
    three = batcher.submit(rows(3))
    two = batcher.submit(rows(2, 50))  # 3 + 2 > 4: the first batch closes and runs now
    assert_model_result(three, rows(3))
    assert not two.done()  # its batch waits for more rows (or its timeout)
    batcher.close(drain=True, timeout=WAIT_S)
    assert_model_result(two, rows(2, 50))
    assert run.sizes() == [3, 2]


def test_a_batch_runs_when_its_first_request_has_waited_the_timeout(batchers: Callable[..., Batcher]) -> None:
    stats: list[BatchStats] = []
    batcher = batchers(model, stats.append, max_batch_size=100, batch_timeout_micros=20_000)
    futures = [(batcher.submit(inputs), inputs) for inputs in (rows(1), rows(2, 7))]
    for future, inputs in futures:
        assert_model_result(future, inputs)
    # Whether the second request still caught the first's batch depends on the scheduler; that
    # no batch started before its first request had waited the timeout does not.
    assert sum(batch.size for batch in stats) == 3
    assert all(batch.queue_s >= 0.0199 for batch in stats)


def test_batch_threads_run_batches_in_parallel(batchers: Callable[..., Batcher]) -> None:
    both_running = threading.Barrier(3)

    def run(inputs: Arrays) -> Arrays:
        both_running.wait(WAIT_S)  # breaks (and fails the test) unless two batches run at once
        return model(inputs)

    batcher = batchers(run, max_batch_size=1, num_batch_threads=2)
    futures = [(batcher.submit(inputs), inputs) for inputs in (rows(1), rows(1, 3))]
    both_running.wait(WAIT_S)
    for future, inputs in futures:
        assert_model_result(future, inputs)


def test_incompatible_requests_are_never_merged(batchers: Callable[..., Batcher]) -> None:
    run = GatedModel(lambda inputs: {"n": np.zeros(len(inputs["x"]))})
    batcher = batchers(run, max_batch_size=10)
    batcher.submit(rows(1))
    run.wait_started(1)
    kinds: list[Arrays] = [
        {"x": np.ones((1, 3), np.float32)},
        {"x": np.ones((2, 4), np.float32)},  # another trailing shape
        {"x": np.ones((1, 3), np.float64)},  # another dtype
        {"x": np.ones((1, 3), np.float32), "w": np.ones((1,), np.int64)},  # another input set
        {"x": np.ones((1, 3, 1), np.float32)},  # another rank
        {"x": np.full((2, 3), 5, np.float32)},  # batchable with the first
    ]
    futures = [batcher.submit(inputs) for inputs in kinds]
    run.gate.set()
    for future, inputs in zip(futures, kinds, strict=True):
        assert len(future.result(WAIT_S)["n"]) == len(inputs["x"])
    batches = run.calls[1:]

    def signature(inputs: Arrays) -> frozenset[tuple[str, np.dtype[Any], tuple[int, ...]]]:
        return frozenset((name, value.dtype, value.shape[1:]) for name, value in inputs.items())

    # Five kinds, five batches, each of one kind: only the two alike requests shared one.
    assert len({signature(inputs) for inputs in kinds}) == 5
    assert {signature(batch) for batch in batches} == {signature(inputs) for inputs in kinds}
    assert len(batches) == 5
    assert sorted(len(batch["x"]) for batch in batches) == [1, 1, 1, 2, 3]


# ---------------------------------------------------------------------------------------------
# allowed_batch_sizes
# ---------------------------------------------------------------------------------------------


def test_batches_are_padded_to_an_allowed_size_and_unpadded(batchers: Callable[..., Batcher]) -> None:
    stats: list[BatchStats] = []
    run = GatedModel()
    batcher = batchers(run, stats.append, max_batch_size=8, allowed_batch_sizes=(2, 4, 8))
    first = batcher.submit(rows(1))
    run.wait_started(1)
    queued = [(batcher.submit(inputs), inputs) for inputs in (rows(2, 10), rows(1, 20))]
    run.gate.set()
    assert_model_result(first, rows(1))
    for future, inputs in queued:
        assert_model_result(future, inputs)
    large = rows(5, 40)
    assert_model_result(batcher.submit(large), large)

    assert run.sizes() == [2, 4, 8]
    # Padding repeats the batch's last row.
    np.testing.assert_array_equal(run.calls[0]["x"], np.repeat(rows(1)["x"], 2, axis=0))
    np.testing.assert_array_equal(run.calls[1]["x"][3], rows(1, 20)["x"][0])
    np.testing.assert_array_equal(run.calls[2]["x"][5:], np.repeat(large["x"][-1:], 3, axis=0))
    assert [(batch.size, batch.padded_size) for batch in stats] == [(1, 2), (3, 4), (5, 8)]


# ---------------------------------------------------------------------------------------------
# Refusals
# ---------------------------------------------------------------------------------------------


def test_a_full_queue_refuses_at_once(batchers: Callable[..., Batcher]) -> None:
    run = GatedModel()
    batcher = batchers(run, max_batch_size=2, max_enqueued_batches=2)
    running = batcher.submit(rows(1))
    run.wait_started(1)  # the running batch no longer counts as enqueued
    queued = [(batcher.submit(inputs), inputs) for inputs in (rows(2), rows(1, 5), rows(1, 7))]
    assert batcher.queued_rows == 4
    with pytest.raises(QueueFull, match="queue is full"):
        batcher.submit(rows(1, 9))
    assert batcher.queued_rows == 4
    run.gate.set()
    assert_model_result(running, rows(1))
    for future, inputs in queued:
        assert_model_result(future, inputs)
    assert_model_result(batcher.submit(rows(1, 9)), rows(1, 9))  # room again


def test_a_request_still_fits_the_filling_batch_of_a_full_queue(batchers: Callable[..., Batcher]) -> None:
    run = GatedModel()
    batcher = batchers(run, max_batch_size=3, max_enqueued_batches=1)
    batcher.submit(rows(1))
    run.wait_started(1)
    batcher.submit(rows(1))
    batcher.submit(rows(2))  # joins the one enqueued batch
    with pytest.raises(QueueFull):
        batcher.submit(rows(1))  # would need a second
    run.gate.set()


def test_a_request_larger_than_max_batch_size_is_refused(batchers: Callable[..., Batcher]) -> None:
    batcher = batchers(model, max_batch_size=4)
    with pytest.raises(BatchTooLarge, match="5 rows, more than max_batch_size 4"):
        batcher.submit(rows(5))
    assert batcher.queued_rows == 0
    assert_model_result(batcher.submit(rows(4)), rows(4))


@pytest.mark.parametrize(
    ("inputs", "error", "message"),
    [
        ({}, ValueError, "at least one input"),
        ({"x": np.ones((0, 3))}, ValueError, "at least one row"),
        ({"x": np.float32(1.0)}, TypeError, "not a numpy array"),
        ({"x": np.array(1.0)}, ValueError, "scalar"),
        ({"x": np.ones((2, 3)), "w": np.ones(3)}, ValueError, "'w' has 3, others 2"),
        ({"x": [[1.0]]}, TypeError, "'x' is a list"),
    ],
)
def test_malformed_requests_are_refused(
    batchers: Callable[..., Batcher], inputs: Any, error: type[Exception], message: str
) -> None:
    batcher = batchers(model)
    with pytest.raises(error, match=message):
        batcher.submit(inputs)


# ---------------------------------------------------------------------------------------------
# Failures stay within their batch
# ---------------------------------------------------------------------------------------------


def test_a_failing_batch_fails_only_the_requests_that_fail_alone(batchers: Callable[..., Batcher]) -> None:
    def fussy_model(inputs: Mapping[str, np.ndarray]) -> Arrays:
        if (inputs["x"] < 0).any():
            raise ArithmeticError("negative input")
        return model(inputs)

    run = GatedModel(fussy_model)
    batcher = batchers(run, max_batch_size=2)
    running = batcher.submit(rows(1))
    run.wait_started(1)
    good, bad = rows(1, 3), rows(1, -9)
    batched = [batcher.submit(good), batcher.submit(bad)]  # one full batch, which fails as a whole
    spared = [(batcher.submit(inputs), inputs) for inputs in (rows(1, 6), rows(1, 9))]  # the next
    run.gate.set()
    # Each request of the failed batch runs again alone: only the bad one fails, with its own error.
    with pytest.raises(ArithmeticError, match="negative input"):
        batched[1].result(WAIT_S)
    for future, inputs in [(running, rows(1)), (batched[0], good), *spared]:
        assert_model_result(future, inputs)
    assert_model_result(batcher.submit(good), good)  # the thread survived


@pytest.mark.parametrize(
    ("outputs", "found"),
    [
        ({"y": np.zeros(1)}, "'y' has 1 rows"),
        ({"y": np.float64(0.0)}, "'y' has a scalar"),
    ],
)
def test_outputs_without_a_row_per_input_row_fail_the_batch(
    batchers: Callable[..., Batcher], outputs: Arrays, found: str
) -> None:
    run = GatedModel(lambda inputs: outputs)
    batcher = batchers(run, max_batch_size=4)
    batcher.submit(rows(1))
    run.wait_started(1)
    futures = [batcher.submit(rows(2)), batcher.submit(rows(2))]  # one batch of 4 rows; then each alone
    run.gate.set()
    for future in futures:
        with pytest.raises(ValueError, match=f"{found}.*batch of 2 rows.*one row per input row"):
            future.result(WAIT_S)


def test_outputs_that_are_not_a_mapping_fail_the_batch(batchers: Callable[..., Batcher]) -> None:
    batcher = batchers(lambda inputs: inputs["x"], max_batch_size=4)
    with pytest.raises(TypeError, match="run returned a ndarray, not outputs by name"):
        batcher.submit(rows(1)).result(WAIT_S)


def test_a_failing_on_batch_is_logged_not_passed_on(
    batchers: Callable[..., Batcher], caplog: pytest.LogCaptureFixture
) -> None:
    def broken_metrics(stats: BatchStats) -> None:
        raise RuntimeError("metrics down")

    batcher = batchers(model, broken_metrics, max_batch_size=4)
    assert_model_result(batcher.submit(rows(2)), rows(2))
    batcher.close()
    assert "on_batch failed" in caplog.text
    assert "metrics down" in caplog.text


def test_a_request_cancelled_while_queued_is_left_out(batchers: Callable[..., Batcher]) -> None:
    run = GatedModel()
    batcher = batchers(run, max_batch_size=4)
    batcher.submit(rows(1))
    run.wait_started(1)
    cancelled = batcher.submit(rows(2, 100))
    kept = batcher.submit(rows(1, 5))
    assert cancelled.cancel()
    run.gate.set()
    assert_model_result(kept, rows(1, 5))
    assert run.sizes() == [1, 1]


# ---------------------------------------------------------------------------------------------
# Closing
# ---------------------------------------------------------------------------------------------


def test_close_with_drain_runs_queued_work_without_waiting_for_timeouts(batchers: Callable[..., Batcher]) -> None:
    batcher = batchers(model, max_batch_size=100, batch_timeout_micros=NEVER_MICROS, num_batch_threads=2)
    futures = [(batcher.submit(inputs), inputs) for inputs in (rows(1), rows(3, 4), rows(2, 8))]
    assert not any(future.done() for future, _ in futures)
    batcher.close(drain=True, timeout=WAIT_S)
    for future, inputs in futures:
        assert_model_result(future, inputs)
    with pytest.raises(BatcherClosed, match="closed"):
        batcher.submit(rows(1))


def test_close_without_drain_fails_queued_work_and_lets_running_batches_finish(
    batchers: Callable[..., Batcher],
) -> None:
    run = GatedModel()
    batcher = batchers(run, max_batch_size=2)
    running = batcher.submit(rows(1))
    run.wait_started(1)
    queued = [batcher.submit(rows(2)), batcher.submit(rows(1))]
    closing = threading.Thread(target=batcher.close, kwargs={"drain": False, "timeout": WAIT_S})
    closing.start()
    for future in queued:
        with pytest.raises(BatcherClosed, match="closed before the request ran"):
            future.result(WAIT_S)
    assert batcher.queued_rows == 0
    assert not running.done()
    run.gate.set()
    closing.join(WAIT_S)
    assert not closing.is_alive()
    assert_model_result(running, rows(1))
    assert run.sizes() == [1]


def test_close_gives_up_on_a_stuck_batch_after_its_timeout(batchers: Callable[..., Batcher]) -> None:
    run = GatedModel()
    batcher = batchers(run, max_batch_size=1)
    running = batcher.submit(rows(1))
    run.wait_started(1)
    queued = batcher.submit(rows(1))
    batcher.close(drain=True, timeout=0.05)  # the running batch cannot finish: the gate is shut
    with pytest.raises(BatcherClosed, match=r"still busy after 0\.05 s"):
        queued.result(WAIT_S)
    run.gate.set()
    assert_model_result(running, rows(1))


# ---------------------------------------------------------------------------------------------
# Statistics
# ---------------------------------------------------------------------------------------------


def test_on_batch_reports_every_batch(batchers: Callable[..., Batcher]) -> None:
    stats: list[BatchStats] = []
    run = GatedModel()
    batcher = batchers(run, stats.append, max_batch_size=4)
    batcher.submit(rows(1))
    run.wait_started(1)
    futures = [batcher.submit(rows(2)), batcher.submit(rows(1)), batcher.submit(rows(3))]
    run.gate.set()
    for future in futures:
        future.result(WAIT_S)
    batcher.close()
    assert [(batch.size, batch.padded_size) for batch in stats] == [(1, 1), (3, 3), (3, 3)]
    assert all(batch.queue_s >= 0 and batch.run_s >= 0 for batch in stats)
