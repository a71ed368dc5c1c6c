"""``weiflow deploy render``: the prediction service's Kubernetes objects, without a cluster.

Manifests are checked against the kubernetes client's own models; the shipped examples in
deploy/serving/ are re-rendered from the command on their first line; apply and wait run
against autospecs of AppsV1Api, CoreV1Api and AutoscalingV2Api (a call with a wrong name or
argument fails) and a scripted watch.
"""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
import yaml
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from weiflow.config import load_settings
from weiflow.engines.deploy import cli
from weiflow.engines.deploy.kubernetes import (
    ApplyError,
    Clients,
    ServingOptions,
    apply_manifests,
    render_manifests,
    wait_available,
)
from weiflow.errors import ConfigError
from weiflow.serving.config import parse_server_options

SERVING = Path(__file__).resolve().parents[3] / "deploy" / "serving"
NS = "serving-ns"
IMAGE = "registry.example/weiflow:0.1.0"
CLAIM = ServingOptions(model="feed_ctr", image=IMAGE, namespace=NS, claim="weiflow-models")
SYNC = ServingOptions(
    model="feed_ctr", image=IMAGE, namespace=NS, sync_from="s3://bucket/models", sync_every_s=15, sync_secret="s3"
)
NAME = "feed-ctr-serving"
MODELS = {"Deployment": "V1Deployment", "Service": "V1Service", "HorizontalPodAutoscaler": "V2HorizontalPodAutoscaler"}


def model_of(manifest: dict[str, Any]) -> Any:
    return getattr(client, MODELS[manifest["kind"]])


def round_trip(manifest: dict[str, Any]) -> Any:
    """The manifest through the client's deserializer and back: a field the model lacks is dropped."""
    api_client = client.ApiClient()
    model = api_client.deserialize(json.dumps(manifest), MODELS[manifest["kind"]], "application/json")
    return api_client.sanitize_for_serialization(model)


def shipped() -> list[dict[str, Any]]:
    return [doc for path in sorted(SERVING.glob("*.yaml")) for doc in yaml.safe_load_all(path.read_text())]


def by_kind(manifests: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {m["kind"]: m for m in manifests}


def containers(deployment: dict[str, Any]) -> dict[str, dict[str, Any]]:
    spec = deployment["spec"]["template"]["spec"]
    return {c["name"]: c for c in [*spec.get("initContainers", []), *spec["containers"]]}


# --- manifests ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "manifest",
    [*render_manifests(CLAIM), *render_manifests(SYNC), *shipped()],
    ids=lambda m: f"{m['kind']}:{m['metadata']['name']}",
)
def test_every_manifest_is_valid_for_the_client_models(manifest: dict[str, Any]) -> None:
    assert round_trip(manifest) == manifest
    model = model_of(manifest).model_validate(manifest)  # strict: unknown fields raise
    assert model.metadata.name and model.metadata.namespace and model.spec is not None


def test_the_validation_catches_a_misspelled_or_missing_field() -> None:
    deployment = by_kind(render_manifests(CLAIM))["Deployment"]
    server = containers(deployment)["serving"]
    misspelled = json.loads(json.dumps(deployment))
    misspelled["spec"]["template"]["spec"]["containers"] = [{**server, "readinesProbe": server["readinessProbe"]}]
    assert round_trip(misspelled) != misspelled
    with pytest.raises(ValueError, match="readinesProbe"):
        client.V1Deployment.model_validate(misspelled)
    nameless = json.loads(json.dumps(deployment))
    nameless["spec"]["template"]["spec"]["containers"] = [{"image": IMAGE}]
    with pytest.raises(ValueError, match="name"):
        round_trip(nameless)


def test_the_server_runs_weiflow_serve_probed_on_the_rest_port_as_non_root() -> None:
    deployment = by_kind(render_manifests(CLAIM))["Deployment"]
    server = containers(deployment)["serving"]
    # The command is one `weiflow serve` accepts, serving this model from the repository the pod gets.
    assert server["command"][:2] == ["weiflow", "serve"]
    options = parse_server_options(server["command"][2:])
    assert (options.repository, options.repository_models) == ("/models", ("feed_ctr",))
    assert (options.rest_api_host, options.rest_api_port) == ("0.0.0.0", 8501)
    assert server["image"] == IMAGE
    assert server["ports"] == [{"name": "http", "containerPort": 8501, "protocol": "TCP"}]
    assert server["readinessProbe"]["httpGet"] == {"path": "/v2/health/ready", "port": "http"}
    assert server["livenessProbe"]["httpGet"] == {"path": "/v2/health/live", "port": "http"}
    assert server["resources"] == {"requests": {"cpu": "1", "memory": "2Gi"}, "limits": {"memory": "2Gi"}}
    assert server["securityContext"]["readOnlyRootFilesystem"] is True
    assert server["securityContext"]["allowPrivilegeEscalation"] is False
    pod = deployment["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] != 0
    assert deployment["spec"]["replicas"] == 2
    assert deployment["metadata"]["annotations"]["weiflow.io/model"] == "feed_ctr"


def test_a_claim_is_mounted_read_only_at_models_and_nothing_syncs() -> None:
    deployment = by_kind(render_manifests(CLAIM))["Deployment"]
    pod = deployment["spec"]["template"]["spec"]
    assert "initContainers" not in pod
    assert pod["volumes"][0] == {
        "name": "models",
        "persistentVolumeClaim": {"claimName": "weiflow-models", "readOnly": True},
    }
    mounts = containers(deployment)["serving"]["volumeMounts"]
    assert {"name": "models", "mountPath": "/models", "readOnly": True} in mounts


def test_sync_fills_an_empty_dir_once_before_the_server_then_keeps_it_in_step() -> None:
    deployment = by_kind(render_manifests(SYNC))["Deployment"]
    pod = deployment["spec"]["template"]["spec"]
    assert pod["volumes"][0] == {"name": "models", "emptyDir": {}}
    once, sidecar = pod["initContainers"]  # in this order: the first copy completes before the sidecar starts
    sync = ["weiflow", "deploy", "sync", "s3://bucket/models", "/models", "--model", "feed_ctr"]
    assert once["command"] == [*sync, "--once"] and "restartPolicy" not in once
    assert sidecar["command"] == [*sync, "--every", "15"] and sidecar["restartPolicy"] == "Always"
    for container in (once, sidecar):
        assert {"name": "models", "mountPath": "/models"} in container["volumeMounts"]  # writable
        assert container["envFrom"] == [{"secretRef": {"name": "s3"}}]
        assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert {"name": "models", "mountPath": "/models", "readOnly": True} in containers(deployment)["serving"][
        "volumeMounts"
    ]


def test_the_service_selects_the_pods_and_the_autoscaler_scales_the_deployment() -> None:
    objects = by_kind(render_manifests(SYNC))
    pod_labels = objects["Deployment"]["spec"]["template"]["metadata"]["labels"]
    assert objects["Deployment"]["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    service = objects["Service"]["spec"]
    assert service["type"] == "ClusterIP" and service["selector"].items() <= pod_labels.items()
    assert service["ports"] == [{"name": "http", "port": 8501, "targetPort": "http", "protocol": "TCP"}]
    hpa = objects["HorizontalPodAutoscaler"]
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": NAME}
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (2, 10)
    (metric,) = hpa["spec"]["metrics"]
    assert metric["resource"] == {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 70}}


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"image": ""}, "--image is required"),
        ({"claim": None}, "--claim PVC .* or --sync-from URI"),
        ({"sync_from": "s3://b/m"}, "exactly one of them"),
        ({"model": "Feed/x"}, "invalid model name"),
        ({"model": "X" * 60}, "--name .*not a DNS label"),
        ({"name": "Bad_Name"}, "--name 'Bad_Name' is not a DNS label"),
        ({"namespace": "Prod"}, "--namespace"),
        ({"replicas": 11}, "--replicas 11 is outside"),
        ({"min_replicas": 5, "max_replicas": 3, "replicas": 4}, "need 1 <= min <= max"),
        ({"cpu_target": 150}, "--cpu-target 150"),
        ({"cpu": "lots"}, "--cpu 'lots' is not a Kubernetes quantity"),
        ({"memory": "2GB"}, "--memory '2GB'"),
        ({"claim": "Not_A_Claim"}, "--claim 'Not_A_Claim'"),
        ({"claim": None, "sync_from": "ftp://host/models"}, "--sync-from: .*not storage"),
        ({"claim": None, "sync_from": "memory://models"}, "--sync-from: .*not a URI a pod can read"),
        ({"claim": None, "sync_from": "s3://b/../m"}, "--sync-from: .*'..'"),
        ({"sync_secret": "creds"}, "--sync-secret 'creds' needs --sync-from"),
    ],
)
def test_bad_options_name_the_flag(changes: dict[str, Any], message: str) -> None:
    options = ServingOptions(**{**vars(CLAIM), **changes})
    with pytest.raises(ConfigError, match=message):
        render_manifests(options)


@pytest.mark.parametrize("path", sorted(SERVING.glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_manifests_equal_a_fresh_render(path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    text = path.read_text()
    prefix = "# Generated by: weiflow deploy "
    assert text.startswith(prefix)
    assert cli.main(shlex.split(text.splitlines()[0].removeprefix(prefix)), load_settings()) == 0
    assert capsys.readouterr().out == text, f"{path} is stale: regenerate it with the command on its first line"


def test_the_shipped_examples_are_one_per_way_of_getting_the_repository() -> None:
    names = sorted(p.name for p in SERVING.glob("*.yaml"))
    assert names == ["feed_ctr-serving-claim.yaml", "feed_ctr-serving-sync.yaml"]
    for name in names:
        kinds = [d["kind"] for d in yaml.safe_load_all((SERVING / name).read_text())]
        assert kinds == ["Deployment", "Service", "HorizontalPodAutoscaler"]


def test_output_writes_one_file_atomically_equal_to_what_is_printed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["render", "feed_ctr", "--image", IMAGE, "--claim", "models"]
    assert cli.main(args, load_settings()) == 0
    printed = capsys.readouterr().out
    out = tmp_path / "out"
    assert cli.main([*args, "-o", str(out)], load_settings()) == 0
    assert [p.name for p in out.iterdir()] == [f"{NAME}.yaml"]  # no temporary file left beside it
    assert (out / f"{NAME}.yaml").read_text() == printed.replace(" ".join(args), " ".join([*args, "-o", str(out)]))


def test_wait_without_apply_is_refused() -> None:
    with pytest.raises(ConfigError, match="add --apply"):
        cli.main(["render", "feed_ctr", "--image", IMAGE, "--claim", "models", "--wait"], load_settings())


def test_the_deploy_cli_does_not_need_the_kubernetes_client() -> None:
    code = "import sys, weiflow.engines.deploy.cli; sys.exit('kubernetes' in sys.modules or 'yaml' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


# --- apply and wait against the client's interfaces -------------------------------------------


def fake_clients() -> Clients:
    return Clients(
        mock.create_autospec(client.AppsV1Api, instance=True),
        mock.create_autospec(client.CoreV1Api, instance=True),
        mock.create_autospec(client.AutoscalingV2Api, instance=True),
    )


CONFLICT = ApiException(409, "Conflict")


def live(kind: str, version: str, **spec: Any) -> Any:
    metadata = client.V1ObjectMeta(name=NAME, namespace=NS, resource_version=version)
    if kind == "Service":
        return client.V1Service(metadata=metadata, spec=client.V1ServiceSpec(**spec))
    if kind == "Deployment":
        template = client.V1PodTemplateSpec()
        return client.V1Deployment(
            metadata=metadata,
            spec=client.V1DeploymentSpec(selector=client.V1LabelSelector(), template=template, **spec),
        )
    target = client.V2CrossVersionObjectReference(api_version="apps/v1", kind="Deployment", name=NAME)
    # The client's models insist on required fields even in an answer: an HPA has a spec.
    return client.V2HorizontalPodAutoscaler(
        metadata=metadata, spec=client.V2HorizontalPodAutoscalerSpec(scale_target_ref=target, max_replicas=3)
    )


def sent(method: Any) -> dict[str, Any]:
    (call,) = method.call_args_list
    return dict(client.ApiClient().sanitize_for_serialization(call.args[-1]))


def test_apply_creates_each_object_through_its_api_group() -> None:
    clients = fake_clients()
    manifests = render_manifests(SYNC)
    assert apply_manifests(clients, manifests) == [
        f"created Deployment/{NAME}",
        f"created Service/{NAME}",
        f"created HorizontalPodAutoscaler/{NAME}",
    ]
    objects = by_kind(manifests)
    assert sent(clients.apps.create_namespaced_deployment) == objects["Deployment"]
    assert sent(clients.core.create_namespaced_service) == objects["Service"]
    assert sent(clients.autoscaling.create_namespaced_horizontal_pod_autoscaler) == objects["HorizontalPodAutoscaler"]
    assert clients.apps.create_namespaced_deployment.call_args.args[0] == NS
    clients.apps.replace_namespaced_deployment.assert_not_called()


def test_an_existing_object_is_replaced_keeping_what_the_cluster_owns() -> None:
    clients = fake_clients()
    for method in (
        clients.apps.create_namespaced_deployment,
        clients.core.create_namespaced_service,
        clients.autoscaling.create_namespaced_horizontal_pod_autoscaler,
    ):
        method.side_effect = CONFLICT
    clients.apps.read_namespaced_deployment.return_value = live("Deployment", "41", replicas=7)
    clients.core.read_namespaced_service.return_value = live(
        "Service", "42", cluster_ip="10.0.0.9", cluster_ips=["10.0.0.9"]
    )
    clients.autoscaling.read_namespaced_horizontal_pod_autoscaler.return_value = live("HPA", "43")
    assert apply_manifests(clients, render_manifests(CLAIM)) == [
        f"replaced Deployment/{NAME}",
        f"replaced Service/{NAME}",
        f"replaced HorizontalPodAutoscaler/{NAME}",
    ]
    clients.apps.read_namespaced_deployment.assert_called_once_with(NAME, NS)
    assert clients.apps.replace_namespaced_deployment.call_args.args[:2] == (NAME, NS)
    deployment = sent(clients.apps.replace_namespaced_deployment)
    assert deployment["metadata"]["resourceVersion"] == "41"
    assert deployment["spec"]["replicas"] == 7  # the autoscaler's count, not the rendered 2
    service = sent(clients.core.replace_namespaced_service)
    assert service["metadata"]["resourceVersion"] == "42"
    assert (service["spec"]["clusterIP"], service["spec"]["clusterIPs"]) == ("10.0.0.9", ["10.0.0.9"])
    hpa = sent(clients.autoscaling.replace_namespaced_horizontal_pod_autoscaler)
    assert hpa["metadata"]["resourceVersion"] == "43"


def test_a_replace_that_conflicts_reads_again_and_retries() -> None:
    clients = fake_clients()
    clients.core.create_namespaced_service.side_effect = CONFLICT
    clients.core.read_namespaced_service.side_effect = [live("Service", "1"), live("Service", "2")]
    clients.core.replace_namespaced_service.side_effect = [CONFLICT, mock.DEFAULT]
    service = by_kind(render_manifests(CLAIM))["Service"]
    assert apply_manifests(clients, [service]) == [f"replaced Service/{NAME}"]
    versions = [c.args[2].metadata.resource_version for c in clients.core.replace_namespaced_service.call_args_list]
    assert versions == ["1", "2"]


def test_a_conflict_that_persists_fails_after_bounded_tries() -> None:
    clients = fake_clients()
    clients.core.create_namespaced_service.side_effect = CONFLICT
    clients.core.read_namespaced_service.return_value = live("Service", "1")
    clients.core.replace_namespaced_service.side_effect = CONFLICT
    with pytest.raises(ApplyError, match=f"Service/{NAME} in namespace '{NS}': 409 Conflict"):
        apply_manifests(clients, [by_kind(render_manifests(CLAIM))["Service"]])
    assert clients.core.replace_namespaced_service.call_count == 3


def test_an_api_error_names_the_object_what_was_applied_and_a_fix() -> None:
    clients = fake_clients()
    body = json.dumps({"kind": "Status", "message": 'services is forbidden: cannot create "services"'})
    clients.core.create_namespaced_service.side_effect = ApiException(403, "Forbidden", body=body)
    with pytest.raises(ApplyError) as failure:
        apply_manifests(clients, render_manifests(CLAIM))
    message = str(failure.value)
    assert f"Service/{NAME} in namespace '{NS}': 403 Forbidden: services is forbidden" in message
    assert f"applied so far: created Deployment/{NAME}" in message and "kubectl auth can-i" in message
    clients.autoscaling.create_namespaced_horizontal_pod_autoscaler.assert_not_called()


def deployment(version: str, *, updated: int = 2, available: int = 2, generation: int = 3, **status: Any) -> Any:
    return client.V1Deployment(
        metadata=client.V1ObjectMeta(name=NAME, namespace=NS, generation=generation, resource_version=version),
        spec=client.V1DeploymentSpec(
            replicas=2, selector=client.V1LabelSelector(), template=client.V1PodTemplateSpec()
        ),
        status=client.V1DeploymentStatus(
            observed_generation=3, replicas=2, updated_replicas=updated, available_replicas=available, **status
        ),
    )


class FakeWatch:
    """A watch_factory's product: each stream() plays the next script (events or an exception), then ends."""

    def __init__(self, scripts: list[list[Any]], streams: list[dict[str, Any]]) -> None:
        self.scripts, self.streams = scripts, streams

    def stream(self, func: Any, *args: Any, **kwargs: Any) -> Iterator[dict[str, Any]]:
        self.streams.append({"func": func, "args": args, **kwargs})
        for step in self.scripts.pop(0) if self.scripts else []:
            if isinstance(step, BaseException):
                raise step
            yield {"type": step[0], "object": step[1]}

    def stop(self) -> None:
        pass


def watches(*scripts: list[Any]) -> tuple[Any, list[dict[str, Any]]]:
    streams: list[dict[str, Any]] = []
    remaining = list(scripts)
    return (lambda: FakeWatch(remaining, streams)), streams


def test_wait_returns_at_once_when_the_deployment_is_available() -> None:
    apps = mock.create_autospec(client.AppsV1Api, instance=True)
    apps.read_namespaced_deployment_status.return_value = deployment("5")
    factory, streams = watches()
    assert wait_available(apps, NAME, NS, timeout_s=5, watch_factory=factory) == "2 of 2 replicas available"
    assert streams == []


def test_wait_watches_from_the_version_read_until_every_replica_is_available() -> None:
    apps = mock.create_autospec(client.AppsV1Api, instance=True)
    apps.read_namespaced_deployment_status.return_value = deployment("5", updated=1, available=0)
    factory, streams = watches([("MODIFIED", deployment("6", available=1)), ("MODIFIED", deployment("7", available=2))])
    assert wait_available(apps, NAME, NS, timeout_s=30, watch_factory=factory) == "2 of 2 replicas available"
    (stream,) = streams
    assert stream["func"] is apps.list_namespaced_deployment and stream["args"] == (NS,)
    assert stream["field_selector"] == f"metadata.name={NAME}" and stream["resource_version"] == "5"
    assert isinstance(stream["timeout_seconds"], int) and 1 <= stream["timeout_seconds"] <= 30


def test_an_expired_watch_reads_the_deployment_again() -> None:
    apps = mock.create_autospec(client.AppsV1Api, instance=True)
    apps.read_namespaced_deployment_status.side_effect = [deployment("5", available=1), deployment("9")]
    factory, _ = watches([ApiException(410, "Gone")])
    wait_available(apps, NAME, NS, timeout_s=30, watch_factory=factory)
    assert apps.read_namespaced_deployment_status.call_count == 2


def test_wait_gives_up_after_the_timeout_saying_where_the_rollout_stands() -> None:
    apps = mock.create_autospec(client.AppsV1Api, instance=True)
    apps.read_namespaced_deployment_status.return_value = deployment("5", available=1)
    factory, _ = watches([("MODIFIED", deployment("6", available=1))])
    with pytest.raises(ApplyError, match=r"not available after 0.2s \(1 of 2 updated replicas available\)"):
        wait_available(apps, NAME, NS, timeout_s=0.2, watch_factory=factory)


def test_a_progress_deadline_fails_the_wait_at_once() -> None:
    apps = mock.create_autospec(client.AppsV1Api, instance=True)
    stuck = client.V1DeploymentCondition(
        type="Progressing", status="False", reason="ProgressDeadlineExceeded", message="ReplicaSet has timed out"
    )
    apps.read_namespaced_deployment_status.return_value = deployment("5", available=0, conditions=[stuck])
    with pytest.raises(ApplyError, match="exceeded its progress deadline: ReplicaSet has timed out"):
        wait_available(apps, NAME, NS, timeout_s=30, watch_factory=watches()[0])


def test_a_deployment_deleted_while_waiting_fails_the_wait() -> None:
    apps = mock.create_autospec(client.AppsV1Api, instance=True)
    apps.read_namespaced_deployment_status.return_value = deployment("5", available=0)
    factory, _ = watches([("DELETED", deployment("6", available=0))])
    with pytest.raises(ApplyError, match="was deleted while waiting"):
        wait_available(apps, NAME, NS, timeout_s=30, watch_factory=factory)


def test_render_apply_wait_from_the_command_line(monkeypatch: pytest.MonkeyPatch, capsys: Any) -> None:
    clients = fake_clients()
    clients.apps.read_namespaced_deployment_status.return_value = deployment("5")
    seen: list[tuple[str | None, str | None]] = []

    def load(kubeconfig: str | None, context: str | None) -> Clients:
        seen.append((kubeconfig, context))
        return clients

    monkeypatch.setattr(cli, "load_clients", load)
    args = ["render", "feed_ctr", "--image", IMAGE, "--namespace", NS, "--claim", "models"]
    assert (
        cli.main([*args, "--apply", "--kubeconfig", "/k/config", "--context", "prod", "--wait"], load_settings()) == 0
    )
    assert seen == [("/k/config", "prod")]
    captured = capsys.readouterr()
    assert captured.out == ""  # applied, not printed
    assert f"created Deployment/{NAME}" in captured.err and "2 of 2 replicas available" in captured.err


def test_apply_without_a_cluster_says_which_flags_to_pass(tmp_path: Path) -> None:
    from weiflow.engines.deploy.kubernetes import load_clients

    with pytest.raises(ConfigError, match=r"no cluster to talk to(.|\n)*--kubeconfig FILE"):
        load_clients(str(tmp_path / "missing"), None)
