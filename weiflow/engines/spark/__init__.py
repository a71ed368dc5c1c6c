"""The Spark engine's declarations: module types and attributes, so specs validate completely.

Nothing here imports pyspark: the executor (executor.py) is imported only when a Spark node
runs; without pyspark installed, that node fails with EngineNotAvailable.
"""

from weiflow.features import check_features
from weiflow.registry import AttrDecl, ElementDecl, ModuleType, Plugin
from weiflow.spec.model import ModuleSpec
from weiflow.spec.report import Reporter

__all__ = ["PLUGIN"]


def _check_sql(module: ModuleSpec, report: Reporter) -> None:
    queries = [c for c in module.children if c.tag == "query"]
    if ("query" in module.attrs) == bool(queries):
        report.error(
            module.element.pos,
            f"module '{module.id}': a sql module needs its query once, as query=\"...\" or a <query> element",
            "inputs are visible to the query as tables named by their module ids",
        )


def _check_split(module: ModuleSpec, report: Reporter) -> None:
    ratios, names = module.attrs.get("ratios"), module.attrs.get("names")
    if ratios is None or names is None or "$" in ratios.value or "$" in names.value:
        return  # missing ones are reported as such; templated ones are checked at run time
    ratio_list = [r.strip() for r in ratios.value.split(",")]
    name_list = [n.strip() for n in names.value.split(",")]
    if len(ratio_list) != len(name_list):
        report.error(
            names.pos,
            f"module '{module.id}': {len(name_list)} names for {len(ratio_list)} ratios",
            "give one output name per ratio",
        )
    repeated = sorted({n for n in name_list if name_list.count(n) > 1})
    if repeated:
        report.error(names.pos, f"module '{module.id}': output name '{repeated[0]}' is used twice")
    try:
        if any(float(r) <= 0 for r in ratio_list):
            report.error(ratios.pos, f"module '{module.id}': every ratio must be above 0", "drop an empty part")
    except ValueError:
        pass  # the attribute type check reports it


_ONE = (1, 1)
_DATASET_READ = AttrDecl("dataset", "dataset", required=True, role="read")
_DATASET_WRITE = AttrDecl("dataset", "dataset", required=True, role="write")

PLUGIN = Plugin(
    engine="spark",
    help="a node's modules run as one Spark application; DataFrames flow between modules in memory",
    executor="weiflow.engines.spark.executor:SparkExecutor",
    formats=("parquet", "csv", "json", "orc", "text", "tfrecord"),
    node_elements=(ElementDecl("conf", (AttrDecl("name", required=True), AttrDecl("value", required=True))),),
    modules=(
        ModuleType("read", (_DATASET_READ, AttrDecl("columns", "strings")), help="read a dataset"),
        ModuleType(
            "write",
            (
                _DATASET_WRITE,
                AttrDecl("partition-by", "strings"),
                AttrDecl("files", "int", min=1, help="number of output files"),
            ),
            inputs=_ONE,
            help="write the input to a dataset, atomically",
        ),
        ModuleType("filter", (AttrDecl("condition", required=True, help="a SQL boolean expression"),), inputs=_ONE),
        ModuleType("select", (AttrDecl("columns", "strings", required=True),), inputs=_ONE),
        ModuleType(
            "sql",
            (AttrDecl("query", help="SQL over the inputs, each a table named by its module id"),),
            inputs=(1, None),
            children=(ElementDecl("query", max_count=1),),
            check=_check_sql,
        ),
        ModuleType(
            "join",
            (
                AttrDecl("on", "strings", required=True),
                AttrDecl(
                    "how",
                    "enum",
                    default="inner",
                    choices=("inner", "left", "right", "full", "left_semi", "left_anti", "cross"),
                ),
            ),
            inputs=(2, 2),
        ),
        ModuleType("union", (AttrDecl("by-name", "bool", default=True),), inputs=(2, None)),
        ModuleType(
            "sample",
            (
                AttrDecl("rate", "float", required=True, min=0.0, max=1.0),
                AttrDecl("seed", "int", default=42),
                AttrDecl("with-replacement", "bool", default=False),
            ),
            inputs=_ONE,
        ),
        ModuleType(
            "split",
            (
                AttrDecl("ratios", "floats", required=True, min=0.0, min_items=2),
                AttrDecl("names", "strings", required=True, min_items=2, help="one output name per ratio"),
                AttrDecl("seed", "int", default=42),
            ),
            inputs=_ONE,
            outputs_attr="names",
            check=_check_split,
            help='deterministic random split; downstream modules read input="<id>.<name>"',
        ),
        ModuleType("dedup", (AttrDecl("columns", "strings"),), inputs=_ONE),
        ModuleType(
            "sync",
            (
                AttrDecl("source", "dataset", required=True, role="read"),
                _DATASET_WRITE,
                AttrDecl("checksum", "enum", default="md5", choices=("md5", "size")),
            ),
            help="copy a dataset between storage roots, skipping files already there",
        ),
        ModuleType(
            "features",
            (
                AttrDecl("label", help="label column kept beside the features"),
                AttrDecl("keep", "strings", help="other columns kept beside the features"),
            ),
            inputs=_ONE,
            children=(ElementDecl("feature"),),
            check=check_features,
            help="piecewise, pickcat, normalize, descartes, combinehash as native Spark expressions",
        ),
    ),
)
