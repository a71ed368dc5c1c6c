"""``weiflow serve``: started like ``tensorflow_model_server``, serving TensorFlow Serving's REST API.

Loaded by name from weiflow/cli.py (the core imports no serving code). With ``--workers N`` the
service runs as N processes (:func:`weiflow.processes.serve_workers`), each with every model
loaded, each rebuilding the service from the same flags (``WEIFLOW_SERVE_ARGV``); their metrics
are added up through prometheus_client's multiprocess directory.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import tempfile
from collections.abc import Sequence
from types import FrameType
from typing import Any

from weiflow.config import Settings
from weiflow.processes import HTTP_PROTOCOL, free_port, serve_workers
from weiflow.serving.config import ServerOptions, parse_server_options

__all__ = ["app_from_env", "build_service", "main"]

ARGV_VARIABLE = "WEIFLOW_SERVE_ARGV"
APP = "weiflow.serving.cli:app_from_env"
UVICORN_OPTIONS: dict[str, Any] = {
    "log_level": "warning",
    # Beyond this many connections and tasks per worker, 503 at once instead of queueing without end.
    "limit_concurrency": 2000,
    "timeout_keep_alive": 30,  # clients of a prediction service keep their connections; reconnecting costs latency
    "proxy_headers": False,
    "http": HTTP_PROTOCOL,  # a request head has a deadline: trickled or absent headers do not hold a connection
}


def build_service(options: ServerOptions) -> Any:
    """The :class:`~weiflow.serving.app.PredictionService` the flags describe (nothing loaded yet)."""
    from weiflow.serving.app import PredictionService
    from weiflow.serving.manager import ModelManager, ServedModel

    service: PredictionService | None = None

    def changed(model: str, version: int, state: str) -> None:
        if service is not None:
            service.model_changed(model, version, state)

    def readable(model: str, readable: bool) -> None:
        if service is not None:
            service.metrics.repository_readable.labels(model).set(1 if readable else 0)

    poll_s = float(options.file_system_poll_wait_seconds) or 0.0
    if options.repository:
        manager = ModelManager.for_repository(
            options.repository, only=options.repository_models, poll_s=poll_s, on_change=changed, on_readable=readable
        )
    else:
        served = [
            ServedModel(c.name, c.base_path, c.version_policy, c.version_labels, routed=False)
            for c in options.model_configs()
        ]
        manager = ModelManager(served, poll_s=poll_s, on_change=changed, on_readable=readable)
    service = PredictionService(
        manager, batching=options.batching_parameters(), max_request_bytes=options.max_request_bytes
    )
    return service


def app_from_env() -> Any:
    """What each worker process builds: the app over the flags the supervisor was given."""
    from weiflow.serving.app import create_app

    argv = json.loads(os.environ[ARGV_VARIABLE])
    return create_app(build_service(parse_server_options(argv)))


def main(argv: Sequence[str], settings: Settings) -> int:
    options = parse_server_options(argv)
    for notice in options.notices:
        print(f"weiflow serve: {notice}", file=sys.stderr)
    port = options.rest_api_port or free_port()
    where = f"http://{options.rest_api_host}:{port}"
    if options.workers > 1:
        os.environ[ARGV_VARIABLE] = json.dumps([*argv, f"--rest_api_port={port}"])
        with tempfile.TemporaryDirectory(prefix="weiflow-serve-metrics-") as metrics_dir:
            os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
            return serve_workers(
                APP, options.rest_api_host, port, workers=options.workers, name="weiflow serve", options=UVICORN_OPTIONS
            )
    import uvicorn

    # An inherited multiprocess directory (images built for gunicorn set one) would make one process's
    # metrics fail or carry over between runs; only the --workers supervisor above sets it, for its own.
    os.environ.pop("PROMETHEUS_MULTIPROC_DIR", None)
    from weiflow.serving.app import create_app

    app = create_app(build_service(options))
    print(f"weiflow serve: REST API on {where} (models load first)", file=sys.stderr, flush=True)
    # uvicorn stops gracefully on SIGTERM, then raises the signal again for the handler it found installed: this
    # one, so that a stop that was asked for ends with status 0 (as --workers and the center do), not as a process
    # killed by SIGTERM (143, which Kubernetes reports as an error).
    signal.signal(signal.SIGTERM, _stop_asked)
    uvicorn.Server(uvicorn.Config(app, host=options.rest_api_host, port=port, **UVICORN_OPTIONS)).run()
    return 0


def _stop_asked(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(0)
