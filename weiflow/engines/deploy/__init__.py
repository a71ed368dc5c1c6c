"""The deploy engine's declarations: publish a model version and shift traffic to it.

The executor arrives with the prediction service; until then a deploy node fails with
EngineNotAvailable.
"""

from weiflow.registry import AttrDecl, ModuleType, Plugin

__all__ = ["PLUGIN"]

PLUGIN = Plugin(
    engine="deploy",
    help="publishes exported models to the model repository and the prediction service",
    unavailable="engine 'deploy' is declared (its nodes validate) but this WeiFlow build cannot run it yet",
    formats=("savedmodel",),
    modules=(
        ModuleType(
            "publish",
            (
                AttrDecl("dataset", "dataset", required=True, role="read"),
                AttrDecl("model-name", required=True),
                AttrDecl(
                    "traffic",
                    "int",
                    default=100,
                    min=0,
                    max=100,
                    help="percent of traffic to the new version",
                ),
            ),
        ),
        ModuleType(
            "promote",
            (AttrDecl("model-name", required=True), AttrDecl("traffic", "int", default=100, min=0, max=100)),
            inputs=(0, 1),
        ),
    ),
)
