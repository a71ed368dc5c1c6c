"""The prediction service's Prometheus metrics, served at TensorFlow Serving's path ``/monitoring/prometheus/metrics``.

Requests by model, version, API and HTTP code; latency split into feature mapping, queueing and
model time; batch sizes; model load time and state. Each service has a registry of its own (so
tests can run several); with several worker processes (``--workers``), prometheus_client's
multiprocess mode adds up the workers' figures when ``PROMETHEUS_MULTIPROC_DIR`` is set, which
``weiflow serve`` does for its workers.
"""

from __future__ import annotations

import os

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector

__all__ = ["CONTENT_TYPE_LATEST", "ServingMetrics"]

# Latency buckets from 0.25 ms to 5 s: single-row scoring lives in the first few, a slow model load in the last.
_SECONDS = (0.00025, 0.0005, 0.001, 0.002, 0.004, 0.008, 0.016, 0.032, 0.064, 0.128, 0.256, 0.512, 1.0, 2.5, 5.0)
_ROWS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
_MODEL_STATES = ("LOADING", "AVAILABLE", "UNLOADING", "END")


class ServingMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "weiflow_serving_requests",
            "Requests answered, by model, version, API (predict, score, status, metadata) and HTTP code",
            ["model", "version", "api", "code"],
            registry=r,
        )
        self.latency = Histogram(
            "weiflow_serving_request_seconds",
            "Time from a request's arrival to its answer",
            ["model", "api"],
            buckets=_SECONDS,
            registry=r,
        )
        self.feature_mapping = Histogram(
            "weiflow_serving_feature_mapping_seconds",
            "Time mapping raw features to model inputs (:score)",
            ["model"],
            buckets=_SECONDS,
            registry=r,
        )
        self.queue = Histogram(
            "weiflow_serving_queue_seconds",
            "Time a batch's oldest request waited before the model ran it",
            ["model", "version"],
            buckets=_SECONDS,
            registry=r,
        )
        self.model_time = Histogram(
            "weiflow_serving_model_seconds",
            "Time the model took to run a batch (or one request, without batching)",
            ["model", "version"],
            buckets=_SECONDS,
            registry=r,
        )
        self.batch_size = Histogram(
            "weiflow_serving_batch_size",
            "Rows per batch the model ran",
            ["model", "version"],
            buckets=_ROWS,
            registry=r,
        )
        self.load_seconds = Gauge(
            "weiflow_serving_model_load_seconds",
            "How long loading a version took (tf.saved_model.load and its signatures)",
            ["model", "version"],
            registry=r,
            multiprocess_mode="max",
        )
        self.model_state = Gauge(
            "weiflow_serving_model_state",
            "1 for a version's current state (LOADING, AVAILABLE, UNLOADING, END), 0 for the others",
            ["model", "version", "state"],
            registry=r,
            multiprocess_mode="max",
        )

        self.repository_readable = Gauge(
            "weiflow_serving_repository_readable",
            "1 while a model's directory can be listed, 0 while it cannot (its loaded versions keep serving)",
            ["model"],
            registry=r,
            multiprocess_mode="livemin",  # any worker that cannot read it says so
        )

    def set_state(self, model: str, version: int, state: str) -> None:
        for known in _MODEL_STATES:
            self.model_state.labels(model, str(version), known).set(1 if known == state else 0)

    def exposition(self) -> bytes:
        """The text format, every worker's figures added up when running as several processes."""
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            registry = CollectorRegistry()
            MultiProcessCollector(registry)  # type: ignore[no-untyped-call]  # prometheus_client leaves it untyped
            return bytes(generate_latest(registry))
        return bytes(generate_latest(self.registry))
