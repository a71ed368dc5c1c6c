"""``weiflow serve`` as users run it: a real server process on 127.0.0.1 over a WeiFlow model repository.

Raw rows through ``:score`` give what the model gives for the ids the feature map makes of them
(``:predict`` on those ids); TensorFlow Serving's status, metadata and error shapes; health and
Prometheus metrics (parsed with prometheus_client's own parser); bounded bodies; and a new
version, a routing change and a broken version arriving under a client loop without one failed
request.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.modelrepo.conftest import FEATURE_MAP, manifest_for
from tests.serving.clients import ScoreLoop
from weiflow.features.featuremap import FeatureMap
from weiflow.features.online import OnlineFeatures
from weiflow.modelrepo import FEATURE_MAP_PATH, FileRepository, update_routing
from weiflow.processes import free_port, running_server

pytestmark = pytest.mark.integration

MODEL = "ctr"
ROWS = [{"age": 30, "city": "sh"}, {"age": None, "city": "zz"}, {"age": 61.5}, {"age": 17, "city": "bj"}]


def publish(repository: FileRepository, built: Path, work: Path, traffic: int, *, broken: bool = False) -> int:
    """Add a copy of the tiny logistic model (or a version whose SavedModel is garbage) and route ``traffic``%."""
    source = work / f"source-{len(list(work.iterdir()))}"
    shutil.copytree(built / "good", source)
    (source / FEATURE_MAP_PATH).parent.mkdir(exist_ok=True)
    (source / FEATURE_MAP_PATH).write_text(FEATURE_MAP)
    if broken:
        (source / "saved_model.pb").write_bytes(b"not a SavedModel")
    version = repository.add_version(MODEL, source, manifest_for(source))
    update_routing(repository, MODEL, lambda r, v: r.publish(version, traffic, existing=v, who="test"))
    return version


@contextlib.contextmanager
def serving(log: Path, *flags: str) -> Iterator[str]:
    """``weiflow serve FLAGS`` on a free port; its base URL once it answers ready. Stopped (and checked) after."""
    url = f"http://127.0.0.1:{free_port()}"
    argv = [sys.executable, "-m", "weiflow", "serve", *flags, f"--rest_api_port={url.rsplit(':', 1)[1]}"]
    with running_server(argv, ready_url=f"{url}/v2/health/ready", log=log):
        yield url
    assert "Traceback" not in log.read_text(), log.read_text()[-3000:]


@contextlib.contextmanager
def serving_version_1(built_models: Path, root: Path) -> Iterator[str]:
    """A repository in ``root`` holding version 1 at 100%, served with batching on and bodies up to 64 KiB
    (log: ``root/serve.log``)."""
    repository = FileRepository(str(root / "models"))
    (root / "sources").mkdir()
    publish(repository, built_models, root / "sources", 100)
    flags = (f"--repository={repository.uri}", "--enable_batching", "--max_request_bytes=65536")
    with serving(root / "serve.log", *flags) as url:
        yield url


@pytest.fixture(scope="module")
def server(built_models: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with serving_version_1(built_models, tmp_path_factory.mktemp("serving")) as url:
        yield url


def test_score_maps_raw_rows_exactly_as_the_ids_predict_takes(server: str) -> None:
    scored = httpx.post(f"{server}/v1/models/{MODEL}:score", json={"instances": ROWS, "key": "user-1"})
    assert scored.status_code == 200, scored.text
    assert scored.headers["X-Model-Version"] == "1" and scored.json()["model_version"] == "1"
    # The ids the Spark features module would write for these rows (missing fields are nulls there).
    online = OnlineFeatures(FeatureMap.from_json(FEATURE_MAP))
    ids = online.transform_columns({s: [row.get(s) for row in ROWS] for s in online.sources})
    instances = [{"age_b": int(a), "city": int(c)} for a, c in zip(ids["age_b"], ids["city"], strict=True)]
    predicted = httpx.post(f"{server}/v1/models/{MODEL}:predict", json={"instances": instances})
    assert predicted.status_code == 200, predicted.text
    probabilities = [p["probability"] for p in predicted.json()["predictions"]]
    assert scored.json()["scores"] == pytest.approx(probabilities, rel=1e-6)
    assert len(set(probabilities)) > 1  # the rows really map to different ids


@pytest.mark.parametrize(
    ("body", "says"),
    [
        ({"instances": [{"age": "old", "city": "sh"}]}, "age"),
        ({"instances": []}, "non-empty"),
        ({"instances": [1]}, "instances[0]"),
        ({"rows": []}, "unknown field"),
    ],
)
def test_bad_score_requests_are_400_naming_the_problem(server: str, body: dict[str, Any], says: str) -> None:
    answer = httpx.post(f"{server}/v1/models/{MODEL}:score", json=body)
    assert answer.status_code == 400 and says in answer.json()["error"], answer.text


def test_status_metadata_and_errors_are_tensorflow_servings(server: str) -> None:
    status = httpx.get(f"{server}/v1/models/{MODEL}").json()
    assert status == {
        "model_version_status": [
            {"version": "1", "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}
        ]
    }
    assert httpx.get(f"{server}/v1/models/{MODEL}/versions/1").json() == status
    metadata = httpx.get(f"{server}/v1/models/{MODEL}/versions/1/metadata").json()
    assert metadata["model_spec"] == {"name": MODEL, "signature_name": "", "version": "1"}
    inputs = metadata["metadata"]["signature_def"]["signature_def"]["serving_default"]["inputs"]
    assert {name: spec["dtype"] for name, spec in inputs.items()} == {"age_b": "DT_INT64", "city": "DT_INT64"}
    missing = httpx.get(f"{server}/v1/models/nope")
    assert missing.status_code == 404 and "error" in missing.json()
    pinned = httpx.post(f"{server}/v1/models/{MODEL}/versions/7:predict", json={"instances": [{"age_b": 1, "city": 1}]})
    assert pinned.status_code == 404 and "error" in pinned.json()
    bad = httpx.post(f"{server}/v1/models/{MODEL}:predict", content=b"{not json")
    assert bad.status_code == 400 and "error" in bad.json()
    large = httpx.post(f"{server}/v1/models/{MODEL}:predict", content=b" " * 100_000)
    assert large.status_code == 413


def test_health_and_prometheus_metrics(server: str) -> None:
    assert httpx.get(f"{server}/v2/health/live").status_code == 200
    assert httpx.get(f"{server}/v2/health/ready").json() == {"ready": True}
    for _ in range(3):
        httpx.post(f"{server}/v1/models/{MODEL}:score", json={"instances": ROWS[:1]})
    text = httpx.get(f"{server}/monitoring/prometheus/metrics").text
    families = {family.name: family for family in text_string_to_metric_families(text)}
    requests = {
        (s.labels["api"], s.labels["code"]): s.value
        for s in families["weiflow_serving_requests"].samples
        if s.name.endswith("_total") and s.labels["model"] == MODEL
    }
    assert requests[("score", "200")] >= 3
    assert any(s.value > 0 for s in families["weiflow_serving_batch_size"].samples if s.name.endswith("_count"))
    assert any(s.value > 0 for s in families["weiflow_serving_feature_mapping_seconds"].samples)
    states = {
        (s.labels["version"], s.labels["state"]): s.value for s in families["weiflow_serving_model_state"].samples
    }
    assert states[("1", "AVAILABLE")] == 1
    loads = {s.labels["version"]: s.value for s in families["weiflow_serving_model_load_seconds"].samples}
    assert 0 < loads["1"] < 60


def test_new_versions_routing_changes_and_a_broken_version_cost_no_request(built_models: Path, tmp_path: Path) -> None:
    repository = FileRepository(str(tmp_path / "models"))
    (tmp_path / "sources").mkdir()
    publish(repository, built_models, tmp_path / "sources", 100)

    with (
        serving(tmp_path / "serve.log", f"--repository={repository.uri}", "--file_system_poll_wait_seconds=1") as url,
        ScoreLoop(url, MODEL, ROWS[0]) as clients,
    ):
        served, failures = clients.served, clients.failures

        def until(condition: Any, what: str, timeout: float = 90) -> None:
            deadline = time.monotonic() + timeout
            while not condition():
                assert time.monotonic() < deadline, f"{what}: served {dict(served)}, failures {failures[:3]}"
                time.sleep(0.1)

        until(lambda: served["1"] > 20, "version 1 serves")
        publish(repository, built_models, tmp_path / "sources", 50)  # a canary at 50%
        until(lambda: served["2"] > 20, "the canary gets traffic")
        publish(repository, built_models, tmp_path / "sources", 100, broken=True)  # routed, but cannot load
        until(
            lambda: any(
                s["version"] == "3" and s["state"] == "END"
                for s in httpx.get(f"{url}/v1/models/{MODEL}").json()["model_version_status"]
            ),
            "the broken version is reported",
        )
        before = dict(served)
        until(lambda: served["1"] > before["1"] + 10 and served["2"] > before["2"] + 10, "the old split serves on")
        status = httpx.get(f"{url}/v1/models/{MODEL}").json()["model_version_status"]
    assert failures == []
    broken = next(s for s in status if s["version"] == "3")
    assert broken["status"]["error_code"] != "OK" and broken["status"]["error_message"]
    assert "3" not in served
    # The same key lands on the same version while the split holds.
    assert json.dumps(status)  # serialisable as TensorFlow Serving's


@pytest.fixture(scope="module")
def tf_serving_style(saved_models: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Started as tensorflow_model_server is: a model_config_list file (with a version label), two workers."""
    root = tmp_path_factory.mktemp("tfs")
    config = root / "models.config"
    config.write_text(
        f"""
        # TensorFlow Serving's ModelServerConfig, text format
        model_config_list {{
          config {{
            name: "half_plus_two"
            base_path: "{saved_models["half_plus_two"].parent}"
            model_platform: "tensorflow"
            model_version_policy {{ specific {{ versions: 1 }} }}
            version_labels {{ key: "stable" value: 1 }}
          }}
        }}
        """
    )
    with serving(root / "serve.log", f"--model_config_file={config}", "--workers=2") as url:
        yield url


def test_tensorflow_servings_documented_requests_work_unchanged(tf_serving_style: str) -> None:
    url = f"{tf_serving_style}/v1/models/half_plus_two"
    # https://www.tensorflow.org/tfx/serving/api_rest: the half_plus_two examples, row and columnar.
    assert httpx.post(f"{url}:predict", json={"instances": [1.0, 2.0, 5.0]}).json() == {"predictions": [2.5, 3.0, 4.5]}
    assert httpx.post(f"{url}:predict", json={"inputs": [1.0, 2.0, 5.0]}).json() == {"outputs": [2.5, 3.0, 4.5]}
    three = {"signature_name": "half_plus_three", "instances": [1.0, 2.0, 5.0]}
    assert httpx.post(f"{url}/versions/1:predict", json=three).json() == {"predictions": [3.5, 4.0, 5.5]}
    labelled = httpx.post(f"{url}/labels/stable:predict", json={"instances": [2.0]})
    assert labelled.json() == {"predictions": [3.0]} and labelled.headers["X-Model-Version"] == "1"
    status = httpx.get(f"{url}/labels/stable").json()["model_version_status"]
    assert [(s["version"], s["state"]) for s in status] == [("1", "AVAILABLE")]
    both = httpx.post(f"{url}:predict", json={"instances": [1.0], "inputs": [1.0]})
    assert both.status_code == 400
    assert "expecting only one of 'inputs' or 'instances'" in both.json()["error"]
    unknown = httpx.post(f"{url}/labels/canary:predict", json={"instances": [1.0]})
    assert unknown.status_code == 400 and "canary" in unknown.json()["error"]
    assert httpx.post(f"{url}:classify", json={"examples": []}).status_code == 400


def test_two_workers_share_the_port_and_add_up_their_metrics(tf_serving_style: str) -> None:
    url = f"{tf_serving_style}/v1/models/half_plus_two:predict"
    for _ in range(20):  # new connections: the kernel spreads them over both workers' sockets
        assert httpx.post(url, json={"instances": [1.0]}).status_code == 200
    text = httpx.get(f"{tf_serving_style}/monitoring/prometheus/metrics").text
    predicted = sum(
        s.value
        for family in text_string_to_metric_families(text)
        if family.name == "weiflow_serving_requests"
        for s in family.samples
        if s.name.endswith("_total") and s.labels["api"] == "predict" and s.labels["code"] == "200"
    )
    assert predicted >= 20  # whichever worker answers the scrape reports every worker's requests
