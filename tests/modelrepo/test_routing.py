"""Routing transitions, their invariants and errors, the routing file, and the key -> version hash."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys

import pytest

from weiflow.modelrepo import ModelRepoError, Routing
from weiflow.modelrepo.routing import HISTORY_LIMIT, ROUTING_SCHEMA, Change, point

ALL = range(1, 20)  # the versions the repository "holds" in these tests
KEYS = [f"user-{i}" for i in range(10_000)]


def live(model: str = "feed_ctr", *steps: tuple[str, int, int]) -> Routing:
    routing = Routing(model)
    for action, version, traffic in steps:
        routing = getattr(routing, action)(version, traffic, existing=ALL, who="alice", at="2026-11-20T08:00:00+00:00")
    return routing


def test_a_first_publish_serves_everything_whatever_its_traffic() -> None:
    routing = live("feed_ctr", ("publish", 1, 10))
    assert routing.traffic == {1: 100} and routing.labels == {"stable": 1}
    assert routing.generation == 1 and routing.previous_stable == ()


def test_gray_release_promote_and_rollback() -> None:
    one = live("feed_ctr", ("publish", 1, 100))
    gray = one.publish(2, 10, existing=ALL, who="bob", at="2026-11-21T08:00:00+00:00")
    assert gray.traffic == {1: 90, 2: 10}
    assert gray.labels == {"stable": 1, "canary": 2}
    assert gray.history[-1] == Change("publish", 2, 10, "bob", "2026-11-21T08:00:00+00:00", {1: 100}, {1: 90, 2: 10})

    half = gray.promote(2, 50, existing=ALL, who="bob")
    assert half.traffic == {1: 50, 2: 50} and half.labels == {"stable": 1, "canary": 2}
    full = half.promote(2, 100, existing=ALL, who="bob")
    assert full.traffic == {2: 100} and full.labels == {"stable": 2} and full.previous_stable == (1,)

    back = full.rollback(existing=ALL, who="carol")
    assert back.traffic == {1: 100} and back.labels == {"stable": 1} and back.previous_stable == ()
    assert back.history[-1].action == "rollback" and back.history[-1].before == {2: 100}
    assert [c.action for c in back.history] == ["publish", "publish", "promote", "promote", "rollback"]
    assert back.generation == 5


def test_rollback_during_a_gray_release_ends_it_on_the_stable_side() -> None:
    gray = live("feed_ctr", ("publish", 1, 100), ("publish", 2, 30))
    back = gray.rollback(existing=ALL, who="alice")
    assert back.traffic == {1: 100} and back.labels == {"stable": 1} and back.previous_stable == ()


def test_rolling_back_twice_goes_two_steps_back_not_back_and_forth() -> None:
    routing = live("feed_ctr", ("publish", 1, 100), ("publish", 2, 100), ("publish", 3, 100))
    assert routing.previous_stable == (1, 2)
    routing = routing.rollback(existing=ALL, who="a")
    assert routing.traffic == {2: 100}
    routing = routing.rollback(existing=ALL, who="a")
    assert routing.traffic == {1: 100}
    with pytest.raises(ModelRepoError, match=r"version 1 has been the only fully live version; there is no earlier"):
        routing.rollback(existing=ALL, who="a")


def test_rollback_skips_versions_that_no_longer_exist() -> None:
    routing = live("feed_ctr", ("publish", 1, 100), ("publish", 2, 100), ("publish", 3, 100))
    assert routing.rollback(existing=[1, 3], who="a").traffic == {1: 100}


def test_a_new_canary_replaces_the_old_one_and_the_stable_keeps_the_rest() -> None:
    routing = live("feed_ctr", ("publish", 1, 100), ("publish", 2, 10), ("publish", 3, 20))
    assert routing.traffic == {1: 80, 3: 20} and routing.labels == {"stable": 1, "canary": 3}


def test_publish_with_no_traffic_records_it_and_routes_nothing() -> None:
    before = live("feed_ctr", ("publish", 1, 100))
    after = before.publish(2, 0, existing=ALL, who="a")
    assert after.traffic == before.traffic and after.labels == before.labels
    assert after.generation == before.generation + 1 and after.history[-1].version == 2


def test_promoting_the_stable_version_down_gives_the_rest_to_the_canary() -> None:
    gray = live("feed_ctr", ("publish", 1, 100), ("publish", 2, 10))
    assert gray.promote(1, 40, existing=ALL, who="a").traffic == {1: 40, 2: 60}
    assert gray.promote(2, 0, existing=ALL, who="a").traffic == {1: 100}


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda r: r.publish(2, 101, existing=ALL, who="a"), r"traffic 101 is not a percent"),
        (lambda r: r.publish(2, -1, existing=ALL, who="a"), r"traffic -1 is not a percent"),
        (lambda r: r.promote(2, True, existing=ALL, who="a"), r"traffic True is not a percent"),
        (lambda r: r.promote(2, "10", existing=ALL, who="a"), r"traffic '10' is not a percent"),
        (lambda r: r.promote(7, 10, existing=[1, 2], who="a"), r"model 'feed_ctr' has no version 7 \(versions: 1, 2\)"),
        (lambda r: r.publish(1, 10, existing=ALL, who="a"), r"version 1 is already live \(100%\)"),
        (lambda r: r.promote(1, 0, existing=ALL, who="a"), r"only live version; 0% would leave nothing live"),
        (lambda r: r.promote(3, 0, existing=ALL, who="a"), r"version 3 has no traffic to take away"),
        (lambda r: r.promote(2, 10, existing=ALL, who=""), r"a change needs who made it"),
        (lambda r: Routing("feed_ctr").rollback(existing=ALL, who="a"), r"nothing is live"),
    ],
)
def test_bad_transitions_are_refused_with_the_reason(call: object, message: str) -> None:
    routing = live("feed_ctr", ("publish", 1, 100))
    with pytest.raises(ModelRepoError, match=message):
        call(routing)  # type: ignore[operator]


def test_remove_is_refused_while_a_version_is_live_or_labelled() -> None:
    routing = live("feed_ctr", ("publish", 1, 100), ("publish", 2, 100), ("publish", 3, 10))
    with pytest.raises(ModelRepoError, match=r"version 3 is in use \(10% of traffic\)"):
        routing.remove(3, existing=ALL, who="a")
    labelled = routing.label("golden", 1, existing=ALL, who="a")
    with pytest.raises(ModelRepoError, match=r"version 1 is in use \(label golden\)"):
        labelled.remove(1, existing=ALL, who="a")
    removed = routing.remove(1, existing=ALL, who="a")
    assert removed.previous_stable == () and removed.history[-1].action == "remove"


def test_owner_labels() -> None:
    routing = live("feed_ctr", ("publish", 1, 100)).label("golden", 1, existing=ALL, who="a")
    assert routing.labels == {"golden": 1, "stable": 1}
    assert routing.promote(2, 100, existing=ALL, who="a").labels == {"golden": 1, "stable": 2}
    assert routing.label("golden", None, existing=ALL, who="a").labels == {"stable": 1}
    for name in ("stable", "canary", "7", "a/b", ""):
        with pytest.raises(ModelRepoError, match="cannot set label"):
            routing.label(name, 1, existing=ALL, who="a")


def test_history_is_bounded_and_generation_counts_every_change() -> None:
    routing = live("feed_ctr", ("publish", 1, 100), ("publish", 2, 10))
    for i in range(HISTORY_LIMIT + 20):
        routing = routing.promote(2, 10 + i % 50, existing=ALL, who=f"u{i}")
    assert len(routing.history) == HISTORY_LIMIT and routing.generation == HISTORY_LIMIT + 22
    assert routing.history[-1].who == f"u{HISTORY_LIMIT + 19}"


def test_the_routing_file_round_trips() -> None:
    routing = live("feed_ctr", ("publish", 1, 100), ("publish", 2, 100), ("publish", 3, 10))
    document = json.loads(routing.to_json())
    assert document["schema"] == ROUTING_SCHEMA
    assert document["traffic"] == {"2": 90, "3": 10}
    assert document["labels"] == {"canary": 3, "stable": 2}
    assert document["previous_stable"] == [1] and document["generation"] == 3
    assert document["history"][-1] == {
        "action": "publish",
        "version": 3,
        "traffic": 10,
        "who": "alice",
        "at": "2026-11-20T08:00:00+00:00",
        "before": {"2": 100},
        "after": {"2": 90, "3": 10},
    }
    assert Routing.from_json(routing.to_json()) == routing


def test_random_transitions_keep_the_invariants() -> None:
    rng = random.Random(7)
    routing = Routing("m")
    for step in range(1000):
        action = rng.choice(["publish", "promote", "rollback", "remove", "label"])
        version, traffic = rng.randint(1, 6), rng.choice([0, 1, 5, 10, 50, 99, 100])
        try:
            if action in ("publish", "promote"):
                routing = getattr(routing, action)(version, traffic, existing=range(1, 7), who="r")
            elif action == "rollback":
                routing = routing.rollback(existing=range(1, 7), who="r")
            elif action == "remove":
                routing = routing.remove(version, existing=range(1, 7), who="r")
            else:
                routing = routing.label("pin", rng.choice([None, version]), existing=range(1, 7), who="r")
        except ModelRepoError:
            continue
        assert len(routing.traffic) <= 2
        assert not routing.traffic or sum(routing.traffic.values()) == 100
        if step % 10 == 0:
            assert Routing.from_json(routing.to_json()) == routing  # the constructor re-checks every invariant


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ("{", "not a valid routing file"),
        ('{"schema": "weiflow.routing/2"}', "routing schema 'weiflow.routing/2' is not supported"),
        ('{"schema": "weiflow.routing/1", "model": "m", "generation": 1, "traffic": {"1": 60}}', "sum to 60"),
        ('{"schema": "weiflow.routing/1", "model": "m", "generation": 1, "traffic": {"01": 100}}', "'01'"),
        ('{"schema": "weiflow.routing/1", "model": "m", "generation": 1, "traffic": {"1": 100}}', "'stable' label"),
        ('{"schema": "weiflow.routing/1", "model": "../m", "generation": 1}', "invalid model name"),
        ('{"schema": "weiflow.routing/1", "model": "m"}', "'generation' must be a non-negative integer"),
        ('{"schema": "weiflow.routing/1", "model": "m", "generation": 1, "history": [{"action": "x"}]}', "action"),
    ],
)
def test_a_damaged_routing_file_names_the_file(document: str, message: str) -> None:
    with pytest.raises(ModelRepoError) as caught:
        Routing.from_json(document, source="/repo/m/weiflow-routing.json")
    assert str(caught.value).startswith("/repo/m/weiflow-routing.json: ")
    assert message in str(caught.value) and caught.value.hint


# -- keys -> versions -----------------------------------------------------------------


def test_the_hash_is_stable_across_processes_and_releases() -> None:
    # Pinned: changing the hash would move users between versions on upgrade.
    assert (point("feed_ctr", "user-1"), point("feed_ctr", "user-2"), point("other", "user-1")) == (8922, 3179, 4603)
    code = "from weiflow.modelrepo.routing import point; print(point('feed_ctr', 'user-1'))"
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env).stdout == "8922\n"


def test_keys_follow_the_split() -> None:
    routing = live("feed_ctr", ("publish", 1, 100), ("publish", 2, 10))
    assert routing.ranges() == ((2, 0, 1000), (1, 1000, 10_000))
    on_canary = sum(routing.assign(key) == 2 for key in KEYS)
    assert 800 <= on_canary <= 1200  # 10% within 2 points
    assert all(routing.assign(key) == routing.assign(key) for key in KEYS[:100])
    assert Routing("feed_ctr").assign("user-1") is None


def test_a_growing_canary_keeps_every_key_it_had_and_a_shrinking_one_keeps_a_subset() -> None:
    five = live("feed_ctr", ("publish", 1, 100), ("publish", 2, 5))
    ten = five.promote(2, 10, existing=ALL, who="a")
    before = {key for key in KEYS if five.assign(key) == 2}
    after = {key for key in KEYS if ten.assign(key) == 2}
    assert before and before < after
    # The stable side shrinks, so its keys only leave it: nobody moves from the canary back.
    assert {key for key in KEYS if ten.assign(key) == 1} < {key for key in KEYS if five.assign(key) == 1}
    back = ten.promote(2, 5, existing=ALL, who="a")
    assert {key for key in KEYS if back.assign(key) == 2} == before
