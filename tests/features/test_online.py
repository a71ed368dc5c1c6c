"""The online feature functions (no Spark): the semantics table of each function, the artifact."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from decimal import Decimal
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from weiflow.features import FEATURE_MAP_SCHEMA, FeatureError, FeatureMap, OnlineFeatures
from weiflow.features.featuremap import Feature, Normalize, NormalizeStats, Pickcat, Piecewise, read_vocab_file

INF = math.inf


def fitted(features: list[dict[str, str]], keep: list[str] | None = None, **parts: Any) -> FeatureMap:
    """Declare ``features`` and fill in fitted parts by hand: ``name=vocabulary tuple or NormalizeStats``."""
    declared = FeatureMap.declare(features, label="y", keep=keep or [])

    def fit(feature: Feature) -> Feature:
        part = parts.get(feature.name)
        if isinstance(feature, Pickcat) and part is not None:
            return replace(feature, vocabulary=tuple(part))
        if isinstance(feature, Normalize):
            return replace(feature, stats=part if part is not None else NormalizeStats(0))
        return feature

    return FeatureMap(declared.label, declared.keep, tuple(fit(f) for f in declared.features))


def one(fmap: FeatureMap, column: str, values: list[Any], feature: str) -> list[Any]:
    """Map ``values`` of one column, both through rows and through columns; they must agree."""
    online = OnlineFeatures(fmap)
    by_rows = [row[feature] for row in online.transform_rows([{column: v} for v in values])]
    by_columns = online.transform_columns({column: values})[feature].tolist()
    assert by_rows == by_columns
    return by_rows


# -- piecewise ----------------------------------------------------------------------------

PIECEWISE = fitted([{"name": "b", "fn": "piecewise", "source": "x", "boundaries": "18,25,35,50"}])


@pytest.mark.parametrize(
    ("x", "expected"),
    [
        (-INF, 0),
        (-1e300, 0),
        (17.999999, 0),
        (18, 1),
        (18.0, 1),
        (24.99, 1),
        (25, 2),
        (Decimal("35.00"), 3),
        (49, 3),
        (50, 4),
        (10**12, 4),
        (INF, 4),
        (math.nan, 5),
        (None, 5),
        (-0.0, 0),
    ],
)
def test_piecewise(x: Any, expected: int) -> None:
    assert one(PIECEWISE, "x", [x], "b") == [expected]


def test_piecewise_numpy_columns_and_large_ints() -> None:
    fmap = fitted([{"name": "b", "fn": "piecewise", "source": "n", "boundaries": "0,4611686018427387904"}])
    online = OnlineFeatures(fmap)
    ints = np.array([-1, 0, 2**62 - 1, 2**62, 2**63 - 1], dtype=np.int64)
    # 2**62 - 1 is compared as a double, which rounds to 2**62 (as Spark's long -> double does).
    assert online.transform_columns({"n": ints})["b"].tolist() == [0, 1, 2, 2, 2]
    floats = np.array([np.nan, -np.inf, 0.5], dtype=np.float32)
    assert online.transform_columns({"n": floats})["b"].tolist() == [3, 0, 1]


@pytest.mark.parametrize("bad", [True, "3", b"3", object()])
def test_piecewise_rejects_non_numbers(bad: Any) -> None:
    with pytest.raises(FeatureError, match=r"feature 'b': column 'x' row 0 holds .*piecewise needs numbers"):
        one(PIECEWISE, "x", [bad], "b")


def test_piecewise_rejects_string_and_bool_arrays() -> None:
    online = OnlineFeatures(PIECEWISE)
    for array in (np.array(["1"]), np.array([True])):
        with pytest.raises(FeatureError, match="column 'x' has dtype"):
            online.transform_columns({"x": array})


# -- pickcat ------------------------------------------------------------------------------

PICKCAT = fitted([{"name": "c", "fn": "pickcat", "source": "s", "top": "10"}], c=("a", "1", "true", "日本", "", "-5"))


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("a", 1),
        ("A", 0),
        (1, 2),
        ("1", 2),
        (np.int64(1), 2),
        (1.0, 2),  # an integer stored as a float (NumPy/pandas with missing values)
        (Decimal("1"), 2),
        (True, 3),
        ("true", 3),
        (np.bool_(True), 3),
        (False, 0),
        ("日本", 4),
        ("", 5),
        (-5, 6),
        ("unseen", 0),
        (None, 0),
        (math.nan, 0),
    ],
)
def test_pickcat(value: Any, expected: int) -> None:
    assert one(PICKCAT, "s", [value], "c") == [expected]


@pytest.mark.parametrize("bad", [1.5, INF, Decimal("0.5"), object()])
def test_pickcat_rejects_reals(bad: Any) -> None:
    with pytest.raises(FeatureError, match=r"feature 'c': column 's' row 0 holds .*pickcat needs strings, integers"):
        one(PICKCAT, "s", [bad], "c")


def test_pickcat_numpy_columns() -> None:
    online = OnlineFeatures(PICKCAT)
    columns: dict[str, Any] = {"s": np.array([1, -5, 7])}
    assert online.transform_columns(columns)["c"].tolist() == [2, 6, 0]
    assert online.transform_columns({"s": np.array([True, False])})["c"].tolist() == [3, 0]
    assert online.transform_columns({"s": np.array(["日本", "a", "b"])})["c"].tolist() == [4, 1, 0]
    assert online.transform_columns({"s": np.array([1.0, np.nan])})["c"].tolist() == [2, 0]


def test_empty_vocabulary_maps_everything_to_zero() -> None:
    fmap = fitted([{"name": "c", "fn": "pickcat", "source": "s", "min-count": "3"}], c=())
    assert one(fmap, "s", ["a", None], "c") == [0, 0]
    assert fmap.cardinalities()["c"] == 1


# -- normalize ----------------------------------------------------------------------------


def normalize(method: str, stats: NormalizeStats) -> FeatureMap:
    return fitted([{"name": "z", "fn": "normalize", "source": "x", "method": method}], z=stats)


STATS = NormalizeStats(4, mean=2.0, std=4.0, min=-2.0, max=6.0)


@pytest.mark.parametrize(
    ("method", "x", "expected"),
    [
        ("zscore", 6, 1.0),
        ("zscore", -2.0, -1.0),
        ("zscore", 2, 0.0),
        ("zscore", 100.0, 24.5),  # outside the fitted range: no clipping
        ("minmax", -2, 0.0),
        ("minmax", 6, 1.0),
        ("minmax", 0, 0.25),
        ("log1p", math.e - 1, 1.0),
        ("log1p", -3.0, 0.0),
        ("log1p", 0, 0.0),
    ],
)
def test_normalize(method: str, x: Any, expected: float) -> None:
    assert one(normalize(method, STATS), "x", [x], "z") == [pytest.approx(expected, rel=1e-15)]


@pytest.mark.parametrize("method", ["zscore", "minmax", "log1p"])
@pytest.mark.parametrize("x", [None, math.nan, INF, -INF])
def test_normalize_non_finite_input_is_zero(method: str, x: Any) -> None:
    assert one(normalize(method, STATS), "x", [x], "z") == [0.0]


@pytest.mark.parametrize(
    ("method", "stats"),
    [
        ("zscore", NormalizeStats(3, mean=5.0, std=0.0, min=5.0, max=5.0)),
        ("minmax", NormalizeStats(3, mean=5.0, std=0.0, min=5.0, max=5.0)),
        ("zscore", NormalizeStats(0)),
        ("minmax", NormalizeStats(0)),
        ("minmax", NormalizeStats.of(2, 0.0, math.inf, -1e308, 1e308)),  # the range overflows
    ],
)
def test_normalize_degenerate_statistics_give_zero(method: str, stats: NormalizeStats) -> None:
    assert one(normalize(method, stats), "x", [1.0, 5.0, 1e300], "z") == [0.0, 0.0, 0.0]


def test_normalize_formula_order_is_shift_then_divide() -> None:
    stats = NormalizeStats(2, mean=0.1, std=0.3, min=0.1, max=0.7)
    assert one(normalize("zscore", stats), "x", [0.7], "z") == [(0.7 - 0.1) / 0.3]
    assert one(normalize("minmax", stats), "x", [0.3], "z") == [(0.3 - 0.1) / (0.7 - 0.1)]


# -- descartes ----------------------------------------------------------------------------


def test_descartes_is_mixed_radix_and_dense() -> None:
    fmap = fitted(
        [
            # Defined before its sources: computed in dependency order.
            {"name": "abc", "fn": "descartes", "sources": "ab,c"},
            {"name": "ab", "fn": "descartes", "sources": "a,b"},
            {"name": "a", "fn": "piecewise", "source": "x", "boundaries": "0,10"},  # 4 ids
            {"name": "b", "fn": "pickcat", "source": "s", "values": "p,q"},  # 3 ids
            {"name": "c", "fn": "combinehash", "sources": "s", "buckets": "5"},
        ]
    )
    cards = fmap.cardinalities()
    assert (cards["a"], cards["b"], cards["ab"], cards["c"], cards["abc"]) == (4, 3, 12, 5, 60)
    online = OnlineFeatures(fmap)
    xs = [-1.0, 0.0, 10.0, None] * 3
    ss = ["x"] * 4 + ["p"] * 4 + ["q"] * 4
    out = online.transform_columns({"x": xs, "s": ss})
    assert out["ab"].tolist() == [a * 3 + b for a, b in zip(out["a"].tolist(), out["b"].tolist(), strict=True)]
    assert sorted(out["ab"].tolist()) == list(range(12))
    assert out["abc"].tolist() == [ab * 5 + c for ab, c in zip(out["ab"].tolist(), out["c"].tolist(), strict=True)]
    assert list(out) == ["abc", "ab", "a", "b", "c"]  # declared order


# -- combinehash --------------------------------------------------------------------------

# xxhash64(a, b) as Spark 4.3 computes it (seed 42; a null source is skipped).
SPARK_XXHASH64 = [
    (("a", "héllo"), 9020156619222401570),
    ((None, "x"), -5636050478767222463),
    (("", None), -7444071767201028348),
    (("日本", "🙂"), 5705249384560079441),
]


@pytest.mark.parametrize("buckets", [1, 1000, 2**62 + 1, 2**63 - 1])
def test_combinehash_matches_spark_constants(buckets: int) -> None:
    fmap = fitted([{"name": "h", "fn": "combinehash", "sources": "a,b", "buckets": str(buckets)}])
    rows = [{"a": a, "b": b} for (a, b), _ in SPARK_XXHASH64]
    ids = [row["h"] for row in OnlineFeatures(fmap).transform_rows(rows)]
    assert ids == [spark_hash % buckets for _, spark_hash in SPARK_XXHASH64]
    assert all(isinstance(i, int) and 0 <= i < buckets for i in ids)


def test_combinehash_canonical_strings() -> None:
    fmap = fitted([{"name": "h", "fn": "combinehash", "sources": "v", "buckets": "1000003"}])
    same: list[list[Any]] = [[7, "7", np.int64(7), 7.0], [True, "true"], [None, math.nan]]
    for group in same:
        assert len(set(one(fmap, "v", group, "h"))) == 1, group
    with pytest.raises(FeatureError, match="combinehash needs strings"):
        one(fmap, "v", [0.5], "h")


# -- the evaluator ------------------------------------------------------------------------


def test_rows_keep_columns_pass_through_and_label_does_not() -> None:
    fmap = fitted([{"name": "b", "fn": "piecewise", "source": "x", "boundaries": "1"}], keep=["uid", "ts"])
    online = OnlineFeatures(fmap)
    rows = online.transform_rows([{"uid": "u1", "x": 3, "y": 1, "ts": 5}, {"x": None}])
    assert rows == [{"uid": "u1", "ts": 5, "b": 1}, {"b": 2}]
    assert type(rows[0]["b"]) is int
    columns = online.transform_columns({"uid": ["u1", "u2"], "x": [0.0, 2.0], "y": [1, 0]})
    assert list(columns) == ["uid", "b"]
    assert columns["b"].dtype == np.int64


def test_normalize_outputs_are_floats() -> None:
    rows = OnlineFeatures(normalize("zscore", STATS)).transform_rows([{"x": 6}])
    assert type(rows[0]["z"]) is float


def test_missing_column_names_feature_column_and_what_exists() -> None:
    online = OnlineFeatures(PIECEWISE)
    with pytest.raises(FeatureError, match=r"feature 'b': column 'x' is missing; the input has age, city") as info:
        online.transform_columns({"city": [], "age": []})
    assert "case-sensitive" in str(info.value)
    with pytest.raises(FeatureError, match=r"row 1: feature 'b': column 'x' is missing; the input has X"):
        online.transform_rows([{"x": 1}, {"X": 2}])


def test_columns_of_different_lengths() -> None:
    fmap = fitted([{"name": "h", "fn": "combinehash", "sources": "a,b", "buckets": "9"}])
    with pytest.raises(FeatureError, match="column 'b' has 1 values, other columns have 2"):
        OnlineFeatures(fmap).transform_columns({"a": ["x", "y"], "b": ["z"]})


def test_empty_batch() -> None:
    online = OnlineFeatures(PICKCAT)
    assert online.transform_rows([]) == []
    assert online.transform_columns({"s": []})["c"].tolist() == []


def test_unfitted_map_is_refused() -> None:
    declared = FeatureMap.declare(
        [
            {"name": "c", "fn": "pickcat", "source": "s", "top": "3"},
            {"name": "z", "fn": "normalize", "source": "x"},
            {"name": "b", "fn": "piecewise", "source": "x", "boundaries": "1"},
        ],
        label=None,
        keep=[],
    )
    assert not declared.fitted
    with pytest.raises(FeatureError, match="not fitted: c, z"):
        OnlineFeatures(declared)


# -- declaring ----------------------------------------------------------------------------


def test_declare_types_the_attributes() -> None:
    fmap = FeatureMap.declare(
        [
            {"name": "b", "fn": "piecewise", "source": "age", "boundaries": "18, 25.5"},
            {"name": "v", "fn": "pickcat", "source": "s", "values": "x,y"},
            {"name": "l", "fn": "pickcat", "source": "s"},
            {"name": "t", "fn": "pickcat", "source": "s", "top": "7", "min-count": "2"},
            {"name": "z", "fn": "normalize", "source": "x"},
            {"name": "h", "fn": "combinehash", "sources": "s,age", "buckets": "64"},
        ],
        label="y",
        keep=["uid"],
    )
    b, v, learned, t, z, h = fmap.features
    assert isinstance(b, Piecewise) and b.boundaries == (18.0, 25.5)
    assert isinstance(v, Pickcat) and v.vocabulary == ("x", "y") and not v.learned
    assert isinstance(learned, Pickcat) and learned.min_count == 1 and learned.top is None and learned.learned
    assert isinstance(t, Pickcat) and (t.top, t.min_count) == (7, 2)
    assert isinstance(z, Normalize) and z.method == "zscore" and z.stats is None
    assert fmap.passthrough == ("uid", "y")
    assert h.fn == "combinehash"


@pytest.mark.parametrize(
    ("features", "message"),
    [
        ([{"name": "b", "fn": "piecewise", "source": "x", "boundaries": "3,1"}], "strictly increasing"),
        ([{"name": "b", "fn": "piecewise", "source": "x", "boundaries": "${b}"}], r"boundaries='\$\{b\}'"),
        ([{"name": "b", "fn": "pickles", "source": "x"}], "unknown feature function 'pickles'"),
        ([{"name": "b", "fn": "piecewise", "source": "x"}], "needs attribute 'boundaries'"),
        ([{"name": "h", "fn": "combinehash", "sources": "x", "buckets": "0"}], "buckets: must be at least 1"),
        ([{"name": "d", "fn": "descartes", "sources": "p,q"}], "unknown source 'p'"),
        (
            [
                {"name": "z", "fn": "normalize", "source": "x"},
                {"name": "b", "fn": "piecewise", "source": "x", "boundaries": "1"},
                {"name": "d", "fn": "descartes", "sources": "z,b"},
            ],
            "source 'z' is not categorical",
        ),
        ([{"name": "c", "fn": "pickcat", "source": "s", "values": "a", "top": "2"}], "from one place"),
    ],
)
def test_declare_rejects_what_validate_rejects(features: list[dict[str, str]], message: str) -> None:
    with pytest.raises(FeatureError, match=message):
        FeatureMap.declare(features, label=None, keep=[])


def test_declare_rejects_a_feature_named_like_a_kept_column() -> None:
    with pytest.raises(FeatureError, match="feature 'uid' has the name of a column the module keeps"):
        FeatureMap.declare([{"name": "uid", "fn": "pickcat", "source": "uid"}], label=None, keep=["uid"])


def test_a_fitted_cross_must_fit_in_64_bits() -> None:
    features = [
        {"name": "a", "fn": "pickcat", "source": "s"},
        {"name": "h", "fn": "combinehash", "sources": "s", "buckets": str(2**62 - 1)},
        {"name": "d", "fn": "descartes", "sources": "a,h"},
    ]
    assert FeatureMap.declare(features, label=None, keep=[]).cardinalities()["d"] is None  # known once fitted
    assert fitted(features, a=["x"]).cardinalities()["d"] == 2**63 - 2
    with pytest.raises(FeatureError, match=r"feature 'd': the cross has .* more than a 64-bit id holds"):
        fitted(features, a=["x", "y"])


# -- vocabulary files ---------------------------------------------------------------------


def test_vocab_file(tmp_path: Path) -> None:
    path = tmp_path / "vocab.txt"
    path.write_text("a\n\n  日本  \r\n   \n7\n", encoding="utf-8")
    assert read_vocab_file(str(path), "c") == ("a", "日本", "7")
    assert read_vocab_file(path.as_uri(), "c") == ("a", "日本", "7")


def test_vocab_file_errors(tmp_path: Path) -> None:
    with pytest.raises(FeatureError, match=r"'vocab.txt' is a relative path"):
        read_vocab_file("vocab.txt", "c")
    with pytest.raises(FeatureError, match="cannot read vocab-file"):
        read_vocab_file(str(tmp_path / "absent.txt"), "c")
    with pytest.raises(FeatureError, match="remote host"):
        read_vocab_file("file://example.com/v.txt", "c")
    with pytest.raises(FeatureError, match="only local files"):
        read_vocab_file("hdfs://nn/v.txt", "c")
    path = tmp_path / "dup.txt"
    path.write_text("a\nb\na\n", encoding="utf-8")
    with pytest.raises(FeatureError, match="line 3: 'a' is listed twice \\(first on line 1\\)"):
        read_vocab_file(str(path), "c")


# -- the artifact -------------------------------------------------------------------------

ALL = [
    {"name": "b", "fn": "piecewise", "source": "age", "boundaries": "0.1,0.30000000000000004,1e300"},
    {"name": "c", "fn": "pickcat", "source": "city", "top": "3"},
    {"name": "v", "fn": "pickcat", "source": "city", "values": "x,日本"},
    {"name": "z", "fn": "normalize", "source": "ctr", "method": "minmax"},
    {"name": "e", "fn": "normalize", "source": "ctr", "method": "log1p"},
    {"name": "d", "fn": "descartes", "sources": "b,c"},
    {"name": "h", "fn": "combinehash", "sources": "city,uid", "buckets": str(2**63 - 1)},
]


def test_artifact_round_trip_is_exact() -> None:
    fmap = fitted(
        ALL,
        keep=["uid"],
        c=("beijing", "", "🙂"),
        z=NormalizeStats(3, mean=0.1 + 0.2, std=1 / 3, min=-5e-324, max=1.7976931348623157e308),
        e=NormalizeStats(0),
    )
    text = fmap.to_json()
    assert FeatureMap.from_json(text) == fmap
    document = json.loads(text)
    assert document["schema"] == FEATURE_MAP_SCHEMA == "weiflow.featuremap/1"
    assert [f.get("cardinality") for f in document["features"]] == [5, 4, 3, None, None, 20, 2**63 - 1]
    assert "日本" in text  # readable, not escaped
    # The declared (unfitted) map round-trips too.
    declared = FeatureMap.declare(ALL, label=None, keep=[])
    assert FeatureMap.from_json(declared.to_json()) == declared


def test_artifact_from_another_version_is_refused() -> None:
    document = json.loads(fitted(ALL[:1]).to_json())
    document["schema"] = "weiflow.featuremap/2"
    with pytest.raises(FeatureError, match=r"model/features.json: feature map schema 'weiflow.featuremap/2' is not"):
        FeatureMap.from_json(json.dumps(document), source="model/features.json")
    del document["schema"]
    with pytest.raises(FeatureError, match=r"schema None is not supported; this WeiFlow reads weiflow.featuremap/1"):
        FeatureMap.from_json(json.dumps(document))


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda d: d["features"][0].update(cardinality=7), "cardinality 7 does not match"),
        (lambda d: d["features"][0].update(boundaries=[2, 1]), "strictly increasing"),
        (lambda d: d["features"][0].update(boundaries="1,2"), "'boundaries' must be a list of numbers"),
        (lambda d: d["features"][0].update(fn="bucket"), "unknown feature function 'bucket'"),
        (lambda d: d["features"][1].update(vocabulary=["a", "a"]), "lists a value twice"),
        (lambda d: d["features"][3].update(stats={"count": "3"}), "'count' must be a whole number"),
        (lambda d: d["features"][5].update(sources=["b", "nope"]), "source 'nope' is unknown"),
        (lambda d: d.update(features={}), "'features' must be a list"),
    ],
)
def test_damaged_artifact_is_refused(edit: Any, message: str) -> None:
    document = json.loads(fitted(ALL, c=("a",), z=STATS, e=STATS).to_json())
    edit(document)
    with pytest.raises(FeatureError, match=f"^art.json: .*{message}"):
        FeatureMap.from_json(json.dumps(document), source="art.json")


def test_not_json_is_refused() -> None:
    with pytest.raises(FeatureError, match=r"x.json: not a feature map"):
        FeatureMap.from_json("{", source="x.json")
