"""Engines and module types plug in through the `weiflow.modules` entry-point group."""

from __future__ import annotations

import sys
import textwrap
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from weiflow.dag import check_file, compile_file
from weiflow.errors import EngineNotAvailable, RegistryError
from weiflow.registry import AttrDecl, ModuleType, Plugin, Registry, default_registry


def test_builtin_engines_come_from_entry_points() -> None:
    registry = Registry.from_entry_points()
    assert {"python", "spark", "tensorflow", "deploy"} <= set(registry.engines)
    assert registry.problems == []
    assert registry.engine("python").executor  # type: ignore[union-attr]
    assert registry.module_type("spark", "features") is not None
    assert registry.engines_offering("train") == ["tensorflow"]


@pytest.fixture
def installed_plugin(tmp_path: Path) -> Iterator[str]:
    """A real third-party distribution on sys.path: a dist-info with entry_points.txt, and its code."""
    package = f"acme_{uuid.uuid4().hex[:8]}"
    (tmp_path / package).mkdir()
    (tmp_path / package / "__init__.py").write_text(
        textwrap.dedent("""
        from weiflow.registry import AttrDecl, ModuleType, Plugin
        from weiflow.runtime import Executor

        class BashExecutor(Executor):
            def run_node(self, ctx):
                ctx.run_modules(lambda module, inputs: ctx.module_attrs(module)["command"].upper())

        ENGINE = Plugin(
            engine="bash",
            executor=__name__ + ":BashExecutor",
            modules=(ModuleType("sh", (AttrDecl("command", required=True),)),),
        )
        # A custom algorithm added to an existing engine: no change to WeiFlow.
        EXTRA = [Plugin(engine="tensorflow", modules=(ModuleType("xdeepfm", (AttrDecl("dataset", "dataset",
                 required=True, role="read"), AttrDecl("cin-layers", "ints", min=1))),))]
        BROKEN = 42
        """)
    )
    dist = tmp_path / f"{package}-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {package}\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(
        f"[weiflow.modules]\nbash = {package}:ENGINE\nxdeepfm = {package}:EXTRA\nbroken = {package}:BROKEN\n"
        f"missing = {package}.nope:X\n"
    )
    sys.path.insert(0, str(tmp_path))
    try:
        yield package
    finally:
        sys.path.remove(str(tmp_path))


def test_third_party_plugin_adds_an_engine_and_a_module_type(
    installed_plugin: str, make_spec: Callable[..., Path]
) -> None:
    registry = Registry.from_entry_points()
    assert registry.module_type("bash", "sh") is not None
    assert registry.module_type("tensorflow", "xdeepfm") is not None
    # Broken plug-ins are reported, not fatal.
    assert any("broken" in p and "not a weiflow Plugin" in p for p in registry.problems)
    assert any("missing" in p and "failed to load" in p for p in registry.problems)

    path = make_spec("""
  <datasets><dataset name="s" uri="file:///tmp/s" format="tfrecord" external="true"/></datasets>
  <node id="n" engine="bash"><module id="m" type="sh" command="echo hi"/></node>
  <node id="t" engine="tensorflow"><module id="m" type="xdeepfm" dataset="s" cin-layers="0"/></node>
""")
    diagnostics = check_file(path, registry)
    assert [d.message for d in diagnostics] == ["module 'm': cin-layers: must be at least 1, got 0"]


def test_unknown_engine_hint_names_broken_plugins(installed_plugin: str, make_spec: Callable[..., Path]) -> None:
    registry = Registry.from_entry_points()
    path = make_spec('<node id="n" engine="rust"><module id="m" type="x"/></node>')
    [diagnostic] = check_file(path, registry)
    assert diagnostic.message == "node 'n': unknown engine 'rust'"
    assert diagnostic.hint is not None and "plug-in problems" in diagnostic.hint and "missing" in diagnostic.hint


def test_plugin_engine_runs(installed_plugin: str, make_spec: Callable[..., Path]) -> None:
    from weiflow.config import load_settings
    from weiflow.runtime import RunContext, run_pipeline
    from weiflow.tracking import MemoryTracker

    registry = Registry.from_entry_points()
    dag = compile_file(
        make_spec('<node id="n" engine="bash"><module id="m" type="sh" command="echo"/></node>'), registry
    )
    tracker = MemoryTracker()
    run = RunContext.create(dag, settings=load_settings(), tracker=tracker)
    assert run_pipeline(run, registry=registry).succeeded
    assert "module.succeeded" in tracker.kinds()


def test_a_module_type_cannot_be_declared_twice() -> None:
    first = Plugin("e", modules=(ModuleType("m"),), executor="a:b")
    with pytest.raises(RegistryError, match="module type 'm' of engine 'e' is already declared by <e>"):
        Registry.from_plugins([first, Plugin("e", modules=(ModuleType("m"),))])


def test_a_plugin_cannot_replace_an_engines_executor() -> None:
    with pytest.raises(RegistryError, match="already has executor a:b"):
        Registry.from_plugins([Plugin("e", executor="a:b"), Plugin("e", executor="c:d")])


def test_declared_engine_without_executor_is_not_available() -> None:
    registry = Registry.from_plugins([Plugin("e", unavailable="e needs a cluster")])
    with pytest.raises(EngineNotAvailable, match="e needs a cluster"):
        registry.load_executor("e")
    registry = Registry.from_plugins([Plugin("f", executor="no_such_module_xyz:Executor")])
    with pytest.raises(EngineNotAvailable, match="failed to import"):
        registry.load_executor("f")


@pytest.mark.parametrize(
    ("decl", "raw", "expected"),
    [
        (AttrDecl("a", "int", min=1), "3", 3),
        (AttrDecl("a", "floats"), "1, 2.5", [1.0, 2.5]),
        (AttrDecl("a", "bool"), "TRUE", True),
        (AttrDecl("a", "enum", choices=("x", "y")), "y", "y"),
        (AttrDecl("a", "callable"), "pkg.mod:fn", "pkg.mod:fn"),
        (AttrDecl("a", "strings", min_items=2), "a,b", ["a", "b"]),
    ],
)
def test_attribute_kinds_parse(decl: AttrDecl, raw: str, expected: object) -> None:
    assert decl.parse(raw) == expected


@pytest.mark.parametrize(
    ("decl", "raw", "message"),
    [
        (AttrDecl("a", "int", min=1), "0", "must be at least 1, got 0"),
        (AttrDecl("a", "int"), "1.5", "expected a whole number, got '1.5'"),
        (AttrDecl("a", "float"), "nan", "expected a finite number, got 'nan'"),
        (AttrDecl("a", "float", max=1.0), "1.5", "must be at most 1, got 1.5"),
        (AttrDecl("a", "floats"), "1,,2", "expected a comma-separated list of values, got '1,,2'"),
        (AttrDecl("a", "strings", min_items=2), "a", "expected a comma-separated list of at least 2 values"),
        (AttrDecl("a", "bool"), "maybe", "expected true or false, got 'maybe'"),
        (AttrDecl("a", "enum", choices=("x", "y")), "z", "expected one of x, y, got 'z'"),
        (AttrDecl("a", "callable"), "pkg.mod.fn", "expected 'package.module:function', got 'pkg.mod.fn'"),
    ],
)
def test_attribute_kinds_reject_with_a_message(decl: AttrDecl, raw: str, message: str) -> None:
    with pytest.raises(ValueError, match="^" + __import__("re").escape(message)):
        decl.parse(raw)


def test_default_registry_is_loaded_once() -> None:
    assert default_registry() is default_registry()
