"""The python engine: run the user's own Python steps (`<module type="call" callable="pkg.mod:fn"/>`)."""

from weiflow.registry import AttrDecl, ModuleType, Plugin

__all__ = ["PLUGIN"]

PLUGIN = Plugin(
    engine="python",
    help="runs user Python callables in the node's process",
    executor="weiflow.engines.python.executor:PythonExecutor",
    formats=("json", "jsonl", "csv", "text", "files"),
    modules=(
        ModuleType(
            "call",
            attrs=(
                AttrDecl("callable", "callable", required=True, help="package.module:function to call"),
                AttrDecl("reads", "datasets", role="read", help="datasets the callable reads"),
                AttrDecl("writes", "datasets", role="write", help="datasets the callable writes"),
            ),
            inputs=(0, None),
            extra_attrs=True,
            help="calls fn(step) with a weiflow.engines.python.executor.Step; other attributes reach it as step.attrs",
        ),
    ),
)
