"""Which versions of which models are loaded, and which one serves a request.

The prediction service's model manager (shared/DESIGN.md, "Prediction service"): it polls
each model's base path, loads and warms new versions, routes requests, and unloads versions
nobody wants any more, so that a new version or a routing change lands without a failed request.

Two kinds of models:

- **config models** (``--model_config_file``, ``--model_base_path``): TensorFlow Serving's rules.
  The version policy picks versions among the complete directories; a request without a version
  gets the highest loaded one; labels come from the config.
- **routed models** (``--repository``): a WeiFlow model repository's model, whose
  ``weiflow-routing.json`` decides. Every version that is live or labelled is loaded (the
  newest when nothing is live); a request is routed by the split: with a ``key``,
  :meth:`Routing.assign` (a stable hash: the same key lands on the same version in every process
  and after a restart, and a growing canary keeps its keys); without one, a weighted draw.

A poll, in order (each model in turn, in the poll thread; requests never wait for it):

1. the complete version directories are listed (``saved_model.pb``, plus the manifest for routed
   models; staging names like ``.tmp-3`` are not versions) and the routing file read (a damaged
   one keeps the last good routing); a version whose directory vanished is unloaded, but a base
   path that cannot be listed at all (moved away, an unmounted share) changes nothing: the loaded
   versions serve on, and the error is logged, until it is readable again;
2. the *target* is computed: the versions wanted now (and, for routed models, the routing);
3. wanted versions not yet loaded are loaded and warmed, one at a time (peak memory: one version
   more than what serves), without holding the lock requests take;
4. when every version the target needs is AVAILABLE, the target becomes the *active* one, in
   one step under the lock: requests see the old routing or the new one, never a mix and never
   a version still loading;
5. versions that neither the active target nor this poll's target needs are taken out of routing,
   drained (their in-flight leases finish, a bounded wait) and closed.

A version that fails to load or warm up is shown as END with its error (TensorFlow Serving's
status), logged, and treated as absent: it never replaces the version serving before it, and it
is not tried again until its directory changes.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from weiflow.errors import ConfigError
from weiflow.modelrepo.contracts import (
    MANIFEST_PATH,
    ROUTING_FILE,
    SAVED_MODEL_FILES,
    ModelRepoError,
    check_model_name,
    parse_version,
)
from weiflow.modelrepo.routing import Routing
from weiflow.serving.config import AllVersions, ModelConfig, VersionPolicy, resolve_versions

__all__ = [
    "AVAILABLE",
    "END",
    "LOADING",
    "START",
    "UNLOADING",
    "ModelManager",
    "ModelNotFound",
    "ServedModel",
    "UnknownVersionLabel",
]

log = logging.getLogger(__name__)

# TensorFlow Serving's ModelVersionStatus states, as its REST API spells them.
START, LOADING, AVAILABLE, UNLOADING, END = "START", "LOADING", "AVAILABLE", "UNLOADING", "END"
# How long an unload waits for in-flight requests before closing anyway: longer than any request
# should take, short enough that a stuck client cannot keep a version in memory forever.
DEFAULT_DRAIN_S = 30.0
_DEFAULT_POLL_S = 2.0
# How long stop() waits for a poll in progress (a load may be slow); the thread is a daemon.
_STOP_JOIN_S = 10.0

Loader = Callable[[str, int, Path], Any]
Fingerprint = tuple[int, ...]


class ModelNotFound(LookupError):
    """No loaded version can serve the request; the message is TensorFlow Serving's.

    ``http_status``: what TensorFlow Serving's REST API answers (404: NOT_FOUND).
    """

    http_status = 404


class UnknownVersionLabel(ModelNotFound):
    """A label the model does not have: TensorFlow Serving answers INVALID_ARGUMENT (400) here."""

    http_status = 400


@dataclass(frozen=True)
class ServedModel:
    """One model the manager serves.

    ``routed``: a WeiFlow repository model, whose routing file decides traffic and labels
    (``labels`` is then unused); ``policy`` still bounds which versions may load.
    """

    name: str
    base_path: str
    policy: VersionPolicy
    labels: Mapping[str, int] = field(default_factory=lambda: MappingProxyType({}))
    routed: bool = False

    @classmethod
    def from_config(cls, config: ModelConfig) -> ServedModel:
        """A ``model_config_list`` entry, served with TensorFlow Serving's rules."""
        return cls(config.name, config.base_path, config.version_policy, config.version_labels, routed=False)


@dataclass
class _Version:
    """One version the manager knows about; every field is guarded by the manager's lock."""

    number: int
    path: Path
    state: str = START
    servable: Any = None
    leases: int = 0
    error_code: str = "OK"
    error_message: str = ""
    # The directory as it was when the version was last loaded or refused: a refused version is
    # tried again only when this changes (republished, repaired by hand).
    fingerprint: Fingerprint | None = None
    refused: bool = False


@dataclass(frozen=True)
class _Target:
    """What a model should serve: the versions it needs loaded and, for routed models, the routing."""

    needed: frozenset[int]
    routing: Routing | None = None


@dataclass
class _Model:
    served: ServedModel
    versions: dict[int, _Version] = field(default_factory=dict)
    active: _Target | None = None  # what requests are routed by; a poll's target replaces it once all loaded
    routing: Routing | None = None  # the last good routing file read
    routing_problem: str | None = None  # the last problem logged, so a damaged file is logged once
    readable: bool | None = None  # whether the last scan could list the base path (None: not scanned yet)


class ModelManager:
    """Loads, routes and unloads model versions; see the module docstring for the rules."""

    def __init__(
        self,
        models: Sequence[ServedModel],
        *,
        poll_s: float = _DEFAULT_POLL_S,
        loader: Loader | None = None,
        warm: bool = True,
        on_change: Callable[[str, int, str], None] | None = None,
        on_readable: Callable[[str, bool], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
        drain_s: float = DEFAULT_DRAIN_S,
        rng: random.Random | None = None,
    ) -> None:
        names = [m.name for m in models]
        duplicated = sorted({n for n in names if names.count(n) > 1})
        if duplicated:
            raise ConfigError(f"model(s) {', '.join(duplicated)} configured twice; each name must be served once")
        for served in models:
            if served.routed:
                try:
                    check_model_name(served.name)
                except ModelRepoError as exc:
                    raise ConfigError(f"a repository model needs a repository model name: {exc}") from None
        self._models = {m.name: _Model(m) for m in models}
        # ready() waits for these; models found later (discover) must not make a serving replica unready.
        self._required = frozenset(self._models)
        self._discover: Path | None = None  # a repository whose new models are served as they appear
        self._poll_s = poll_s
        self._loader = loader or _load_servable
        self._warm = warm
        self._on_change = on_change
        self._on_readable = on_readable
        self._clock = clock
        self._drain_s = drain_s
        # Unkeyed requests draw by the split. random.Random() seeds itself from os.urandom, so
        # each process draws independently; hashing a request would make every process agree.
        self._rng = rng or random.Random()
        self._lock = threading.Lock()
        self._released = threading.Condition(self._lock)  # notified when a lease ends
        self._poll_lock = threading.Lock()  # one poll at a time (the thread, or a caller's poll_once)
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    @classmethod
    def for_repository(cls, uri: str, *, only: Sequence[str] = (), **kw: Any) -> ModelManager:
        """Every model of a WeiFlow model repository on a local file system (or only those named), routed."""
        if "://" in uri and not uri.startswith("file://"):
            raise ConfigError(
                f"--repository={uri}: the prediction service loads models from a local directory; mirror the "
                f"repository next to it first (weiflow deploy sync, or deploy render --sync-from)"
            )
        root = Path(uri.removeprefix("file://"))
        if not root.is_dir():
            raise ConfigError(f"--repository={uri}: no such directory (a WeiFlow model repository: <model>/<version>/)")
        names = sorted(entry.name for entry in root.iterdir() if entry.is_dir() and _is_model_name(entry.name))
        unknown = [name for name in only if name not in names]
        if unknown:
            listed = ", ".join(names) or "none"
            raise ConfigError(f"--repository={uri} has no model {', '.join(map(repr, unknown))} (models: {listed})")
        chosen = list(dict.fromkeys(only)) if only else names
        if not chosen:
            # Serving every model means those published later too: a fresh platform (weiflow up) starts the
            # service before its first publish, as tensorflow_model_server waits for a model's first version.
            if kw.get("poll_s", _DEFAULT_POLL_S) <= 0:
                raise ConfigError(
                    f"--repository={uri} holds no models yet, and --file_system_poll_wait_seconds=0 looks only at "
                    "startup; publish one first"
                )
            log.warning("%s holds no models yet: each model is served from the poll after its first publish", uri)
        manager = cls([ServedModel(name, str(root / name), AllVersions(), routed=True) for name in chosen], **kw)
        if not only:
            manager._discover = root  # every model means the ones published later too
        return manager

    # -- lifecycle -------------------------------------------------------------------

    def start(self) -> None:
        """Load what is there now (synchronously), then poll every ``poll_s`` in a daemon thread."""
        if self._thread is not None:
            raise RuntimeError("the model manager is already started")
        self.poll_once()
        if self._poll_s <= 0:  # TensorFlow Serving's --file_system_poll_wait_seconds=0: startup only
            return
        self._thread = threading.Thread(target=self._poll_forever, name="weiflow-model-manager", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop polling, then unload every version once its in-flight leases finish (bounded)."""
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(_STOP_JOIN_S)
        with self._lock:
            leaving = [
                (name, entry)
                for name, model in self._models.items()
                for entry in model.versions.values()
                if entry.state == AVAILABLE
            ]
            for _, entry in leaving:
                entry.state = UNLOADING
        for name, entry in leaving:
            self._notify(name, entry.number, UNLOADING)
            self._drain_and_close(name, entry)

    def _poll_forever(self) -> None:
        while not self._stopping.wait(self._poll_s):
            self.poll_once()

    def poll_once(self) -> None:
        """Look at every model's directory and routing once, loading and unloading what changed."""
        with self._poll_lock:
            self._discover_models()
            for name in list(self._models):
                if self._stopping.is_set():
                    return
                try:
                    self._poll_model(name)
                except Exception:  # a bug or an unexpected I/O error must not end polling
                    log.exception("model '%s': polling failed; retrying at the next poll", name)

    def _discover_models(self) -> None:
        """Serve the repository's models that appeared since the last poll (a first publish)."""
        if self._discover is None:
            return
        try:
            names = [e.name for e in self._discover.iterdir() if e.is_dir() and _is_model_name(e.name)]
        except OSError as exc:
            log.warning("cannot list the repository %s: %s", self._discover, exc)
            return
        new = sorted(set(names) - set(self._models))
        if new:
            with self._lock:
                for name in new:
                    served = ServedModel(name, str(self._discover / name), AllVersions(), routed=True)
                    self._models[name] = _Model(served)
            log.info("repository %s: new model(s) %s", self._discover, ", ".join(new))

    # -- requests ----------------------------------------------------------------------

    @contextmanager
    def lease(
        self, model: str, *, version: int | None = None, label: str | None = None, key: str | None = None
    ) -> Iterator[Any]:
        """The servable that serves this request; it is not unloaded until the ``with`` block ends."""
        with self._lock:
            entry = self._choose(model, version, label, key)
            entry.leases += 1
        try:
            yield entry.servable
        finally:
            with self._lock:
                entry.leases -= 1
                if entry.leases == 0:
                    self._released.notify_all()

    def resolve(
        self, model: str, *, version: int | None = None, label: str | None = None, key: str | None = None
    ) -> int:
        """The version that would serve this request now, without leasing it.

        Unkeyed requests to a split model are a random draw: the version a lease then gets may
        differ; read it from the leased servable instead when the two must agree.
        """
        with self._lock:
            return self._choose(model, version, label, key).number

    def status(self, model: str, version: int | None = None) -> dict[str, Any]:
        """TensorFlow Serving's GetModelStatus REST answer, versions newest first."""
        with self._lock:
            state = self._models.get(model)
            known = {} if state is None else state.versions
            if version is not None:
                if version not in known:
                    raise ModelNotFound(f"Could not find version {version} of model {model}")
                entries = [known[version]]
            else:
                if not known:
                    raise ModelNotFound(f"Could not find any versions of model {model}")
                entries = [known[v] for v in sorted(known, reverse=True)]
            return {
                "model_version_status": [
                    {
                        "version": str(entry.number),
                        "state": entry.state,
                        "status": {"error_code": entry.error_code, "error_message": entry.error_message},
                    }
                    for entry in entries
                ]
            }

    def ready(self) -> bool:
        """Whether every model served from the start has at least one AVAILABLE (loaded and warmed) version."""
        with self._lock:
            return all(
                any(entry.state == AVAILABLE for entry in self._models[name].versions.values())
                for name in self._required
            )

    def known(self, model: str) -> bool:
        """Whether ``model`` is one this manager serves (its versions may still be loading)."""
        return model in self._models

    def loaded(self) -> dict[str, list[int]]:
        """The AVAILABLE versions of each model, ascending."""
        with self._lock:
            return {
                name: sorted(v for v, entry in model.versions.items() if entry.state == AVAILABLE)
                for name, model in self._models.items()
            }

    def _choose(self, model: str, version: int | None, label: str | None, key: str | None) -> _Version:
        """The AVAILABLE version serving a request (the lock is held)."""
        state = self._models.get(model)
        if version is None and label is not None:
            labels = self._labels(state) if state is not None else {}
            if label not in labels:
                raise UnknownVersionLabel(f"Unrecognized servable version label: {label}")
            version = labels[label]
        if version is not None:
            entry = state.versions.get(version) if state is not None else None
            if entry is None or entry.state != AVAILABLE:
                raise ModelNotFound(f"Servable not found for request: Specific({model}, {version})")
            return entry
        available = {} if state is None else {v: e for v, e in state.versions.items() if e.state == AVAILABLE}
        if state is None or not available:
            raise ModelNotFound(f"Servable not found for request: Latest({model})")
        active = state.active
        routing = active.routing if active is not None else None
        if routing is not None and routing.traffic:
            routed = routing.assign(key) if key is not None else self._draw(routing)
            if routed in available:
                return available[routed]
            # Only when a live version's directory vanished (removed by hand): the others serve.
            stable = routing.stable
            if stable in available:
                return available[stable]
        # TensorFlow Serving's rule: the highest version, among those the active target needs.
        preferred = [v for v in available if active is None or v in active.needed]
        return available[max(preferred or available)]

    def _draw(self, routing: Routing) -> int:
        ticket = self._rng.randrange(100)
        for number, share in sorted(routing.traffic.items(), reverse=True):
            if ticket < share:
                return number
            ticket -= share
        raise AssertionError("shares sum to 100")  # Routing checks it

    @staticmethod
    def _labels(state: _Model) -> Mapping[str, int]:
        if not state.served.routed:
            return state.served.labels
        # The active routing's labels: a label moves only when the routing that moved it is live.
        routing = state.active.routing if state.active is not None else None
        return routing.labels if routing is not None else {}

    # -- polling -----------------------------------------------------------------------

    def _poll_model(self, name: str) -> None:
        model = self._models[name]
        served = model.served
        on_disk = self._scan(model)
        if on_disk is None:
            return  # the base path cannot be read now: what serves keeps serving until it can
        routing = self._read_routing(model) if served.routed else None

        with self._lock:
            for number, (_, fingerprint) in on_disk.items():
                entry = model.versions.get(number)
                if entry is not None and entry.refused and entry.fingerprint != fingerprint:
                    log.info("model '%s' version %d: its directory changed; trying it again", name, number)
                    entry.refused = False
            usable = [v for v in on_disk if not (v in model.versions and model.versions[v].refused)]
            target = _target(served, routing, usable)
            # A version whose directory is gone can serve nothing new: out of routing at once.
            vanished = self._take_out(
                model, [v for v, e in model.versions.items() if v not in on_disk and e.state == AVAILABLE]
            )
            to_load = []
            for number in sorted(target.needed & set(usable), reverse=True):  # newest first: what routing waits for
                entry = model.versions.get(number)
                if entry is None or entry.state not in (AVAILABLE, UNLOADING):
                    # A fresh entry each time: a version unloaded earlier and wanted again starts over.
                    model.versions[number] = _Version(number, on_disk[number][0])
                    to_load.append(number)
        self._unload(name, vanished)

        for number in to_load:
            if self._stopping.is_set():
                return
            self._load(name, model.versions[number], on_disk[number][1])

        with self._lock:
            if all(v in model.versions and model.versions[v].state == AVAILABLE for v in target.needed):
                if model.active != target:
                    self._log_activation(name, model.active, target)
                model.active = target
            keep = target.needed | (model.active.needed if model.active is not None else frozenset())
            if model.active is None:  # nothing complete yet: keep whatever serves now
                keep |= {v for v, e in model.versions.items() if e.state == AVAILABLE}
            unwanted = self._take_out(
                model, [v for v, e in model.versions.items() if e.state == AVAILABLE and v not in keep]
            )
        self._unload(name, unwanted)

    def _scan(self, model: _Model) -> dict[int, tuple[Path, Fingerprint]] | None:
        """The complete version directories under the base path, with their fingerprints.

        None when the base path cannot be listed while versions are loaded: a repository that is
        unreadable for a while (an unmounted share, a directory moved away and back) is not one
        whose versions were deleted, and unloading them would fail every request until it is back.
        """
        base = Path(model.served.base_path)
        try:
            names = [entry.name for entry in base.iterdir()]
        except OSError as exc:
            with self._lock:
                serving = sorted(v for v, e in model.versions.items() if e.state == AVAILABLE)
            if model.readable is not False:  # logged once per outage
                if serving:
                    log.error(
                        "model '%s': cannot list %s (%s); version(s) %s keep serving until it is readable again",
                        model.served.name,
                        base,
                        exc,
                        ", ".join(map(str, serving)),
                    )
                else:
                    log.warning("model '%s': cannot list %s (%s); no versions yet", model.served.name, base, exc)
                self._set_readable(model, False)
            return None if serving else {}
        if model.readable is False:
            log.info("model '%s': %s is readable again", model.served.name, base)
        if model.readable is not True:
            self._set_readable(model, True)
        found = {}
        for entry_name in names:
            number = parse_version(entry_name)
            if number is None:
                continue  # staging (.tmp-*, .weiflow), the routing file, anything else
            fingerprint = _fingerprint(base / entry_name, model.served.routed)
            if fingerprint is not None:
                found[number] = (base / entry_name, fingerprint)
        return found

    def _read_routing(self, model: _Model) -> Routing | None:
        """The routing file, or the last good one when it is damaged or was removed."""
        name = model.served.name
        path = Path(model.served.base_path) / ROUTING_FILE
        try:
            routing = Routing.from_json(path.read_bytes(), source=str(path))
            if routing.model != name:
                raise ModelRepoError(f"{path} is the routing of model '{routing.model}', not '{name}'")
        except FileNotFoundError:
            if model.routing is None:
                return None  # never routed: the newest version serves
            problem = f"{path} was removed; keeping the last routing read (generation {model.routing.generation})"
            routing = None
        except (OSError, ModelRepoError) as exc:
            problem = f"{exc}; keeping the last good routing" + (
                f" (generation {model.routing.generation})" if model.routing is not None else " (none read yet)"
            )
            routing = None
        if routing is None:
            if problem != model.routing_problem:
                log.error("model '%s': %s", name, problem)
                model.routing_problem = problem
            return model.routing
        model.routing_problem = None
        model.routing = routing
        return routing

    def _load(self, name: str, entry: _Version, fingerprint: Fingerprint) -> None:
        """Load and warm one version outside the lock; only then does it become AVAILABLE."""
        with self._lock:
            entry.state = LOADING
            entry.error_code, entry.error_message = "OK", ""
            entry.fingerprint = fingerprint
        self._notify(name, entry.number, LOADING)
        started = self._clock()
        servable: Any = None
        try:
            servable = self._loader(name, entry.number, entry.path)
        except Exception as exc:
            self._refuse(name, entry, f"failed to load: {exc}", exc)
            return
        if self._warm and callable(getattr(servable, "warmup", None)):
            try:
                servable.warmup()
            except Exception as exc:
                _close(name, entry.number, servable)
                self._refuse(name, entry, f"warm-up failed: {exc}", exc)
                return
        with self._lock:
            too_late = self._stopping.is_set()  # stop() has unloaded the rest: this one never serves
            entry.servable, entry.state = (None, END) if too_late else (servable, AVAILABLE)
        if too_late:
            _close(name, entry.number, servable)
            return
        log.info("model '%s' version %d: AVAILABLE (loaded in %.2fs)", name, entry.number, self._clock() - started)
        self._notify(name, entry.number, AVAILABLE)

    def _refuse(self, name: str, entry: _Version, message: str, exc: Exception) -> None:
        with self._lock:
            entry.state, entry.refused, entry.servable = END, True, None
            entry.error_code = _error_code(exc)
            entry.error_message = message
        log.error(
            "model '%s' version %d refused: %s (%s); it serves nothing, and is tried again when its directory changes",
            name,
            entry.number,
            message,
            entry.path,
        )
        self._notify(name, entry.number, END)

    def _take_out(self, model: _Model, numbers: Sequence[int]) -> list[_Version]:
        """Mark versions UNLOADING (the lock is held): from now on no new lease gets them."""
        entries = [model.versions[v] for v in numbers]
        for entry in entries:
            entry.state = UNLOADING
        return entries

    def _unload(self, name: str, entries: Sequence[_Version]) -> None:
        for entry in entries:
            self._notify(name, entry.number, UNLOADING)
            self._drain_and_close(name, entry)

    def _drain_and_close(self, name: str, entry: _Version) -> None:
        deadline = self._clock() + self._drain_s
        with self._lock:
            while entry.leases and (left := deadline - self._clock()) > 0:
                self._released.wait(left)
            servable, entry.servable = entry.servable, None
            in_flight = entry.leases
        if in_flight:
            log.warning(
                "model '%s' version %d: %d request(s) still running after %.0fs; unloading anyway",
                name,
                entry.number,
                in_flight,
                self._drain_s,
            )
        _close(name, entry.number, servable)
        with self._lock:
            entry.state = END
        log.info("model '%s' version %d: unloaded", name, entry.number)
        self._notify(name, entry.number, END)

    def _log_activation(self, name: str, before: _Target | None, after: _Target) -> None:
        if after.routing is not None and (before is None or before.routing != after.routing):
            split = ", ".join(f"{v}: {s}%" for v, s in after.routing.traffic.items()) or "nothing live"
            log.info("model '%s': routing generation %d in effect (%s)", name, after.routing.generation, split)
        else:
            log.info("model '%s': serving versions %s", name, ", ".join(map(str, sorted(after.needed))) or "none")

    def _set_readable(self, model: _Model, readable: bool) -> None:
        model.readable = readable
        if self._on_readable is None:
            return
        try:
            self._on_readable(model.served.name, readable)
        except Exception:  # as for _notify
            log.exception("model '%s': the on_readable hook failed", model.served.name)

    def _notify(self, name: str, version: int, state: str) -> None:
        if self._on_change is None:
            return
        try:
            self._on_change(name, version, state)
        except Exception:  # a metrics hook must not stop a load or an unload halfway
            log.exception("model '%s' version %d: the on_change hook failed for %s", name, version, state)


def _target(served: ServedModel, routing: Routing | None, usable: Sequence[int]) -> _Target:
    """The versions a model needs now (and the routing they serve) from what is usable on disk."""
    allowed = resolve_versions(served.policy, usable).versions
    if not served.routed:
        return _Target(frozenset(allowed))
    if routing is None:
        routing = Routing(served.name)
    # Live versions are needed even when absent or refused: the routing then waits, and the one
    # before it keeps serving. A label on a version that cannot load does not hold routing up.
    needed = set(routing.traffic) | {v for v in routing.labels.values() if v in allowed}
    if not routing.traffic and allowed:
        needed.add(max(allowed))
    return _Target(frozenset(needed), routing)


def _fingerprint(path: Path, routed: bool) -> Fingerprint | None:
    """Identity and modification times of a complete version directory; None while it is incomplete.

    Complete: a SavedModel file at its top and, for a repository model, the manifest (written
    last by a publish on object stores).
    """
    try:
        directory = path.stat()
        saved_model = None
        for file_name in SAVED_MODEL_FILES:
            try:
                saved_model = (path / file_name).stat()
                break
            except FileNotFoundError:
                continue
        if saved_model is None:
            return None
        manifest_mtime = (path / MANIFEST_PATH).stat().st_mtime_ns if routed else 0
    except OSError:  # not there (yet), gone meanwhile, unreadable
        return None
    return (
        directory.st_ino,
        directory.st_mtime_ns,
        saved_model.st_ino,
        saved_model.st_mtime_ns,
        saved_model.st_size,
        manifest_mtime,
    )


def _error_code(exc: Exception) -> str:
    """TensorFlow Serving's error code name for a load failure."""
    code = getattr(exc, "error_code", None)
    if isinstance(code, str) and code:
        return code
    if isinstance(exc, FileNotFoundError):
        return "NOT_FOUND"
    return "UNKNOWN"


def _close(name: str, version: int, servable: Any) -> None:
    close = getattr(servable, "close", None)
    if not callable(close):
        return
    try:
        close()
    except Exception:
        log.exception("model '%s' version %d: closing it failed", name, version)


def _is_model_name(name: str) -> bool:
    try:
        check_model_name(name)
    except ModelRepoError:
        return False
    return True


def _load_servable(model: str, version: int, path: Path) -> Any:
    """The default loader: a TensorFlow SavedModel, imported only when a model is loaded."""
    from weiflow.serving.servable import Servable

    return Servable.load(model, version, path)
