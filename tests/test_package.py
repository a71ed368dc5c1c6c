"""The package's public surface, and that importing it loads no engine."""

from __future__ import annotations

import subprocess
import sys

import weiflow
import weiflow.dag
import weiflow.errors
import weiflow.runtime
import weiflow.spec


def test_import_loads_no_engine_scheduler_or_database() -> None:
    code = (
        "import sys, weiflow, weiflow.cli, weiflow.runtime;"
        "heavy = ('pyspark', 'tensorflow', 'airflow', 'kubernetes', 'sqlalchemy', 'weiflow.engines', 'graphviz');"
        "print(sorted(m for m in sys.modules if m.startswith(heavy)))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_exported_members_exist() -> None:
    for module in (weiflow, weiflow.dag, weiflow.errors, weiflow.runtime, weiflow.spec):
        assert module.__all__, module.__name__
        for name in module.__all__:
            assert hasattr(module, name), f"{module.__name__}.{name}"


def test_error_tree() -> None:
    from weiflow.errors import ModuleFailed, UserCodeError, WeiflowError

    assert issubclass(UserCodeError, ModuleFailed) and issubclass(ModuleFailed, WeiflowError)
    for name in weiflow.errors.__all__:
        obj = getattr(weiflow.errors, name)
        if isinstance(obj, type) and issubclass(obj, Exception):
            assert issubclass(obj, WeiflowError), name
