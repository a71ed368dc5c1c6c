"""Configuration: defaults with no file, the file, and WEIFLOW_* overrides."""

from __future__ import annotations

from pathlib import Path

import pytest

from weiflow.config import load_settings
from weiflow.errors import ConfigError


def test_defaults_need_no_file(tmp_path: Path) -> None:
    settings = load_settings(env={}, cwd=tmp_path)
    assert settings.config_file is None
    assert settings.var_dir == tmp_path / "var"
    assert settings.storage == f"file://{tmp_path}/var/storage"
    assert settings.database_url == f"sqlite:///{tmp_path}/var/weiflow.db"
    assert settings.runs_dir == tmp_path / "var" / "runs"


def test_file_is_found_in_a_parent_and_paths_are_relative_to_it(tmp_path: Path) -> None:
    (tmp_path / "weiflow.toml").write_text('[weiflow]\nvar_dir = "state"\nstorage = "s3://bucket/root/"\n')
    sub = tmp_path / "a" / "b"
    sub.mkdir(parents=True)
    settings = load_settings(env={}, cwd=sub)
    assert settings.config_file == tmp_path / "weiflow.toml"
    assert settings.var_dir == tmp_path / "state"
    assert settings.storage == "s3://bucket/root"  # no trailing slash: ${storage}/x stays clean


def test_environment_wins(tmp_path: Path) -> None:
    (tmp_path / "weiflow.toml").write_text('storage = "from-file"\n')
    env = {"WEIFLOW_STORAGE": "hdfs://nn/warehouse", "WEIFLOW_MAX_SPEC_BYTES": "4096"}
    settings = load_settings(env=env, cwd=tmp_path)
    assert settings.storage == "hdfs://nn/warehouse" and settings.max_spec_bytes == 4096


@pytest.mark.parametrize(
    ("content", "env", "message"),
    [
        ('stroage = "x"\n', {}, "unknown key 'stroage' (did you mean 'storage'?)"),
        ("storage = 3\n", {}, "'storage' must be a string, got 3"),
        ("storage = \n", {}, "Invalid value"),
        ("", {"WEIFLOW_MAX_SPEC_BYTES": "lots"}, "max_spec_bytes must be a whole number, got 'lots'"),
        ("", {"WEIFLOW_MAX_SPEC_BYTES": "10"}, "max_spec_bytes must be at least 1024, got 10"),
    ],
)
def test_bad_configuration_names_the_file_and_the_fix(
    tmp_path: Path, content: str, env: dict[str, str], message: str
) -> None:
    (tmp_path / "weiflow.toml").write_text(content)
    with pytest.raises(ConfigError, match=__import__("re").escape(message)):
        load_settings(env=env, cwd=tmp_path)


def test_explicit_config_must_exist(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"WEIFLOW_CONFIG=.*: no such file"):
        load_settings(env={"WEIFLOW_CONFIG": str(tmp_path / "missing.toml")}, cwd=tmp_path)


def test_storage_roots_default_to_storage_which_is_always_one(tmp_path: Path) -> None:
    assert load_settings(env={}, cwd=tmp_path).storage_roots == (f"file://{tmp_path}/var/storage",)
    (tmp_path / "weiflow.toml").write_text(
        'storage = "s3://bucket/wf/"\nstorage_roots = ["shared", "../landing/", "s3://bucket/wf", "gs://b/x/"]\n'
    )
    settings = load_settings(env={}, cwd=tmp_path)
    assert settings.storage_roots == (
        "s3://bucket/wf",  # storage first, and only once
        f"file://{tmp_path}/shared",  # relative paths are relative to the file, like storage
        f"file://{tmp_path.parent}/landing",
        "gs://b/x",
    )


def test_storage_roots_from_the_environment_are_comma_separated_and_win(tmp_path: Path) -> None:
    (tmp_path / "weiflow.toml").write_text('storage_roots = ["from-file"]\n')
    env = {"WEIFLOW_STORAGE_ROOTS": "file:///data/a, hdfs://nn/warehouse,", "WEIFLOW_STORAGE": "/data/s"}
    assert load_settings(env=env, cwd=tmp_path).storage_roots == (
        "file:///data/s",
        "file:///data/a",
        "hdfs://nn/warehouse",
    )


@pytest.mark.parametrize(
    ("content", "env", "message"),
    [
        ('storage_roots = "/data"\n', {}, "weiflow.toml: 'storage_roots' must be a list of URIs, got '/data'"),
        ("storage_roots = [3]\n", {}, "'storage_roots' must be a list of URIs, got [3] (write storage_roots = ["),
        ('storage_roots = [""]\n', {}, "'storage_roots' has an empty entry"),
        ('storage_roots = ["/"]\n', {}, "storage root '/' is a whole file system"),
        ('storage_roots = ["s3://"]\n', {}, "storage root 's3://' is a whole file system"),
        ('storage_roots = ["s3://b/../x"]\n', {}, "storage root 's3://b/../x' has a '.' or '..' segment"),
        (
            'storage_roots = ["file://data"]\n',
            {},
            "storage root 'file://data' names host 'data'; a local path is file:///absolute/path",
        ),
        (
            'storage_roots = ["simplecache::s3://b/x"]\n',
            {},
            "storage root 'simplecache::s3://b/x' chains filesystems with '::'",
        ),
        (
            'storage_roots = ["ftp://host/x"]\n',
            {},
            "storage root 'ftp://host/x' uses protocol 'ftp', which is not storage",
        ),
        ("", {"WEIFLOW_STORAGE_ROOTS": "file:///"}, "WEIFLOW_STORAGE_ROOTS: storage root 'file:///' is a whole"),
    ],
)
def test_bad_storage_roots_name_the_source_and_the_fix(
    tmp_path: Path, content: str, env: dict[str, str], message: str
) -> None:
    (tmp_path / "weiflow.toml").write_text(content)
    with pytest.raises(ConfigError, match=__import__("re").escape(message)):
        load_settings(env=env, cwd=tmp_path)
