"""Keep-last after a publish: versions that route nothing are pruned to the newest N, through the engine.

N is the publish module's ``keep-last=``, else the published dataset's ``retention="keep-last:N"``.
The load check is replaced by one that passes (fake SavedModels; its own tests are in test_deploy.py):
these tests are about what happens after a publish succeeded.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.modelrepo.conftest import write_saved_model
from weiflow.config import load_settings
from weiflow.dag import check_file, compile_file
from weiflow.engines.deploy.actions import LoadChecker
from weiflow.engines.python.executor import Step
from weiflow.modelrepo import FileRepository
from weiflow.runtime import RunContext, run_node
from weiflow.tracking import EventKind, MemoryTracker

SPEC = """
<pipeline xmlns="urn:weiflow:pipeline:1" name="ctr" owner="alice">
  <params><param name="traffic" type="int" default="100"/></params>
  <datasets><dataset name="model" uri="${storage}/exports/ctr" format="savedmodel" RETENTION/></datasets>
  <node id="export" engine="python">
    <module id="x" type="call" callable="tests.engines.deploy.test_prune:export_fake" writes="model"/>
  </node>
  <node id="pub" engine="deploy">
    <module id="p" type="publish" dataset="model" model-name="ctr" traffic="${traffic}" KEEP/>
  </node>
  <node id="back" engine="deploy"><module id="r" type="rollback" model-name="ctr"/></node>
</pipeline>
"""


def export_fake(step: Step) -> None:
    """What an export module writes (a fake SavedModel: the load check is replaced here)."""
    with step.write("model") as out:
        write_saved_model(out.path / "ctr" / "1700000000")


@pytest.fixture
def publisher(
    make_spec: Callable[..., Path], isolated_var: Path, monkeypatch: pytest.MonkeyPatch
) -> Callable[..., Callable[..., MemoryTracker]]:
    """``publisher(retention=..., keep=...)`` compiles the spec and runs its export node; the result runs a
    node (default: the publish) and returns its events."""
    monkeypatch.setattr(LoadChecker, "__call__", lambda self, path: {"ok": True})

    def compile_spec(retention: str = "", keep: str = "") -> Callable[..., MemoryTracker]:
        text = SPEC.replace("RETENTION", f'retention="{retention}"' if retention else "")
        dag = compile_file(make_spec(text.replace("KEEP", f'keep-last="{keep}"' if keep else "")))

        def run(node: str = "pub", **params: str) -> MemoryTracker:
            tracker = MemoryTracker()
            context = RunContext.create(dag, settings=load_settings(), tracker=tracker, run_id="r1", overrides=params)
            run_node(context, node)
            return tracker

        run("export")
        return run

    return compile_spec


MODEL_FIELDS = ("name", "version", "uri", "deployed", "traffic")  # and metrics, publisher, repository


def _models(tracker: MemoryTracker) -> list[dict[str, Any]]:
    return [
        {**{k: e.detail["model"][k] for k in MODEL_FIELDS}, "action": e.detail["action"]}
        for e in tracker.events
        if e.kind is EventKind.METRICS and "model" in e.detail
    ]


def test_publish_prunes_unrouted_versions_beyond_the_datasets_keep_last_and_rollback_still_works(
    publisher: Callable[..., Callable[..., MemoryTracker]], isolated_var: Path
) -> None:
    run = publisher(retention="keep-last:1")
    repo = FileRepository(isolated_var / "storage" / "models")
    for _ in range(3):  # v3 live, v2 where rollback returns, v1 the one unrouted version keep-last:1 keeps
        run()
    assert repo.versions("ctr") == [1, 2, 3]
    removals = [_models(run())[-1], _models(run())[-1]]  # v4 and v5 each push the oldest out
    assert repo.versions("ctr") == [3, 4, 5]
    assert removals == [
        {
            "name": "ctr",
            "version": v,
            "uri": repo.version_uri("ctr", v),
            "deployed": False,
            "traffic": 0,
            "action": "remove",
        }
        for v in (1, 2)
    ]
    routing = repo.read_routing("ctr")
    assert [(c.action, c.version, c.who) for c in routing.history[-3:]] == [
        ("remove", 1, "alice"),
        ("publish", 5, "alice"),
        ("remove", 2, "alice"),
    ]
    # A gray release: v5 stable, v6 canary, v4 where a rollback after the release returns, v3 kept.
    run(traffic="10")
    assert repo.read_routing("ctr").traffic == {5: 90, 6: 10} and repo.versions("ctr") == [3, 4, 5, 6]
    run("back")
    run("back")
    assert repo.read_routing("ctr").traffic == {4: 100}
    run("back")
    assert repo.read_routing("ctr").traffic == {3: 100}


@pytest.mark.parametrize(
    ("retention", "keep", "kept"),
    [
        ("", "", [1, 2, 3, 4]),  # no keep-last anywhere: nothing is pruned
        ("ttl:7", "", [1, 2, 3, 4]),  # another policy: not about versions
        ("", "1", [2, 3, 4]),  # the module's keep-last=
        ("keep-last:5", "1", [2, 3, 4]),  # overrides the dataset's
    ],
)
def test_keep_last_comes_from_the_module_else_the_datasets_retention(
    publisher: Callable[..., Callable[..., MemoryTracker]],
    isolated_var: Path,
    retention: str,
    keep: str,
    kept: list[int],
) -> None:
    run = publisher(retention=retention, keep=keep)
    for _ in range(4):
        run()
    assert FileRepository(isolated_var / "storage" / "models").versions("ctr") == kept


def test_a_version_that_cannot_be_pruned_is_logged_and_the_publish_succeeds(
    publisher: Callable[..., Callable[..., MemoryTracker]],
    isolated_var: Path,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    run = publisher(keep="1")
    for _ in range(3):
        run()
    models = isolated_var / "storage" / "models"
    # The model's directory moved to another disk behind a link: the repository deletes nothing there.
    outside = tmp_path / "elsewhere"
    (models / "ctr").rename(outside)
    (models / "ctr").symlink_to(outside)
    with caplog.at_level(logging.WARNING, logger="weiflow.engines.deploy.executor"):
        events = _models(run())
    repo = FileRepository(models)
    assert repo.versions("ctr") == [1, 2, 3, 4] and repo.read_routing("ctr").traffic == {4: 100}
    assert [e["action"] for e in events] == ["publish", "publish"]  # no 'remove' reported
    assert "pub.p: publish succeeded, but pruning did not: model 'ctr': version 1 stays: refusing to remove" in (
        caplog.text
    )


def test_keep_last_below_one_is_a_validate_time_error(make_spec: Callable[..., Path]) -> None:
    spec = make_spec(SPEC.replace("RETENTION", "").replace("KEEP", 'keep-last="0"'))
    errors = [d for d in check_file(spec) if d.is_error]
    assert [d.line for d in errors] == [9] and "keep-last" in errors[0].message
