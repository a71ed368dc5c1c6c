"""The prediction service killed (SIGKILL) while it loads a new version, then restarted.

A real ``weiflow serve`` over a WeiFlow model repository serves version 1 under a client loop.
Version 2 is published at 100% with a thousand TensorFlow Serving warm-up records, so loading and
warming it takes seconds: the test polls the model's status until version 2 is LOADING and kills
the server then. Until the kill, every answer came from version 1 (a version still loading is
never routed to); after the restart the service is ready only once version 2 is warm, and answers
every request from what the routing file says, version 2, without one error.

The warm-up records are written in a child process, so the test process never imports TensorFlow.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.modelrepo.conftest import FEATURE_MAP, manifest_for
from tests.serving.clients import ScoreLoop
from tests.serving.test_server import MODEL, ROWS, publish
from weiflow.modelrepo import FEATURE_MAP_PATH, FileRepository, update_routing
from weiflow.processes import free_port, running_server, signal_group
from weiflow.serving.manager import AVAILABLE, LOADING
from weiflow.serving.servable import WARMUP_FILE

pytestmark = [pytest.mark.integration, pytest.mark.slow]  # TensorFlow in three processes

WARMUP_RECORDS, WARMUP_BATCH = 1000, 1000  # TF Serving's (and our) most records; seconds of warm-up in all

# Writes ``WARMUP_RECORDS`` PredictionLog records of ``WARMUP_BATCH`` ids each to argv[1].
WRITE_WARMUP = """
import sys
import numpy as np
import tensorflow as tf
from tensorflow_serving.apis import predict_pb2, prediction_log_pb2

records, batch = int(sys.argv[2]), int(sys.argv[3])
ids = tf.make_tensor_proto(np.arange(batch, dtype=np.int64) % 8)  # the model's tables have 8 rows
request = predict_pb2.PredictRequest()
request.model_spec.name = "ctr"
request.model_spec.signature_name = "serving_default"
request.inputs["age_b"].CopyFrom(ids)
request.inputs["city"].CopyFrom(ids)
entry = prediction_log_pb2.PredictionLog(predict_log=prediction_log_pb2.PredictLog(request=request)).SerializeToString()
with tf.io.TFRecordWriter(sys.argv[1]) as writer:
    for _ in range(records):
        writer.write(entry)
"""


def _states(url: str) -> dict[str, str]:
    answer = httpx.get(f"{url}/v1/models/{MODEL}", timeout=5)
    answer.raise_for_status()
    return {s["version"]: s["state"] for s in answer.json()["model_version_status"]}


@pytest.mark.reliability(
    area="kill",
    component="prediction service (weiflow serve)",
    fault="SIGKILL to its group, or SIGTERM to it, while a new version loads and warms up",
    proves="before the kill every answer came from the loaded version (none from the loading one); SIGTERM: "
    "exit 0 within 30 s; no process left; the restarted service is ready only with the new version warm and "
    "answers every request from the routing file's version, 0 errors",
)
@pytest.mark.parametrize("how", ["SIGKILL", "SIGTERM"])
def test_a_service_killed_mid_reload_restarts_on_the_routed_version(
    how: str, built_models: Path, tmp_path: Path
) -> None:
    repository = FileRepository(str(tmp_path / "models"))
    (tmp_path / "sources").mkdir()
    publish(repository, built_models, tmp_path / "sources", 100)

    # Version 2's source: the same model with a thousand warm-up records, published while version 1 serves.
    source = tmp_path / "slow-source"
    shutil.copytree(built_models / "good", source)
    (source / FEATURE_MAP_PATH).parent.mkdir(exist_ok=True)
    (source / FEATURE_MAP_PATH).write_text(FEATURE_MAP)
    writer = subprocess.run(
        [sys.executable, "-c", WRITE_WARMUP, str(source / WARMUP_FILE), str(WARMUP_RECORDS), str(WARMUP_BATCH)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
    )
    assert writer.returncode == 0, writer.stderr[-3000:]

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    argv = [
        sys.executable,
        "-m",
        "weiflow",
        "serve",
        f"--repository={repository.uri}",
        "--file_system_poll_wait_seconds=1",
        f"--rest_api_port={port}",
    ]
    ready = f"{url}/v2/health/ready"
    seen_loading = False
    with running_server(argv, ready_url=ready, log=tmp_path / "serve-1.log") as first:
        with ScoreLoop(url, MODEL, ROWS[0], workers=2) as clients:
            deadline = time.monotonic() + 20
            while clients.served["1"] < 10:  # version 1 answers before anything changes
                assert time.monotonic() < deadline, f"version 1 never served: {clients.failures[:3]}"
                time.sleep(0.05)
            version = repository.add_version(MODEL, source, manifest_for(source))
            update_routing(repository, MODEL, lambda r, v: r.publish(version, 100, existing=v, who="test"))
            deadline = time.monotonic() + 60
            while not seen_loading:
                states = _states(url)
                assert states.get("2") != AVAILABLE, "version 2 loaded before it was caught loading"
                seen_loading = states.get("2") == LOADING
                assert time.monotonic() < deadline, f"version 2 never seen loading: {states}"
                time.sleep(0.005)
        # The loop stops first (a request cut by the kill would end its thread with a transport error);
        # version 2 takes seconds more to warm, and is checked still loading at the kill.
        assert _states(url).get("2") == LOADING
        if how == "SIGKILL":
            os.killpg(first.pid, signal.SIGKILL)
            first.wait(30)
        else:  # what Kubernetes sends a pod it stops: the load in progress must not hold the exit up
            first.send_signal(signal.SIGTERM)
            assert first.wait(30) == 0, (tmp_path / "serve-1.log").read_text()[-3000:]
        assert not signal_group(first.pid, 0), "a process of the killed service's group is alive"
    assert clients.failures == []
    assert clients.served["1"] >= 10 and set(clients.served) == {"1"}, dict(clients.served)  # never the half-loaded 2

    routed = {str(v) for v, share in repository.read_routing(MODEL).traffic.items() if share > 0}
    assert routed == {"2"}
    log = tmp_path / "serve-2.log"
    with running_server(argv, ready_url=ready, log=log, timeout_s=180):
        assert _states(url).get("2") == AVAILABLE  # ready means warm
        with ScoreLoop(url, MODEL, ROWS[0], workers=2) as again:
            deadline = time.monotonic() + 20
            while sum(again.served.values()) < 50:
                assert time.monotonic() < deadline and not again.failures, again.failures[:3]
                time.sleep(0.05)
    assert again.failures == []
    assert set(again.served) == routed, dict(again.served)
    assert "Traceback" not in log.read_text(), log.read_text()[-3000:]
