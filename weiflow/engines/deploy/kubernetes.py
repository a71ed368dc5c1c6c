"""The prediction service on Kubernetes: render its Deployment, Service and HorizontalPodAutoscaler, apply them.

``weiflow deploy render NAME`` prints (or writes) three objects for the model ``NAME``:

- a Deployment whose pods run ``weiflow serve --repository /models --model NAME`` on the REST
  port 8501, probed at ``/v2/health/ready`` (traffic only once a version is warm) and
  ``/v2/health/live``, as a non-root user on a read-only root file system;
- a ClusterIP Service, port 8501 named ``http``;
- an ``autoscaling/v2`` HorizontalPodAutoscaler on CPU utilisation.

Pods get the model repository at ``/models`` one of two ways:

- ``claim``: a PersistentVolumeClaim holding the repository, mounted read-only;
- ``sync_from``: an emptyDir filled from the repository's URI by ``weiflow deploy sync``
  (sync.py): an init container copies once, so the server starts with every version and its
  readiness does not flap, then a native sidecar (an init container with
  ``restartPolicy: Always``, Kubernetes 1.29+) syncs every ``sync_every_s`` seconds, so new
  versions and routing changes reach the server, which reloads them by itself.

Rendering needs PyYAML only; applying needs the kubernetes client (the ``kubernetes`` extra).
Both are imported when used, so the rest of ``weiflow deploy`` works without them.

The engines are independent (an import-linter contract), so nothing here comes from the
TensorFlow engine's kubernetes module; the ideas are the same: plain dicts in the API's JSON
shape, checked against the client's models, a YAML header holding the command that regenerates it.
"""

from __future__ import annotations

import copy
import json
import os
import re
import shlex
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from weiflow.errors import ConfigError, WeiflowError
from weiflow.modelrepo import ModelRepoError, check_model_name
from weiflow.spec.uris import uri_problem

if TYPE_CHECKING:
    from kubernetes import client

__all__ = [
    "MODELS_PATH",
    "REST_PORT",
    "ApplyError",
    "Clients",
    "Manifest",
    "ServingOptions",
    "WatchLike",
    "apply_manifests",
    "load_clients",
    "render_manifests",
    "render_yaml",
    "server_command",
    "wait_available",
    "write_yaml",
]

REST_PORT = 8501  # TensorFlow Serving's REST port: clients written for it keep their URLs
MODELS_PATH = "/models"
SERVER_CONTAINER = "serving"
SYNC_CONTAINER, SYNC_ONCE_CONTAINER = "sync", "sync-once"
READY_PATH, LIVE_PATH = "/v2/health/ready", "/v2/health/live"
MANAGED_BY = {"app.kubernetes.io/managed-by": "weiflow"}
APP_NAME = "weiflow-serving"
MODEL_ANNOTATION = "weiflow.io/model"
# A fixed non-root id: images built FROM python:*-slim have no such user, and need none.
RUN_AS = 10001
SYNC_PROTOCOLS = ("file", "hdfs", "s3", "s3a", "gs", "gcs")

# Services need an RFC 1035 label, and the Deployment's name prefixes its pods' names.
_DNS_LABEL = re.compile(r"[a-z]([-a-z0-9]{0,61}[a-z0-9])?")
# RFC 1123 subdomain: what a PersistentVolumeClaim or Secret may be named.
_DNS_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
# A Kubernetes quantity as people write them for CPU and memory: 500m, 2, 1.5, 512Mi, 4G.
_QUANTITY = re.compile(r"[0-9]+(\.[0-9]+)?(m|k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei)?")

Manifest = dict[str, Any]


class ApplyError(WeiflowError):
    """Applying the manifests, or waiting for the Deployment, failed; the message names a fix."""


def default_name(model: str) -> str:
    """``feed_ctr`` -> ``feed-ctr-serving``: model names allow '_', '.' and capitals; object names do not."""
    return re.sub(r"[^a-z0-9-]", "-", model.lower()).strip("-") + "-serving"


@dataclass(frozen=True)
class ServingOptions:
    """Everything ``render`` needs; ``check()`` (called by :func:`render_manifests`) names the flag to fix."""

    model: str
    image: str
    namespace: str = "default"
    name: str = ""  # the objects' name; default: default_name(model)
    replicas: int = 2
    min_replicas: int = 2
    max_replicas: int = 10
    cpu_target: int = 70
    cpu: str = "1"
    memory: str = "2Gi"
    claim: str | None = None
    sync_from: str | None = None
    sync_every_s: int = 30
    sync_secret: str | None = None

    @property
    def object_name(self) -> str:
        return self.name or default_name(self.model)

    def check(self) -> None:
        try:
            check_model_name(self.model)
        except ModelRepoError as exc:
            raise ConfigError(f"deploy render: {exc.message}\n    hint: {exc.hint}") from None
        if not self.image.strip():
            raise ConfigError(
                "deploy render: --image is required: the image the pods run, with weiflow installed "
                "(e.g. --image registry.example/weiflow:0.1.0); no default, so a cluster never runs a guess"
            )
        if not _DNS_LABEL.fullmatch(self.object_name):
            flag = "--name" if self.name else f"--name (the default from model '{self.model}')"
            raise ConfigError(
                f"deploy render: {flag} '{self.object_name}' is not a DNS label: lowercase letters, digits "
                "and '-', starting with a letter, at most 63 characters; pass --name NAME"
            )
        if not _DNS_LABEL.fullmatch(self.namespace):
            raise ConfigError(f"deploy render: --namespace '{self.namespace}' is not a DNS label")
        if self.min_replicas < 1 or self.max_replicas < self.min_replicas:
            raise ConfigError(
                f"deploy render: --min-replicas {self.min_replicas} and --max-replicas {self.max_replicas}: "
                "need 1 <= min <= max"
            )
        if not self.min_replicas <= self.replicas <= self.max_replicas:
            raise ConfigError(
                f"deploy render: --replicas {self.replicas} is outside --min-replicas {self.min_replicas} .. "
                f"--max-replicas {self.max_replicas}; the autoscaler would move it at once: pick one in range"
            )
        if not 1 <= self.cpu_target <= 100:
            raise ConfigError(f"deploy render: --cpu-target {self.cpu_target} is not a percent from 1 to 100")
        for flag, value in (("--cpu", self.cpu), ("--memory", self.memory)):
            if not _QUANTITY.fullmatch(value):
                raise ConfigError(
                    f"deploy render: {flag} '{value}' is not a Kubernetes quantity (e.g. --cpu 500m, --memory 2Gi)"
                )
        if (self.claim is None) == (self.sync_from is None):
            raise ConfigError(
                "deploy render: say how pods get the model repository: --claim PVC (a volume claim holding it, "
                "mounted read-only) or --sync-from URI (copied into the pod from s3://, hdfs:// or file://), "
                "exactly one of them"
            )
        if self.claim is not None and not _DNS_SUBDOMAIN.fullmatch(self.claim):
            raise ConfigError(f"deploy render: --claim '{self.claim}' is not a PersistentVolumeClaim name")
        if self.sync_from is not None:
            problem = uri_problem(self.sync_from)
            scheme = self.sync_from.partition("://")[0] if "://" in self.sync_from else ""
            if problem is None and scheme not in SYNC_PROTOCOLS:
                problem = f"'{self.sync_from}' is not a URI a pod can read (use {', '.join(SYNC_PROTOCOLS)})"
            if problem:
                raise ConfigError(
                    f"deploy render: --sync-from: {problem}\n    hint: the repository's URI as the pods see it, "
                    "e.g. s3://bucket/models or hdfs://namenode/weiflow/models"
                )
            if self.sync_every_s < 1:
                raise ConfigError(f"deploy render: --sync-every {self.sync_every_s}: give seconds from 1")
        if self.sync_secret is not None and (self.sync_from is None or not _DNS_SUBDOMAIN.fullmatch(self.sync_secret)):
            raise ConfigError(
                f"deploy render: --sync-secret '{self.sync_secret}' needs --sync-from and must name a Secret"
            )


def _env() -> list[Manifest]:
    # HOME: the root file system is read-only, and storage clients keep caches and credentials under ~.
    # A new list each time: YAML would write an object shared by two containers as an alias.
    return [{"name": "PYTHONUNBUFFERED", "value": "1"}, {"name": "HOME", "value": "/tmp"}]


def _security_context() -> Manifest:
    return {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,  # writes go to /tmp and /models, both emptyDirs
        "capabilities": {"drop": ["ALL"]},
    }


def _sync_container(options: ServingOptions, name: str, *, once: bool) -> Manifest:
    assert options.sync_from is not None
    command = ["weiflow", "deploy", "sync", options.sync_from, MODELS_PATH, "--model", options.model]
    command += ["--once"] if once else ["--every", str(options.sync_every_s)]
    container: Manifest = {"name": name, "image": options.image, "command": command}
    if not once:
        container["restartPolicy"] = "Always"  # a native sidecar: runs beside the server, restarted if it dies
    if options.sync_secret:
        container["envFrom"] = [{"secretRef": {"name": options.sync_secret}}]  # storage credentials
    return container | {
        "env": _env(),
        # Copying is I/O bound: a small request, and a memory limit that streaming copies stay under.
        "resources": {"requests": {"cpu": "100m", "memory": "256Mi"}, "limits": {"memory": "512Mi"}},
        "securityContext": _security_context(),
        "volumeMounts": [{"name": "models", "mountPath": MODELS_PATH}, {"name": "tmp", "mountPath": "/tmp"}],
    }


def server_command(model: str) -> list[str]:
    """The prediction service's command line (issue 13's contract), serving ``model`` from ``/models``."""
    return [
        "weiflow",
        "serve",
        f"--repository={MODELS_PATH}",
        f"--model_name={model}",
        f"--rest_api_port={REST_PORT}",
        # The pod's network namespace is the boundary; 127.0.0.1 would be unreachable.
        "--rest_api_host=0.0.0.0",
    ]


def render_manifests(options: ServingOptions) -> list[Manifest]:
    """The Deployment, the Service and the HorizontalPodAutoscaler, as plain dicts in the API's JSON shape."""
    options.check()
    name, namespace = options.object_name, options.namespace
    selector = {"app.kubernetes.io/name": APP_NAME, "app.kubernetes.io/instance": name}
    labels = {**selector, **MANAGED_BY}
    # The model name may be longer than a label value may be: an annotation holds it whole.
    metadata = {
        "name": name,
        "namespace": namespace,
        "labels": labels,
        "annotations": {MODEL_ANNOTATION: options.model},
    }
    server: Manifest = {
        "name": SERVER_CONTAINER,
        "image": options.image,
        "command": server_command(options.model),
        "env": _env(),
        "ports": [{"name": "http", "containerPort": REST_PORT, "protocol": "TCP"}],
        # Ready once every version it routes to is loaded and warm: no request reaches a cold pod.
        "readinessProbe": {
            "httpGet": {"path": READY_PATH, "port": "http"},
            "periodSeconds": 5,
            "timeoutSeconds": 2,
            "failureThreshold": 3,
        },
        "livenessProbe": {
            "httpGet": {"path": LIVE_PATH, "port": "http"},
            "periodSeconds": 10,
            "timeoutSeconds": 2,
            "failureThreshold": 3,
        },
        # Loading and warming a large model takes a while: liveness starts counting after this passes.
        "startupProbe": {
            "httpGet": {"path": LIVE_PATH, "port": "http"},
            "periodSeconds": 5,
            "failureThreshold": 60,
        },
        # No CPU limit: CFS throttling shows up as tail latency, and the autoscaler works from requests.
        "resources": {
            "requests": {"cpu": options.cpu, "memory": options.memory},
            "limits": {"memory": options.memory},
        },
        "securityContext": _security_context(),
        "volumeMounts": [
            {"name": "models", "mountPath": MODELS_PATH, "readOnly": True},
            {"name": "tmp", "mountPath": "/tmp"},
        ],
    }
    if options.claim is not None:
        models_volume: Manifest = {
            "name": "models",
            "persistentVolumeClaim": {"claimName": options.claim, "readOnly": True},
        }
        init_containers: list[Manifest] = []
    else:
        models_volume = {"name": "models", "emptyDir": {}}
        # In order: the first copy completes before the sidecar starts, and both before the server.
        init_containers = [
            _sync_container(options, SYNC_ONCE_CONTAINER, once=True),
            _sync_container(options, SYNC_CONTAINER, once=False),
        ]
    pod_spec: Manifest = {
        # The server never calls the Kubernetes API; no token, and no service variables injected.
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": RUN_AS,
            "runAsGroup": RUN_AS,
            "fsGroup": RUN_AS,  # so the non-root user can read the claim and write the emptyDirs
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        **({"initContainers": init_containers} if init_containers else {}),
        "containers": [server],
        "volumes": [models_volume, {"name": "tmp", "emptyDir": {}}],
    }
    deployment: Manifest = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": copy.deepcopy(metadata),
        "spec": {
            "replicas": options.replicas,
            "selector": {"matchLabels": dict(selector)},
            # Never below the wanted capacity during a rollout: a new pod is ready before an old one goes.
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}},
            "template": {
                "metadata": {"labels": dict(labels), "annotations": {MODEL_ANNOTATION: options.model}},
                "spec": pod_spec,
            },
        },
    }
    service: Manifest = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": copy.deepcopy(metadata),
        "spec": {
            "type": "ClusterIP",
            "selector": dict(selector),
            "ports": [{"name": "http", "port": REST_PORT, "targetPort": "http", "protocol": "TCP"}],
        },
    }
    autoscaler: Manifest = {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": copy.deepcopy(metadata),
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": name},
            "minReplicas": options.min_replicas,
            "maxReplicas": options.max_replicas,
            "metrics": [
                {
                    "type": "Resource",
                    "resource": {
                        "name": "cpu",
                        "target": {"type": "Utilization", "averageUtilization": options.cpu_target},
                    },
                }
            ],
        },
    }
    return [deployment, service, autoscaler]


def _yaml() -> Any:
    try:
        import yaml  # type: ignore[import-untyped]  # PyYAML ships no types
    except ImportError:
        raise ConfigError(
            "deploy render needs PyYAML\n    hint: pip install 'weiflow[kubernetes]' (the kubernetes client brings it)"
        ) from None
    return yaml


def render_yaml(manifests: Sequence[Manifest], args: Sequence[str]) -> str:
    """Multi-document YAML headed by the command that regenerates it (``args`` after ``weiflow deploy``)."""
    header = (
        f"# Generated by: weiflow deploy {shlex.join(args)}\n"
        "# Do not edit: change the command and regenerate (deploy/serving/README.md).\n"
    )
    return header + str(_yaml().safe_dump_all(manifests, sort_keys=False, explicit_start=True, width=1 << 16))


def write_yaml(text: str, directory: Path, name: str) -> Path:
    """Write ``<directory>/<name>.yaml`` through a temporary file and a rename: never a half-written file."""
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / f"{name}.yaml"
    fd, temporary = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        Path(temporary).replace(target)
    finally:
        Path(temporary).unlink(missing_ok=True)
    return target


# --- apply and wait ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Clients:
    """The three API groups the objects live in; tests pass autospecs of the client's classes."""

    apps: client.AppsV1Api
    core: client.CoreV1Api
    autoscaling: client.AutoscalingV2Api


class WatchLike(Protocol):
    """What :func:`wait_available` needs of ``kubernetes.watch.Watch``; tests pass a fake."""

    def stream(self, func: Callable[..., Any], *args: Any, **kwargs: Any) -> Iterator[dict[str, Any]]: ...

    def stop(self) -> None: ...


def load_clients(kubeconfig: str | None = None, context: str | None = None) -> Clients:
    """Clients from ``kubeconfig``/``context`` when given; else in-cluster, else the default kubeconfig."""
    try:
        from kubernetes import client, config
    except ImportError:
        raise ConfigError(
            "deploy render --apply needs the kubernetes client\n    hint: pip install 'weiflow[kubernetes]'"
        ) from None
    try:
        if kubeconfig is None and context is None:
            try:
                config.load_incluster_config()  # type: ignore[no-untyped-call]
            except config.ConfigException:
                config.load_kube_config()  # type: ignore[no-untyped-call]
        else:
            config.load_kube_config(config_file=kubeconfig, context=context)  # type: ignore[no-untyped-call]
    except (config.ConfigException, OSError) as exc:
        raise ConfigError(
            f"deploy render --apply: no cluster to talk to: {exc}\n"
            "    hint: pass --kubeconfig FILE (and --context NAME), set KUBECONFIG, or run in the cluster"
        ) from None
    return Clients(client.AppsV1Api(), client.CoreV1Api(), client.AutoscalingV2Api())


# kind -> (the client's model, the Clients field, the method suffix)
_KINDS = {
    "Deployment": ("V1Deployment", "apps", "namespaced_deployment"),
    "Service": ("V1Service", "core", "namespaced_service"),
    "HorizontalPodAutoscaler": ("V2HorizontalPodAutoscaler", "autoscaling", "namespaced_horizontal_pod_autoscaler"),
}
_REPLACE_ATTEMPTS = 3


def apply_manifests(clients: Clients, manifests: Sequence[Manifest]) -> list[str]:
    """Create each object, or replace it when it exists (409); returns ``created|replaced Kind/name`` lines.

    A replace carries the live object's ``resourceVersion``, so a concurrent change makes it
    conflict (and it is read and replaced again) instead of being overwritten unseen. It keeps
    what the cluster, not the manifest, owns: a Service's cluster IPs (immutable) and a
    Deployment's replica count (the autoscaler's, once it runs; resetting it would undo a scale-up).
    """
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

    done: list[str] = []
    for manifest in manifests:
        kind, name, namespace = manifest["kind"], manifest["metadata"]["name"], manifest["metadata"]["namespace"]
        model_name, group, suffix = _KINDS[kind]
        model = getattr(client, model_name)
        api = getattr(clients, group)
        try:
            try:
                # model_validate is strict (an unknown field raises), unlike the client's own deserializer.
                getattr(api, f"create_{suffix}")(namespace, model.model_validate(manifest))
                done.append(f"created {kind}/{name}")
                continue
            except ApiException as exc:
                if exc.status != 409:
                    raise
            for attempt in range(_REPLACE_ATTEMPTS):
                live = getattr(api, f"read_{suffix}")(name, namespace)
                body = model.model_validate(_carry_live_fields(manifest, live))
                try:
                    getattr(api, f"replace_{suffix}")(name, namespace, body)
                    break
                except ApiException as exc:
                    if exc.status != 409 or attempt == _REPLACE_ATTEMPTS - 1:
                        raise
            done.append(f"replaced {kind}/{name}")
        except ApiException as exc:
            raise ApplyError(
                f"deploy render --apply: {kind}/{name} in namespace '{namespace}': {_api_error(exc)}"
                + (f" (applied so far: {', '.join(done)})" if done else "")
                + _api_hint(exc, kind, namespace)
            ) from exc
    return done


def _carry_live_fields(manifest: Manifest, live: Any) -> Manifest:
    body = copy.deepcopy(manifest)
    metadata = getattr(live, "metadata", None)
    if metadata is not None and metadata.resource_version:
        body["metadata"]["resourceVersion"] = metadata.resource_version
    spec = getattr(live, "spec", None)
    if spec is None:
        return body
    if manifest["kind"] == "Service":
        for field, key in (("cluster_ip", "clusterIP"), ("cluster_ips", "clusterIPs")):
            if getattr(spec, field, None):
                body["spec"][key] = getattr(spec, field)
    if manifest["kind"] == "Deployment" and getattr(spec, "replicas", None) is not None:
        body["spec"]["replicas"] = spec.replicas
    return body


def _api_error(exc: Any) -> str:
    try:
        message = json.loads(exc.body or "{}").get("message")  # the API's Status object says the most
    except (ValueError, AttributeError):
        message = None
    return f"{exc.status} {exc.reason}" + (f": {message}" if message else "")


def _api_hint(exc: Any, kind: str, namespace: str) -> str:
    if exc.status == 403:
        return (
            f"\n    hint: the kubeconfig's user needs create, get and update on {kind.lower()}s in '{namespace}' "
            "(kubectl auth can-i create deployments -n NAMESPACE)"
        )
    if exc.status == 404:
        return f"\n    hint: namespace '{namespace}' may not exist: kubectl create namespace {namespace}"
    return ""


def _rollout(deployment: Any) -> tuple[bool, str]:
    """(done, where it stands), as ``kubectl rollout status`` judges a Deployment."""
    metadata, spec, status = deployment.metadata, deployment.spec, deployment.status
    if status is None:
        return False, "no status yet"
    for condition in status.conditions or []:
        if condition.type == "Progressing" and condition.reason == "ProgressDeadlineExceeded":
            raise ApplyError(
                f"deployment {metadata.name} exceeded its progress deadline: {condition.message}\n"
                f"    hint: kubectl describe deployment {metadata.name} -n {metadata.namespace} "
                "(and the events of its pods: image pull, probes, room in the cluster)"
            )
    wanted = spec.replicas if spec is not None and spec.replicas is not None else 1
    if metadata.generation and (status.observed_generation or 0) < metadata.generation:
        return False, "waiting for the controller to see the new spec"
    updated, available = status.updated_replicas or 0, status.available_replicas or 0
    if updated < wanted:
        return False, f"{updated} of {wanted} replicas updated"
    if (status.replicas or 0) > updated:
        return False, f"{(status.replicas or 0) - updated} old replicas still terminating"
    if available < updated:
        return False, f"{available} of {updated} updated replicas available"
    return True, f"{available} of {wanted} replicas available"


def wait_available(
    apps: client.AppsV1Api,
    name: str,
    namespace: str,
    *,
    timeout_s: float,
    watch_factory: Callable[[], WatchLike] | None = None,
) -> str:
    """Watch the Deployment until every replica is updated and available; ApplyError after ``timeout_s``."""
    from kubernetes import watch
    from kubernetes.client.exceptions import ApiException

    make_watch: Callable[[], WatchLike] = watch.Watch if watch_factory is None else watch_factory
    deadline = time.monotonic() + timeout_s
    where = "not read yet"
    try:
        while True:
            deployment = apps.read_namespaced_deployment_status(name, namespace)
            done, where = _rollout(deployment)
            if done:
                return where
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            current, watched_at, expired = make_watch(), time.monotonic(), False
            try:
                for event in current.stream(
                    apps.list_namespaced_deployment,
                    namespace,
                    field_selector=f"metadata.name={name}",
                    resource_version=deployment.metadata.resource_version if deployment.metadata else None,
                    timeout_seconds=max(1, int(remaining)),  # the client wants an int, strictly
                    # Past the server's own end of the watch: a silently dead connection must not block forever.
                    _request_timeout=(10, remaining + 30),
                ):
                    if event["type"] == "DELETED":
                        raise ApplyError(
                            f"deployment {name} in namespace '{namespace}' was deleted while waiting for it"
                        )
                    if event["type"] in ("ADDED", "MODIFIED"):
                        done, where = _rollout(event["object"])
                        if done:
                            return where
                    if time.monotonic() >= deadline:
                        break
            except ApiException as exc:
                if exc.status != 410:  # 410 Gone: the version read is too old to watch from; read again
                    raise
                expired = True
            finally:
                current.stop()
            if time.monotonic() >= deadline:
                break
            if not expired:  # a watch the server ended at once (a proxy, an error): pause, do not poll in a loop
                time.sleep(max(0.0, min(1.0 - (time.monotonic() - watched_at), deadline - time.monotonic())))
    except ApiException as exc:
        raise ApplyError(
            f"deploy render --wait: deployment {name} in namespace '{namespace}': {_api_error(exc)}"
        ) from exc
    raise ApplyError(
        f"deployment {name} in namespace '{namespace}' was not available after {timeout_s:g}s ({where})\n"
        f"    hint: kubectl describe deployment {name} -n {namespace}; kubectl get pods -n {namespace} "
        f"-l app.kubernetes.io/instance={name}; a longer --timeout if the model takes that long to load"
    )
