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
