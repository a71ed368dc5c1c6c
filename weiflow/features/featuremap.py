"""The feature-map artifact: what a features module computes, with its fitted parts.

A :class:`FeatureMap` is declared from a features module's ``<feature>`` elements
(:meth:`FeatureMap.declare`), fitted in Spark (vocabularies, statistics), saved as JSON next
to the model (:meth:`FeatureMap.to_json`), and read back by the prediction service
(:meth:`FeatureMap.from_json`). Both evaluators (the Spark one in the Spark engine, the
online one in :mod:`weiflow.features.online`) read their parameters from here, so the
rules that decide an output (which statistics count as degenerate, the order of crosses,
the canonical spelling of values) live in one place.
"""

from __future__ import annotations

import graphlib
import itertools
import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal
from urllib.parse import unquote, urlparse

from weiflow.errors import WeiflowError
from weiflow.features.functions import FUNCTIONS, INT64_MAX, check_features
from weiflow.spec.model import Attr, Element, ModuleSpec, Pos
from weiflow.spec.report import Reporter

__all__ = [
    "FEATURE_MAP_SCHEMA",
    "Combinehash",
    "Descartes",
    "Feature",
    "FeatureError",
    "FeatureMap",
    "Normalize",
    "NormalizeStats",
    "Pickcat",
    "Piecewise",
    "missing_column",
    "raw_sources",
    "read_vocab_file",
]

FEATURE_MAP_SCHEMA = "weiflow.featuremap/1"

NormalizeMethod = Literal["minmax", "zscore", "log1p"]


class FeatureError(WeiflowError):
    """A feature cannot be computed: a missing or mistyped column, a bad vocabulary, a bad artifact."""

    def __init__(self, message: str, hint: str | None = None) -> None:
        self.message = message
        self.hint = hint
        super().__init__(message + (f"\n    hint: {hint}" if hint else ""))


def _finite_or_none(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


@dataclass(frozen=True)
class Piecewise:
    """id = number of boundaries <= x (0..n); null or NaN -> n+1."""

    fn: ClassVar[str] = "piecewise"
    categorical: ClassVar[bool] = True
    name: str
    source: str
    boundaries: tuple[float, ...]

    def __post_init__(self) -> None:
        if not self.boundaries or not all(math.isfinite(b) for b in self.boundaries):
            raise FeatureError(f"feature '{self.name}': piecewise needs one or more finite boundaries")
        if any(after <= before for before, after in itertools.pairwise(self.boundaries)):
            raise FeatureError(f"feature '{self.name}': boundaries must be strictly increasing")

    @property
    def fitted(self) -> bool:
        return True

    @property
    def null_id(self) -> int:
        return len(self.boundaries) + 1


@dataclass(frozen=True)
class Pickcat:
    """id = 1-based position of the value's canonical string in ``vocabulary``; unknown or null -> 0.

    The vocabulary comes from ``values=`` (set when declared), from ``vocab_file`` (read when
    fitted) or is learned when fitted (``top`` and/or ``min_count`` set; ``min_count`` is 1
    when neither was written).
    """

    fn: ClassVar[str] = "pickcat"
    categorical: ClassVar[bool] = True
    name: str
    source: str
    vocabulary: tuple[str, ...] | None = None
    vocab_file: str | None = None
    top: int | None = None
    min_count: int | None = None

    def __post_init__(self) -> None:
        if self.vocabulary is not None and len(set(self.vocabulary)) != len(self.vocabulary):
            raise FeatureError(f"feature '{self.name}': the vocabulary lists a value twice")

    @property
    def learned(self) -> bool:
        return self.top is not None or self.min_count is not None

    @property
    def fitted(self) -> bool:
        return self.vocabulary is not None


@dataclass(frozen=True)
class NormalizeStats:
    """Statistics of a column's finite non-null values; None where there were none (or they overflowed)."""

    count: int
    mean: float | None = None
    std: float | None = None
    min: float | None = None
    max: float | None = None

    @classmethod
    def of(
        cls, count: int, mean: float | None, std: float | None, low: float | None, high: float | None
    ) -> NormalizeStats:
        if count == 0:
            return cls(0)
        return cls(count, _finite_or_none(mean), _finite_or_none(std), _finite_or_none(low), _finite_or_none(high))


@dataclass(frozen=True)
class Normalize:
    """A real value: zscore (x - mean) / std, minmax (x - min) / (max - min), or log1p(max(x, 0)).

    Null, NaN and +-inf give 0.0; so does every input when the statistics are degenerate
    (no finite values, std == 0, max == min, or an overflowed range): see :meth:`scaling`.
    """

    fn: ClassVar[str] = "normalize"
    categorical: ClassVar[bool] = False
    name: str
    source: str
    method: NormalizeMethod = "zscore"
    stats: NormalizeStats | None = None

    def __post_init__(self) -> None:
        if self.method not in ("minmax", "zscore", "log1p"):
            raise FeatureError(f"feature '{self.name}': unknown normalize method '{self.method}'")

    @property
    def fitted(self) -> bool:
        return self.stats is not None

    def scaling(self) -> tuple[float, float] | None:
        """(shift, scale) with output (x - shift) / scale for finite x, or None: every output is 0.0.

        Only for zscore and minmax; both evaluators compute exactly this, in this order.
        """
        stats = self.stats
        if stats is None:
            raise FeatureError(f"feature '{self.name}': normalize is not fitted")
        if self.method == "zscore":
            if stats.mean is None or stats.std is None or not stats.std > 0:
                return None
            return stats.mean, stats.std
        if self.method == "minmax":
            if stats.min is None or stats.max is None:
                return None
            scale = stats.max - stats.min
            return (stats.min, scale) if scale > 0 and math.isfinite(scale) else None
        raise FeatureError(f"feature '{self.name}': {self.method} has no scaling")


@dataclass(frozen=True)
class Descartes:
    """Mixed-radix cross of categorical features: ((a1*c2 + a2)*c3 + a3)..., dense in [0, c1*c2*...)."""

    fn: ClassVar[str] = "descartes"
    categorical: ClassVar[bool] = True
    name: str
    sources: tuple[str, ...]

    @property
    def fitted(self) -> bool:
        return True


@dataclass(frozen=True)
class Combinehash:
    """pmod(xxhash64(canonical strings of the sources, seed 42, nulls skipped), buckets)."""

    fn: ClassVar[str] = "combinehash"
    categorical: ClassVar[bool] = True
    SEED: ClassVar[int] = 42
    name: str
    sources: tuple[str, ...]
    buckets: int

    def __post_init__(self) -> None:
        if not 1 <= self.buckets <= INT64_MAX:
            raise FeatureError(f"feature '{self.name}': buckets must be between 1 and {INT64_MAX}")

    @property
    def fitted(self) -> bool:
        return True


Feature = Piecewise | Pickcat | Normalize | Descartes | Combinehash


def raw_sources(feature: Feature) -> tuple[str, ...]:
    """The raw input columns a feature reads (a descartes reads features, not columns)."""
    if isinstance(feature, Descartes):
        return ()
    if isinstance(feature, Combinehash):
        return feature.sources
    return (feature.source,)


@dataclass(frozen=True)
class FeatureMap:
    """A features module's output columns: kept columns, the label, and the features in order."""

    label: str | None
    keep: tuple[str, ...]
    features: tuple[Feature, ...]

    def __post_init__(self) -> None:
        names: set[str] = set()
        for feature in self.features:
            if feature.name in names:
                raise FeatureError(f"feature '{feature.name}' is defined twice")
            names.add(feature.name)
        for column in self.passthrough:
            if column in names:
                raise FeatureError(
                    f"feature '{column}' has the name of a column the module keeps",
                    "rename the feature or drop the column from keep=/label=",
                )
        self.order()  # sources exist and are categorical, no cycle
        self.cardinalities()  # a fitted cross fits in 64 bits

    # -- structure -----------------------------------------------------------------

    def feature(self, name: str) -> Feature:
        for feature in self.features:
            if feature.name == name:
                return feature
        raise KeyError(name)

    @property
    def passthrough(self) -> tuple[str, ...]:
        """The kept columns, then the label unless it is kept already; each once."""
        return tuple(dict.fromkeys([*self.keep, *([self.label] if self.label else [])]))

    @property
    def fitted(self) -> bool:
        return all(feature.fitted for feature in self.features)

    def require_fitted(self) -> None:
        unfitted = [f.name for f in self.features if not f.fitted]
        if unfitted:
            raise FeatureError(
                "the feature map is not fitted: " + ", ".join(unfitted),
                "fit it on the training data first (the Spark engine's fit_feature_map)",
            )

    def order(self) -> list[Feature]:
        """The features, each after the features it crosses."""
        by_name = {f.name: f for f in self.features}
        sorter: graphlib.TopologicalSorter[str] = graphlib.TopologicalSorter()
        for feature in self.features:
            sorter.add(feature.name)
            if isinstance(feature, Descartes):
                for source in feature.sources:
                    found = by_name.get(source)
                    if found is None or not found.categorical:
                        what = "unknown" if found is None else f"not categorical ({found.fn})"
                        raise FeatureError(f"feature '{feature.name}': source '{source}' is {what}")
                sorter.add(feature.name, *feature.sources)
        try:
            return [by_name[name] for name in sorter.static_order()]
        except graphlib.CycleError as exc:
            raise FeatureError("descartes sources form a cycle: " + " -> ".join(exc.args[1])) from None

    def cardinalities(self) -> dict[str, int | None]:
        """Each categorical feature's number of ids (None until fitted), in dependency order."""
        cards: dict[str, int | None] = {}
        for feature in self.order():
            card: int | None = None
            if isinstance(feature, Piecewise):
                card = len(feature.boundaries) + 2
            elif isinstance(feature, Pickcat):
                card = None if feature.vocabulary is None else len(feature.vocabulary) + 1
            elif isinstance(feature, Combinehash):
                card = feature.buckets
            elif isinstance(feature, Descartes):
                product: int | None = 1
                for source in feature.sources:
                    source_card = cards[source]
                    product = None if product is None or source_card is None else product * source_card
                if product is not None and product > INT64_MAX:
                    raise FeatureError(
                        f"feature '{feature.name}': the cross has {product:,} ids, more than a 64-bit id holds",
                        "lower the sources' cardinalities (top= on a pickcat), or use combinehash with buckets=",
                    )
                card = product
            else:
                continue
            cards[feature.name] = card
        return cards

    # -- declaration ---------------------------------------------------------------

    @classmethod
    def declare(cls, features: list[dict[str, str]], label: str | None, keep: list[str]) -> FeatureMap:
        """The unfitted map of a features module, from its ``<feature>`` attributes (references resolved).

        Runs the same checks as ``weiflow validate``, so a value that only a param made bad
        (``boundaries="${b}"``) is reported here, before any data is read.
        """
        module = _as_module(features)
        report = Reporter("<features>")
        check_features(module, report)
        errors = [d for d in report.diagnostics if d.is_error]
        if errors:
            raise FeatureError(
                "invalid features: " + "; ".join(d.message + (f" ({d.hint})" if d.hint else "") for d in errors)
            )
        declared: list[Feature] = []
        for attrs in features:
            name, fn_name = attrs["name"], attrs["fn"]
            fn = FUNCTIONS[fn_name]
            values: dict[str, Any] = {}
            for key, text in attrs.items():
                if key in ("name", "fn"):
                    continue
                decl = fn.attr(key)
                assert decl is not None  # check_features reported unknown attributes
                try:
                    values[key] = decl.parse(text)
                except ValueError as exc:  # a reference left unresolved
                    raise FeatureError(f"feature '{name}': {key}='{text}': {exc}") from None
            declared.append(_declared(name, fn_name, values))
        return cls(label, tuple(keep), tuple(declared))

    # -- the artifact --------------------------------------------------------------

    def to_json(self) -> str:
        """The artifact: stable key order, exact floats (shortest repr), non-ASCII kept as is."""
        cards = self.cardinalities()
        document = {
            "schema": FEATURE_MAP_SCHEMA,
            "label": self.label,
            "keep": list(self.keep),
            "features": [_feature_json(f, cards.get(f.name)) for f in self.features],
        }
        return json.dumps(document, indent=1, ensure_ascii=False, allow_nan=False) + "\n"

    @classmethod
    def from_json(cls, text: str, source: str = "<feature map>") -> FeatureMap:
        """Read an artifact written by :meth:`to_json`; errors name ``source``."""
        try:
            document = json.loads(text)
        except ValueError as exc:
            raise FeatureError(f"{source}: not a feature map (invalid JSON: {exc})") from None
        reader = _Reader(source)
        document = reader.obj(document, "the document")
        schema = document.get("schema")
        if schema != FEATURE_MAP_SCHEMA:
            raise FeatureError(
                f"{source}: feature map schema {schema!r} is not supported; this WeiFlow reads {FEATURE_MAP_SCHEMA}",
                "re-fit the features with this WeiFlow version, or serve the model with the version that wrote it",
            )
        label = reader.opt_str(document, "label", "the document")
        keep = reader.strs(document.get("keep", []), "keep")
        items = document.get("features")
        if not isinstance(items, list):
            raise FeatureError(f"{source}: 'features' must be a list")
        parsed = [reader.feature(item, i) for i, item in enumerate(items)]
        try:
            fmap = cls(label, tuple(keep), tuple(feature for feature, _ in parsed))
            cards = fmap.cardinalities()
        except FeatureError as exc:
            raise FeatureError(f"{source}: {exc.message}", exc.hint) from None
        for feature, written in parsed:
            if written is not None and written != cards.get(feature.name):
                raise FeatureError(
                    f"{source}: feature '{feature.name}': cardinality {written} does not match its parameters "
                    f"({cards.get(feature.name)}); the artifact was edited or is damaged"
                )
        return fmap


def read_vocab_file(path: str, feature: str) -> tuple[str, ...]:
    """A vocabulary file: one value per line, surrounding whitespace stripped, blank lines ignored.

    ``path`` is absolute or a ``file://`` URI: a relative path would depend on the working
    directory of whichever process fits the map.
    """
    if path.startswith("file:"):
        parsed = urlparse(path)
        if parsed.netloc not in ("", "localhost"):
            raise FeatureError(f"feature '{feature}': vocab-file '{path}' names a remote host; use a local file")
        local = Path(unquote(parsed.path))
    else:
        if "://" in path:
            raise FeatureError(f"feature '{feature}': vocab-file '{path}': only local files are supported")
        local = Path(path)
    if not local.is_absolute():
        raise FeatureError(
            f"feature '{feature}': vocab-file '{path}' is a relative path",
            "give an absolute path or a file:// URI (a param such as ${vocab_dir} helps)",
        )
    try:
        text = local.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise FeatureError(f"feature '{feature}': cannot read vocab-file '{path}': {exc}") from None
    vocabulary: list[str] = []
    first_line: dict[str, int] = {}
    for number, line in enumerate(text.splitlines(), 1):
        value = line.strip()
        if not value:
            continue
        if value in first_line:
            raise FeatureError(
                f"feature '{feature}': vocab-file '{path}' line {number}: '{value}' is listed twice "
                f"(first on line {first_line[value]})",
                "each vocabulary value gets one id; remove the repeat",
            )
        first_line[value] = number
        vocabulary.append(value)
    return tuple(vocabulary)


# -- declaring ---------------------------------------------------------------------


class _NoPos:
    """Positions for check_features on attributes that come from a dict, not a file."""

    pos = Pos(1, 1)

    def attr_pos(self, name: str) -> Pos:
        return self.pos


def _as_module(features: list[dict[str, str]]) -> ModuleSpec:
    locator = _NoPos()
    children = [
        Element("feature", locator, {key: Attr(value, locator.pos) for key, value in attrs.items()})
        for attrs in features
    ]
    return ModuleSpec("features", "features", [], Element("module", locator, children=children))


def _declared(name: str, fn: str, values: Mapping[str, Any]) -> Feature:
    if fn == "piecewise":
        return Piecewise(name, values["source"], tuple(float(b) for b in values["boundaries"]))
    if fn == "pickcat":
        top, min_count = values.get("top"), values.get("min-count")
        if "values" in values:
            return Pickcat(name, values["source"], vocabulary=tuple(values["values"]))
        if "vocab-file" in values:
            return Pickcat(name, values["source"], vocab_file=values["vocab-file"])
        return Pickcat(name, values["source"], top=top, min_count=1 if top is None and min_count is None else min_count)
    if fn == "normalize":
        return Normalize(name, values["source"], values.get("method", "zscore"))
    if fn == "descartes":
        return Descartes(name, tuple(values["sources"]))
    if fn == "combinehash":
        return Combinehash(name, tuple(values["sources"]), values["buckets"])
    raise FeatureError(f"feature '{name}': unknown feature function '{fn}'")


# -- the artifact's JSON -----------------------------------------------------------


def _feature_json(feature: Feature, cardinality: int | None) -> dict[str, Any]:
    out: dict[str, Any] = {"name": feature.name, "fn": feature.fn}
    if isinstance(feature, Piecewise):
        out |= {"source": feature.source, "boundaries": list(feature.boundaries)}
    elif isinstance(feature, Pickcat):
        out["source"] = feature.source
        for key, value in (("vocab-file", feature.vocab_file), ("top", feature.top), ("min-count", feature.min_count)):
            if value is not None:
                out[key] = value
        out["vocabulary"] = None if feature.vocabulary is None else list(feature.vocabulary)
    elif isinstance(feature, Normalize):
        stats = feature.stats
        out |= {
            "source": feature.source,
            "method": feature.method,
            "stats": None
            if stats is None
            else {"count": stats.count, "mean": stats.mean, "std": stats.std, "min": stats.min, "max": stats.max},
        }
    elif isinstance(feature, Descartes):
        out["sources"] = list(feature.sources)
    else:
        out |= {"sources": list(feature.sources), "buckets": feature.buckets}
    if feature.categorical:
        out["cardinality"] = cardinality
    return out


class _Reader:
    """Typed access to the artifact's JSON, with errors that name the file and the field."""

    def __init__(self, source: str) -> None:
        self.source = source

    def fail(self, where: str, message: str) -> FeatureError:
        return FeatureError(f"{self.source}: {where}: {message}")

    def obj(self, value: object, where: str) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise self.fail(where, "expected an object")
        return value

    def str_(self, obj: Mapping[str, Any], key: str, where: str) -> str:
        value = obj.get(key)
        if not isinstance(value, str) or not value:
            raise self.fail(where, f"'{key}' must be a non-empty string")
        return value

    def opt_str(self, obj: Mapping[str, Any], key: str, where: str) -> str | None:
        return None if obj.get(key) is None else self.str_(obj, key, where)

    def strs(self, value: object, where: str) -> list[str]:
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise self.fail(where, "expected a list of strings")
        return value

    def opt_int(self, obj: Mapping[str, Any], key: str, where: str) -> int | None:
        value = obj.get(key)
        if value is None:
            return None
        if not isinstance(value, int) or isinstance(value, bool):
            raise self.fail(where, f"'{key}' must be a whole number")
        return value

    def number(self, value: object, where: str) -> float | None:
        if value is None:
            return None
        if not isinstance(value, int | float) or isinstance(value, bool):
            raise self.fail(where, "expected a number")
        return float(value)

    def feature(self, item: object, index: int) -> tuple[Feature, int | None]:
        obj = self.obj(item, f"features[{index}]")
        name = self.str_(obj, "name", f"features[{index}]")
        where = f"feature '{name}'"
        fn = obj.get("fn")
        cardinality = self.opt_int(obj, "cardinality", where)
        try:
            return self._feature(obj, name, fn, where), cardinality
        except FeatureError as exc:
            if exc.message.startswith(f"{self.source}: "):
                raise
            raise FeatureError(f"{self.source}: {exc.message}", exc.hint) from None

    def _feature(self, obj: Mapping[str, Any], name: str, fn: object, where: str) -> Feature:
        if fn == "piecewise":
            boundaries = obj.get("boundaries")
            if not isinstance(boundaries, list) or not all(
                isinstance(b, int | float) and not isinstance(b, bool) for b in boundaries
            ):
                raise self.fail(where, "'boundaries' must be a list of numbers")
            return Piecewise(name, self.str_(obj, "source", where), tuple(float(b) for b in boundaries))
        if fn == "pickcat":
            vocabulary = obj.get("vocabulary")
            return Pickcat(
                name,
                self.str_(obj, "source", where),
                None if vocabulary is None else tuple(self.strs(vocabulary, f"{where}: vocabulary")),
                self.opt_str(obj, "vocab-file", where),
                self.opt_int(obj, "top", where),
                self.opt_int(obj, "min-count", where),
            )
        if fn == "normalize":
            method = obj.get("method")
            if method not in ("minmax", "zscore", "log1p"):
                raise self.fail(where, f"unknown normalize method {method!r}")
            raw = obj.get("stats")
            stats = None
            if raw is not None:
                raw = self.obj(raw, f"{where}: stats")
                count = self.opt_int(raw, "count", f"{where}: stats")
                if count is None or count < 0:
                    raise self.fail(f"{where}: stats", "'count' must be a whole number >= 0")
                stats = NormalizeStats.of(
                    count, *(self.number(raw.get(k), f"{where}: stats.{k}") for k in ("mean", "std", "min", "max"))
                )
            return Normalize(name, self.str_(obj, "source", where), method, stats)
        if fn == "descartes":
            return Descartes(name, tuple(self.strs(obj.get("sources"), f"{where}: sources")))
        if fn == "combinehash":
            buckets = self.opt_int(obj, "buckets", where)
            if buckets is None:
                raise self.fail(where, "'buckets' is missing")
            return Combinehash(name, tuple(self.strs(obj.get("sources"), f"{where}: sources")), buckets)
        raise self.fail(where, f"unknown feature function {fn!r}; known: {', '.join(FUNCTIONS)}")


def _describe_columns(columns: Iterable[str]) -> str:
    shown = sorted(columns)
    if not shown:
        return "no columns"
    more = f" and {len(shown) - 50} more" if len(shown) > 50 else ""
    return ", ".join(shown[:50]) + more


def missing_column(owner: str, column: str, columns: Iterable[str]) -> FeatureError:
    """The error both evaluators raise for a column the input lacks; ``owner`` is "feature 'x'" or "keep"."""
    return FeatureError(
        f"{owner}: column '{column}' is missing; the input has {_describe_columns(columns)}",
        "column names are case-sensitive; fix the name or add the column upstream",
    )
