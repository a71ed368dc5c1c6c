"""The deploy engine and ``weiflow deploy``: gated publish, gray release, promote, rollback.

The fast tests stop at a gate before any model is loaded; the slow ones run the real load
check (TensorFlow in a child process) on tiny SavedModels built once per session.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.engines.deploy.conftest import tree_digest
from weiflow.config import load_settings
from weiflow.dag import check_file, compile_file
from weiflow.engines.deploy import Requirement, parse_require
from weiflow.engines.deploy.actions import DeployError, find_saved_model, promote, publish, rollback
from weiflow.errors import ModuleFailed
from weiflow.modelrepo import FileRepository, ModelRepoError
from weiflow.runtime import RunContext, run_node
from weiflow.tracking import EventKind, MemoryTracker


def passes(path: Path) -> dict[str, Any]:
    """A load check that lets everything through (for tests about the other gates)."""
    return {"ok": True}


# --- declarations and validation -------------------------------------------------------


def test_require_parses_bounds_and_refuses_nonsense() -> None:
    assert parse_require("auc>=0.72, logloss<=0.5") == [
        Requirement("auc", ">=", 0.72),
        Requirement("logloss", "<=", 0.5),
    ]
    assert parse_require("accuracy>0.6")[0].holds(0.61) and not parse_require("accuracy>0.6")[0].holds(0.6)
    for bad, why in (
        ("auc=>0.7", "not a requirement"),
        ("auc>=", "not a requirement"),
        ("auc>=0.7,", "not a requirement"),
        ("auc>=0.7,auc>=0.8", "required twice"),
    ):
        with pytest.raises(ValueError, match=why):
            parse_require(bad)


def test_bad_require_traffic_and_version_are_validate_time_errors_with_lines(make_spec: Callable[..., Path]) -> None:
    spec = make_spec(
        """
  <datasets><dataset name="m" uri="file:///exports/m" format="savedmodel" external="true"/></datasets>
  <node id="ship" engine="deploy">
    <module id="pub" type="publish" dataset="m" model-name="ctr" require="auc=>0.7"/>
    <module id="dark" type="publish" dataset="m" model-name="ctr" traffic="-1"/>
  </node>
  <node id="more" engine="deploy">
    <module id="up" type="promote" model-name="ctr" traffic="150"/>
    <module id="back" type="rollback" model-name="ctr" input="up"/>
    <module id="again" type="promote" model-name="ctr" version="0" traffic="10.5" input="back"/>
  </node>
"""
    )
    errors = [d for d in check_file(spec) if d.is_error]
    assert [d.line for d in errors] == [5, 6, 9, 11, 11]
    assert "'auc=>0.7' is not a requirement" in errors[0].message
    assert "traffic: must be at least 0, got -1" in errors[1].message and "from 0 to 100" in str(errors[1].hint)
    assert "at most 100" in errors[2].message
    assert "version: must be at least 1, got 0" in errors[3].message
    assert "traffic: expected a whole number, got '10.5'" in errors[4].message


def test_templated_require_is_checked_when_the_node_runs(make_spec: Callable[..., Path]) -> None:
    spec = make_spec(
        """
  <params><param name="bar" default="auc>>1"/></params>
  <datasets><dataset name="m" uri="file:///exports/m" format="savedmodel" external="true"/></datasets>
  <node id="ship" engine="deploy"><module id="pub" type="publish" dataset="m" model-name="ctr" require="${bar}"/></node>
"""
    )
    assert not [d for d in check_file(spec) if d.is_error]


# --- gates that refuse before loading anything --------------------------------------------


@pytest.fixture
def repo_dir(tmp_path: Path) -> Path:
    return tmp_path / "repo"


def test_not_a_saved_model_and_a_missing_feature_map_are_clear_errors(
    export: Callable[..., Path], tmp_path: Path, repo_dir: Path
) -> None:
    empty = tmp_path / "empty"
    (empty / "ctr" / "3").mkdir(parents=True)
    with pytest.raises(DeployError, match=r"is not a SavedModel: it has no saved_model.pb") as info:
        find_saved_model(empty, "ctr")
    assert "export module" in str(info.value)
    no_map = find_saved_model(export(featuremap=False), "ctr")
    with pytest.raises(DeployError, match=r"has no assets.extra/featuremap.json(.|\n)*hint: train from samples"):
        publish(str(repo_dir), "ctr", no_map, who="alice", load_check=passes)
    assert not repo_dir.exists()


def test_gates_on_metrics_refuse_and_leave_the_repository_byte_for_byte_unchanged(
    export: Callable[..., Path], repo_dir: Path
) -> None:
    first = publish(
        str(repo_dir), "ctr", find_saved_model(export(metrics={"auc": 0.8}), "ctr"), who="alice", load_check=passes
    )
    assert first.version == 1 and first.routing.traffic == {1: 100}
    before = tree_digest(repo_dir)
    weak = find_saved_model(export(metrics={"auc": 0.65, "logloss": 0.4}), "ctr")
    with pytest.raises(DeployError, match=r"misses its bar: auc=0.65 \(required auc>=0.72\)"):
        publish(str(repo_dir), "ctr", weak, require="auc>=0.72,logloss<=0.5", who="alice", run_id="r1")
    with pytest.raises(DeployError, match=r"metric\(s\) accuracy that run 'r1' never measured \(measured: auc=0.65"):
        publish(str(repo_dir), "ctr", weak, require="accuracy>=0.5", who="alice", run_id="r1")
    bare = find_saved_model(export(), "ctr")
    with pytest.raises(DeployError, match=r"never measured(.|\n)*add an evaluate module"):
        publish(str(repo_dir), "ctr", bare, require="auc>=0.5", who="alice")
    other_run = find_saved_model(export(metrics={"auc": 0.9}, run_id="r0"), "ctr")
    with pytest.raises(DeployError, match=r"exported by run 'r0', not this run 'r1'"):
        publish(str(repo_dir), "ctr", other_run, require="auc>=0.5", who="alice", run_id="r1")
    assert tree_digest(repo_dir) == before


def test_promote_and_rollback_refuse_unknown_models_and_versions(export: Callable[..., Path], repo_dir: Path) -> None:
    source = find_saved_model(export(), "ctr")
    publish(str(repo_dir), "ctr", source, who="alice", load_check=passes)
    repo = FileRepository(str(repo_dir))
    with pytest.raises(ModelRepoError, match=r"model 'feed' has no versions in .*\(models: ctr\)"):
        promote(repo, "feed", None, 50, who="bob")
    with pytest.raises(ModelRepoError, match=r"model 'ctr' has no version 7 \(versions: 1\)"):
        promote(repo, "ctr", 7, 50, who="bob")
    with pytest.raises(ModelRepoError, match="no earlier one to roll back to"):
        rollback(repo, "ctr", who="bob")
    with pytest.raises(DeployError, match="not a percent"):
        publish(str(repo_dir), "ctr", source, traffic=101, who="alice", load_check=passes)


PROMOTE_SPEC = """
<pipeline xmlns="urn:weiflow:pipeline:1" name="ctr" owner="alice">
  <params><param name="version" type="int" default="7"/><param name="traffic" type="int" default="50"/></params>
  <node id="up" engine="deploy">
    <module id="p" type="promote" model-name="ctr" version="${version}" traffic="${traffic}"/>
  </node>
</pipeline>
"""


def test_promoting_a_version_that_does_not_exist_fails_the_node_clearly(
    export: Callable[..., Path], make_spec: Callable[..., Path], isolated_var: Path
) -> None:
    repo_dir = isolated_var / "storage" / "models"  # ${storage}/models, where the node looks
    publish(str(repo_dir), "ctr", find_saved_model(export(), "ctr"), who="alice", load_check=passes)
    before = tree_digest(repo_dir)
    spec = compile_file(make_spec(PROMOTE_SPEC))

    def run(**params: str) -> None:
        context = RunContext.create(spec, settings=load_settings(), tracker=MemoryTracker(), overrides=params)
        run_node(context, "up")

    with pytest.raises(ModuleFailed, match=r"model 'ctr' has no version 7 \(versions: 1\)(.|\n)*hint: publish"):
        run()
    # Out of range only once its param is known: the node names the spec's line and the attribute.
    with pytest.raises(ModuleFailed, match=r"spec.xml:5:\d+: traffic='150': must be at most 100"):
        run(version="1", traffic="150")
    assert tree_digest(repo_dir) == before


# --- the real load check ------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.integration
def test_a_model_answering_nan_is_refused_and_nothing_changes(export: Callable[..., Path], repo_dir: Path) -> None:
    publish(str(repo_dir), "ctr", find_saved_model(export(), "ctr"), who="alice", load_check=passes)
    before = tree_digest(repo_dir)
    with pytest.raises(DeployError, match=r"refused: .*output '(logit|probability)' is NaN or infinite"):
        publish(str(repo_dir), "ctr", find_saved_model(export("nan"), "ctr"), who="alice")
    assert tree_digest(repo_dir) == before


ENGINE_SPEC = """
<pipeline xmlns="urn:weiflow:pipeline:1" name="ctr" owner="alice">
  <params><param name="traffic" type="int" default="100"/></params>
  <datasets><dataset name="model" uri="file://EXPORT" format="savedmodel" external="true"/></datasets>
  <node id="pub" engine="deploy">
    <module id="p" type="publish" dataset="model" model-name="ctr" traffic="${traffic}" require="auc>=0.7"/>
  </node>
  <node id="up" engine="deploy"><module id="p" type="promote" model-name="ctr" traffic="100"/></node>
  <node id="back" engine="deploy"><module id="r" type="rollback" model-name="ctr"/></node>
</pipeline>
"""


@pytest.mark.slow
@pytest.mark.integration
def test_deploy_nodes_publish_gray_release_promote_and_roll_back(
    export: Callable[..., Path], make_spec: Callable[..., Path], isolated_var: Path
) -> None:
    dataset = export("good", metrics={"auc": 0.75, "logloss": 0.45})
    spec = compile_file(make_spec(ENGINE_SPEC.replace("EXPORT", str(dataset))))
    tracker = MemoryTracker()

    def run(node: str, **params: str) -> None:
        context = RunContext.create(spec, settings=load_settings(), tracker=tracker, run_id="r1", overrides=params)
        run_node(context, node)

    repo = FileRepository(str(isolated_var / "storage" / "models"))  # ${storage}/models by default
    run("pub")
    assert repo.versions("ctr") == [1] and repo.read_routing("ctr").traffic == {1: 100}
    manifest = repo.manifest("ctr", 1)
    assert (manifest.pipeline, manifest.run_id, manifest.publisher) == ("ctr", "r1", "alice")
    assert manifest.metrics == {"auc": 0.75, "logloss": 0.45}
    run("pub", traffic="10")
    routing = repo.read_routing("ctr")
    assert routing.traffic == {1: 90, 2: 10} and routing.labels == {"stable": 1, "canary": 2}
    run("up")
    assert repo.read_routing("ctr").traffic == {2: 100}
    run("back")
    routing = repo.read_routing("ctr")
    assert routing.traffic == {1: 100} and [c.action for c in routing.history] == [
        "publish",
        "publish",
        "promote",
        "rollback",
    ]
    # What the center mirrors: one METRICS event per version whose share a change touched.
    reports = [e.detail for e in tracker.events if e.kind == EventKind.METRICS]
    fields = ("name", "version", "uri", "deployed", "traffic")
    models = [{k: r["model"][k] for k in fields} for r in reports]
    # ... with the routing after each change, which the center mirrors, and the version's manifest.
    assert [(r["routing"]["generation"], r["routing"]["traffic"]) for r in reports[-2:]] == [(4, {"1": 100})] * 2
    first = reports[0]["model"]
    assert (first["metrics"], first["publisher"]) == (
        dict(repo.manifest("ctr", 1).metrics),
        repo.manifest("ctr", 1).publisher,
    )
    assert models[:3] == [
        {"name": "ctr", "version": 1, "uri": repo.version_uri("ctr", 1), "deployed": True, "traffic": 100},
        {"name": "ctr", "version": 1, "uri": repo.version_uri("ctr", 1), "deployed": True, "traffic": 90},
        {"name": "ctr", "version": 2, "uri": repo.version_uri("ctr", 2), "deployed": True, "traffic": 10},
    ]
    assert models[-2:] == [
        {"name": "ctr", "version": 2, "uri": repo.version_uri("ctr", 2), "deployed": False, "traffic": 0},
        {"name": "ctr", "version": 1, "uri": repo.version_uri("ctr", 1), "deployed": True, "traffic": 100},
    ]
    # A failed gate fails the node with the reason, and changes nothing.
    before = tree_digest(repo_dir := isolated_var / "storage" / "models")
    weak = export(metrics={"auc": 0.6})
    spec = compile_file(make_spec(ENGINE_SPEC.replace("EXPORT", str(weak)), name="weak.xml"))
    with pytest.raises(ModuleFailed, match=r"misses its bar: auc=0.6 \(required auc>=0.7\)"):
        run("pub")
    assert tree_digest(repo_dir) == before


def weiflow(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "weiflow", *args], capture_output=True, text=True, timeout=180)


@pytest.mark.slow
@pytest.mark.integration
def test_cli_publishes_promotes_rolls_back_and_reports(export: Callable[..., Path], isolated_var: Path) -> None:
    dataset = export("good", metrics={"auc": 0.75})
    done = weiflow("deploy", "publish", str(dataset), "--model", "ctr")
    assert done.returncode == 0, done.stderr
    assert "published ctr version 1" in done.stderr and done.stdout.strip() == "ctr: v1 100% (stable=v1)"
    done = weiflow("deploy", "publish", str(dataset), "--model", "ctr", "--traffic", "10", "--require", "auc>=0.7")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ctr: v1 90%, v2 10% (canary=v2, stable=v1)"

    refused = weiflow("deploy", "publish", str(dataset), "--model", "ctr", "--require", "auc>=0.9")
    assert refused.returncode == 1 and "misses its bar: auc=0.75 (required auc>=0.9)" in refused.stderr
    assert weiflow("deploy", "publish", str(dataset), "--model", "ctr", "--traffic", "150").returncode == 2
    assert weiflow("deploy", "publish", "/nonexistent", "--model", "ctr").returncode == 2
    unknown = weiflow("deploy", "promote", "feed", "--traffic", "50")
    assert unknown.returncode == 1 and "model 'feed' has no versions" in unknown.stderr

    status = json.loads(weiflow("deploy", "status", "ctr", "--json").stdout)
    (model,) = status["models"]
    assert status["repository"].endswith("/storage/models")
    assert model["traffic"] == {"1": 90, "2": 10} and model["labels"] == {"canary": 2, "stable": 1}
    assert [v["metrics"] for v in model["versions"]] == [{"auc": 0.75}, {"auc": 0.75}]
    assert all(v["publisher"] and v["published_at"] for v in model["versions"])

    promoted = weiflow("deploy", "promote", "ctr", "--traffic", "100")
    assert promoted.returncode == 0 and promoted.stdout.strip() == "ctr: v2 100% (stable=v2)"
    back = weiflow("deploy", "rollback", "ctr")
    assert back.returncode == 0 and back.stdout.strip() == "ctr: v1 100% (stable=v1)"
    text = weiflow("deploy", "status").stdout
    assert "ctr: v1 100%" in text and "rollback v1" in text and "auc=0.75" in text

    assert weiflow("deploy", "publish", str(dataset), "--model", "ctr", "--keep-last", "0").returncode == 2
    pruned = weiflow("deploy", "publish", str(dataset), "--model", "ctr", "--traffic", "0", "--keep-last", "1")
    assert pruned.returncode == 0, pruned.stderr
    assert "removed unrouted version(s) 2" in pruned.stderr  # v3 (newest unrouted) stays, v1 is live
    assert FileRepository(status["repository"]).versions("ctr") == [1, 3]
