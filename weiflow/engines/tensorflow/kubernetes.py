"""The kubernetes backend: a parameter-server cluster as plain pods, each with a headless Service.

Every task of a :class:`ClusterJob` (the chief, every PS, every worker) becomes one pod with
``restartPolicy: Never`` and one headless Service of the same name, so that each task has a
stable DNS name, ``<job>-<type>-<index>.<namespace>.svc``, which ``TF_CONFIG`` can name before
any pod has an IP. Plain pods need no operator or CRD in the cluster (a Kubeflow TFJob would
need the training operator); docs/tensorflow-kubernetes.md gives the reasons and the lifecycle.

The lifecycle is cluster.py's contract, with one Kubernetes twist taken from TFJob's default
clean-pod policy: pods WeiFlow has to stop are deleted, pods that ended on their own are kept
so that ``kubectl logs`` still reads them.

- chief Succeeded: every PS and worker pod and every Service is deleted; ``run`` returns.
- chief Failed, a PS or worker pod ended (servers never exit on their own, so Succeeded is a
  failure too), a pod vanished or stayed Pending too long: the rest is deleted and ``run``
  raises :class:`ClusterFailed` naming the pod, its exit and the tail of its log.
- ``stop()``: every pod, ended or not, and every Service is deleted; ``run`` raises.

``python -m weiflow.engines.tensorflow.kubernetes render|rbac`` prints the manifests as YAML;
deploy/tensorflow/ holds files made that way, and a test keeps them equal to a fresh render.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import shlex
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, Protocol

import urllib3
import yaml  # type: ignore[import-untyped]  # PyYAML ships no types; the kubernetes client depends on it
from kubernetes import client, config, watch
from kubernetes.client.exceptions import ApiException

from weiflow.engines.tensorflow.cluster import CHIEF, ClusterFailed, ClusterJob, TaskRef

__all__ = [
    "DEFAULT_PORT",
    "KubernetesCluster",
    "Manifest",
    "WatchLike",
    "main",
    "rbac_manifests",
    "render_manifests",
    "render_yaml",
]

DEFAULT_PORT = 2222
JOB_LABEL, TYPE_LABEL, INDEX_LABEL = "weiflow.io/job", "weiflow.io/task-type", "weiflow.io/task-index"
MANAGED_BY = {"app.kubernetes.io/managed-by": "weiflow"}
CONTAINER = "tensorflow"
_ENDED = ("Succeeded", "Failed")
# Services need an RFC 1035 label (pods accept more); one rule for both keeps the names equal.
_DNS_LABEL = re.compile(r"[a-z]([-a-z0-9]{0,61}[a-z0-9])?")
_LOG_LINES = 15

log = logging.getLogger(__name__)

Manifest = dict[str, Any]


def _tasks(job: ClusterJob) -> list[TaskRef]:
    """Servers first, the chief last (it is created last); with ``ps=0`` the chief trains alone, as locally."""
    return [*job.servers, TaskRef(CHIEF, 0)] if job.ps else [TaskRef(CHIEF, 0)]


def _name(job: ClusterJob, task: TaskRef) -> str:
    """The pod's name and its Service's name."""
    return f"{job.name}-{task.job}-{task.index}"


def render_manifests(
    job: ClusterJob,
    *,
    image: str,
    namespace: str,
    port: int = DEFAULT_PORT,
    resources: Mapping[str, Any] | None = None,
    volumes: Mapping[str, str] | None = None,
) -> list[Manifest]:
    """Every Service, then every pod (servers before the chief), as plain dicts in the API's JSON shape.

    ``resources`` (a V1ResourceRequirements dict, e.g. ``{"requests": {"cpu": "2"}}``) applies
    to every container. ``volumes`` maps a PersistentVolumeClaim to the path every pod mounts it
    at: the launcher's work directory (job, checkpoints, results) and local storage must be
    there, at the same paths as on the launcher. The commands run with the image's ``python``.
    """
    tasks = _tasks(job)
    for task in tasks:
        if not _DNS_LABEL.fullmatch(_name(job, task)):
            raise ValueError(
                f"cluster job name {job.name!r} gives the pod and Service name {_name(job, task)!r}, which is not "
                "a DNS label: lowercase letters, digits and '-', starting with a letter, at most 63 characters"
            )
    cluster: dict[str, list[str]] = {}
    for task in [tasks[-1], *tasks[:-1]]:  # chief first, as LocalCluster writes it
        cluster.setdefault(task.job, []).append(f"{_name(job, task)}.{namespace}.svc:{port}")
    services: list[Manifest] = []
    pods: list[Manifest] = []
    for task in tasks:
        name = _name(job, task)
        selector = {JOB_LABEL: job.name, TYPE_LABEL: task.job, INDEX_LABEL: str(task.index)}
        labels = {**job.labels, **MANAGED_BY, **selector}
        services.append(
            {
                "apiVersion": "v1",
                "kind": "Service",
                "metadata": {"name": name, "namespace": namespace, "labels": dict(labels)},
                "spec": {
                    "clusterIP": "None",
                    # Servers resolve each other while starting, before any readiness would be
                    # reported: publish the address as soon as the pod has one.
                    "publishNotReadyAddresses": True,
                    "selector": dict(selector),
                    "ports": [{"name": "grpc", "port": port, "targetPort": port, "protocol": "TCP"}],
                },
            }
        )
        argv = job.chief_argv if task.job == CHIEF else job.server_argv
        env = {**job.env, "TF_CONFIG": job.tf_config(cluster, task)}
        container: Manifest = {
            "name": CONTAINER,
            "image": image,
            "command": ["python", *argv[1:]],  # argv[0] is the launcher's interpreter, not the image's
            "env": [{"name": key, "value": value} for key, value in env.items()],
            "ports": [{"name": "grpc", "containerPort": port, "protocol": "TCP"}],
        }
        if resources:
            container["resources"] = dict(resources)
        claims = sorted((volumes or {}).items())
        if claims:
            container["volumeMounts"] = [{"name": f"data-{i}", "mountPath": path} for i, (_, path) in enumerate(claims)]
        pods.append(
            {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {"name": name, "namespace": namespace, "labels": dict(labels)},
                "spec": {
                    "restartPolicy": "Never",
                    # Training never calls the Kubernetes API, so it gets no token; and every job adds
                    # Services, which Kubernetes would otherwise inject as variables into every pod.
                    "automountServiceAccountToken": False,
                    "enableServiceLinks": False,
                    "containers": [container],
                    **(
                        {
                            "volumes": [
                                {"name": f"data-{i}", "persistentVolumeClaim": {"claimName": claim}}
                                for i, (claim, _) in enumerate(claims)
                            ]
                        }
                        if claims
                        else {}
                    ),
                },
            }
        )
    return services + pods


def rbac_manifests(namespace: str, service_account: str = "weiflow-launcher") -> list[Manifest]:
    """The ServiceAccount, Role and RoleBinding a launcher needs: exactly the calls KubernetesCluster makes."""
    role = "weiflow-tensorflow-launcher"

    def metadata(name: str) -> Manifest:
        return {"name": name, "namespace": namespace, "labels": dict(MANAGED_BY)}

    return [
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": metadata(service_account)},
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "Role",
            "metadata": metadata(role),
            "rules": [
                {"apiGroups": [""], "resources": ["pods"], "verbs": ["create", "list", "watch", "delete"]},
                {"apiGroups": [""], "resources": ["pods/log"], "verbs": ["get"]},
                {"apiGroups": [""], "resources": ["services"], "verbs": ["create", "delete"]},
            ],
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "RoleBinding",
            "metadata": metadata(role),
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": role},
            "subjects": [{"kind": "ServiceAccount", "name": service_account, "namespace": namespace}],
        },
    ]


def render_yaml(manifests: Sequence[Manifest], args: Sequence[str]) -> str:
    """Multi-document YAML headed by the command that regenerates it (``args`` of :func:`main`)."""
    header = (
        f"# Generated by: python -m weiflow.engines.tensorflow.kubernetes {shlex.join(args)}\n"
        "# Do not edit: change the command and regenerate (deploy/tensorflow/README.md).\n"
    )
    # No line folding: TF_CONFIG stays one readable line.
    return header + str(yaml.safe_dump_all(manifests, sort_keys=False, explicit_start=True, width=1 << 16))


class WatchLike(Protocol):
    """What KubernetesCluster needs of ``kubernetes.watch.Watch``; tests pass a fake."""

    def stream(self, func: Callable[..., Any], *args: Any, **kwargs: Any) -> Iterator[dict[str, Any]]: ...

    def stop(self) -> None: ...


class KubernetesCluster:
    """Runs a :class:`ClusterJob` as pods and Services in ``namespace`` (see the module docstring).

    ``api`` defaults to a CoreV1Api configured at run time, in-cluster if the launcher runs in
    a pod, else from the kubeconfig. ``watch_timeout_s`` is how long one watch request lasts
    before the pods are listed again; it bounds how late a Pending check or ``stop`` is noticed.
    A pod still Pending ``start_timeout_s`` after the run started (a wrong image, no room in the
    cluster) fails the run; None waits forever.
    """

    def __init__(
        self,
        *,
        image: str,
        namespace: str = "default",
        api: client.CoreV1Api | None = None,
        watch_factory: Callable[[], WatchLike] = watch.Watch,
        port: int = DEFAULT_PORT,
        resources: Mapping[str, Any] | None = None,
        volumes: Mapping[str, str] | None = None,
        watch_timeout_s: int = 60,
        start_timeout_s: float | None = 600.0,
    ) -> None:
        self.image = image
        self.namespace = namespace
        self.port = port
        self.resources = resources
        self.volumes = dict(volumes or {})
        self.watch_timeout_s = watch_timeout_s
        self.start_timeout_s = start_timeout_s
        self._api = api
        self._watch_factory = watch_factory
        self._stopped = threading.Event()
        # stop() and processes() read _job, _created and _watch from other threads. run changes each
        # by one assignment or one append, so no lock is needed, which a signal handler could
        # deadlock on. _pods (the last state seen of each pod) is run's alone.
        self._job: ClusterJob | None = None
        self._created: list[str] = []
        self._watch: WatchLike | None = None
        self._pods: dict[str, client.V1Pod] = {}

    def processes(self) -> dict[str, str]:
        """Task name (``ps:0``) to pod name, for the pods created so far."""
        job = self._job
        if job is None:
            return {}
        created = set(self._created)
        return {str(task): _name(job, task) for task in _tasks(job) if _name(job, task) in created}

    def run(self, job: ClusterJob) -> None:
        manifests = render_manifests(
            job,
            image=self.image,
            namespace=self.namespace,
            port=self.port,
            resources=self.resources,
            volumes=self.volumes,
        )
        api = self._client()
        self._job = job
        try:
            for manifest in manifests:
                if self._stopped.is_set():
                    raise ClusterFailed(f"cluster '{job.name}' was stopped before it started")
                self._create(api, manifest)
            self._follow(api, job)
        except (ApiException, urllib3.exceptions.HTTPError) as exc:
            raise ClusterFailed(
                f"cluster '{job.name}' in namespace '{self.namespace}': the Kubernetes API call failed: "
                f"{_api_error(exc)}; every pod and service of the cluster was deleted"
                f"{_api_hint(exc, job, self.namespace)}"
            ) from exc
        finally:
            # A stopped run deletes everything; otherwise pods that ended on their own keep their log.
            ended = {name for name, pod in self._pods.items() if _phase(pod) in _ENDED}
            errors = self._delete(api, job, keep=set() if self._stopped.is_set() else ended)
            if errors:
                failure = sys.exception()  # what ended the run, if anything: say both
                left = self._left_behind(job, errors)
                raise ClusterFailed(f"{failure}\n{left}" if failure else left) from failure

    def stop(self) -> None:
        self._stopped.set()
        current = self._watch
        if current is not None:
            current.stop()  # the real Watch also shuts its socket down, so a blocked read returns
        job, api = self._job, self._api
        if job is not None and api is not None:
            errors = self._delete(api, job, keep=set())
            if errors:
                # No raise here (stop may run in a signal handler); run deletes again and raises.
                log.warning("%s", self._left_behind(job, errors))

    # --- run's parts ------------------------------------------------------------------------

    def _client(self) -> client.CoreV1Api:
        if self._api is None:
            try:
                config.load_incluster_config()  # type: ignore[no-untyped-call]
            except config.ConfigException:
                try:
                    config.load_kube_config()  # type: ignore[no-untyped-call]
                except config.ConfigException as exc:
                    raise ClusterFailed(
                        f"backend 'kubernetes' found no cluster to talk to: not running in a pod, and {exc}\n"
                        "    hint: set KUBECONFIG or write ~/.kube/config, or run the launcher in the cluster"
                    ) from exc
            self._api = client.CoreV1Api()
        return self._api

    def _create(self, api: client.CoreV1Api, manifest: Manifest) -> None:
        # model_validate is strict (unknown fields raise), unlike the client's own deserializer.
        if manifest["kind"] == "Service":
            api.create_namespaced_service(self.namespace, client.V1Service.model_validate(manifest))
        else:
            api.create_namespaced_pod(self.namespace, client.V1Pod.model_validate(manifest))
            self._created.append(manifest["metadata"]["name"])

    def _follow(self, api: client.CoreV1Api, job: ClusterJob) -> None:
        """List the job's pods, then watch them from that list's version; again when the watch expires."""
        tasks = {_name(job, task): task for task in _tasks(job)}
        selector = f"{JOB_LABEL}={job.name}"
        started = time.monotonic()
        while not self._stopped.is_set():
            listing = api.list_namespaced_pod(self.namespace, label_selector=selector)
            self._pods.update({_pod_name(pod): pod for pod in listing.items if _pod_name(pod) in tasks})
            # The chief first: a chief that Succeeded ends the run whatever the servers did since.
            for pod in sorted(listing.items, key=lambda pod: tasks.get(_pod_name(pod)) != TaskRef(CHIEF, 0)):
                if self._seen(job, tasks, pod):
                    return
            missing = sorted(set(tasks) - {_pod_name(pod) for pod in listing.items})
            if missing and not self._stopped.is_set():
                raise ClusterFailed(self._vanished(job, missing[0]))
            self._check_pending(job, started)
            self._watch = current = self._watch_factory()
            try:
                for event in current.stream(
                    api.list_namespaced_pod,
                    self.namespace,
                    label_selector=selector,
                    resource_version=listing.metadata.resource_version if listing.metadata else None,
                    timeout_seconds=self.watch_timeout_s,
                    # A read timeout past the server's own end of the watch: a connection that died
                    # silently would otherwise block this read forever.
                    _request_timeout=(10, self.watch_timeout_s + 30),
                ):
                    if self._stopped.is_set():
                        break
                    if event["type"] == "DELETED":
                        raise ClusterFailed(self._vanished(job, _pod_name(event["object"])))
                    if event["type"] in ("ADDED", "MODIFIED") and self._seen(job, tasks, event["object"]):
                        return
                    self._check_pending(job, started)
            except ApiException as exc:
                if exc.status != 410:  # 410 Gone: the listed version is too old to watch from; list again
                    raise
            except urllib3.exceptions.HTTPError:
                pass  # the connection dropped, or stop() shut it down: list again (or end, when stopped)
            finally:
                current.stop()
        raise self._stopped_error(job)

    def _seen(self, job: ClusterJob, tasks: Mapping[str, TaskRef], pod: client.V1Pod) -> bool:
        """Record a pod's state; True when the chief has succeeded, ClusterFailed when the run has failed."""
        if self._stopped.is_set():
            raise self._stopped_error(job)  # stop() ends pods too: their end is no failure of theirs
        name = _pod_name(pod)
        task = tasks.get(name)
        if task is None:
            return False  # not one of ours, though it carries our label
        self._pods[name] = pod
        phase = _phase(pod)
        if task.job == CHIEF:
            if phase == "Succeeded":
                return True
            if phase == "Failed":
                raise ClusterFailed(self._failure(pod, f"the chief of '{job.name}'", ""))
        elif phase in _ENDED:
            why = " (PS and worker servers never exit on their own)" if phase == "Succeeded" else ""
            raise ClusterFailed(self._failure(pod, f"{task} of '{job.name}'", f" while training ran{why}"))
        return False

    def _check_pending(self, job: ClusterJob, started: float) -> None:
        if self.start_timeout_s is None or time.monotonic() - started < self.start_timeout_s:
            return
        for name, pod in self._pods.items():
            if _phase(pod) == "Pending":
                raise ClusterFailed(
                    f"pod {name} of '{job.name}' is still Pending after {self.start_timeout_s:g}s "
                    f"({_pending_reason(pod)}); every pod and service of the cluster was deleted\n"
                    "    hint: check the image name and its pull secret, and that the cluster has room for the pods"
                )

    def _stopped_error(self, job: ClusterJob) -> ClusterFailed:
        return ClusterFailed(f"cluster '{job.name}' was stopped (cancelled); every pod and service was deleted")

    def _failure(self, pod: client.V1Pod, who: str, when: str) -> str:
        name = _pod_name(pod)
        tail = self._log_tail(name)
        return (
            f"{who} (pod {name}) ended with {_ended_how(pod)}{when}; every other pod and the services "
            f"were deleted{tail}\n    hint: kubectl logs {name} -n {self.namespace}  (the pod is kept for its log)"
        )

    def _vanished(self, job: ClusterJob, name: str) -> str:
        return (
            f"pod {name} of '{job.name}' was deleted by someone else while training ran; every other pod and "
            f"service of the cluster was deleted\n    hint: kubectl get events -n {self.namespace} "
            f"--field-selector involvedObject.name={name}"
        )

    def _log_tail(self, name: str) -> str:
        if self._api is None:
            return ""
        try:
            text = self._api.read_namespaced_pod_log(name, self.namespace, tail_lines=_LOG_LINES)
        except (ApiException, urllib3.exceptions.HTTPError):
            return ""  # the failure is reported anyway; the hint says where the log is
        lines = [line for line in text.splitlines() if line.strip()]
        return "; last lines of its log:\n" + "\n".join(lines) if lines else ""

    def _delete(self, api: client.CoreV1Api, job: ClusterJob, keep: set[str]) -> list[str]:
        """Delete the job's pods (but ``keep``) and Services; already gone is fine. Returns what failed."""
        errors: list[str] = []
        for kind, delete in (("pod", api.delete_namespaced_pod), ("service", api.delete_namespaced_service)):
            for task in _tasks(job):
                name = _name(job, task)
                if kind == "pod" and name in keep:
                    continue
                try:
                    # The answer is left undecoded: servers send the object or a Status, and the strict
                    # models fail on the shape they do not expect, which must not stop the cleanup.
                    answer: Any = delete(name, self.namespace, propagation_policy="Background", _preload_content=False)
                    answer.close()
                except ApiException as exc:
                    if exc.status != 404:
                        errors.append(f"{kind} {name}: {_api_error(exc)}")
                except urllib3.exceptions.HTTPError as exc:
                    errors.append(f"{kind} {name}: {_api_error(exc)}")
        return errors

    def _left_behind(self, job: ClusterJob, errors: list[str]) -> str:
        return (
            f"could not delete everything of cluster '{job.name}': " + "; ".join(errors) + "\n    hint: kubectl delete "
            f"pods,services -l {JOB_LABEL}={job.name} -n {self.namespace}"
        )


def _pod_name(pod: client.V1Pod) -> str:
    return (pod.metadata.name if pod.metadata else None) or ""


def _phase(pod: client.V1Pod) -> str:
    return (pod.status.phase if pod.status else None) or "Pending"


def _ended_how(pod: client.V1Pod) -> str:
    """``phase Failed (exit code 137, OOMKilled)``, from the pod's and its container's status."""
    status = pod.status or client.V1PodStatus()
    details = [status.reason] if status.reason else []  # Evicted, DeadlineExceeded
    for container in status.container_statuses or []:
        ended = container.state.terminated if container.state else None
        if ended is not None:
            details.append(f"exit code {ended.exit_code}" + (f", {ended.reason}" if ended.reason else ""))
    if status.message:
        details.append(status.message)
    return f"phase {_phase(pod)}" + (f" ({'; '.join(details)})" if details else "")


def _pending_reason(pod: client.V1Pod) -> str:
    """Why a pod has not started: its container's waiting reason, else why it is not scheduled."""
    status = pod.status or client.V1PodStatus()
    for container in status.container_statuses or []:
        waiting = container.state.waiting if container.state else None
        if waiting is not None and waiting.reason:
            return waiting.reason + (f": {waiting.message}" if waiting.message else "")
    for condition in status.conditions or []:
        if condition.type == "PodScheduled" and condition.status == "False":
            return f"not scheduled: {condition.message or condition.reason}"
    return "no reason reported"


def _api_error(exc: ApiException | urllib3.exceptions.HTTPError) -> str:
    if not isinstance(exc, ApiException):
        return f"cannot reach the API server ({exc})"
    try:
        message = json.loads(exc.body or "{}").get("message")  # the API's Status object says the most
    except (ValueError, AttributeError):
        message = None
    return f"{exc.status} {exc.reason}" + (f": {message}" if message else "")


def _api_hint(exc: ApiException | urllib3.exceptions.HTTPError, job: ClusterJob, namespace: str) -> str:
    status = exc.status if isinstance(exc, ApiException) else None
    if status == 403:
        return "\n    hint: the launcher's service account needs the Role in deploy/tensorflow/rbac.yaml"
    if status == 409:  # the same names: the leftovers were deleted with the rest
        return (
            "\n    hint: an earlier attempt of this run left pods or services behind; they are deleted now, so a "
            f"retry can start once they are gone: kubectl get pods,services -l {JOB_LABEL}={job.name} -n {namespace}"
        )
    return ""


def _pairs(values: Sequence[str] | None, flag: str) -> dict[str, str]:
    pairs: dict[str, str] = {}
    for value in values or []:
        key, sep, rest = value.partition("=")
        if not sep or not key:
            raise SystemExit(f"{flag} takes KEY=VALUE, got {value!r}")
        pairs[key] = rest
    return pairs


def main(argv: Sequence[str] | None = None) -> int:
    """Print manifests as YAML: ``render`` one cluster job's pods and services, or the launcher's ``rbac``."""
    args_list = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="python -m weiflow.engines.tensorflow.kubernetes", description=main.__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    render = commands.add_parser("render", help="the pods and services of one cluster job")
    render.add_argument("--name", required=True, help="the job's name, DNS-safe (it prefixes pod names)")
    render.add_argument("--ps", type=int, default=0)
    render.add_argument("--workers", type=int, default=1)
    render.add_argument("--image", required=True)
    render.add_argument("--namespace", default="default")
    render.add_argument("--port", type=int, default=DEFAULT_PORT)
    render.add_argument("--env", action="append", metavar="KEY=VALUE")
    render.add_argument("--label", action="append", metavar="KEY=VALUE")
    render.add_argument("chief", nargs="+", help="the chief's command, after --")
    rbac = commands.add_parser("rbac", help="the ServiceAccount, Role and RoleBinding of a launcher")
    rbac.add_argument("--namespace", default="default")
    rbac.add_argument("--service-account", default="weiflow-launcher")
    args = parser.parse_args(args_list)
    if args.command == "render":
        job = ClusterJob(
            name=args.name,
            ps=args.ps,
            workers=args.workers,
            chief_argv=tuple(args.chief),
            env=_pairs(args.env, "--env"),
            labels=_pairs(args.label, "--label"),
        )
        manifests = render_manifests(job, image=args.image, namespace=args.namespace, port=args.port)
    else:
        manifests = rbac_manifests(args.namespace, args.service_account)
    sys.stdout.write(render_yaml(manifests, args_list))
    return 0


if __name__ == "__main__":
    sys.exit(main())
