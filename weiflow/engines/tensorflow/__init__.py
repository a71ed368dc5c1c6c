"""The TensorFlow engine's declarations (parameter-server training, evaluation, export).

Nothing here imports tensorflow: the launcher (executor.py) never does either; the processes
it starts (trainer.py, server.py) do.
"""

from collections.abc import Collection

from weiflow.registry import AttrDecl, ElementDecl, ModuleType, Plugin
from weiflow.spec.model import ModuleSpec
from weiflow.spec.report import Reporter

__all__ = ["CANNED_MODELS", "DC_ATTRS", "DC_LAMBDA_DEFAULTS", "METRICS", "OPTIMIZERS", "PLUGIN", "dc_attrs_mistake"]

CANNED_MODELS = ("logistic", "dnn", "wide_deep", "residual_dnn")
METRICS = ("auc", "logloss", "accuracy")
OPTIMIZERS = ("sgd", "adagrad", "adam", "dc-asgd")
DC_ATTRS = ("dc-variant", "dc-lambda", "dc-mean-square-decay")
# dc-lambda when not given. The constant variant's is MXNet's DCASGD default. The adaptive
# variant's correction is up to learning-rate * lambda0 * |g| / sqrt(1 - decay) times the drift;
# past 1 it undoes more than the other workers moved and feeds on itself: lambda0 = 2 made
# 4 workers at learning rate 4 diverge in bench_dcasgd, 0.5 did not (docs/tensorflow.md, DC-ASGD).
DC_LAMBDA_DEFAULTS = {"adaptive": 0.5, "constant": 0.04}


def dc_attrs_mistake(optimizer: str, given: Collection[str], variant: str) -> tuple[str, str, str] | None:
    """The first dc-* attribute in ``given`` that ``optimizer`` and ``variant`` would ignore: name, why, fix."""
    for name in DC_ATTRS:
        if name in given and optimizer != "dc-asgd":
            why = f"{name} applies only to optimizer=\"dc-asgd\", not '{optimizer}'"
            return name, why, f'set optimizer="dc-asgd", or remove {name}'
    if "dc-mean-square-decay" in given and variant != "adaptive":
        why = 'dc-mean-square-decay applies only to dc-variant="adaptive"'
        return "dc-mean-square-decay", why, 'remove it, or set dc-variant="adaptive"'
    return None


def _check_train(module: ModuleSpec, report: Reporter) -> None:
    optimizer, variant = module.attrs.get("optimizer"), module.attrs.get("dc-variant")
    if any("$" in a.value for a in (optimizer, variant) if a is not None):
        return  # templated: the executor checks the resolved values
    mistake = dc_attrs_mistake(
        optimizer.value if optimizer else "adagrad", module.attrs, variant.value if variant else "adaptive"
    )
    if mistake is not None:
        name, why, fix = mistake
        report.error(module.attrs[name].pos, f"module '{module.id}': {why}", fix)


PLUGIN = Plugin(
    engine="tensorflow",
    help="trains on a parameter-server cluster whose processes the launcher owns",
    executor="weiflow.engines.tensorflow.executor:TensorflowExecutor",
    formats=("tfrecord", "parquet", "savedmodel"),
    node_elements=(
        ElementDecl(
            "cluster",
            (
                AttrDecl("ps", "int", default=0, min=0, max=64, help="0 means single-process training"),
                AttrDecl("workers", "int", default=1, min=1, max=512),
                AttrDecl("backend", "enum", default="local", choices=("local", "kubernetes")),
                AttrDecl("image", help="container image for the kubernetes backend"),
                AttrDecl("namespace", default="default", help="namespace for the kubernetes backend"),
                AttrDecl(
                    "volume-claim",
                    help="kubernetes backend: a PersistentVolumeClaim holding WeiFlow's var directory, mounted in "
                    "every pod at the launcher's path",
                ),
            ),
            max_count=1,
        ),
        ElementDecl("conf", (AttrDecl("name", required=True), AttrDecl("value", required=True))),
    ),
    modules=(
        ModuleType(
            "train",
            (
                AttrDecl("dataset", "dataset", required=True, role="read"),
                AttrDecl("model", required=True, help=f"one of {', '.join(CANNED_MODELS)}, or a plug-in model"),
                AttrDecl("label", default="label"),
                AttrDecl("hidden-units", "ints", min=1),
                AttrDecl("optimizer", "enum", default="adagrad", choices=OPTIMIZERS),
                AttrDecl("learning-rate", "float", default=0.05, min=0.0),
                AttrDecl(
                    "dc-variant",
                    "enum",
                    default="adaptive",
                    choices=("adaptive", "constant"),
                    help="dc-asgd: lambda scaled per element by the gradients' moving mean square (adaptive), or fixed",
                ),
                AttrDecl(
                    "dc-lambda",
                    "float",
                    min=0.0,
                    help="dc-asgd: strength of the delay compensation (0: plain async SGD); default "
                    f"{DC_LAMBDA_DEFAULTS['adaptive']} (adaptive) or {DC_LAMBDA_DEFAULTS['constant']} (constant)",
                ),
                AttrDecl(
                    "dc-mean-square-decay",
                    "float",
                    default=0.95,
                    min=0.0,
                    max=0.999,
                    help="dc-asgd, adaptive: decay of the gradients' moving mean square",
                ),
                AttrDecl("batch-size", "int", default=512, min=1),
                AttrDecl("steps", "int", min=1),
                AttrDecl("epochs", "int", min=1),
                AttrDecl("embedding-dim", "int", default=8, min=1, max=1024),
                AttrDecl("checkpoint-every", "int", default=500, min=1),
                AttrDecl("seed", "int", default=0, min=0),
            ),
            check=_check_train,
        ),
        ModuleType(
            "evaluate",
            (
                AttrDecl("dataset", "dataset", role="read", help="held-out data; default: the training data"),
                AttrDecl("metrics", "strings", default=["auc", "logloss"], help=f"any of {', '.join(METRICS)}"),
            ),
            inputs=(1, 1),
        ),
        ModuleType(
            "export",
            (
                AttrDecl("dataset", "dataset", required=True, role="write"),
                AttrDecl("model-name", help="the <model> directory (TF Serving's model name); default: the pipeline"),
                AttrDecl("version", "int", min=1, help="the <version> directory; default: seconds since 1970"),
            ),
            inputs=(1, 1),
            help="a SavedModel laid out for TF Serving (<model>/<version>/) with the feature map in assets.extra/",
        ),
    ),
)
