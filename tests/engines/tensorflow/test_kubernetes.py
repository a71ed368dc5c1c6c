"""The kubernetes backend without a cluster.

Manifests are checked against the client's own models; the submit, watch and delete path runs
against an autospec of CoreV1Api (a call with a wrong name or argument fails) and a scripted
watch, and once end to end through the real client and Watch against a loopback API server.
"""

from __future__ import annotations

import json
import re
import shlex
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from unittest import mock
from urllib.parse import parse_qs, urlsplit

import pytest
import yaml
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from weiflow.engines.tensorflow.cluster import ClusterFailed, ClusterJob
from weiflow.engines.tensorflow.kubernetes import KubernetesCluster, main, rbac_manifests, render_manifests

DEPLOY = Path(__file__).resolve().parents[3] / "deploy" / "tensorflow"
NS = "train-ns"
IMAGE = "registry.example/weiflow:0.1.0"
JOB = ClusterJob(
    name="wf-ctr-1a2b",
    ps=1,
    workers=2,
    chief_argv=("/opt/venv/bin/python3.11", "-m", "weiflow.engines.tensorflow.trainer", "train", "s3://b/job.json"),
    env={"PYTHONUNBUFFERED": "1"},
    labels={"weiflow.io/node": "train"},
)
PS0, W0, W1, CHIEF = (f"wf-ctr-1a2b-{task}" for task in ("ps-0", "worker-0", "worker-1", "chief-0"))
ALL = [PS0, W0, W1, CHIEF]


def round_trip(manifest: dict[str, Any]) -> Any:
    """The manifest through the client's deserializer and back: a field the model lacks is dropped."""
    api_client = client.ApiClient()
    model = api_client.deserialize(json.dumps(manifest), f"V1{manifest['kind']}", "application/json")
    return api_client.sanitize_for_serialization(model)


def rendered() -> list[dict[str, Any]]:
    return render_manifests(JOB, image=IMAGE, namespace=NS)


def pods_of(manifests: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [m for m in manifests if m["kind"] == "Pod"]


def shipped() -> list[dict[str, Any]]:
    return [doc for path in sorted(DEPLOY.glob("*.yaml")) for doc in yaml.safe_load_all(path.read_text())]


# --- manifests ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "manifest",
    [*rendered(), *rbac_manifests(NS), *shipped()],
    ids=lambda m: f"{m['kind']}:{m['metadata']['name']}",
)
def test_every_manifest_is_valid_for_the_client_models(manifest: dict[str, Any]) -> None:
    assert round_trip(manifest) == manifest
    getattr(client, f"V1{manifest['kind']}").model_validate(manifest)  # strict: unknown fields raise


def test_the_validation_catches_a_misspelled_or_missing_field() -> None:
    pod = pods_of(rendered())[0]
    misspelled = {**pod, "spec": {**pod["spec"], "restartPolicyy": "Never"}}
    assert round_trip(misspelled) != misspelled
    with pytest.raises(ValueError, match="restartPolicyy"):
        client.V1Pod.model_validate(misspelled)
    nameless = {**pod, "spec": {**pod["spec"], "containers": [{"image": IMAGE}]}}
    with pytest.raises(ValueError, match="name"):
        round_trip(nameless)


def test_tf_config_names_every_task_by_its_service_dns_name_and_port() -> None:
    manifests = render_manifests(JOB, image=IMAGE, namespace=NS, port=3333)
    services = {m["metadata"]["name"]: m for m in manifests if m["kind"] == "Service"}
    assert sorted(services) == sorted(ALL)
    expected = {
        "chief": [f"{CHIEF}.{NS}.svc:3333"],
        "ps": [f"{PS0}.{NS}.svc:3333"],
        "worker": [f"{W0}.{NS}.svc:3333", f"{W1}.{NS}.svc:3333"],
    }
    for pod in pods_of(manifests):
        (container,) = pod["spec"]["containers"]
        env = {e["name"]: e["value"] for e in container["env"]}
        tf_config = json.loads(env["TF_CONFIG"])
        labels = pod["metadata"]["labels"]
        assert tf_config["cluster"] == expected
        assert tf_config["task"] == {
            "type": labels["weiflow.io/task-type"],
            "index": int(labels["weiflow.io/task-index"]),
        }
        assert (
            f"{pod['metadata']['name']}.{NS}.svc:3333"
            == expected[tf_config["task"]["type"]][tf_config["task"]["index"]]
        )
        (service_port,) = services[pod["metadata"]["name"]]["spec"]["ports"]
        assert container["ports"] == [{"name": "grpc", "containerPort": 3333, "protocol": "TCP"}]
        assert service_port["port"] == service_port["targetPort"] == 3333


def test_each_headless_service_selects_exactly_its_own_pod() -> None:
    manifests = rendered()
    pods = pods_of(manifests)
    for service in (m for m in manifests if m["kind"] == "Service"):
        assert service["spec"]["clusterIP"] == "None"
        selector = service["spec"]["selector"].items()
        selected = [p["metadata"]["name"] for p in pods if selector <= p["metadata"]["labels"].items()]
        assert selected == [service["metadata"]["name"]]


def test_pods_run_the_images_python_with_the_jobs_env_and_labels() -> None:
    manifests = rendered()
    assert [m["kind"] for m in manifests] == ["Service"] * 4 + ["Pod"] * 4
    pods = {p["metadata"]["name"]: p for p in pods_of(manifests)}
    assert list(pods) == ALL  # servers first, the chief last
    assert pods[CHIEF]["spec"]["containers"][0]["command"] == ["python", *JOB.chief_argv[1:]]
    assert pods[W1]["spec"]["containers"][0]["command"] == ["python", "-m", "weiflow.engines.tensorflow.server"]
    for name, pod in pods.items():
        assert pod["metadata"]["namespace"] == NS
        assert pod["spec"]["restartPolicy"] == "Never"
        assert pod["spec"]["containers"][0]["image"] == IMAGE
        env = [e["name"] for e in pod["spec"]["containers"][0]["env"]]
        assert env == ["PYTHONUNBUFFERED", "TF_CONFIG"]
        labels = pod["metadata"]["labels"]
        assert labels["weiflow.io/node"] == "train"
        assert labels["app.kubernetes.io/managed-by"] == "weiflow"
        assert labels["weiflow.io/job"] == JOB.name
        assert name.endswith(f"-{labels['weiflow.io/task-type']}-{labels['weiflow.io/task-index']}")


def test_without_ps_the_chief_trains_alone() -> None:
    alone = ClusterJob(name="solo", ps=0, workers=3, chief_argv=("py", "-m", "trainer"))
    manifests = render_manifests(alone, image=IMAGE, namespace=NS)
    assert [(m["kind"], m["metadata"]["name"]) for m in manifests] == [
        ("Service", "solo-chief-0"),
        ("Pod", "solo-chief-0"),
    ]
    env = {e["name"]: e["value"] for e in manifests[1]["spec"]["containers"][0]["env"]}
    assert json.loads(env["TF_CONFIG"])["cluster"] == {"chief": [f"solo-chief-0.{NS}.svc:2222"]}


def test_a_volume_claim_is_mounted_in_every_pod_at_the_launchers_path() -> None:
    manifests = render_manifests(JOB, image=IMAGE, namespace=NS, volumes={"weiflow-var": "/srv/weiflow/var"})
    for pod in pods_of(manifests):
        assert pod["spec"]["volumes"] == [{"name": "data-0", "persistentVolumeClaim": {"claimName": "weiflow-var"}}]
        assert pod["spec"]["containers"][0]["volumeMounts"] == [{"name": "data-0", "mountPath": "/srv/weiflow/var"}]
        assert round_trip(pod) == pod
        client.V1Pod.model_validate(pod)


def test_resources_apply_to_every_container() -> None:
    resources = {"requests": {"cpu": "2", "memory": "4Gi"}, "limits": {"memory": "4Gi"}}
    manifests = render_manifests(JOB, image=IMAGE, namespace=NS, resources=resources)
    for pod in pods_of(manifests):
        assert pod["spec"]["containers"][0]["resources"] == resources
        assert round_trip(pod) == pod


@pytest.mark.parametrize("name", ["feed_ctr", "Feed", "9lives", "x" * 60])
def test_a_job_name_that_makes_no_dns_label_is_refused(name: str) -> None:
    job = ClusterJob(name=name, ps=1, workers=1, chief_argv=("py",))
    with pytest.raises(ValueError, match="not a DNS label"):
        render_manifests(job, image=IMAGE, namespace=NS)


@pytest.mark.parametrize("path", sorted(DEPLOY.glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_manifests_equal_a_fresh_render(path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    text = path.read_text()
    prefix = "# Generated by: python -m weiflow.engines.tensorflow.kubernetes "
    assert text.startswith(prefix)
    assert main(shlex.split(text.splitlines()[0].removeprefix(prefix))) == 0
    assert capsys.readouterr().out == text, f"{path} is stale: regenerate it with the command on its first line"


def test_the_shipped_training_sample_is_one_ps_and_two_workers_of_the_release_image() -> None:
    docs = list(yaml.safe_load_all((DEPLOY / "feed_ctr-train.yaml").read_text()))
    pods = [d for d in docs if d["kind"] == "Pod"]
    tasks = sorted(p["metadata"]["labels"]["weiflow.io/task-type"] for p in pods)
    assert tasks == ["chief", "ps", "worker", "worker"]
    assert {p["spec"]["containers"][0]["image"] for p in pods} == {"weiflow:0.1.0"}
    kinds = sorted(d["kind"] for d in yaml.safe_load_all((DEPLOY / "rbac.yaml").read_text()))
    assert kinds == ["Role", "RoleBinding", "ServiceAccount"]


# --- run, watch, delete against the client's interfaces ---------------------------------------


def pod(name: str, phase: str, **status: Any) -> client.V1Pod:
    return client.V1Pod(metadata=client.V1ObjectMeta(name=name), status=client.V1PodStatus(phase=phase, **status))


def container(**state: Any) -> client.V1ContainerStatus:
    """The status of a pod's one container in a state: ``terminated=...`` or ``waiting=...``."""
    return client.V1ContainerStatus(
        name="tensorflow",
        image=IMAGE,
        image_id="",
        ready=False,
        restart_count=0,
        state=client.V1ContainerState(**state),
    )


def listing(version: str, **phases: str) -> client.V1PodList:
    """Every pod of JOB Running, but those named (``worker_1="Failed"``)."""
    items = [pod(name, phases.get(name.removeprefix("wf-ctr-1a2b-").replace("-", "_"), "Running")) for name in ALL]
    return client.V1PodList(items=items, metadata=client.V1ListMeta(resource_version=version))


class Watches:
    """A watch_factory. Each stream() plays the next script: events, an exception to raise, or "block"
    (wait until the watch is stopped); then it ends, as an expired watch does."""

    def __init__(self, *scripts: list[Any]) -> None:
        self.scripts = list(scripts)
        self.streams: list[tuple[Any, tuple[Any, ...], dict[str, Any]]] = []
        self.blocked = threading.Event()
        self.made: list[FakeWatch] = []

    def __call__(self) -> FakeWatch:
        self.made.append(FakeWatch(self))
        return self.made[-1]


class FakeWatch:
    def __init__(self, owner: Watches) -> None:
        self.owner = owner
        self.stopped = threading.Event()

    def stream(self, func: Any, *args: Any, **kwargs: Any) -> Iterator[dict[str, Any]]:
        self.owner.streams.append((func, args, kwargs))
        if not self.owner.scripts:
            raise AssertionError("the backend kept watching after the script ended")
        for step in self.owner.scripts.pop(0):
            if step == "block":
                self.owner.blocked.set()
                assert self.stopped.wait(10), "nobody stopped the watch"
                return
            if isinstance(step, BaseException):
                raise step
            yield {"type": step[0], "object": step[1]}

    def stop(self) -> None:
        self.stopped.set()


def fake_api(*listings: client.V1PodList) -> Any:
    api = mock.create_autospec(client.CoreV1Api, instance=True)
    api.list_namespaced_pod.side_effect = list(listings)
    api.read_namespaced_pod_log.return_value = "step 120 loss 0.41\n\nResourceExhausted: OOM when allocating\n"
    return api


def backend(api: Any, watches: Watches, **settings: Any) -> KubernetesCluster:
    return KubernetesCluster(image=IMAGE, namespace=NS, api=api, watch_factory=watches, **settings)


def fail_for(failing: str, exc: Exception) -> Any:
    """A side effect: deleting ``failing`` raises ``exc``, any other name succeeds."""

    def delete(name: str, *args: Any, **kwargs: Any) -> Any:
        if name == failing:
            raise exc
        return mock.DEFAULT

    return delete


def deleted(api: Any, kind: str) -> set[str]:
    calls = getattr(api, f"delete_namespaced_{kind}").call_args_list
    assert all(c.args[1] == NS and c.kwargs["propagation_policy"] == "Background" for c in calls)
    return {c.args[0] for c in calls}


def test_chief_success_deletes_servers_and_services_and_returns() -> None:
    api = fake_api(listing("5"))
    watches = Watches([("ADDED", pod(CHIEF, "Running")), ("MODIFIED", pod(CHIEF, "Succeeded"))])
    cluster = backend(api, watches)
    cluster.run(JOB)

    api_client = client.ApiClient()
    sent = [api_client.sanitize_for_serialization(c.args[1]) for c in api.create_namespaced_service.call_args_list]
    sent += [api_client.sanitize_for_serialization(c.args[1]) for c in api.create_namespaced_pod.call_args_list]
    assert sent == rendered()  # servers' pods before the chief's
    assert all(c.args[0] == NS for c in api.create_namespaced_pod.call_args_list)
    ((func, args, kwargs),) = watches.streams
    assert func is api.list_namespaced_pod and args == (NS,)
    assert kwargs["label_selector"] == "weiflow.io/job=wf-ctr-1a2b" and kwargs["resource_version"] == "5"
    assert deleted(api, "pod") == {PS0, W0, W1}  # the chief ended on its own: kept, with its log
    assert deleted(api, "service") == set(ALL)
    assert cluster.processes() == {"ps:0": PS0, "worker:0": W0, "worker:1": W1, "chief:0": CHIEF}


def test_a_failed_worker_fails_the_run_and_everything_else_is_deleted() -> None:
    oom = container(terminated=client.V1ContainerStateTerminated(exit_code=137, reason="OOMKilled"))
    api = fake_api(listing("5"))
    watches = Watches([("MODIFIED", pod(W1, "Failed", container_statuses=[oom]))])
    with pytest.raises(ClusterFailed) as failure:
        backend(api, watches).run(JOB)
    message = str(failure.value)
    assert f"worker:1 of 'wf-ctr-1a2b' (pod {W1}) ended with phase Failed (exit code 137, OOMKilled)" in message
    assert "ResourceExhausted: OOM when allocating" in message
    assert f"kubectl logs {W1} -n {NS}" in message
    api.read_namespaced_pod_log.assert_called_once_with(W1, NS, tail_lines=15)
    assert deleted(api, "pod") == {PS0, W0, CHIEF}
    assert deleted(api, "service") == set(ALL)


def test_a_server_that_exits_by_itself_is_a_failure_too() -> None:
    api = fake_api(listing("5", ps_0="Succeeded"))
    with pytest.raises(ClusterFailed, match=r"ps:0 .* phase Succeeded .*never exit on their own"):
        backend(api, Watches()).run(JOB)
    assert deleted(api, "pod") == {W0, W1, CHIEF}


def test_a_chief_that_succeeded_wins_over_a_server_that_ended_since() -> None:
    api = fake_api(listing("5", worker_0="Failed", chief_0="Succeeded"))
    backend(api, Watches()).run(JOB)
    assert deleted(api, "pod") == {PS0, W1}  # the pods that ended on their own are kept


def test_a_failed_chief_fails_the_run() -> None:
    api = fake_api(listing("5"))
    evicted = pod(CHIEF, "Failed", reason="Evicted", message="The node was low on resource: memory.")
    with pytest.raises(ClusterFailed, match=r"the chief of 'wf-ctr-1a2b' .*Evicted; The node was low"):
        backend(api, Watches([("MODIFIED", evicted)])).run(JOB)
    assert deleted(api, "pod") == {PS0, W0, W1}
    assert deleted(api, "service") == set(ALL)


def test_stop_from_another_thread_deletes_everything_and_run_raises() -> None:
    api = fake_api(listing("5"))
    watches = Watches(["block"])
    cluster = backend(api, watches)

    def cancel() -> None:
        assert watches.blocked.wait(10)
        cluster.stop()

    stopper = threading.Thread(target=cancel)
    stopper.start()
    with pytest.raises(ClusterFailed, match="was stopped"):
        cluster.run(JOB)
    stopper.join()
    assert watches.made[0].stopped.is_set()
    assert deleted(api, "pod") == set(ALL)
    assert deleted(api, "service") == set(ALL)


def test_stop_before_run_creates_nothing() -> None:
    api = fake_api()
    cluster = backend(api, Watches())
    cluster.stop()
    with pytest.raises(ClusterFailed, match="stopped before it started"):
        cluster.run(JOB)
    api.create_namespaced_service.assert_not_called()
    api.create_namespaced_pod.assert_not_called()


def test_a_404_on_delete_is_ignored() -> None:
    api = fake_api(listing("5"))
    api.delete_namespaced_pod.side_effect = fail_for(W0, ApiException(404, "Not Found"))
    backend(api, Watches([("MODIFIED", pod(CHIEF, "Succeeded"))])).run(JOB)
    assert deleted(api, "pod") == {PS0, W0, W1}


def test_a_delete_that_fails_is_reported_with_the_cleanup_command() -> None:
    api = fake_api(listing("5"))
    api.delete_namespaced_service.side_effect = fail_for(PS0, ApiException(500, "Boom"))
    with pytest.raises(ClusterFailed, match=rf"service {PS0}: 500 Boom(.|\n)*kubectl delete pods,services -l"):
        backend(api, Watches([("MODIFIED", pod(CHIEF, "Succeeded"))])).run(JOB)
    assert deleted(api, "service") == set(ALL)  # the others are still deleted


def test_an_expired_watch_lists_again_and_watches_from_the_new_version() -> None:
    api = fake_api(listing("5"), listing("9"), listing("12", chief_0="Succeeded"))
    gone = ApiException(410, "Gone: too old resource version")
    backend(api, Watches([], [gone])).run(JOB)  # expired with no event; then 410 Gone
    assert api.list_namespaced_pod.call_count == 3
    assert deleted(api, "pod") == {PS0, W0, W1}


def test_the_watch_follows_the_version_of_the_latest_list() -> None:
    api = fake_api(listing("5"), listing("9"))
    watches = Watches([], [("MODIFIED", pod(CHIEF, "Succeeded"))])
    backend(api, watches, watch_timeout_s=7).run(JOB)
    assert [kwargs["resource_version"] for _, _, kwargs in watches.streams] == ["5", "9"]
    assert [kwargs["timeout_seconds"] for _, _, kwargs in watches.streams] == [7, 7]


def test_a_pod_deleted_by_someone_else_fails_the_run() -> None:
    api = fake_api(listing("5"))
    with pytest.raises(ClusterFailed, match=rf"pod {W0} .*was deleted by someone else"):
        backend(api, Watches([("DELETED", pod(W0, "Running"))])).run(JOB)
    assert deleted(api, "pod") == set(ALL)


PULL_BACKOFF = client.V1ContainerStateWaiting(reason="ImagePullBackOff", message=f"pull {IMAGE}")
UNSCHEDULABLE = client.V1PodCondition(type="PodScheduled", status="False", message="0/3 nodes: Insufficient cpu")


@pytest.mark.parametrize(
    ("status", "reason"),
    [
        ({"container_statuses": [container(waiting=PULL_BACKOFF)]}, f"ImagePullBackOff: pull {IMAGE}"),
        ({"conditions": [UNSCHEDULABLE]}, "not scheduled: 0/3 nodes: Insufficient cpu"),
    ],
)
def test_a_pod_pending_past_the_start_timeout_fails_with_its_reason(status: dict[str, Any], reason: str) -> None:
    stuck = listing("5")
    stuck.items[1] = pod(W0, "Pending", **status)
    api = fake_api(stuck)
    with pytest.raises(ClusterFailed, match=rf"pod {W0} .*still Pending after 0s \({reason}\)"):
        backend(api, Watches(), start_timeout_s=0).run(JOB)
    assert deleted(api, "pod") == set(ALL)


def test_an_api_error_names_the_cause_and_a_fix() -> None:
    api = fake_api()
    body = json.dumps({"kind": "Status", "message": 'pods is forbidden: cannot create resource "pods"'})
    api.create_namespaced_pod.side_effect = ApiException(403, "Forbidden", body=body)
    with pytest.raises(ClusterFailed, match=r"403 Forbidden: pods is forbidden(.|\n)*deploy/tensorflow/rbac.yaml"):
        backend(api, Watches()).run(JOB)
    assert deleted(api, "service") == set(ALL)


def test_leftovers_of_an_earlier_attempt_fail_the_run_and_are_deleted() -> None:
    api = fake_api()
    api.create_namespaced_service.side_effect = ApiException(409, "Conflict")
    with pytest.raises(ClusterFailed, match=r"409 Conflict(.|\n)*earlier attempt of this run left pods"):
        backend(api, Watches()).run(JOB)
    api.create_namespaced_pod.assert_not_called()
    assert deleted(api, "pod") == set(ALL)  # they carry this run's names
    assert deleted(api, "service") == set(ALL)


def test_without_any_kubernetes_config_run_says_where_it_looked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "missing"))
    monkeypatch.setenv("HOME", str(tmp_path))
    with pytest.raises(ClusterFailed, match=r"not running in a pod(.|\n)*KUBECONFIG"):
        KubernetesCluster(image=IMAGE).run(JOB)


# Which RBAC permission each CoreV1Api method needs. A method the backend starts calling fails
# this test until it is added here and, when the Role lacks it, to rbac_manifests.
PERMISSION = {
    "create_namespaced_pod": ("pods", "create"),
    "create_namespaced_service": ("services", "create"),
    "list_namespaced_pod": ("pods", "list"),
    "delete_namespaced_pod": ("pods", "delete"),
    "delete_namespaced_service": ("services", "delete"),
    "read_namespaced_pod_log": ("pods/log", "get"),
}


def test_the_role_allows_every_call_the_backend_makes() -> None:
    (role,) = [m for m in rbac_manifests(NS) if m["kind"] == "Role"]
    allowed = {(res, verb) for rule in role["rules"] for res in rule["resources"] for verb in rule["verbs"]}
    api = fake_api(listing("5"), listing("6"))
    watches = Watches([], [("MODIFIED", pod(W1, "Failed"))])
    with pytest.raises(ClusterFailed):
        backend(api, watches).run(JOB)
    called = {name for name, _, _ in api.mock_calls if "(" not in name}  # not calls on answers
    assert called <= PERMISSION.keys(), f"add {called - PERMISSION.keys()} to PERMISSION"
    needed = {PERMISSION[name] for name in called}
    if watches.streams:
        needed.add(("pods", "watch"))
    assert needed == allowed  # every call allowed, and nothing allowed that is never used


# --- end to end through the real client, against a loopback API server -------------------------


class FakeApiServer(BaseHTTPRequestHandler):
    """Just enough of the Kubernetes API for one run: pods start Running; the watch reports the chief done."""

    pods: dict[str, dict[str, Any]]
    requests: list[tuple[str, str, dict[str, list[str]], Any]]

    def _answer(self, code: int, body: Any) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _record(self) -> tuple[str, dict[str, list[str]], Any]:
        url = urlsplit(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        body = json.loads(self.rfile.read(length)) if length else None
        self.requests.append((self.command, url.path, parse_qs(url.query), body))
        return url.path, parse_qs(url.query), body

    def do_POST(self) -> None:
        path, _, body = self._record()
        if path.endswith("/pods"):
            body = {**body, "status": {"phase": "Running"}}
            self.pods[body["metadata"]["name"]] = body
        self._answer(201, body)

    def do_GET(self) -> None:
        _, query, _ = self._record()
        if query.get("watch") != ["true"]:
            self._answer(200, {"kind": "PodList", "apiVersion": "v1", "metadata": {"resourceVersion": "7"},
                               "items": list(self.pods.values())})  # fmt: skip
            return
        chief = next(p for n, p in self.pods.items() if n.endswith("-chief-0"))
        event = {"type": "MODIFIED", "object": {**chief, "status": {"phase": "Succeeded"}}}
        self.send_response(200)  # streamed: no length, the connection closes after the events
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(json.dumps(event).encode() + b"\n")

    def do_DELETE(self) -> None:
        path, _, _ = self._record()
        name = path.rsplit("/", 1)[1]
        if path.endswith(f"/pods/{name}"):
            self._answer(
                200,
                {
                    **self.pods[name],
                    "metadata": {**self.pods[name]["metadata"], "deletionTimestamp": "2026-11-01T00:00:00Z"},
                },
            )
        else:  # the other shape servers answer a delete with, which a V1Service cannot hold
            self._answer(200, {"kind": "Status", "apiVersion": "v1", "status": "Success", "details": {"name": name}})

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass


@pytest.mark.integration
def test_a_run_through_the_real_client_and_watch_against_a_loopback_api_server() -> None:
    handler = type("Handler", (FakeApiServer,), {"pods": {}, "requests": []})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        configuration = client.Configuration(host=f"http://127.0.0.1:{server.server_address[1]}")
        api = client.CoreV1Api(client.ApiClient(configuration))
        KubernetesCluster(image=IMAGE, namespace=NS, api=api, watch_timeout_s=5).run(JOB)
    finally:
        server.shutdown()
        server.server_close()
    requests = handler.requests
    assert [body for method, _, _, body in requests if method == "POST"] == rendered()
    (watch_query,) = [query for method, _, query, _ in requests if method == "GET" and "watch" in query]
    assert watch_query["resourceVersion"] == ["7"] and watch_query["timeoutSeconds"] == ["5"]
    assert watch_query["labelSelector"] == ["weiflow.io/job=wf-ctr-1a2b"]
    deletes = [(path, query["propagationPolicy"]) for method, path, query, _ in requests if method == "DELETE"]
    assert sorted(deletes) == sorted(
        [(f"/api/v1/namespaces/{NS}/pods/{name}", ["Background"]) for name in (PS0, W0, W1)]
        + [(f"/api/v1/namespaces/{NS}/services/{name}", ["Background"]) for name in ALL]
    )


def test_the_engine_picks_the_kubernetes_backend_with_the_var_directory_mounted(tmp_path: Path) -> None:
    from types import SimpleNamespace

    from weiflow.engines.tensorflow.executor import _backend
    from weiflow.errors import ModuleFailed

    ctx: Any = SimpleNamespace(
        node=SimpleNamespace(id="train"), run=SimpleNamespace(settings=SimpleNamespace(var_dir=tmp_path))
    )
    module: Any = SimpleNamespace(id="fit")
    cluster = {"backend": "kubernetes", "image": IMAGE, "namespace": NS, "volume-claim": "weiflow-var"}
    backend = _backend(ctx, module, cluster, tmp_path / "work")
    assert isinstance(backend, KubernetesCluster)
    assert backend.namespace == NS and backend.volumes == {"weiflow-var": str(tmp_path.resolve())}
    with pytest.raises(ModuleFailed, match=re.escape('needs image="..."')):
        _backend(ctx, module, {**cluster, "image": None}, tmp_path / "work")
