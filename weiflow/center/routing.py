"""The center's side of model routing: a mirror of each model's routing file, and changes owners make.

The routing file in the model repository is the source of truth (the prediction service reads
it, and keeps serving while the center is down). The center mirrors it from three directions:

- a deploy node's events carry the routing after their change (:func:`record_routing`, from ingestion);
- an owner's promote or rollback through the API or the console writes the file first, then the
  mirror (:func:`change_routing`), with an audit entry;
- changes made with ``weiflow deploy`` by hand, which tell no one, are found by reading the files
  (:func:`mirror_repositories`, run by the scheduled sweep and ``weiflow center mirror-models``).

The mirror keeps the whole trail of changes (``model_changes``, one row per routing generation),
where the file keeps only its last 100. A generation older than the mirror's is never applied, so
events arriving out of order cannot roll the mirror back.

The center touches a repository only inside its storage roots: a model's repository is a claim its
pipeline's events make, and an owner could otherwise point the center at any path to write.
"""

from __future__ import annotations

import logging
import stat
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import fsspec
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from weiflow.center.db import dialect_insert
from weiflow.center.models import AuditEntry, Model, ModelChange, ModelVersion, Pipeline, Role, utcnow
from weiflow.center.repository import MAX_ID, ActionError, Principal
from weiflow.modelrepo import FileRepository, ModelRepoError, Repository, Routing, RoutingConflict, promote, rollback
from weiflow.modelrepo.contracts import ROUTING_FILE, STATE_DIR, parse_version
from weiflow.storage import StorageRoots

__all__ = [
    "MirrorReport",
    "change_routing",
    "mirror_repositories",
    "record_routing",
    "repository_of",
    "too_large",
]

log = logging.getLogger(__name__)

Via = Literal["pipeline", "console", "api", "repository"]
RoutingAction = Literal["promote", "rollback"]
MAX_ROUTING_BYTES = 1 << 20  # a routing file holds 100 changes: tens of KiB
REQUEST_LOCK_WAIT_S = 2.0  # how long a request waits for a model's routing lock (then 409: try again)
MAX_VERSION_METRICS = 100  # metric values kept per model version, as ingestion keeps


def repository_of(version_uri: str, model: str, version: str) -> str | None:
    """The repository a version URI lies in (``<repository>/<model>/<version>``), or None when it is not one."""
    suffix = f"/{model}/{version}"
    if version_uri.endswith(suffix) and len(version_uri) > len(suffix):
        return version_uri[: -len(suffix)]
    return None


def too_large(routing: Routing) -> str | None:
    """Why the center's columns cannot hold ``routing`` (generations and versions are 32-bit there), or None."""
    numbers = [routing.generation, *routing.traffic, *routing.labels.values(), *routing.previous_stable]
    for change in routing.history:
        numbers += [change.version or 0, change.traffic or 0, *change.before, *change.after]
    if any(not 0 <= n <= MAX_ID for n in numbers):
        return f"model '{routing.model}': a generation, version or share outside 0..{MAX_ID} (32-bit columns)"
    return None


def _time(value: str, default: datetime) -> datetime:
    try:
        parsed = datetime.fromisoformat(value)
        return parsed.astimezone(UTC) if parsed.tzinfo is not None else default
    except (ValueError, OverflowError):  # '9999-12-31T23:59:59-14:00' overflows when moved to UTC
        return default


def _insert_change(session: Session, row: dict[str, Any], *, replace: bool = False) -> None:
    """Insert one trail row unless that generation is already there (a concurrent mirror recorded it);
    with ``replace``, the row given wins (it comes from the file)."""
    insert = dialect_insert(session)(ModelChange).values(**row)
    if replace:
        keep = {k: v for k, v in row.items() if k not in ("model_id", "generation", "via")}
        session.execute(insert.on_conflict_do_update(index_elements=["model_id", "generation"], set_=keep))
    else:
        session.execute(insert.on_conflict_do_nothing())


def record_routing(
    session: Session, model: Model, routing: Routing, *, via: Via, now: datetime, authoritative: bool = False
) -> int:
    """Add ``routing``'s changes to ``model``'s trail, and mirror its state unless the mirror is newer.

    Returns the trail rows added. The history entries map to generations counting back from
    ``routing.generation``; the newest change is credited to ``via``, earlier ones the mirror lacked
    were made elsewhere (by hand). Versions get their share (0 when not live); a version the routing
    names but the center has not seen gets a row.

    ``authoritative``: the routing was read from the file by the center itself (the mirror, or right
    after the center changed it). The file is the truth: its state replaces the mirror's whatever the
    generations, and its history replaces trail rows an event claimed for the same generations, so a
    forged event cannot pin the mirror or rewrite the trail.
    """
    if routing.model != model.name:
        raise ValueError(f"routing of '{routing.model}' given for model '{model.name}'")
    problem = too_large(routing)
    if problem:
        raise ValueError(problem)
    first = routing.generation - len(routing.history) + 1
    known = set(
        session.scalars(
            select(ModelChange.generation).where(ModelChange.model_id == model.id, ModelChange.generation >= first)
        )
    )
    added = 0
    removed: dict[int, datetime] = {}
    for generation, change in enumerate(routing.history, start=first):
        at = _time(change.at, now)
        if change.action == "remove" and change.version is not None:
            removed[change.version] = at
        if generation < 1 or (generation in known and not authoritative):
            continue
        _insert_change(
            session,
            {
                "model_id": model.id,
                "generation": generation,
                "action": change.action,
                "version": change.version,
                "traffic": change.traffic,
                "who": change.who[:100],
                "at": at,
                "before": {str(v): share for v, share in change.before.items()},
                "after": {str(v): share for v, share in change.after.items()},
                "via": via if generation == routing.generation else "repository",
            },
            replace=authoritative,
        )
        added += 1
    if routing.generation < model.generation and not authoritative:
        return added  # an event that arrived late: its change joins the trail, the newer state stays
    model.generation = routing.generation
    model.labels = {name: version for name, version in routing.labels.items()}
    model.mirrored_at = now
    model.mirror_error = None
    rows = {row.version: row for row in session.scalars(select(ModelVersion).where(ModelVersion.model_id == model.id))}
    for version in routing.traffic:
        if str(version) not in rows:
            rows[str(version)] = row = ModelVersion(model_id=model.id, version=str(version), created_at=now)
            if model.repository:
                row.uri = f"{model.repository}/{model.name}/{version}"
            session.add(row)
    for name, row in rows.items():
        number = parse_version(name)
        share = routing.traffic.get(number, 0) if number is not None else 0
        row.traffic = float(share)
        row.deployed = share > 0
        if number in removed and row.removed_at is None:
            row.removed_at = removed[number]
    return added


def _model(session: Session, name: str) -> Model:
    model = session.scalar(select(Model).where(Model.name == name))
    if model is None:
        raise ActionError(404, f"no model '{name}'")
    return model


def _owner(session: Session, model: Model) -> str | None:
    if model.pipeline_id is None:
        return None
    return session.scalar(select(Pipeline.owner).where(Pipeline.id == model.pipeline_id))


def _unsafe_files(repository: str, model: str) -> str | None:
    """Why the center must not open a local repository's files for ``model``, or None.

    Links below the repository could lead its writes (the routing file, the lock, temporary files)
    and reads out of the storage roots, and a FIFO or a huge file in place of the routing file would
    hold a request or the mirror forever: the model's directory, its state directory and its routing
    file must be real directories and a regular file of at most ``MAX_ROUTING_BYTES``.
    Object stores have neither links nor FIFOs.
    """
    protocol, path = fsspec.core.split_protocol(repository)
    if (protocol or "file") != "file":
        return None
    base = Path(path) / model
    for directory in (base, base / STATE_DIR):
        if directory.is_symlink():
            return f"{directory} is a symbolic link"
        if directory.exists() and not directory.is_dir():
            return f"{directory} is not a directory"
    routing_file = base / ROUTING_FILE
    try:
        found = routing_file.lstat()
    except FileNotFoundError:
        return None
    if not stat.S_ISREG(found.st_mode):
        return f"{routing_file} is not a regular file"
    if found.st_size > MAX_ROUTING_BYTES:
        return f"{routing_file} holds {found.st_size} bytes (a routing file is at most {MAX_ROUTING_BYTES})"
    return None


def _open(model: Model, roots: StorageRoots | None) -> Repository:
    """The model's repository, when the center may write there; else a 409 saying why and what to do."""
    if model.repository is None:
        raise ActionError(
            409,
            f"the center does not know model '{model.name}''s repository: no published version reported its URI; "
            "publish it from a pipeline, or change its routing with `weiflow deploy`",
        )
    if roots is None:
        raise ActionError(
            409, "this center has no storage roots configured, so it changes no repository (the storage_roots setting)"
        )
    problem = roots.outside(model.repository) or _unsafe_files(model.repository, model.name)
    if problem:
        raise ActionError(
            409,
            f"model '{model.name}''s repository {model.repository} is refused ({problem}): the center changes "
            f"routing only inside its storage roots ({', '.join(roots.roots)}), never through links; add the "
            "repository's root to storage_roots, or use `weiflow deploy` where it is reachable",
        )
    # A short wait for the routing lock: a request must not hold its thread for the repository's 30 s.
    return FileRepository(model.repository, lock_timeout_s=REQUEST_LOCK_WAIT_S)


def _check_publisher(repository: Repository, model: Model, pipeline: str | None) -> None:
    """Refuse when the repository's newest version of the model was not published by the model's pipeline.

    The center learns a model's owner from the first pipeline that reports it; a pipeline of another
    team naming someone else's model first must not get to move that model's traffic.
    """
    versions = repository.versions(model.name)
    if not versions:
        return
    published_by = repository.manifest(model.name, versions[-1]).pipeline
    if published_by != pipeline:
        raise ActionError(
            409,
            f"model '{model.name}' in {model.repository} was published by pipeline '{published_by}', but the "
            f"center has it as pipeline '{pipeline or 'none'}''s: an admin must sort out which pipeline owns it",
        )


def change_routing(
    session: Session,
    principal: Principal,
    name: str,
    action: RoutingAction,
    *,
    version: int | None = None,
    traffic: int | None = None,
    roots: StorageRoots | None,
    via: Via,
) -> Routing:
    """Promote or roll back ``name`` for ``principal``: the routing file first, then the mirror and the audit.

    Only an admin or an owner of the pipeline that publishes the model may, and (but for an admin)
    only when the repository's versions were published by that pipeline. Errors are
    :class:`ActionError` with the HTTP status that says why (404, 403, 409, 503). The audit entry is
    written whenever the file changed, even if the mirror cannot follow.
    """
    model = _model(session, name)
    owner = _owner(session, model)
    if not principal.may_manage(owner):
        raise ActionError(
            403, f"only an admin or the owner ('{owner or 'nobody'}') may change model '{name}''s routing"
        )
    pipeline = session.scalar(select(Pipeline.name).where(Pipeline.id == model.pipeline_id))
    repository = _open(model, roots)
    session.commit()  # no transaction (nor pooled connection) is held while the repository's lock is awaited
    try:
        if principal.role is not Role.ADMIN:
            _check_publisher(repository, model, pipeline)
        if action == "promote":
            if traffic is None:
                raise ActionError(422, "promote needs traffic (an integer percent from 0 to 100)")
            routing = promote(repository, name, version, traffic, who=principal.username)
        else:
            routing = rollback(repository, name, who=principal.username)
    except RoutingConflict as exc:
        raise ActionError(409, f"{exc.message}; try again") from None
    except ModelRepoError as exc:
        raise ActionError(409, exc.message + (f" ({exc.hint})" if exc.hint else "")) from None
    except OSError as exc:
        raise ActionError(503, f"model '{name}''s repository {model.repository} cannot be changed now: {exc}") from None
    change = routing.history[-1]
    audit = AuditEntry(
        actor=principal.username,
        action=f"model.{action}",
        target_type="model",
        target_id=name,
        detail={
            "version": change.version,
            "traffic": change.traffic,
            "before": {str(v): s for v, s in change.before.items()},
            "after": {str(v): s for v, s in change.after.items()},
            "generation": routing.generation,
            "repository": model.repository,
            "via": via,
        },
    )
    try:
        # Locked, so a concurrent change cannot slip between reading the mirror's generation and writing it.
        locked = session.scalar(select(Model).where(Model.id == model.id).with_for_update())
        assert locked is not None
        record_routing(session, locked, routing, via=via, now=utcnow(), authoritative=True)
        session.add(audit)
        session.commit()
    except (ValueError, IntegrityError) as exc:  # the file changed, but the center cannot show it: say so
        session.rollback()
        session.add(audit)
        session.commit()
        raise ActionError(409, f"the routing file changed, but the center cannot mirror it yet: {exc}") from None
    return routing


@dataclass
class MirrorReport:
    mirrored: list[str] = field(default_factory=list)  # models whose routing or versions changed
    unchanged: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)  # model -> why

    def summary(self) -> str:
        return f"{len(self.mirrored)} model(s) updated, {len(self.unchanged)} unchanged, {len(self.failed)} failed"


def _mirror_one(session: Session, model: Model, roots: StorageRoots, now: datetime) -> bool:
    """Read ``model``'s routing file and versions into the mirror; whether anything changed."""
    if model.repository is None:
        return False
    problem = roots.outside(model.repository) or _unsafe_files(model.repository, model.name)
    if problem:
        raise ModelRepoError(
            f"repository {model.repository} is refused ({problem}); the center reads only inside its storage "
            "roots, never through links"
        )
    repository = FileRepository(model.repository, lock_timeout_s=REQUEST_LOCK_WAIT_S)
    routing = repository.read_routing(model.name)
    changed = routing.generation != model.generation
    record_routing(session, model, routing, via="repository", now=now, authoritative=True)
    stored = set(repository.versions(model.name))
    rows = {row.version: row for row in session.scalars(select(ModelVersion).where(ModelVersion.model_id == model.id))}
    for version in sorted(stored):
        row = rows.get(str(version))
        if row is not None and (row.publisher is not None or row.metrics):
            continue
        manifest = repository.manifest(model.name, version)
        if row is None:
            row = ModelVersion(
                model_id=model.id,
                version=str(version),
                uri=f"{model.repository}/{model.name}/{version}",
                created_at=_time(manifest.published_at, now),
            )
            session.add(row)
        row.metrics = {k[:200]: v for k, v in list(manifest.metrics.items())[:MAX_VERSION_METRICS]}
        row.publisher = manifest.publisher[:100]
        changed = True
    for name, row in rows.items():
        number = parse_version(name)
        if number is not None and number not in stored and row.removed_at is None:
            row.removed_at = now
            changed = True
    return changed


def mirror_repositories(
    sessions: sessionmaker[Session], roots: Sequence[str], *, now: datetime | None = None
) -> MirrorReport:
    """Bring every model's mirror up to its routing file and versions (changes made by hand included).

    One model at a time, each in its own transaction: a repository that cannot be read is
    reported (and shown on the model's page) without holding up the others.
    """
    checked = StorageRoots(roots, purpose="mirroring model repositories")
    report = MirrorReport()
    with sessions() as session:
        names = list(session.scalars(select(Model.name).where(Model.repository.is_not(None)).order_by(Model.name)))
    for name in names:
        with sessions() as session:
            model = session.scalar(select(Model).where(Model.name == name))
            if model is None:
                continue
            try:
                changed = _mirror_one(session, model, checked, now or utcnow())
                session.commit()
            except Exception as exc:  # one model's files (or a bug) must not stop the others' mirroring
                session.rollback()
                why = exc.message if isinstance(exc, ModelRepoError) else f"cannot mirror the repository: {exc}"
                report.failed[name] = why
                model = session.scalar(select(Model).where(Model.name == name))
                if model is not None:
                    model.mirror_error = why[:1000]
                    session.commit()
                log.warning("mirroring model '%s' failed: %s", name, why)
                continue
            (report.mirrored if changed else report.unchanged).append(name)
    return report
