"""Declarations and validate-time rules of the five feature functions (shared/DESIGN.md)."""

from __future__ import annotations

import graphlib
import itertools
from collections.abc import Mapping
from dataclasses import dataclass

from weiflow.registry import AttrDecl, DeclaresAttrs
from weiflow.spec.model import Element, ModuleSpec
from weiflow.spec.report import Reporter, closest, did_you_mean

__all__ = ["FUNCTIONS", "INT64_MAX", "FeatureFunction", "check_features", "max_cardinality"]

INT64_MAX = 2**63 - 1


@dataclass(frozen=True)
class FeatureFunction(DeclaresAttrs):
    name: str
    attrs: tuple[AttrDecl, ...]
    categorical: bool
    help: str


_SOURCE = AttrDecl("source", required=True, help="the raw input column")

FUNCTIONS: Mapping[str, FeatureFunction] = {
    f.name: f
    for f in (
        FeatureFunction(
            "piecewise",
            (
                _SOURCE,
                AttrDecl("boundaries", "floats", required=True, help="strictly increasing b1<b2<...<bn"),
            ),
            categorical=True,
            help="bucket id = number of boundaries <= x (0..n); null or NaN -> n+1",
        ),
        FeatureFunction(
            "pickcat",
            (
                _SOURCE,
                AttrDecl("values", "strings", help="a fixed vocabulary"),
                AttrDecl("vocab-file", help="a file with one vocabulary entry per line"),
                AttrDecl("top", "int", min=1, help="learn the N most frequent values"),
                AttrDecl("min-count", "int", min=1, help="learn values seen at least this often"),
            ),
            categorical=True,
            help="id = 1-based position in the vocabulary; unknown or null -> 0",
        ),
        FeatureFunction(
            "normalize",
            (_SOURCE, AttrDecl("method", "enum", default="zscore", choices=("minmax", "zscore", "log1p"))),
            categorical=False,
            help="scale a numeric column with fitted statistics; null -> 0.0",
        ),
        FeatureFunction(
            "descartes",
            (AttrDecl("sources", "strings", required=True, min_items=2, help="categorical features to cross"),),
            categorical=True,
            help="mixed-radix cross of categorical ids, dense in [0, c1*c2*...)",
        ),
        FeatureFunction(
            "combinehash",
            (
                AttrDecl("sources", "strings", required=True, help="raw columns to hash together"),
                AttrDecl("buckets", "int", required=True, min=1, max=INT64_MAX),
            ),
            categorical=True,
            help="stable 64-bit hash of the sources' values modulo buckets",
        ),
    )
}

_STRUCTURAL = ("name", "fn")


def _typed(feature: Element, fn: FeatureFunction, report: Reporter) -> dict[str, object]:
    """Type-check one feature's attributes; return the ones that parsed (templated ones skipped)."""
    values: dict[str, object] = {}
    for key, attr in feature.attrs.items():
        if key in _STRUCTURAL:
            continue
        decl = fn.attr(key)
        if decl is None:
            known = [a.name for a in fn.attrs]
            report.error(
                attr.pos,
                f"feature '{feature.get('name')}': {fn.name} has no attribute '{key}'",
                did_you_mean(key, known),
            )
            continue
        if "${" in attr.value:
            continue
        try:
            values[key] = decl.parse(attr.value)
        except ValueError as exc:
            report.error(attr.pos, f"feature '{feature.get('name')}': {key}: {exc}")
    names = [a.name for a in fn.attrs]
    for decl in fn.attrs:
        if (
            decl.required
            and decl.name not in feature.attrs
            and not any(
                closest(key, names) == decl.name for key in feature.attrs if key not in names and key not in _STRUCTURAL
            )
        ):
            report.error(
                feature.pos,
                f"feature '{feature.get('name')}': {fn.name} needs attribute '{decl.name}'",
                f'add {decl.name}="..." ({decl.describe()})',
            )
    return values


def max_cardinality(fn: str, values: Mapping[str, object], cards: Mapping[str, int | None]) -> int | None:
    """The largest id + 1 a categorical feature can produce, or None when only fitting knows."""
    if fn == "piecewise":
        boundaries = values.get("boundaries")
        return len(boundaries) + 2 if isinstance(boundaries, list) else None
    if fn == "pickcat":
        vocabulary = values.get("values")
        if isinstance(vocabulary, list):
            return len(set(vocabulary)) + 1
        top = values.get("top")
        return top + 1 if isinstance(top, int) else None
    if fn == "combinehash":
        buckets = values.get("buckets")
        return buckets if isinstance(buckets, int) else None
    if fn == "descartes":
        product = 1
        sources = values.get("sources")
        if not isinstance(sources, list):
            return None
        for source in sources:
            card = cards.get(source)
            if card is None:
                return None
            product *= card
        return product
    return None


def check_features(module: ModuleSpec, report: Reporter) -> None:
    """The DESIGN rules a schema cannot express, for one ``features`` module."""
    features = [c for c in module.children if c.tag == "feature"]
    if not features:
        report.error(
            module.element.pos,
            f"module '{module.id}': a features module needs at least one <feature>",
            'add <feature name="..." fn="piecewise|pickcat|normalize|descartes|combinehash" .../>',
        )
        return
    by_name: dict[str, Element] = {}
    typed: dict[str, dict[str, object]] = {}
    for feature in features:
        name = feature.get("name") or ""
        fn_name = feature.get("fn") or ""
        if not name or not fn_name:
            continue  # the schema reported the missing attribute
        if name in by_name:
            report.error(
                feature.pos_of("name"),
                f"duplicate feature name '{name}' in module '{module.id}'",
                f"first defined on line {by_name[name].pos.line}",
            )
            continue
        by_name[name] = feature
        fn = FUNCTIONS.get(fn_name)
        if fn is None:
            report.error(
                feature.pos_of("fn"),
                f"feature '{name}': unknown feature function '{fn_name}'",
                did_you_mean(fn_name, FUNCTIONS),
            )
            continue
        values = _typed(feature, fn, report)
        typed[name] = values
        _check_function_rules(name, fn, feature, values, report)

    _check_descartes(by_name, typed, report)


def _check_function_rules(
    name: str, fn: FeatureFunction, feature: Element, values: dict[str, object], report: Reporter
) -> None:
    if fn.name == "piecewise":
        boundaries = values.get("boundaries")
        if isinstance(boundaries, list):
            for before, after in itertools.pairwise(boundaries):
                if not after > before:
                    report.error(
                        feature.pos_of("boundaries"),
                        f"feature '{name}': boundaries must be strictly increasing, but {after:g} follows {before:g}",
                        "sort the boundaries and remove repeated values",
                    )
                    break
    elif fn.name == "pickcat":
        given: list[str] = [key for key in ("values", "vocab-file") if key in feature.attrs]
        learned: list[str] = [key for key in ("top", "min-count") if key in feature.attrs]
        if len(given) > 1 or (given and learned):
            clash = ", ".join(given + learned)
            report.error(
                feature.pos,
                f"feature '{name}': pickcat takes a vocabulary from one place, got {clash}",
                "use values=, or vocab-file=, or learn it with top= and/or min-count=",
            )
        vocabulary = values.get("values")
        if isinstance(vocabulary, list):
            seen: set[str] = set()
            for value in vocabulary:
                if value in seen:
                    report.error(
                        feature.pos_of("values"),
                        f"feature '{name}': value '{value}' is listed twice",
                        "each vocabulary value gets one id; remove the repeat",
                    )
                    break
                seen.add(value)


def _check_descartes(by_name: dict[str, Element], typed: dict[str, dict[str, object]], report: Reporter) -> None:
    crosses: dict[str, list[str]] = {}
    for name, feature in by_name.items():
        sources = typed.get(name, {}).get("sources")
        if feature.get("fn") != "descartes" or not isinstance(sources, list):
            continue
        ok = True
        repeated = sorted({s for s in sources if sources.count(s) > 1})
        if repeated:
            report.error(
                feature.pos_of("sources"),
                f"feature '{name}': source '{repeated[0]}' is crossed with itself",
                "list each source once",
            )
            ok = False
        for source in sources:
            if source == name:
                report.error(
                    feature.pos_of("sources"), f"feature '{name}': descartes cannot cross a feature with itself"
                )
                ok = False
            elif source not in by_name:
                hint = did_you_mean(source, [n for n in by_name if n != name]) or ""
                report.error(
                    feature.pos_of("sources"),
                    f"feature '{name}': unknown source '{source}': "
                    "descartes crosses features defined in the same module",
                    (hint + " " if hint else "")
                    + "turn a raw column into a categorical feature first (piecewise, pickcat or combinehash)",
                )
                ok = False
            else:
                source_fn = FUNCTIONS.get(by_name[source].get("fn") or "")
                if source_fn is not None and not source_fn.categorical:
                    report.error(
                        feature.pos_of("sources"),
                        f"feature '{name}': source '{source}' is not categorical ({source_fn.name} yields real values)",
                        "cross piecewise, pickcat, combinehash or descartes features",
                    )
                    ok = False
        if ok:
            crosses[name] = [str(s) for s in sources]

    # Crosses of crosses: order them so each cardinality is known before it is multiplied
    # (iteratively: a long chain must not exhaust the stack).
    sorter: graphlib.TopologicalSorter[str] = graphlib.TopologicalSorter()
    for name, sources in crosses.items():
        sorter.add(name, *sources)
    try:
        order = list(sorter.static_order())
    except graphlib.CycleError as exc:
        cycle = list(exc.args[1])
        first = by_name[cycle[0]]
        report.error(
            first.pos_of("sources"),
            f"feature '{cycle[0]}': descartes sources form a cycle: " + " -> ".join(reversed(cycle)),
        )
        return
    cards: dict[str, int | None] = {}
    for name in order:
        fn = by_name[name].get("fn") or ""
        cards[name] = max_cardinality(fn, typed.get(name, {}), cards)
        if name in crosses and (cards[name] or 0) > INT64_MAX:
            report.error(
                by_name[name].pos_of("sources"),
                f"feature '{name}': the cross has {cards[name]:,} ids, more than a 64-bit id holds",
                "lower the sources' cardinalities, or use combinehash with buckets=",
            )
            cards[name] = None  # reported once; crosses built on it are not reported again
