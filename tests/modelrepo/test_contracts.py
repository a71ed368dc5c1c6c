"""The shared contracts: names, layout, the manifest; and that reading them needs nothing heavy."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

import weiflow.modelrepo
import weiflow.modelrepo.contracts
import weiflow.modelrepo.files
import weiflow.modelrepo.repository
import weiflow.modelrepo.routing
from weiflow.errors import WeiflowError
from weiflow.modelrepo.contracts import (
    FEATURE_MAP_PATH,
    MANIFEST_PATH,
    MANIFEST_SCHEMA,
    SAMPLE_SCHEMA_FILE,
    SAMPLES_FEATURE_MAP_FILE,
    Manifest,
    ModelRepoError,
    RoutingConflict,
    check_model_name,
    model_path,
    parse_version,
    version_path,
)

SHA = "a" * 64


def manifest(**changes: object) -> Manifest:
    fields: dict[str, object] = {
        "pipeline": "feed_ctr",
        "run_id": "r1",
        "featuremap_sha256": SHA,
        "publisher": "alice",
        "metrics": {"auc": 0.75},
        "published_at": "2026-11-20T08:00:00+00:00",
    }
    return Manifest(**{**fields, **changes})  # type: ignore[arg-type]


def test_the_file_names_engines_and_serving_share() -> None:
    # Renaming any of these breaks datasets and repositories already written.
    assert SAMPLES_FEATURE_MAP_FILE == "_featuremap.json"
    assert SAMPLE_SCHEMA_FILE == "_schema.json"
    assert FEATURE_MAP_PATH == "assets.extra/featuremap.json"
    assert MANIFEST_PATH == "assets.extra/weiflow-manifest.json"


@pytest.mark.parametrize("name", ["feed_ctr", "a", "Feed.CTR-v2", "0model", "x" * 100, "a.b"])
def test_valid_model_names(name: str) -> None:
    assert check_model_name(name) == name


@pytest.mark.parametrize("name", ["", "../x", "a/b", "a\\b", ".hidden", "a..b", "x" * 101, "a b", "-a", "_a", "..", 7])
def test_invalid_model_names_are_refused_with_the_rule(name: object) -> None:
    with pytest.raises(ModelRepoError, match=r"invalid model name") as caught:
        check_model_name(name)  # type: ignore[arg-type]
    assert "[A-Za-z0-9][A-Za-z0-9_.-]{0,99}" in str(caught.value)


def test_layout_paths_and_version_names() -> None:
    assert model_path("file:///srv/models/", "feed_ctr") == "file:///srv/models/feed_ctr"
    assert version_path("s3://b/models", "feed_ctr", 12) == "s3://b/models/feed_ctr/12"
    with pytest.raises(ModelRepoError):
        version_path("/r", "../etc", 1)
    for bad in (0, -1, True, "3", 1.0):
        with pytest.raises(ModelRepoError, match="versions are integers from 1"):
            version_path("/r", "m", bad)  # type: ignore[arg-type]
    assert parse_version("7") == 7 and parse_version("1234567890") == 1234567890
    for name in ("007", "0", ".weiflow", "7a", "", "-1", "\u0661"):
        assert parse_version(name) is None, name


def test_manifest_round_trips_through_its_file() -> None:
    written = manifest(metrics={"logloss": 0.4, "auc": 1}, source="file:///exports/m/3")
    text = written.to_json()
    assert json.loads(text) == {
        "schema": MANIFEST_SCHEMA,
        "pipeline": "feed_ctr",
        "run_id": "r1",
        "source": "file:///exports/m/3",
        "metrics": {"auc": 1.0, "logloss": 0.4},
        "featuremap_sha256": SHA,
        "publisher": "alice",
        "published_at": "2026-11-20T08:00:00+00:00",
    }
    assert Manifest.from_json(text) == written
    assert Manifest(pipeline="p", run_id="r", featuremap_sha256=SHA, publisher="bob").published_at.endswith("+00:00")


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"pipeline": ""}, "'pipeline' must be a non-empty string"),
        ({"publisher": None}, "'publisher' must be a non-empty string"),
        ({"featuremap_sha256": "ABC"}, "64 lowercase hex digits"),
        ({"published_at": "2026-11-20T08:00:00"}, "with a UTC offset"),
        ({"published_at": "yesterday"}, "with a UTC offset"),
        ({"metrics": {"auc": float("nan")}}, "metric 'auc' is nan: only finite metrics"),
        ({"metrics": {"auc": "high"}}, "metric 'auc': 'high' is not a number"),
        ({"metrics": {"auc": True}}, "is not a number"),
    ],
)
def test_invalid_manifests_say_what_is_wrong(changes: dict[str, object], message: str) -> None:
    with pytest.raises(ModelRepoError, match=message):
        manifest(**changes)


def test_a_damaged_manifest_file_names_the_file_and_the_fix() -> None:
    source = "/repo/m/3/assets.extra/weiflow-manifest.json"
    good = json.loads(manifest().to_json())
    cases = {
        "{not json": "not a model manifest (invalid JSON",
        "[]": "a JSON object expected",
        json.dumps({**good, "schema": "weiflow.manifest/9"}): "schema 'weiflow.manifest/9' is not supported",
        json.dumps({**good, "extra": 1}): "unknown key(s) extra",
        json.dumps({k: v for k, v in good.items() if k != "run_id"}): "missing key(s) run_id",
        json.dumps({**good, "featuremap_sha256": "x"}): "64 lowercase hex",
    }
    for text, message in cases.items():
        with pytest.raises(ModelRepoError) as caught:
            Manifest.from_json(text, source=source)
        assert str(caught.value).startswith(source + ": "), text
        assert message in str(caught.value), text
        assert caught.value.hint


def test_errors_belong_to_the_one_tree() -> None:
    assert issubclass(RoutingConflict, ModelRepoError) and issubclass(ModelRepoError, WeiflowError)
    assert "hint: do this" in str(ModelRepoError("broken", "do this"))


def test_exported_members_exist() -> None:
    for module in (
        weiflow.modelrepo,
        weiflow.modelrepo.contracts,
        weiflow.modelrepo.routing,
        weiflow.modelrepo.repository,
        weiflow.modelrepo.files,
    ):
        assert module.__all__, module.__name__
        for name in module.__all__:
            assert hasattr(module, name), f"{module.__name__}.{name}"


def test_reading_the_contracts_and_routing_loads_no_storage_engine_or_numeric_library() -> None:
    code = (
        "import sys, weiflow.modelrepo;"
        "r = weiflow.modelrepo.Routing('m');"
        "heavy = ('fsspec', 'numpy', 'pyarrow', 'pyspark', 'tensorflow', 'sqlalchemy', 'weiflow.engines');"
        "print(sorted(m for m in sys.modules if m.startswith(heavy)))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
    assert weiflow.modelrepo.FileRepository is weiflow.modelrepo.files.FileRepository
