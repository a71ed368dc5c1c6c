"""Dynamic batching for the prediction service, with TensorFlow Serving's semantics.

Scoring one row at a time costs about a hundred times more per row than scoring a batch, so
concurrent requests to one model version are merged into one call of the model. A
:class:`Batcher` wraps one model's ``run`` (inputs by name, rows along axis 0, to outputs by
name) and applies :class:`~weiflow.serving.config.BatchingParameters` the way TensorFlow
Serving's batch scheduler does:

- requests whose inputs agree on names, dtypes and trailing shapes join one batch (their
  arrays concatenated along axis 0) of at most ``max_batch_size`` rows; requests that do not
  agree go to separate batches, never mixed (``pad_variable_length_inputs`` is not applied);
- a batch runs when it is full, or when its first request has waited ``batch_timeout_micros``;
  with 0 it runs as soon as a thread is free, holding whatever has queued by then;
- ``num_batch_threads`` threads run batches in parallel;
- at most ``max_enqueued_batches`` batches wait (the one still filling included); a request
  that would need one more is refused at once with :class:`QueueFull` (the HTTP layer's 429);
- with ``allowed_batch_sizes`` a batch is padded up to the next allowed size by repeating its
  last row, and the padding is dropped from the outputs;
- each request gets exactly its own rows of every output; a failure of ``run`` (or outputs
  without one row per input row) fails every request of that batch and nothing else.

:meth:`Batcher.submit` never blocks: it answers a :class:`concurrent.futures.Future` that the
HTTP layer awaits through :func:`asyncio.wrap_future`. Cancelling that future before its batch
starts (a client that went away) drops its rows from the batch.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

import numpy as np

from weiflow.serving.config import BatchingParameters

__all__ = ["BatchStats", "BatchTooLarge", "Batcher", "BatcherClosed", "QueueFull"]

log = logging.getLogger(__name__)

Arrays = dict[str, np.ndarray]
RunBatch = Callable[[Arrays], Mapping[str, Any]]


class QueueFull(Exception):
    """The queue already holds ``max_enqueued_batches`` batches: try again later (HTTP 429)."""


class BatchTooLarge(ValueError):
    """One request has more rows than ``max_batch_size`` (TensorFlow Serving refuses it too)."""


class BatcherClosed(RuntimeError):
    """The batcher was closed: it takes no more work, or closed before this request ran."""


@dataclass(frozen=True)
class BatchStats:
    """One batch, for metrics.

    ``size``: the requests' rows; ``padded_size``: the rows ``run`` saw (``allowed_batch_sizes``);
    ``queue_s``: how long the batch's first request waited before the batch started;
    ``run_s``: how long ``run`` took.
    """

    size: int
    padded_size: int
    queue_s: float
    run_s: float


# One request waiting in a batch: (inputs, rows, future). A tuple rather than an object: it is
# created once per request on the submit path, where every microsecond is paid per row.
_Request = tuple[Arrays, int, "Future[Arrays]"]
# What makes requests batchable together: each input's name, dtype and shape past axis 0.
_Signature = frozenset[tuple[str, np.dtype[Any], tuple[int, ...]]]


class _Batch:
    __slots__ = ("deadline", "opened_at", "requests", "rows", "signature")

    def __init__(self, signature: _Signature, opened_at: float, deadline: float) -> None:
        self.signature = signature
        self.opened_at = opened_at
        self.deadline = deadline
        self.requests: list[_Request] = []
        self.rows = 0


class Batcher:
    """Merges concurrent requests into batches for ``run`` and splits the outputs back.

    ``run`` receives the merged (and padded) inputs and must answer outputs whose first
    dimension is the batch's row count; it runs on one of the batcher's threads, up to
    ``num_batch_threads`` at once. ``on_batch`` is called after each batch with its
    :class:`BatchStats` (an exception there is logged, never passed to requests). Inputs are
    not copied on submit: a caller must not modify its arrays until its future is done.
    """

    def __init__(
        self,
        run: RunBatch,
        params: BatchingParameters,
        *,
        name: str = "",
        on_batch: Callable[[BatchStats], None] | None = None,
    ) -> None:
        self._run = run
        self._params = params
        self._name = name
        self._on_batch = on_batch
        self._max_batch_size = params.max_batch_size
        self._max_enqueued_batches = params.max_enqueued_batches
        self._timeout_s = params.batch_timeout_micros / 1e6
        self._allowed_batch_sizes = params.allowed_batch_sizes
        self._lock = threading.Condition(threading.Lock())
        # Guarded by _lock: the batch still filling per signature, the full batches in the order
        # they filled, and the counts submit checks without walking them.
        self._filling: dict[_Signature, _Batch] = {}
        self._full: deque[_Batch] = deque()
        self._enqueued_batches = 0
        self._queued_rows = 0
        self._closed = False
        label = f"{params.thread_pool_name}-{name}" if name else params.thread_pool_name
        self._threads = [
            threading.Thread(target=self._work, name=f"{label}-{index}", daemon=True)
            for index in range(params.num_batch_threads)
        ]
        for thread in self._threads:
            thread.start()

    def __repr__(self) -> str:
        return f"Batcher({self._name!r}, {self._params})"

    @property
    def queued_rows(self) -> int:
        """Rows submitted and not yet taken by a thread (the rows of running batches excluded)."""
        return self._queued_rows

    def submit(self, inputs: Arrays) -> Future[Arrays]:
        """Queue one request; its future answers the outputs for exactly its rows.

        Every input carries the same number of rows (at least one) along axis 0. Raises at once,
        never blocking: :class:`BatchTooLarge` beyond ``max_batch_size`` rows, :class:`QueueFull`
        when ``max_enqueued_batches`` batches already wait, :class:`BatcherClosed` after
        :meth:`close`, ``TypeError``/``ValueError`` for inputs that are not row arrays.
        """
        signature, rows = self._signature(inputs)
        future: Future[Arrays] = Future()
        with self._lock:
            if self._closed:
                raise BatcherClosed(f"{self._label()} is closed")
            batch = self._filling.get(signature)
            if batch is None or batch.rows + rows > self._max_batch_size:
                if self._enqueued_batches >= self._max_enqueued_batches:
                    raise QueueFull(
                        f"{self._label()}: the queue is full ({self._max_enqueued_batches} batches wait); "
                        f"try again later"
                    )
                if batch is not None:
                    # TensorFlow Serving's rule: a request that does not fit closes the batch, which
                    # then runs as if full rather than wait for its timeout.
                    self._full.append(self._filling.pop(signature))
                now = time.monotonic()
                batch = _Batch(signature, now, now + self._timeout_s)
                self._filling[signature] = batch
                self._enqueued_batches += 1
            batch.requests.append((inputs, rows, future))
            batch.rows += rows
            self._queued_rows += rows
            if batch.rows == self._max_batch_size:
                self._full.append(self._filling.pop(signature))
            # A thread must look again when a batch became ready or a new deadline appeared; with a
            # timeout every request's batch is ready as soon as a thread is free. notify() with no
            # thread waiting (all busy) costs next to nothing.
            self._lock.notify()
        return future

    def close(self, *, drain: bool = True, timeout: float = 30.0) -> None:
        """Stop taking work; run (``drain``) or fail the queued requests; wait for the threads.

        With ``drain`` every queued request still runs, without waiting out batch timeouts. Without
        it, queued requests fail at once with :class:`BatcherClosed`; batches already running
        finish either way. If the threads are still busy after ``timeout`` seconds, what is still
        queued fails and close returns (the threads are daemons and end after their batch).
        """
        with self._lock:
            self._closed = True
            abandoned = [] if drain else self._take_all()
            self._lock.notify_all()
        self._fail(abandoned, "closed before the request ran")
        give_up_at = time.monotonic() + timeout
        current = threading.current_thread()
        for thread in self._threads:
            if thread is not current:
                thread.join(max(0.0, give_up_at - time.monotonic()))
        busy = [thread.name for thread in self._threads if thread.is_alive() and thread is not current]
        if busy:
            with self._lock:
                abandoned = self._take_all()
            self._fail(abandoned, f"closed: its batch threads were still busy after {timeout:g} s")
            log.warning(
                "%s: closed after %g s with threads still running a batch (%s); %d queued requests failed",
                self._label(),
                timeout,
                ", ".join(busy),
                len(abandoned),
            )

    # -----------------------------------------------------------------------------------------
    # Submitting
    # -----------------------------------------------------------------------------------------

    def _signature(self, inputs: Arrays) -> tuple[_Signature, int]:
        """What the request can be batched with, and its row count; checks it is a request at all."""
        if not inputs:
            raise ValueError(f"{self._label()}: a request needs at least one input")
        rows = -1
        parts = []
        for input_name, value in inputs.items():
            if not isinstance(value, np.ndarray):
                raise TypeError(f"input {input_name!r} is a {type(value).__name__}, not a numpy array")
            shape = value.shape
            if not shape:
                raise ValueError(f"input {input_name!r} is a scalar; batched inputs carry rows along axis 0")
            if rows < 0:
                rows = shape[0]
            elif shape[0] != rows:
                raise ValueError(f"inputs disagree on the number of rows: {input_name!r} has {shape[0]}, others {rows}")
            parts.append((input_name, value.dtype, shape[1:]))
        if rows == 0:
            raise ValueError("a request needs at least one row")
        if rows > self._max_batch_size:
            raise BatchTooLarge(
                f"{self._label()}: the request has {rows} rows, more than max_batch_size {self._max_batch_size}; "
                f"send at most {self._max_batch_size} rows per request"
            )
        return frozenset(parts), rows

    # -----------------------------------------------------------------------------------------
    # The batch threads
    # -----------------------------------------------------------------------------------------

    def _work(self) -> None:
        while True:
            with self._lock:
                while (batch := self._take_ready()) is None:
                    if self._closed and not self._enqueued_batches:
                        return
                    self._lock.wait(self._wait_s())
                if self._enqueued_batches:
                    # Another idle thread may be waiting without a deadline (it slept before any
                    # batch was filling): wake one so the remaining batches are not left to this
                    # thread alone once its batch is done.
                    self._lock.notify()
            self._run_batch(batch)

    def _take_ready(self) -> _Batch | None:
        """The oldest batch that may run now, removed from the queue; None if none may. Under _lock."""
        chosen = self._full[0] if self._full else None
        if self._filling:
            # Closing empties the queue without waiting out timeouts; 0 means "whenever a thread is free".
            now = None if self._closed or not self._timeout_s else time.monotonic()
            for batch in self._filling.values():
                if (now is None or batch.deadline <= now) and (chosen is None or batch.opened_at < chosen.opened_at):
                    chosen = batch
        if chosen is None:
            return None
        if self._full and chosen is self._full[0]:
            self._full.popleft()
        else:
            del self._filling[chosen.signature]
        self._enqueued_batches -= 1
        self._queued_rows -= chosen.rows
        return chosen

    def _wait_s(self) -> float | None:
        """How long an idle thread may sleep: until the earliest deadline, or until notified. Under _lock."""
        if not self._filling:
            return None
        return max(0.0, min(batch.deadline for batch in self._filling.values()) - time.monotonic())

    def _take_all(self) -> list[_Request]:
        """Empty the queue, answering its requests. Under _lock."""
        requests = [request for batch in self._full for request in batch.requests]
        requests += [request for batch in self._filling.values() for request in batch.requests]
        self._full.clear()
        self._filling.clear()
        self._enqueued_batches = 0
        self._queued_rows = 0
        return requests

    def _run_batch(self, batch: _Batch) -> None:
        """Run one batch and answer its requests; nothing here may escape and end the thread."""
        # A request cancelled while it queued (its client went away) is left out of the batch.
        requests = [request for request in batch.requests if request[2].set_running_or_notify_cancel()]
        if not requests:
            return
        started = time.monotonic()
        size = sum(request[1] for request in requests)
        padded_size = self._padded_size(size)
        try:
            outputs = self._run(self._merge(requests, size, padded_size))
            results = self._split(outputs, requests, padded_size)
        except BaseException as exc:  # any failure, even SystemExit, belongs to this batch's requests only
            if len(requests) == 1:
                requests[0][2].set_exception(_as_exception(exc))
            else:
                # One request's bad input (an id out of range) must not fail the others batched with it, nor
                # hand them its error text: each runs again alone, and only the ones that fail alone fail.
                for request in requests:
                    self._run_alone(request)
        else:
            for (_, _, future), result in zip(requests, results, strict=True):
                future.set_result(result)
        if self._on_batch is not None:
            stats = BatchStats(size, padded_size, started - batch.opened_at, time.monotonic() - started)
            try:
                self._on_batch(stats)
            except Exception:
                log.exception("%s: on_batch failed for %s", self._label(), stats)

    def _run_alone(self, request: _Request) -> None:
        rows = request[1]
        padded = self._padded_size(rows)
        try:
            result = self._split(self._run(self._merge([request], rows, padded)), [request], padded)[0]
        except BaseException as exc:
            request[2].set_exception(_as_exception(exc))
        else:
            request[2].set_result(result)

    def _padded_size(self, size: int) -> int:
        """The smallest allowed batch size holding ``size`` rows (the last one is max_batch_size)."""
        for allowed in self._allowed_batch_sizes:
            if allowed >= size:
                return allowed
        return size

    @staticmethod
    def _merge(requests: list[_Request], size: int, padded_size: int) -> Arrays:
        """The requests' inputs concatenated along axis 0, padded by repeating the last row."""
        first = requests[0][0]
        if len(requests) == 1 and padded_size == size:
            return first  # nothing to concatenate: no copy
        merged: Arrays = {}
        for input_name in first:
            parts = [request[0][input_name] for request in requests]
            if padded_size > size:
                last_row = parts[-1][-1:]
                parts.append(np.repeat(last_row, padded_size - size, axis=0))
            merged[input_name] = np.concatenate(parts)
        return merged

    def _split(self, outputs: Mapping[str, Any], requests: list[_Request], padded_size: int) -> list[Arrays]:
        """Each request's rows of every output (views, no copies); padding rows are dropped."""
        if not isinstance(outputs, Mapping):
            raise TypeError(f"{self._label()}: run returned a {type(outputs).__name__}, not outputs by name")
        arrays: Arrays = {}
        for output_name, value in outputs.items():
            array = np.asarray(value)
            if array.ndim == 0 or array.shape[0] != padded_size:
                found = "a scalar" if array.ndim == 0 else f"{array.shape[0]} rows (shape {array.shape})"
                raise ValueError(
                    f"{self._label()}: output {output_name!r} has {found} for a batch of {padded_size} rows; "
                    f"every output must have one row per input row to be split back to the requests"
                )
            arrays[output_name] = array
        if len(requests) == 1:
            rows = requests[0][1]
            return [arrays if rows == padded_size else {key: array[:rows] for key, array in arrays.items()}]
        results = []
        start = 0
        for _, rows, _ in requests:
            stop = start + rows
            results.append({key: array[start:stop] for key, array in arrays.items()})
            start = stop
        return results

    def _fail(self, requests: list[_Request], why: str) -> None:
        for _, _, future in requests:
            if future.set_running_or_notify_cancel():
                future.set_exception(BatcherClosed(f"{self._label()}: {why}"))

    def _label(self) -> str:
        return f"batcher {self._name!r}" if self._name else "batcher"


def _as_exception(exc: BaseException) -> Exception:
    """What a request's future may carry: a SystemExit or KeyboardInterrupt from a model would otherwise escape
    the request handler that awaits it."""
    if isinstance(exc, Exception):
        return exc
    wrapped = RuntimeError(f"the model raised {type(exc).__name__}: {exc}")
    wrapped.__cause__ = exc
    return wrapped
