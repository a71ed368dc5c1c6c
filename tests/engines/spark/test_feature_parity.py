"""Spark and online feature functions give the same ids and values for the same raw rows.

One table of tricky rows (nulls, NaN, +-inf, values on the boundaries, empty and non-ASCII
strings, unseen categories, integers near 2**62, negatives, booleans, decimals) is fitted
and applied in Spark, then mapped online with the fitted map: every id must be equal,
every normalized value equal (zscore and minmax bit for bit; log1p within 1e-12, as
Spark's StrictMath.log1p and the C library's may differ in the last bit).
"""

from __future__ import annotations

import contextlib
import io
import math
from collections import Counter
from decimal import Decimal
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from weiflow.engines.spark.features import _fit_rows, _fits, apply_feature_map, fit_feature_map
from weiflow.features import FeatureError, FeatureMap, OnlineFeatures
from weiflow.features.featuremap import Normalize, Pickcat

pytestmark = pytest.mark.integration

NAN, INF = math.nan, math.inf
TRAIN_ROWS = 24  # rows from here on are only applied, never fitted: their categories are unseen

SCHEMA = T.StructType(
    [
        T.StructField("i", T.LongType()),
        T.StructField("x", T.DoubleType()),
        T.StructField("f", T.FloatType()),
        T.StructField("n", T.LongType()),
        T.StructField("k", T.IntegerType()),
        T.StructField("t", T.ByteType()),
        T.StructField("dec", T.DecimalType(20, 0)),
        T.StructField("dr", T.DecimalType(12, 3)),
        T.StructField("s", T.StringType()),
        T.StructField("b", T.BooleanType()),
        T.StructField("c", T.DoubleType()),
        T.StructField("e", T.DoubleType()),
        T.StructField("y", T.IntegerType()),
    ]
)

COLUMNS: dict[str, list[Any]] = {
    "x": [
        None,
        NAN,
        INF,
        -INF,
        18.0,
        25.0,
        35.0,
        50.0,
        17.999999999999996,
        -5.5,
        0.0,
        -0.0,
        49.99,
        1e-300,
        5e-324,
        7.25,
        1.5,
        30.0,
        30.0,
        30.0,
        100.0,
        -1.0,
        2.0,
        2.0,
        1e308,
        -1e308,
        -INF,
        4.611686018427388e18,
        None,
        0.1,
    ],
    "f": [None, NAN, INF, 0.1, 18.0, -0.0, 3.4028234663852886e38, -1.5, 25.0, 1e-45],
    "n": [
        None,
        0,
        -1,
        2**62,
        2**62 - 1,
        2**62 + 1,
        -(2**62),
        2**63 - 1,
        -(2**63),
        18,
        25,
        50,
        49,
        7,
        7,
        7,
        7,
        3,
        3,
        3,
        -1,
        None,
        0,
        12345678901234,
        999,
        -999,
        2**53 + 1,
        50,
        51,
        2**62 + 512,
    ],
    "k": [None, 7, -1, 0, 2147483647, -2147483648, 7, 7, 0, 5],
    "t": [None, -128, 127, 0, -1, 0, 0],
    "dec": [None, Decimal(0), Decimal(-5), Decimal(10**19), Decimal(18), Decimal(-5), Decimal(7), Decimal(-(10**19))],
    "dr": [
        None,
        Decimal("18.000"),
        Decimal("-0.001"),
        Decimal("0.000"),
        Decimal("123456789.125"),
        Decimal("-2.5"),
        Decimal("18.001"),
    ],
    "s": [
        None,
        "",
        "a",
        "A",
        "é",
        "日本",
        "🙂",
        " a",
        "a ",
        "null",
        "true",
        "a",
        "a",
        "é",
        "é",
        "日本",
        "b",
        "b",
        "c",
        "",
        "NaN",
        None,
        "𐀀",
        "\uffff",
        "unseen",
        "日本語",
        "a\u0000b",
        "🙂",
        "Z",
        "é",
    ],
    "b": [None, True, False, True, True, False, True],
    "c": [3.25, 3.25, None, 3.25, NAN],
    "e": [None, NAN, INF, None],
    "y": [0, 1, None],
}

FILE_VOCABULARY = [f"w{i}" for i in range(5000)]
FILE_VOCABULARY[17], FILE_VOCABULARY[4000], FILE_VOCABULARY[4999] = "日本", "🙂", "b"


def features(vocab_file: Path) -> list[dict[str, str]]:
    return [
        # A cross defined before the features it crosses.
        {"name": "d_three", "fn": "descartes", "sources": "d_xs,pc_b,pw_n"},
        {"name": "pw_x", "fn": "piecewise", "source": "x", "boundaries": "18,25,35,50"},
        {
            "name": "pw_n",
            "fn": "piecewise",
            "source": "n",
            "boundaries": "-4611686018427387904,0,49.5,4611686018427387904",
        },
        {"name": "pw_f", "fn": "piecewise", "source": "f", "boundaries": "0.1,18"},
        {"name": "pw_dr", "fn": "piecewise", "source": "dr", "boundaries": "-0.001,18"},
        {"name": "pw_t", "fn": "piecewise", "source": "t", "boundaries": "-1,0"},
        {"name": "pw_k", "fn": "piecewise", "source": "k", "boundaries": "-5,7"},
        {"name": "pw_dec", "fn": "piecewise", "source": "dec", "boundaries": "-5,1e19"},
        {"name": "pc_s_top", "fn": "pickcat", "source": "s", "top": "4"},
        {"name": "pc_s_min", "fn": "pickcat", "source": "s", "min-count": "2"},
        {"name": "pc_s_all", "fn": "pickcat", "source": "s"},
        {"name": "pc_s_both", "fn": "pickcat", "source": "s", "top": "3", "min-count": "2"},
        {"name": "pc_n", "fn": "pickcat", "source": "n", "top": "5"},
        {"name": "pc_k", "fn": "pickcat", "source": "k", "values": "7,-1,0,2147483647"},
        {"name": "pc_t", "fn": "pickcat", "source": "t"},
        {"name": "pc_b", "fn": "pickcat", "source": "b"},
        {"name": "pc_dec", "fn": "pickcat", "source": "dec"},
        {"name": "pc_s_values", "fn": "pickcat", "source": "s", "values": "a,é,🙂,never,true"},
        {"name": "pc_s_file", "fn": "pickcat", "source": "s", "vocab-file": vocab_file.as_uri()},
        {"name": "pc_e", "fn": "pickcat", "source": "y", "min-count": "100"},
        {"name": "nz_x", "fn": "normalize", "source": "x", "method": "zscore"},
        {"name": "nm_x", "fn": "normalize", "source": "x", "method": "minmax"},
        {"name": "nl_x", "fn": "normalize", "source": "x", "method": "log1p"},
        {"name": "nz_n", "fn": "normalize", "source": "n", "method": "zscore"},
        {"name": "nm_n", "fn": "normalize", "source": "n", "method": "minmax"},
        {"name": "nm_dr", "fn": "normalize", "source": "dr", "method": "minmax"},
        {"name": "nz_f", "fn": "normalize", "source": "f", "method": "zscore"},
        {"name": "nl_f", "fn": "normalize", "source": "f", "method": "log1p"},
        {"name": "nz_k", "fn": "normalize", "source": "k", "method": "zscore"},
        {"name": "nz_c", "fn": "normalize", "source": "c", "method": "zscore"},
        {"name": "nm_c", "fn": "normalize", "source": "c", "method": "minmax"},
        {"name": "nz_e", "fn": "normalize", "source": "e", "method": "zscore"},
        {"name": "nl_e", "fn": "normalize", "source": "e", "method": "log1p"},
        {"name": "d_xs", "fn": "descartes", "sources": "pw_x,pc_s_top"},
        {"name": "h_s", "fn": "combinehash", "sources": "s", "buckets": "1000"},
        {"name": "h_mix", "fn": "combinehash", "sources": "s,n,b,dec,k,t", "buckets": str(2**63 - 1)},
        {"name": "h_n", "fn": "combinehash", "sources": "n", "buckets": str(2**62 + 1)},
        {"name": "h_one", "fn": "combinehash", "sources": "b", "buckets": "1"},
        {"name": "d_hash", "fn": "descartes", "sources": "h_s,pc_n"},
    ]


def table() -> list[tuple[Any, ...]]:
    rows = []
    count = max(len(v) for v in COLUMNS.values())
    for i in range(count):
        rows.append((i, *(COLUMNS[name][i % len(COLUMNS[name])] for name in SCHEMA.names[1:])))
    rows.append((count, *([None] * (len(SCHEMA.names) - 1))))  # everything null
    return rows


@pytest.fixture(scope="module")
def vocab_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("vocab") / "words.txt"
    path.write_text("\n".join(FILE_VOCABULARY) + "\n\n", encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def data(spark: SparkSession) -> DataFrame:
    return spark.createDataFrame(table(), SCHEMA)


@pytest.fixture(scope="module")
def fitted(data: DataFrame, vocab_file: Path) -> FeatureMap:
    declared = FeatureMap.declare(features(vocab_file), label="y", keep=["i"])
    return fit_feature_map(data.where(F.col("i") < TRAIN_ROWS), declared)


@pytest.fixture(scope="module")
def applied(data: DataFrame, fitted: FeatureMap) -> tuple[DataFrame, list[dict[str, Any]]]:
    frame = apply_feature_map(data, fitted)
    return frame, [row.asDict() for row in frame.orderBy("i").collect()]


def raw_rows(data: DataFrame) -> list[dict[str, Any]]:
    return [row.asDict() for row in data.orderBy("i").collect()]


def canonical(value: Any) -> str | None:
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(int(value))


def assert_same(spark_rows: list[dict[str, Any]], online_rows: list[dict[str, Any]], fmap: FeatureMap) -> None:
    assert len(spark_rows) == len(online_rows)
    for feature in fmap.features:
        got = [row[feature.name] for row in online_rows]
        want = [row[feature.name] for row in spark_rows]
        if feature.categorical:
            assert got == want, feature.name
            assert all(type(v) is int for v in got), feature.name
        elif isinstance(feature, Normalize) and feature.method == "log1p":
            assert got == pytest.approx(want, rel=1e-12, abs=0.0), feature.name
        else:
            assert got == want, feature.name  # bit for bit: the same operations in the same order
        assert all(math.isfinite(v) for v in got), feature.name


def test_rows_give_the_same_ids_and_values(
    data: DataFrame, fitted: FeatureMap, applied: tuple[DataFrame, list[dict[str, Any]]]
) -> None:
    _, spark_rows = applied
    online = OnlineFeatures(fitted).transform_rows(raw_rows(data))
    assert [row["i"] for row in online] == [row["i"] for row in spark_rows]
    assert_same(spark_rows, online, fitted)


def test_columns_and_numpy_arrays_give_the_same(
    data: DataFrame, fitted: FeatureMap, applied: tuple[DataFrame, list[dict[str, Any]]]
) -> None:
    _, spark_rows = applied
    rows = raw_rows(data)
    columns: dict[str, Any] = {name: [row[name] for row in rows] for name in SCHEMA.names}
    columns["x"] = np.array([NAN if v is None else v for v in columns["x"]], dtype=np.float64)
    columns["f"] = np.array([NAN if v is None else v for v in columns["f"]], dtype=np.float32)
    columns["n"] = np.array(columns["n"], dtype=object)
    out = OnlineFeatures(fitted).transform_columns(columns)
    online = [{name: out[name][index].item() for name in out} for index in range(len(rows))]
    assert_same(spark_rows, online, fitted)


def test_output_columns_and_types(applied: tuple[DataFrame, list[dict[str, Any]]], fitted: FeatureMap) -> None:
    frame, rows = applied
    assert frame.columns == ["i", "y", *[f.name for f in fitted.features]]
    types = {field.name: field.dataType for field in frame.schema.fields}
    for feature in fitted.features:
        expected = T.LongType() if feature.categorical else T.DoubleType()
        assert types[feature.name] == expected, feature.name
    cards = fitted.cardinalities()
    for feature in fitted.features:
        if feature.categorical:
            card = cards[feature.name]
            assert card is not None
            assert all(0 <= row[feature.name] < card for row in rows), feature.name


def test_learned_vocabularies_count_desc_then_value(data: DataFrame, fitted: FeatureMap) -> None:
    train = [row for row in raw_rows(data) if row["i"] < TRAIN_ROWS]

    def learned(column: str, top: int | None, min_count: int) -> tuple[str, ...]:
        counts = Counter(canonical(row[column]) for row in train if row[column] is not None)
        ranked = sorted(((-n, value) for value, n in counts.items() if n >= min_count))
        values = tuple(value for _, value in ranked if value is not None)
        return values[:top] if top is not None else values

    vocabularies = {f.name: f.vocabulary for f in fitted.features if isinstance(f, Pickcat)}
    assert vocabularies["pc_s_top"] == learned("s", 4, 1) == ("a", "é", "", "b")
    assert vocabularies["pc_s_min"] == learned("s", None, 2)
    assert vocabularies["pc_s_all"] == learned("s", None, 1)
    assert vocabularies["pc_s_both"] == learned("s", 3, 2)
    assert vocabularies["pc_n"] == learned("n", 5, 1)
    assert vocabularies["pc_b"] == learned("b", None, 1) == ("true", "false")
    assert vocabularies["pc_t"] == learned("t", None, 1)
    assert vocabularies["pc_dec"] == learned("dec", None, 1)
    assert vocabularies["pc_e"] == ()
    assert vocabularies["pc_k"] == ("7", "-1", "0", "2147483647")
    assert vocabularies["pc_s_file"] == tuple(FILE_VOCABULARY)
    # Non-ASCII ties sort by code point, which is Spark's binary UTF-8 order.
    assert vocabularies["pc_s_all"][-6:] == tuple(sorted(vocabularies["pc_s_all"][-6:]))


def test_fitted_statistics(data: DataFrame, fitted: FeatureMap) -> None:
    train = [row for row in raw_rows(data) if row["i"] < TRAIN_ROWS]
    finite = np.array([row["x"] for row in train if row["x"] is not None and math.isfinite(row["x"])])
    stats = {f.name: f.stats for f in fitted.features if isinstance(f, Normalize)}
    x = stats["nz_x"]
    assert x is not None and x.count == len(finite)
    assert (x.min, x.max) == (finite.min(), finite.max())
    assert x.mean is not None and x.std is not None
    assert x.mean == pytest.approx(finite.mean(), rel=1e-12)
    assert x.std == pytest.approx(finite.std(), rel=1e-12)
    for name in ("nz_c", "nm_c"):
        constant = stats[name]
        assert constant is not None and constant.std == 0.0 and constant.min == constant.max == 3.25
    empty = stats["nz_e"]
    assert empty is not None and empty.count == 0 and empty.mean is None


def test_fit_reads_the_data_once(data: DataFrame, fitted: FeatureMap) -> None:
    fits = _fits(fitted)
    assert len(fits) == 13  # 5 pickcats on s count it once; 3 normalize on x aggregate it once
    types = {field.name: field.dataType for field in data.schema.fields}
    physical = explain(_fit_rows(data, fits, types)).split("== Physical Plan ==")[1]
    assert physical.count("Scan") == 1, physical


def explain(frame: DataFrame) -> str:
    text = io.StringIO()
    with contextlib.redirect_stdout(text):
        frame.explain(extended=True)
    return text.getvalue()


PYTHON_EVAL = ("PythonUDF", "BatchEvalPython", "ArrowEvalPython")


def test_no_python_function_runs_in_spark(spark: SparkSession, applied: tuple[DataFrame, list[dict[str, Any]]]) -> None:
    frame, _ = applied
    plan = explain(frame)
    assert "== Physical Plan ==" in plan
    assert not [marker for marker in PYTHON_EVAL if marker in plan]
    # The check can fail: a frame with a Python function shows the markers.
    plus_one = F.udf(lambda v: v, T.LongType(), useArrow=False)
    assert any(marker in explain(frame.select(plus_one("i"))) for marker in PYTHON_EVAL)


def test_missing_and_mistyped_columns(spark: SparkSession, data: DataFrame, vocab_file: Path) -> None:
    def declared(feature: dict[str, str], keep: list[str] | None = None) -> FeatureMap:
        return FeatureMap.declare([feature], label=None, keep=keep or [])

    cases = [
        (
            declared({"name": "a", "fn": "piecewise", "source": "age", "boundaries": "1"}),
            r"feature 'a': column 'age' is missing; the input has b, c, dec, dr, e, f, i, k, n, s, t, x, y",
        ),
        (
            declared({"name": "a", "fn": "piecewise", "source": "X", "boundaries": "1"}),
            r"column 'X' is missing",  # names are case-sensitive, as online
        ),
        (
            declared({"name": "a", "fn": "piecewise", "source": "s", "boundaries": "1"}),
            r"feature 'a': column 's' is string; piecewise needs a numeric column",
        ),
        (declared({"name": "a", "fn": "normalize", "source": "b"}), r"column 'b' is boolean; normalize needs"),
        (
            declared({"name": "a", "fn": "pickcat", "source": "x"}),
            r"feature 'a': column 'x' is double; pickcat needs strings(.|\n)*bucket it with piecewise first",
        ),
        (declared({"name": "a", "fn": "pickcat", "source": "dr"}), r"column 'dr' is decimal\(12,3\); pickcat"),
        (
            declared({"name": "a", "fn": "combinehash", "sources": "s,f", "buckets": "9"}),
            r"feature 'a': column 'f' is float; combinehash needs",
        ),
        (
            declared({"name": "a", "fn": "pickcat", "source": "s"}, keep=["uid"]),
            r"keep: column 'uid' is missing; the input has b, c",
        ),
    ]
    for fmap, message in cases:
        with pytest.raises(FeatureError, match=message):
            fit_feature_map(data, fmap)
    fitted_map = fit_feature_map(data, declared({"name": "a", "fn": "pickcat", "source": "s"}))
    with pytest.raises(FeatureError, match="column 's' is missing"):
        apply_feature_map(data.drop("s"), fitted_map)
    with pytest.raises(FeatureError, match="not fitted: a"):
        apply_feature_map(data, declared({"name": "a", "fn": "pickcat", "source": "s"}))
