"""The TensorFlow engine's declarations (parameter-server training, evaluation, export).

Nothing here imports tensorflow. The executor arrives with the TensorFlow engine; until
then a TensorFlow node fails with EngineNotAvailable.
"""

from weiflow.registry import AttrDecl, ElementDecl, ModuleType, Plugin

__all__ = ["CANNED_MODELS", "PLUGIN"]

CANNED_MODELS = ("logistic", "dnn", "wide_deep", "residual_dnn")

PLUGIN = Plugin(
    engine="tensorflow",
    help="trains on a parameter-server cluster whose processes the launcher owns",
    unavailable="engine 'tensorflow' is declared (its nodes validate) but this WeiFlow build cannot run it yet",
    formats=("tfrecord", "parquet", "savedmodel"),
    node_elements=(
        ElementDecl(
            "cluster",
            (
                AttrDecl("ps", "int", default=0, min=0, max=64, help="0 means single-process training"),
                AttrDecl("workers", "int", default=1, min=1, max=512),
                AttrDecl("backend", "enum", default="local", choices=("local", "kubernetes")),
                AttrDecl("image", help="container image for the kubernetes backend"),
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
                AttrDecl("checkpoint-every", "int", default=500, min=1),
            ),
        ),
        ModuleType(
            "evaluate",
            (
                AttrDecl("dataset", "dataset", role="read", help="held-out data; default: the training data"),
                AttrDecl("metrics", "strings", default=["auc", "logloss"]),
            ),
            inputs=(1, 1),
        ),
        ModuleType("export", (AttrDecl("dataset", "dataset", required=True, role="write"),), inputs=(1, 1)),
    ),
)
