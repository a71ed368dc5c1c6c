"""Spec-level limits an operator relies on: no dataset escapes the storage roots through a link, and
only allowed modules' callables pass validation when an allow-list is set."""

from __future__ import annotations

import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest

from weiflow.cli import main
from weiflow.config import load_settings
from weiflow.dag import compile_file
from weiflow.errors import ConfigError
from weiflow.runtime import RunContext
from weiflow.tracking import MemoryTracker


def sync_spec(uri: str) -> str:
    # A Spark node syncing a dataset to another: the destination is a dataset like any other, so the
    # run refuses it before Spark starts.
    return textwrap.dedent(f"""\
        <pipeline xmlns="urn:weiflow:pipeline:1" name="esc">
          <params><param name="where" type="string" default="copies"/></params>
          <datasets>
            <dataset name="src" uri="${{storage}}/src" format="parquet" external="true"/>
            <dataset name="dst" uri="{uri}" format="parquet"/>
          </datasets>
          <node id="copy" engine="spark">
            <module id="s" type="sync" source="src" dataset="dst"/>
          </node>
        </pipeline>
        """)


def context(spec: Path, **params: str) -> RunContext:
    return RunContext.create(compile_file(spec), settings=load_settings(), tracker=MemoryTracker(), overrides=params)


@pytest.mark.reliability(
    area="input",
    component="dataset URIs and sync destinations",
    fault="a symbolic link under a storage root leading out of them",
    proves="the run is refused before any engine starts, naming the spec position, the dataset and where it leads",
)
@pytest.mark.parametrize("uri", ["${storage}/copies/out", "${storage}/${where}/out"])
def test_a_dataset_through_a_link_out_of_the_storage_roots_is_refused(
    uri: str, make_spec: Callable[..., Path], isolated_var: Path, tmp_path: Path
) -> None:
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (isolated_var / "storage").mkdir(parents=True)
    (isolated_var / "storage" / "copies").symlink_to(outside)
    spec = make_spec(sync_spec(uri))
    with pytest.raises(ConfigError) as refused:
        context(spec)
    message = str(refused.value)
    assert f"{spec}:5:" in message and "dataset 'dst'" in message
    assert "symbolic link" in message and f"it resolves to {outside / 'out'}" in message
    assert not list(outside.iterdir())


def test_links_that_stay_inside_the_roots_and_data_outside_them_are_fine(
    make_spec: Callable[..., Path], isolated_var: Path, tmp_path: Path
) -> None:
    storage = isolated_var / "storage"
    (storage / "real").mkdir(parents=True)
    (storage / "copies").symlink_to(storage / "real")
    assert context(make_spec(sync_spec("${storage}/copies/out"))).datasets["dst"].uri.endswith("/copies/out")
    # External data outside every root was never the roots' business: only escapes by link are.
    assert context(make_spec(sync_spec(f"file://{tmp_path}/raw/out"), name="raw.xml")).datasets["dst"].uri


CALLING = """<pipeline xmlns="urn:weiflow:pipeline:1" name="calls">
  <node id="n" engine="python">
    <module id="ok" type="call" callable="team_steps.report:build"/>
    <module id="bad" type="call" callable="team_steps_evil:run"/>
  </node>
</pipeline>
"""


@pytest.mark.reliability(
    area="input",
    component="spec callables",
    fault="a callable outside the operator's allow-list",
    proves="weiflow validate fails at the callable's position naming the module and the setting; allowed ones pass",
)
def test_callables_outside_the_allow_list_fail_validation(
    make_spec: Callable[..., Path], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = make_spec(CALLING)
    assert main(["validate", str(spec)]) == 0  # no allow-list: any module
    capsys.readouterr()
    monkeypatch.setenv("WEIFLOW_ALLOWED_CALLABLES", "team_steps, shared.ops")
    assert main(["validate", str(spec)]) == 1
    out = capsys.readouterr().out
    # A prefix of whole module names: team_steps.report passes, team_steps_evil does not.
    assert out.count("error:") == 1
    assert f"{spec}:4:" in out and "module 'team_steps_evil' is not one this installation allows" in out
    assert "team_steps, shared.ops: the allowed_callables setting" in out
    with pytest.raises(Exception, match="team_steps_evil"):
        compile_file(spec, allowed_callables=load_settings().allowed_callables)


@pytest.mark.parametrize("value", ["team-steps", "a..b", "1abc", "x.y:z"])
def test_an_allow_list_entry_that_is_not_a_module_name_is_a_config_error(
    value: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WEIFLOW_ALLOWED_CALLABLES", value)
    with pytest.raises(ConfigError, match=r"WEIFLOW_ALLOWED_CALLABLES: 'allowed_callables' entry .* is not a module"):
        load_settings()
