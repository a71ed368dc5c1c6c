"""The TensorFlow engine's declarations (parameter-server training, evaluation, export).

Nothing here imports tensorflow: the launcher (executor.py) never does either; the processes
it starts (trainer.py, server.py) do.
"""

from weiflow.registry import AttrDecl, ElementDecl, ModuleType, Plugin

__all__ = ["CANNED_MODELS", "METRICS", "PLUGIN"]

CANNED_MODELS = ("logistic", "dnn", "wide_deep", "residual_dnn")
METRICS = ("auc", "logloss", "accuracy")

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
                AttrDecl("optimizer", "enum", default="adagrad", choices=("sgd", "adagrad", "adam")),
                AttrDecl("learning-rate", "float", default=0.05, min=0.0),
                AttrDecl("batch-size", "int", default=512, min=1),
                AttrDecl("steps", "int", min=1),
                AttrDecl("epochs", "int", min=1),
                AttrDecl("embedding-dim", "int", default=8, min=1, max=1024),
                AttrDecl("checkpoint-every", "int", default=500, min=1),
                AttrDecl("seed", "int", default=0, min=0),
            ),
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
