"""A model's routing: which versions get what share of traffic, its labels, and how it changed.

The state of one model, stored as ``<repository>/<model>/weiflow-routing.json``:

- ``traffic``: live version -> percent, positive integers summing to 100 (or empty: nothing live);
- ``labels``: ``stable`` (the version that holds, or last held, all traffic; set exactly when
  something is live), ``canary`` (the other side of a gray release), and any label of the
  owner's (:meth:`Routing.label`);
- ``previous_stable``: the versions that were stable before, oldest first: what rollback undoes;
- ``generation``: +1 on every change, so a writer can tell it read the latest state;
- ``history``: the last :data:`HISTORY_LIMIT` changes (who, when, what, split before and after).

Transitions are pure: each returns a new :class:`Routing` or raises :class:`ModelRepoError`.
They take ``existing``, the versions the repository holds, to refuse unknown ones; the
repository, not this file, is the truth about which versions exist.

The split rule (publish and promote of ``version`` to ``traffic`` percent): the other side,
the *base*, is the stable version when it is live and is not ``version``, else the other live
version with the most traffic (the newest on a tie). ``version`` gets ``traffic``, the base the
rest, any third version nothing. With no base, ``version`` takes all traffic: there is no other
version to keep the rest, so a model's first publish serves everything whatever its traffic.

Keys: :meth:`Routing.assign` hashes ``model + key`` with BLAKE2b to a point in [0, 10000) and
lays the live versions out newest first, each on a range as wide as its share. With two live
versions (all transitions produce at most two) the newer owns [0, s) and the older [s, 10000):
whichever grows keeps every key it had, whichever shrinks keeps a subset. Python's ``hash()``
is salted per process and could not give the same answer across processes and restarts.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from weiflow.modelrepo.contracts import ModelRepoError, check_model_name, parse_version, utc_now

__all__ = ["HISTORY_LIMIT", "POINTS", "ROUTING_SCHEMA", "Action", "Change", "Routing", "point"]

ROUTING_SCHEMA = "weiflow.routing/1"
HISTORY_LIMIT = 100  # entries kept in the file; the control center keeps the whole trail
POINTS = 10_000  # hash points: a share of 1% is 100 points, so splits are exact
STABLE, CANARY = "stable", "canary"
Action = Literal["publish", "promote", "rollback", "remove", "label"]
_ACTIONS = ("publish", "promote", "rollback", "remove", "label")
# Labels start with a letter, so a path segment is never both a version and a label.
_LABEL = re.compile(r"[A-Za-z][A-Za-z0-9_.-]{0,63}")


def point(model: str, key: str) -> int:
    """Where ``key`` falls in [0, POINTS) for ``model``: the same in every process and release.

    The model name is part of the hash, so one user is not in the canary of every model at once.
    """
    digest = hashlib.blake2b(f"{model}\n{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % POINTS  # bias of 2**64 % 10000 is ~1e-15: none


@dataclass(frozen=True)
class Change:
    """One entry of a model's history: who did what, when, and the split before and after."""

    action: Action
    version: int | None
    traffic: int | None  # the share asked for (publish, promote)
    who: str
    at: str
    before: Mapping[int, int]
    after: Mapping[int, int]

    def to_dict(self) -> dict[str, Any]:
        return {
            "action": self.action,
            "version": self.version,
            "traffic": self.traffic,
            "who": self.who,
            "at": self.at,
            "before": _split_json(self.before),
            "after": _split_json(self.after),
        }

    @classmethod
    def from_dict(cls, item: Any) -> Change:
        if not isinstance(item, dict) or item.get("action") not in _ACTIONS:
            raise ValueError(f"a history entry must be an object with an action among {', '.join(_ACTIONS)}")
        for key in ("version", "traffic"):
            if item.get(key) is not None and (isinstance(item[key], bool) or not isinstance(item[key], int)):
                raise ValueError(f"history entry '{key}' must be an integer or null")
        if not isinstance(item.get("who"), str) or not isinstance(item.get("at"), str):
            raise ValueError("a history entry needs 'who' and 'at' strings")
        return cls(
            item["action"],
            item.get("version"),
            item.get("traffic"),
            item["who"],
            item["at"],
            _split_from_json(item.get("before", {}), "history 'before'"),
            _split_from_json(item.get("after", {}), "history 'after'"),
        )


def _split_json(split: Mapping[int, int]) -> dict[str, int]:
    return {str(v): split[v] for v in sorted(split)}


def _split_from_json(value: Any, what: str) -> dict[int, int]:
    if not isinstance(value, dict):
        raise ValueError(f"{what} must map versions to percents")
    split = {}
    for key, share in value.items():
        version = parse_version(key) if isinstance(key, str) else None
        if version is None or isinstance(share, bool) or not isinstance(share, int):
            raise ValueError(f"{what}: {key!r}: {share!r} is not version -> integer percent")
        split[version] = share
    return split


@dataclass(frozen=True)
class Routing:
    """The routing of one model (see the module docstring for the rules)."""

    model: str
    traffic: Mapping[int, int] = field(default_factory=dict)
    labels: Mapping[str, int] = field(default_factory=dict)
    previous_stable: tuple[int, ...] = ()
    generation: int = 0
    history: tuple[Change, ...] = ()

    def __post_init__(self) -> None:
        check_model_name(self.model)
        object.__setattr__(self, "traffic", dict(sorted(self.traffic.items())))
        object.__setattr__(self, "labels", dict(sorted(self.labels.items())))
        problem = self._problem()
        if problem:
            raise ModelRepoError(f"model '{self.model}': invalid routing: {problem}")

    def _problem(self) -> str | None:
        if any(isinstance(s, bool) or not isinstance(s, int) or not 0 < s <= 100 for s in self.traffic.values()):
            return "every live version's share must be an integer percent from 1 to 100"
        if self.traffic and sum(self.traffic.values()) != 100:
            return f"shares sum to {sum(self.traffic.values())}, not 100"
        stable, canary = self.labels.get(STABLE), self.labels.get(CANARY)
        if self.traffic and stable not in self.traffic:
            return "the 'stable' label must name a live version"
        if not self.traffic and (stable is not None or canary is not None):
            return "nothing is live, so no version can be 'stable' or 'canary'"
        if canary is not None and (canary not in self.traffic or canary == stable):
            return "the 'canary' label must name a live version other than the stable one"
        bad = [name for name in self.labels if not _LABEL.fullmatch(name)]
        if bad:
            return f"invalid label name(s) {', '.join(map(repr, bad))}"
        if isinstance(self.generation, bool) or not isinstance(self.generation, int) or self.generation < 0:
            return "'generation' must be a non-negative integer"
        return None

    # -- reading -------------------------------------------------------------------

    @property
    def stable(self) -> int | None:
        return self.labels.get(STABLE)

    @property
    def live(self) -> tuple[int, ...]:
        """Live versions, newest first: the order their hash ranges are laid out in."""
        return tuple(sorted(self.traffic, reverse=True))

    def ranges(self) -> tuple[tuple[int, int, int], ...]:
        """(version, start, end) per live version: the hash points [start, end) it serves."""
        out, start = [], 0
        for version in self.live:
            end = start + self.traffic[version] * (POINTS // 100)
            out.append((version, start, end))
            start = end
        return tuple(out)

    def assign(self, key: str) -> int | None:
        """The version that serves ``key``; None when nothing is live."""
        at = point(self.model, key)
        return next((version for version, start, end in self.ranges() if start <= at < end), None)

    # -- transitions -----------------------------------------------------------------

    def publish(
        self, version: int, traffic: int = 100, *, existing: Collection[int], who: str, at: str = ""
    ) -> Routing:
        """Route ``traffic`` percent to a new version, the rest to the base (see the split rule).

        Traffic 0 records the publish and routes nothing to it; 100 makes it the only live one.
        """
        self._check(version, existing, traffic)
        if version in self.traffic:
            raise ModelRepoError(
                f"model '{self.model}': version {version} is already live ({self.traffic[version]}%)",
                f"use promote to change its share: promote {self.model} --version {version} --traffic {traffic}",
            )
        if traffic == 0:
            return self._changed("publish", version, traffic, self.traffic, who=who, at=at)
        return self._changed("publish", version, traffic, self._split(version, traffic), who=who, at=at)

    def promote(
        self, version: int, traffic: int = 100, *, existing: Collection[int], who: str, at: str = ""
    ) -> Routing:
        """Give ``version`` ``traffic`` percent, the base the rest; 100 makes it the stable version."""
        self._check(version, existing, traffic)
        if traffic == 0 and version not in self.traffic:
            raise ModelRepoError(f"model '{self.model}': version {version} has no traffic to take away")
        if traffic == 0 and self._base(version) is None:
            raise ModelRepoError(
                f"model '{self.model}': version {version} is the only live version; 0% would leave nothing live",
                "publish or promote another version first",
            )
        return self._changed("promote", version, traffic, self._split(version, traffic), who=who, at=at)

    def rollback(self, *, existing: Collection[int], who: str, at: str = "") -> Routing:
        """All traffic back to the previous fully live version, defined as:

        - during a gray release (two live versions): the stable one, ending the release;
        - otherwise: the version that was stable before the current one (the last entry of
          ``previous_stable`` that still exists); it becomes stable again and leaves the list,
          so rolling back twice goes two steps back, not back and forth.
        """
        if not self.traffic:
            raise ModelRepoError(f"model '{self.model}': nothing is live, so there is nothing to roll back")
        stable = self.stable
        assert stable is not None  # an invariant: something live means a stable version
        if len(self.traffic) > 1:
            return self._changed("rollback", stable, None, {stable: 100}, who=who, at=at)
        previous = list(self.previous_stable)
        while previous and (previous[-1] == stable or previous[-1] not in existing):
            previous.pop()  # removed by hand, or the current one: not a version to go back to
        if not previous:
            raise ModelRepoError(
                f"model '{self.model}': version {stable} has been the only fully live version; "
                "there is no earlier one to roll back to",
                "promote the version you want instead",
            )
        target = previous.pop()
        labels = {**self._custom_labels(), STABLE: target}
        return self._changed(
            "rollback", target, None, {target: 100}, who=who, at=at, labels=labels, previous=tuple(previous)
        )

    def remove(self, version: int, *, existing: Collection[int], who: str, at: str = "") -> Routing:
        """Record that ``version`` is deleted; refused while it is live or labelled."""
        self._check(version, existing)
        names = sorted(name for name, v in self.labels.items() if v == version)
        if version in self.traffic or names:
            why = f"{self.traffic[version]}% of traffic" if version in self.traffic else f"label {', '.join(names)}"
            raise ModelRepoError(
                f"model '{self.model}': version {version} is in use ({why}); refusing to remove it",
                "promote another version (or roll back) first, and drop its labels",
            )
        prev = tuple(v for v in self.previous_stable if v != version)
        return self._changed("remove", version, None, self.traffic, who=who, at=at, previous=prev)

    def label(self, name: str, version: int | None, *, existing: Collection[int], who: str, at: str = "") -> Routing:
        """Point an owner's label at ``version`` (None drops it); ``stable`` and ``canary`` follow traffic."""
        if name in (STABLE, CANARY) or not _LABEL.fullmatch(name):
            raise ModelRepoError(
                f"model '{self.model}': cannot set label {name!r}",
                "labels start with a letter (letters, digits, '_', '.', '-'); stable and canary are set by "
                "publish, promote and rollback",
            )
        labels = {k: v for k, v in self.labels.items() if k != name}
        if version is not None:
            self._check(version, existing)
            labels[name] = version
        return self._changed("label", version, None, self.traffic, who=who, at=at, labels=labels)

    # -- helpers -----------------------------------------------------------------------

    def _check(self, version: int, existing: Collection[int], traffic: int = 0) -> None:
        if isinstance(traffic, bool) or not isinstance(traffic, int) or not 0 <= traffic <= 100:
            raise ModelRepoError(
                f"model '{self.model}': traffic {traffic!r} is not a percent", "give an integer from 0 to 100"
            )
        if isinstance(version, bool) or not isinstance(version, int) or version not in existing:
            known = ", ".join(map(str, sorted(existing))) or "none yet"
            raise ModelRepoError(
                f"model '{self.model}' has no version {version!r} (versions: {known})",
                "publish the model first, or pick one of its versions",
            )

    def _base(self, version: int) -> int | None:
        """The other side of a split with ``version``: see the split rule."""
        if self.stable in self.traffic and self.stable != version:
            return self.stable
        others = [v for v in self.traffic if v != version]
        return max(others, key=lambda v: (self.traffic[v], v)) if others else None

    def _split(self, version: int, traffic: int) -> dict[int, int]:
        base = self._base(version)
        if base is None or traffic == 100:
            return {version: 100}
        return {base: 100} if traffic == 0 else {version: traffic, base: 100 - traffic}

    def _custom_labels(self) -> dict[str, int]:
        return {k: v for k, v in self.labels.items() if k not in (STABLE, CANARY)}

    def _labels_for(self, split: Mapping[int, int]) -> dict[str, int]:
        """stable: the old one while it stays live, else the version with the most traffic; canary: the other."""
        labels = self._custom_labels()
        if not split:
            return labels
        stable = (
            self.stable if self.stable is not None and self.stable in split else max(split, key=lambda v: (split[v], v))
        )
        labels[STABLE] = stable
        others = [v for v in split if v != stable]
        if others:
            labels[CANARY] = max(others, key=lambda v: (split[v], v))
        return labels

    def _changed(
        self,
        action: Action,
        version: int | None,
        traffic: int | None,
        split: Mapping[int, int],
        *,
        who: str,
        at: str,
        labels: Mapping[str, int] | None = None,
        previous: tuple[int, ...] | None = None,
    ) -> Routing:
        if not isinstance(who, str) or not who.strip():
            raise ModelRepoError(f"model '{self.model}': a change needs who made it", "pass the user's name as who")
        labels = self._labels_for(split) if labels is None else labels
        if previous is None:
            previous = self.previous_stable
            new_stable = labels.get(STABLE)
            if self.stable is not None and new_stable is not None and new_stable != self.stable:
                previous = (*previous, self.stable)  # what a later rollback returns to
        change = Change(action, version, traffic, who, at or utc_now(), dict(self.traffic), dict(split))
        return replace(
            self,
            traffic=dict(split),
            labels=labels,
            previous_stable=previous[-HISTORY_LIMIT:],
            generation=self.generation + 1,
            history=(*self.history, change)[-HISTORY_LIMIT:],
        )

    # -- the file --------------------------------------------------------------------

    def to_json(self) -> str:
        """The file: indented, with one line per history entry (readable, and quick to write)."""
        head = {
            "schema": ROUTING_SCHEMA,
            "model": self.model,
            "generation": self.generation,
            "traffic": _split_json(self.traffic),
            "labels": dict(self.labels),
            "previous_stable": list(self.previous_stable),
        }
        changes = ",\n  ".join(json.dumps(change.to_dict(), ensure_ascii=False) for change in self.history)
        history = f"[\n  {changes}\n ]" if changes else "[]"
        return json.dumps(head, indent=1, ensure_ascii=False)[: -len("\n}")] + f',\n "history": {history}\n}}\n'

    def snapshot(self) -> dict[str, Any]:
        """The routing as a JSON object with only its latest change: what a deploy event reports.

        :meth:`from_json` reads it back (of ``json.dumps(snapshot)``); the control center mirrors it.
        """
        document: dict[str, Any] = json.loads(replace(self, history=self.history[-1:]).to_json())
        return document

    @classmethod
    def from_json(cls, text: str | bytes, source: str = "<routing>") -> Routing:
        """Read a routing file written by :meth:`to_json`; errors name ``source`` and the fix."""
        fix = "restore the file from the control center's copy of the model's routing, or delete it and promote again"
        try:
            document: Any = json.loads(text)
            if not isinstance(document, dict):
                raise ValueError("a JSON object expected")
            if document.get("schema") != ROUTING_SCHEMA:
                raise ModelRepoError(
                    f"{source}: routing schema {document.get('schema')!r} is not supported; "
                    f"this WeiFlow reads {ROUTING_SCHEMA}",
                    "change the routing with the WeiFlow version that wrote it",
                )
            labels = document.get("labels", {})
            if not isinstance(labels, dict) or any(
                isinstance(v, bool) or not isinstance(v, int) for v in labels.values()
            ):
                raise ValueError("'labels' must map label names to versions")
            previous = document.get("previous_stable", [])
            if not isinstance(previous, list) or any(isinstance(v, bool) or not isinstance(v, int) for v in previous):
                raise ValueError("'previous_stable' must be a list of versions")
            history = document.get("history", [])
            if not isinstance(history, list):
                raise ValueError("'history' must be a list")
            return cls(
                model=document.get("model", ""),
                traffic=_split_from_json(document.get("traffic", {}), "'traffic'"),
                labels=labels,
                previous_stable=tuple(previous),
                generation=document.get("generation", -1),
                history=tuple(Change.from_dict(item) for item in history),
            )
        except ModelRepoError as exc:
            if exc.message.startswith(source):
                raise
            raise ModelRepoError(f"{source}: {exc.message}", exc.hint or fix) from None
        except ValueError as exc:  # json.JSONDecodeError included
            raise ModelRepoError(f"{source}: not a valid routing file: {exc}", fix) from None
