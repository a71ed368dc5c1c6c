"""The repository contract, run against every implementation: in memory, local files, and fsspec's memory://
(standing in for object stores: no atomic rename, no exclusive create)."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import fsspec
import pytest

from weiflow.modelrepo import (
    FEATURE_MAP_PATH,
    FileRepository,
    Manifest,
    MemoryRepository,
    ModelRepoError,
    Repository,
    Routing,
    RoutingConflict,
    rollback,
    update_routing,
)
from weiflow.modelrepo.repository import Pruned, prunable, prune

Make = Callable[..., tuple[Path, Manifest]]


@pytest.fixture(params=["memory", "local", "fsspec-memory"])
def repo(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Repository]:
    if request.param == "memory":
        yield MemoryRepository()
    elif request.param == "local":
        yield FileRepository(tmp_path / "models")
    else:
        root = f"memory://repo-{uuid.uuid4().hex}"
        yield FileRepository(root)
        memory = fsspec.filesystem("memory")
        if memory.exists(root):
            memory.rm(root, recursive=True)


def test_versions_are_increasing_integers_with_their_manifest_and_feature_map(
    repo: Repository, saved_model: Make
) -> None:
    assert repo.models() == [] and repo.versions("feed_ctr") == []
    published = [saved_model(run_id=f"run-{i}") for i in range(3)]
    assert [repo.add_version("feed_ctr", path, manifest) for path, manifest in published] == [1, 2, 3]
    assert repo.add_version("other", *published[0]) == 1
    assert repo.models() == ["feed_ctr", "other"]
    assert repo.versions("feed_ctr") == [1, 2, 3]
    assert repo.manifest("feed_ctr", 2) == published[1][1]
    assert [f.name for f in repo.feature_map("feed_ctr", 3).features] == ["age_b", "city"]


def test_a_removed_version_number_is_never_given_again(repo: Repository, saved_model: Make) -> None:
    for _ in range(2):
        repo.add_version("feed_ctr", *saved_model())
    update_routing(repo, "feed_ctr", lambda r, vs: r.publish(1, 100, existing=vs, who="alice"))
    with pytest.raises(ModelRepoError, match=r"version 1 is in use \(100% of traffic\); refusing to remove it"):
        repo.remove_version("feed_ctr", 1, who="alice")
    routing = repo.remove_version("feed_ctr", 2, who="alice")
    assert routing.history[-1].action == "remove" and repo.read_routing("feed_ctr") == routing
    assert repo.versions("feed_ctr") == [1]
    assert repo.add_version("feed_ctr", *saved_model()) == 3
    with pytest.raises(ModelRepoError, match=r"model 'feed_ctr' has no version 2 in .* \(versions: 1, 3\)"):
        repo.manifest("feed_ctr", 2)


def test_routing_is_a_compare_and_swap_on_its_generation(repo: Repository, saved_model: Make) -> None:
    repo.add_version("feed_ctr", *saved_model())
    repo.add_version("feed_ctr", *saved_model())
    empty = repo.read_routing("feed_ctr")
    assert empty == Routing("feed_ctr") and empty.generation == 0
    first = empty.publish(1, 100, existing=[1, 2], who="alice")
    repo.write_routing(first)
    assert repo.read_routing("feed_ctr") == first
    # Two people read generation 1 and change it: the second write must not silently win.
    a = first.publish(2, 10, existing=[1, 2], who="alice")
    b = first.publish(2, 50, existing=[1, 2], who="bob")
    repo.write_routing(a)
    with pytest.raises(RoutingConflict, match=r"stored generation 2, this change follows generation 1"):
        repo.write_routing(b)
    assert repo.read_routing("feed_ctr") == a


def test_update_routing_redoes_a_change_that_lost_the_race(repo: Repository, saved_model: Make) -> None:
    for _ in range(2):
        repo.add_version("feed_ctr", *saved_model())
    update_routing(repo, "feed_ctr", lambda r, vs: r.publish(1, 100, existing=vs, who="alice"))
    calls = 0

    def promote(routing: Routing, versions: list[int]) -> Routing:
        nonlocal calls
        calls += 1
        if calls == 1:  # someone else changes the routing between our read and our write
            repo.write_routing(routing.publish(2, 10, existing=versions, who="bob"))
        return routing.promote(2, 30, existing=versions, who="alice")

    result = update_routing(repo, "feed_ctr", promote)
    assert calls == 2 and result.traffic == {1: 70, 2: 30}
    assert [(c.who, c.action) for c in result.history] == [
        ("alice", "publish"),
        ("bob", "publish"),
        ("alice", "promote"),
    ]


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (
            lambda p: (p / "saved_model.pb").unlink(),
            r"is not a SavedModel: it has no saved_model.pb or saved_model.pbtxt",
        ),
        (lambda p: (p / FEATURE_MAP_PATH).unlink(), r"has no assets.extra/featuremap.json: serving could not map"),
        (lambda p: (p / FEATURE_MAP_PATH).write_text("{}"), r"has SHA-256 [0-9a-f]{64}, but the manifest says"),
    ],
)
def test_a_bad_source_is_refused_and_nothing_changes(
    repo: Repository, saved_model: Make, damage: Callable[[Path], None], message: str
) -> None:
    repo.add_version("feed_ctr", *saved_model())
    path, manifest = saved_model()
    damage(path)
    with pytest.raises(ModelRepoError, match=message):
        repo.add_version("feed_ctr", path, manifest)
    assert repo.versions("feed_ctr") == [1]
    assert repo.add_version("feed_ctr", *saved_model()) == 2


def test_an_unreadable_feature_map_is_refused(repo: Repository, saved_model: Make, tmp_path: Path) -> None:
    path, _ = saved_model(featuremap='{"schema": "weiflow.featuremap/1", "features": 3}')
    from tests.modelrepo.conftest import manifest_for

    with pytest.raises(
        ModelRepoError, match=r"featuremap.json is not a valid feature map: .*'features' must be a list"
    ):
        repo.add_version("feed_ctr", path, manifest_for(path))
    with pytest.raises(ModelRepoError, match=r"is not a directory"):
        repo.add_version("feed_ctr", tmp_path / "nowhere", manifest_for(path))
    with pytest.raises(ModelRepoError, match=r"invalid model name '\.\./up'"):
        repo.add_version("../up", path, manifest_for(path))
    assert repo.models() == []


# --- keep-last pruning ------------------------------------------------------------------------


def _published(versions: int, *traffics: int) -> Routing:
    """A routing after publishing versions 1..``versions`` at ``traffics`` percent (100 for the rest)."""
    routing, existing = Routing("feed_ctr"), list(range(1, versions + 1))
    for version in existing:
        share = traffics[version - 1] if version <= len(traffics) else 100
        routing = routing.publish(version, share, existing=existing, who="alice")
    return routing


def test_prunable_spares_live_labelled_and_rollback_versions_and_the_newest_unrouted() -> None:
    # Each publish at 100%: v6 live, v5 where rollback returns; 1..4 unrouted, the newest 2 kept.
    routing = _published(6)
    assert routing.previous_stable == (1, 2, 3, 4, 5)
    assert prunable(routing, range(1, 7), 2) == [1, 2]
    assert prunable(routing, range(1, 7), 4) == []
    # An owner's label keeps a version; a version already removed is not listed.
    labelled = routing.label("golden", 1, existing=range(1, 7), who="bob")
    assert prunable(labelled, [1, 3, 4, 5, 6], 1) == [3]
    # A gray release: v6 stable at 90%, v7 canary at 10%; rollback ends it, a second one returns to v5.
    gray = routing.publish(7, 10, existing=range(1, 8), who="alice")
    assert gray.traffic == {6: 90, 7: 10} and prunable(gray, range(1, 8), 1) == [1, 2, 3]
    # Published at 0%: routes nothing, but is the newest, so keep-last:1 keeps it.
    dark = routing.publish(7, 0, existing=range(1, 8), who="alice")
    assert prunable(dark, range(1, 8), 1) == [1, 2, 3, 4]
    with pytest.raises(ValueError, match="at least 1"):
        prunable(routing, range(1, 7), 0)


def test_prune_removes_what_keep_last_allows_and_rollback_still_works(repo: Repository, saved_model: Make) -> None:
    for version in range(1, 6):
        assert repo.add_version("feed_ctr", *saved_model()) == version
        update_routing(repo, "feed_ctr", lambda r, vs, v=version: r.publish(v, 100, existing=vs, who="alice"))
    pruned = prune(repo, "feed_ctr", 1, who="alice")
    routing = repo.read_routing("feed_ctr")
    assert pruned == Pruned((1, 2), (), routing) and repo.versions("feed_ctr") == [3, 4, 5]
    assert [(c.action, c.version, c.who) for c in routing.history[-2:]] == [
        ("remove", 1, "alice"),
        ("remove", 2, "alice"),
    ]
    assert routing.previous_stable == (3, 4) and prune(repo, "feed_ctr", 1, who="alice") == Pruned()
    assert rollback(repo, "feed_ctr", who="bob").traffic == {4: 100}
    assert rollback(repo, "feed_ctr", who="bob").traffic == {3: 100}
    assert repo.add_version("feed_ctr", *saved_model()) == 6  # removed numbers are never given again


def test_prune_reports_a_version_it_cannot_remove_and_goes_on(saved_model: Make) -> None:
    class Stubborn(MemoryRepository):
        def remove_version(self, model: str, version: int, *, who: str) -> Routing:
            if version == 1:
                raise ModelRepoError("version 1 is held")
            return super().remove_version(model, version, who=who)

    repo = Stubborn()
    for version in range(1, 6):
        repo.add_version("feed_ctr", *saved_model())
        update_routing(repo, "feed_ctr", lambda r, vs, v=version: r.promote(v, 100, existing=vs, who="a"))
    pruned = prune(repo, "feed_ctr", 1, who="alice")
    assert pruned.removed == (2,) and pruned.problems == ("model 'feed_ctr': version 1 stays: version 1 is held",)
    assert repo.versions("feed_ctr") == [1, 3, 4, 5]
