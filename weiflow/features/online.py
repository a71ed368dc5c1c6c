"""The online feature functions: a fitted :class:`FeatureMap` applied in plain Python and NumPy.

The prediction service calls :meth:`OnlineFeatures.transform_columns` on batches (or
:meth:`OnlineFeatures.transform_rows` on JSON records). The results equal the Spark
engine's for the same raw values: ids exactly; normalize values exactly for zscore and
minmax, and within one ulp for log1p (Spark uses Java's StrictMath, NumPy the C library).

Values as they arrive online are typed leniently where the meaning is unambiguous:

- numeric sources (piecewise, normalize) take ints, floats and Decimals; None is null.
  Booleans and strings are errors, as boolean and string columns are in Spark.
- categorical sources (pickcat, combinehash) are compared as canonical strings: strings as
  is, integers in decimal, booleans ``true``/``false``. A float that holds a whole number
  counts as that integer and NaN counts as null, because NumPy and pandas store an integer
  column with missing values as floats; any other float is an error (bucket it with
  piecewise first).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from decimal import Decimal
from typing import Any

import numpy as np
import numpy.typing as npt
import xxhash

from weiflow.features.featuremap import (
    Combinehash,
    Descartes,
    Feature,
    FeatureError,
    FeatureMap,
    Normalize,
    Pickcat,
    Piecewise,
    missing_column,
    raw_sources,
)

__all__ = ["OnlineFeatures"]

Column = Sequence[Any] | npt.NDArray[Any]
Ids = npt.NDArray[np.int64]
Reals = npt.NDArray[np.float64]

_UINT64 = 1 << 64
_INT64_SIGN = 1 << 63


class OnlineFeatures:
    """A fitted feature map, ready to map raw values to model inputs; safe to share between threads."""

    def __init__(self, feature_map: FeatureMap) -> None:
        feature_map.require_fitted()
        self.feature_map = feature_map
        self._order = feature_map.order()
        cards = feature_map.cardinalities()
        self._cards: dict[str, int] = {name: card for name, card in cards.items() if card is not None}
        self._lookups: dict[str, dict[str, int]] = {}
        self._boundaries: dict[str, Reals] = {}
        for feature in feature_map.features:
            if isinstance(feature, Pickcat):
                assert feature.vocabulary is not None  # require_fitted
                self._lookups[feature.name] = {value: i for i, value in enumerate(feature.vocabulary, 1)}
            elif isinstance(feature, Piecewise):
                self._boundaries[feature.name] = np.asarray(feature.boundaries, dtype=np.float64)
        self.sources: tuple[str, ...] = tuple(dict.fromkeys(c for f in self._order for c in raw_sources(f)))

    def transform_columns(self, columns: Mapping[str, Column]) -> dict[str, np.ndarray]:
        """Map a batch given as columns; returns the kept columns present, then one array per feature.

        Categorical features are int64 arrays, normalize features float64 arrays.
        """
        size: int | None = None
        for source in self.sources:
            column = columns.get(source)
            if column is None and source not in columns:
                owner = next(f for f in self._order if source in raw_sources(f))
                raise missing_column(f"feature '{owner.name}'", source, columns)
            length = len(columns[source])
            if size is None:
                size = length
            elif length != size:
                raise FeatureError(f"column '{source}' has {length} values, other columns have {size}")
        computed: dict[str, np.ndarray] = {}
        for feature in self._order:
            computed[feature.name] = self._compute(feature, columns, computed)
        out: dict[str, np.ndarray] = {
            name: np.asarray(columns[name]) for name in self.feature_map.keep if name in columns
        }
        for feature in self.feature_map.features:
            out[feature.name] = computed[feature.name]
        return out

    def transform_rows(self, rows: Iterable[Mapping[str, object]]) -> list[dict[str, object]]:
        """Map records: each row's kept columns (those it has) and features as Python ints and floats."""
        batch = list(rows)
        columns: dict[str, list[object]] = {}
        for source in self.sources:
            values: list[object] = []
            for index, row in enumerate(batch):
                if source not in row:
                    owner = next(f for f in self._order if source in raw_sources(f))
                    error = missing_column(f"feature '{owner.name}'", source, row)
                    raise FeatureError(f"row {index}: {error.message}", error.hint)
                values.append(row[source])
            columns[source] = values
        mapped = self.transform_columns(columns)
        features = [(f.name, mapped[f.name].tolist()) for f in self.feature_map.features]
        out: list[dict[str, object]] = []
        for index, row in enumerate(batch):
            record: dict[str, object] = {name: row[name] for name in self.feature_map.keep if name in row}
            for name, values in features:
                record[name] = values[index]
            out.append(record)
        return out

    # -- one feature -----------------------------------------------------------------

    def _compute(self, feature: Feature, columns: Mapping[str, Column], computed: Mapping[str, np.ndarray]) -> Any:
        if isinstance(feature, Piecewise):
            x = _reals(columns[feature.source], feature, feature.source)
            ids = np.searchsorted(self._boundaries[feature.name], x, side="right").astype(np.int64)
            ids[np.isnan(x)] = feature.null_id  # null or NaN
            return ids
        if isinstance(feature, Pickcat):
            lookup = self._lookups[feature.name]
            texts = _texts(columns[feature.source], feature, feature.source)
            return np.fromiter((lookup.get(t, 0) if t is not None else 0 for t in texts), np.int64, len(texts))
        if isinstance(feature, Normalize):
            return _normalize(feature, _reals(columns[feature.source], feature, feature.source))
        if isinstance(feature, Descartes):
            ids = np.array(computed[feature.sources[0]], dtype=np.int64)
            for source in feature.sources[1:]:
                ids = ids * self._cards[source] + computed[source]
            return ids
        return _combinehash(feature, [_texts(columns[s], feature, s) for s in feature.sources])


def _normalize(feature: Normalize, x: Reals) -> Reals:
    finite = np.isfinite(x)
    clean = np.where(finite, x, 0.0)
    with np.errstate(over="ignore", invalid="ignore"):
        if feature.method == "log1p":
            out = np.log1p(np.maximum(clean, 0.0))
        else:
            scaling = feature.scaling()
            if scaling is None:
                return np.zeros(len(x), dtype=np.float64)
            shift, scale = scaling
            out = (clean - shift) / scale
    out[~finite] = 0.0
    return out


def _combinehash(feature: Combinehash, texts: list[list[str | None]]) -> Ids:
    out = np.empty(len(texts[0]), dtype=np.int64)
    for index, values in enumerate(zip(*texts, strict=True)):
        digest = Combinehash.SEED
        for value in values:
            if value is not None:  # Spark's xxhash64 skips nulls: the hash passes through
                digest = xxhash.xxh64_intdigest(value.encode("utf-8", "surrogatepass"), digest)
        signed = digest - _UINT64 if digest >= _INT64_SIGN else digest
        out[index] = signed % feature.buckets  # Python's % is Spark's pmod for buckets > 0
    return out


# -- typing raw values --------------------------------------------------------------------


def _bad(feature: Feature, column: str, index: int, value: object, expected: str) -> FeatureError:
    return FeatureError(
        f"feature '{feature.name}': column '{column}' row {index} holds {type(value).__name__} {value!r}; "
        f"{feature.fn} needs {expected}"
    )


def _reals(column: Column, feature: Feature, name: str) -> Reals:
    """Numbers as float64, null as NaN (piecewise and normalize treat them alike)."""
    if isinstance(column, np.ndarray) and column.dtype.kind in "fiu":
        return column.astype(np.float64)
    if isinstance(column, np.ndarray) and column.dtype.kind != "O":
        raise FeatureError(f"feature '{feature.name}': column '{name}' has dtype {column.dtype}; it needs numbers")
    out = np.empty(len(column), dtype=np.float64)
    for index, value in enumerate(column):
        if value is None:
            out[index] = math.nan
        elif isinstance(value, bool | np.bool_) or not isinstance(value, int | float | Decimal | np.number):
            raise _bad(feature, name, index, value, "numbers")
        else:
            try:
                out[index] = float(value)
            except OverflowError:
                raise _bad(feature, name, index, value, "numbers a double holds") from None
    return out


def _texts(column: Column, feature: Feature, name: str) -> list[str | None]:
    """Canonical strings, None for null: strings as is, integers in decimal, booleans true/false."""
    if isinstance(column, np.ndarray):
        kind = column.dtype.kind
        if kind in "iu":
            return [str(v) for v in column.tolist()]
        if kind == "b":
            return ["true" if v else "false" for v in column.tolist()]
        if kind not in "UOf":
            raise FeatureError(
                f"feature '{feature.name}': column '{name}' has dtype {column.dtype}; "
                "it needs strings, integers or booleans"
            )
        column = column.tolist()
    out: list[str | None] = []
    for index, value in enumerate(column):
        if value is None or isinstance(value, str):
            out.append(value)
        elif isinstance(value, bool | np.bool_):
            out.append("true" if value else "false")
        elif isinstance(value, int | np.integer):
            out.append(str(int(value)))
        elif isinstance(value, float | np.floating | Decimal):
            if math.isnan(value):  # how NumPy and pandas spell a missing value
                out.append(None)
            elif math.isfinite(value) and value == int(value):
                out.append(str(int(value)))
            else:
                raise _bad(feature, name, index, value, "strings, integers or booleans (bucket reals with piecewise)")
        else:
            raise _bad(feature, name, index, value, "strings, integers or booleans")
    return out
