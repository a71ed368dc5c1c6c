"""The feature functions in Spark: fit a :class:`FeatureMap` on a DataFrame, and apply it.

Everything here is native Column expressions (no Python functions run on executors), so
a features module stays inside Spark's code generation. The semantics are those of
:mod:`weiflow.features.featuremap` and must match :mod:`weiflow.features.online` exactly;
tests/engines/spark/test_feature_parity.py holds both to the same table of rows.
"""

from __future__ import annotations

import json
import math
from dataclasses import replace

from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F
from pyspark.sql.types import (
    BooleanType,
    ByteType,
    DataType,
    DecimalType,
    DoubleType,
    FloatType,
    IntegerType,
    LongType,
    ShortType,
    StringType,
)

from weiflow.features.featuremap import (
    Combinehash,
    Descartes,
    Feature,
    FeatureError,
    FeatureMap,
    Normalize,
    NormalizeStats,
    Pickcat,
    Piecewise,
    missing_column,
    raw_sources,
    read_vocab_file,
)

__all__ = ["apply_feature_map", "fit_feature_map"]

_INTEGRAL = (ByteType, ShortType, IntegerType, LongType)
_NUMERIC = (*_INTEGRAL, FloatType, DoubleType, DecimalType)


def fit_feature_map(df: DataFrame, declared: FeatureMap) -> FeatureMap:
    """Fit ``declared`` on ``df``: learn pickcat vocabularies, read vocab files, compute normalize statistics.

    One query, one scan of ``df``: each column that a learned pickcat or a normalize reads
    becomes a row per input row of ``(fid, key, num)`` (the canonical string in ``key`` for
    a pickcat, the finite value in ``num`` for a normalize), and a single
    ``groupBy(fid, key)`` counts the values and aggregates the statistics together. A
    column read by several features is counted once. Only what is kept comes back to the
    driver: the values that pass some feature's min-count and top, one statistics row per
    normalized column.
    """
    types = _check_columns(df, declared)
    fits = _fits(declared)
    counts: dict[str, list[tuple[int, str]]] = {source: [] for fn, source in fits if fn == "pickcat"}
    stats: dict[str, NormalizeStats] = {source: NormalizeStats(0) for fn, source in fits if fn == "normalize"}
    if fits:
        keys = list(fits)
        for row in _fit_rows(df, fits, types).collect():
            fn, source = keys[row["fid"]]
            if fn == "pickcat":
                counts[source].append((row["n"], row["key"]))
            else:
                stats[source] = NormalizeStats.of(row["c"], row["mean"], row["std"], row["low"], row["high"])
    for values in counts.values():
        # By count descending, ties by value ascending. Python orders str by code point,
        # which is the UTF-8 byte order Spark ranked by when it cut at top.
        values.sort(key=lambda item: (-item[0], item[1]))

    fitted: list[Feature] = []
    for feature in declared.features:
        if isinstance(feature, Pickcat) and feature.learned:
            kept = [value for n, value in counts[feature.source] if n >= (feature.min_count or 1)]
            fitted.append(replace(feature, vocabulary=tuple(kept[: feature.top])))
        elif isinstance(feature, Pickcat) and feature.vocab_file is not None:
            fitted.append(replace(feature, vocabulary=read_vocab_file(feature.vocab_file, feature.name)))
        elif isinstance(feature, Normalize):
            fitted.append(replace(feature, stats=stats[feature.source]))
        else:
            fitted.append(feature)
    return FeatureMap(declared.label, declared.keep, tuple(fitted))


def apply_feature_map(df: DataFrame, fmap: FeatureMap) -> DataFrame:
    """The kept columns, the label, then one column per feature (ids bigint, normalize double).

    Crosses read the ids of the features they cross, so they are computed in later
    projections (one per level of crosses of crosses) rather than inlining those
    expressions again.
    """
    fmap.require_fitted()
    types = _check_columns(df, fmap)
    cards = fmap.cardinalities()
    passthrough = [_col(name) for name in fmap.passthrough]
    levels: dict[str, int] = {}
    stages: list[list[Column]] = []
    for feature in fmap.order():
        if isinstance(feature, Descartes):
            level = 1 + max(levels[s] for s in feature.sources)
            column = _descartes(feature, cards)
        else:
            level = 0
            column = _column(feature, types)
        levels[feature.name] = level
        while len(stages) <= level:
            stages.append([])
        stages[level].append(column.alias(feature.name))

    frame = df.select(*passthrough, *stages[0])
    for stage in stages[1:]:
        frame = frame.select("*", *stage)
    return frame.select(*passthrough, *[_col(f.name) for f in fmap.features])


# -- checking the input -------------------------------------------------------------------


def _check_columns(df: DataFrame, fmap: FeatureMap) -> dict[str, DataType]:
    """Every column the map reads exists (by exact name) with a type its functions accept."""
    types = {field.name: field.dataType for field in df.schema.fields}
    for name in fmap.keep:
        if name not in types:
            raise missing_column("keep", name, types)
    if fmap.label is not None and fmap.label not in types:
        raise missing_column("label", fmap.label, types)
    for feature in fmap.features:
        for source in raw_sources(feature):
            if source not in types:
                raise missing_column(f"feature '{feature.name}'", source, types)
            data_type = types[source]
            if isinstance(feature, Piecewise | Normalize):
                if not isinstance(data_type, _NUMERIC):
                    raise FeatureError(
                        f"feature '{feature.name}': column '{source}' is {data_type.simpleString()}; "
                        f"{feature.fn} needs a numeric column (tinyint to bigint, float, double, decimal)",
                        f"cast it in a sql module first, e.g. CAST({source} AS DOUBLE)",
                    )
            elif not _categorical_type(data_type):
                hint = (
                    "bucket it with piecewise first"
                    if isinstance(data_type, FloatType | DoubleType | DecimalType)
                    else "cast it to a string in a sql module first"
                )
                raise FeatureError(
                    f"feature '{feature.name}': column '{source}' is {data_type.simpleString()}; "
                    f"{feature.fn} needs strings, integers (tinyint to bigint, decimal(p,0)) or booleans",
                    hint,
                )
    return types


def _categorical_type(data_type: DataType) -> bool:
    if isinstance(data_type, DecimalType):
        return data_type.scale == 0
    return isinstance(data_type, (StringType, BooleanType, *_INTEGRAL))


# -- expressions ---------------------------------------------------------------------------


def _col(name: str) -> Column:
    """A top-level column by its exact name (dots and backticks in names are not paths)."""
    return F.col("`" + name.replace("`", "``") + "`")


def _long(value: int) -> Column:
    return F.lit(value).cast(LongType())


def _text(name: str, types: dict[str, DataType]) -> Column:
    """The canonical string: strings as is, integers in decimal, booleans true/false."""
    column = _col(name)
    return column if isinstance(types[name], StringType) else column.cast(StringType())


def _real(name: str) -> Column:
    return _col(name).cast(DoubleType())


def _finite(x: Column) -> Column:
    # Spark orders NaN above +inf, so NaN is tested on its own.
    return x.isNotNull() & ~F.isnan(x) & (F.abs(x) != F.lit(math.inf))


def _column(feature: Feature, types: dict[str, DataType]) -> Column:
    if isinstance(feature, Piecewise):
        x = _real(feature.source)
        count = len(feature.boundaries)
        tree = _bucket(x, feature.boundaries, 0, count)
        return F.when(x.isNull() | F.isnan(x), _long(feature.null_id)).otherwise(tree)
    if isinstance(feature, Pickcat):
        return _lookup(feature, _text(feature.source, types))
    if isinstance(feature, Normalize):
        x = _real(feature.source)
        if feature.method == "log1p":
            value = F.log1p(F.greatest(x, F.lit(0.0)))
        else:
            scaling = feature.scaling()
            if scaling is None:
                return F.lit(0.0)
            shift, scale = scaling
            value = (x - F.lit(shift)) / F.lit(scale)
        return F.when(_finite(x), value).otherwise(F.lit(0.0))
    if isinstance(feature, Combinehash):
        # xxhash64 with Spark's seed 42 over the canonical strings; a null source leaves the hash as is.
        hashed = F.xxhash64(*[_text(source, types) for source in feature.sources])
        return F.pmod(hashed, _long(feature.buckets))
    raise AssertionError(feature)  # descartes is built from other features' ids


def _bucket(x: Column, boundaries: tuple[float, ...], low: int, high: int) -> Column:
    """The id in [low, high] for a non-NaN x: a balanced tree of comparisons, log2(n) deep."""
    if low == high:
        return _long(low)
    middle = (low + high + 1) // 2
    return F.when(x >= F.lit(boundaries[middle - 1]), _bucket(x, boundaries, middle, high)).otherwise(
        _bucket(x, boundaries, low, middle - 1)
    )


def _lookup(feature: Pickcat, text: Column) -> Column:
    """The value's 1-based position in the vocabulary, 0 when absent or null.

    A map literal: ``map_from_arrays`` of the vocabulary (one JSON string literal parsed by
    ``from_json``) and ``sequence(1, n)``. The optimizer folds it into a single map
    literal, and looking a key up in it is a hash lookup: 1M rows against 100k values take
    about a second on two cores, where ``array_position`` scans the array (over 100 s).
    Passing the vocabulary as one string also keeps building the plan to one call into
    the JVM instead of one per value (50 s for 100k ``lit`` calls).
    """
    vocabulary = feature.vocabulary or ()
    if not vocabulary:
        return _long(0)
    keys = F.from_json(F.lit(json.dumps(list(vocabulary), ensure_ascii=False)), "array<string>")
    lookup = F.map_from_arrays(keys, F.sequence(_long(1), _long(len(vocabulary))))
    return F.coalesce(F.try_element_at(lookup, text), _long(0))


def _descartes(feature: Descartes, cards: dict[str, int | None]) -> Column:
    """((a1*c2 + a2)*c3 + a3)...; the map checked that the product fits in 64 bits."""
    ids = _col(feature.sources[0])
    for source in feature.sources[1:]:
        card = cards[source]
        assert card is not None  # require_fitted
        ids = ids * _long(card) + _col(source)
    return ids


_Fit = tuple[str, str]  # (function, source column): what one fid of the fitting query computes


def _fits(fmap: FeatureMap) -> dict[_Fit, list[Pickcat | Normalize]]:
    """The features that learn from data, grouped by what they read: each column is counted once."""
    fits: dict[_Fit, list[Pickcat | Normalize]] = {}
    for feature in fmap.features:
        if isinstance(feature, Normalize) or (isinstance(feature, Pickcat) and feature.learned):
            fits.setdefault((feature.fn, feature.source), []).append(feature)
    return fits


def _fit_rows(df: DataFrame, fits: dict[_Fit, list[Pickcat | Normalize]], types: dict[str, DataType]) -> DataFrame:
    """Per fid (an index into ``fits``): its values' counts, or its statistics.

    Columns ``fid, key, n, c, mean, std, low, high``; a pickcat's rows are the values some
    feature on that column keeps (count >= its min-count, rank <= its top).
    """
    structs = []
    for index, (fn, source) in enumerate(fits):
        if fn == "pickcat":
            key, num = _text(source, types), F.lit(None).cast(DoubleType())
        else:
            x = _real(source)
            key, num = F.lit(None).cast(StringType()), F.when(_finite(x), x)
        structs.append(F.struct(F.lit(index).alias("fid"), key.alias("key"), num.alias("num")))
    values = df.select(F.inline(F.array(*structs))).where(F.col("key").isNotNull() | F.col("num").isNotNull())
    grouped = values.groupBy("fid", "key").agg(
        F.count(F.lit(1)).alias("n"),
        F.count("num").alias("c"),
        F.avg("num").alias("mean"),
        F.stddev_pop("num").alias("std"),
        F.min("num").alias("low"),
        F.max("num").alias("high"),
    )
    features = [f for group in fits.values() for f in group]
    if any(isinstance(f, Pickcat) and f.top is not None for f in features):
        # The top cut: count descending, ties by value ascending (binary UTF-8 order).
        order = Window.partitionBy("fid").orderBy(F.col("n").desc(), F.col("key").asc())
        grouped = grouped.withColumn("rank", F.row_number().over(order))
    fid, n = F.col("fid"), F.col("n")
    kept = F.lit(False)
    for index, group in enumerate(fits.values()):
        for feature in group:
            condition = F.lit(True)
            if isinstance(feature, Pickcat):
                condition = n >= (feature.min_count or 1)
                if feature.top is not None:
                    condition = condition & (F.col("rank") <= feature.top)
            kept = kept | ((fid == index) & condition)
    return grouped.where(kept)
