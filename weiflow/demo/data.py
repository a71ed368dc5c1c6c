"""Raw feed impressions from a known generative model, for the demo (``weiflow demo data``).

Every row is one impression of an item to a user, with the raw columns ``xml_specs/feed_ctr.xml``
reads (``uid``, ``item_id``, ``age``, ``gender``, ``city``, ``hist_ctr``, ``page_views``, ``ts``,
``label``) and ``device``. Whether it was clicked is drawn from a logistic model whose logit is a
sum of independent parts, each of which one feature function is needed to learn:

====================  ==========================================  =========================
part                  how it enters the logit                     learned through
====================  ==========================================  =========================
``age``               a non-monotone step per age bucket           piecewise (18,25,35,50)
``gender``            one value per gender; missing is its own     pickcat
``city``              one random effect per city                   pickcat
``device``            one value per device                         pickcat
``age_city``          one random effect per (age bucket, city)     descartes(age_b, city)
``user``              one random effect per user                   combinehash(uid)
``item``              one random effect per item                   combinehash(item_id)
``hist_ctr``          linear in a heavy-tailed CTR (Beta)          normalize zscore
``page_views``        linear in log1p of log-normal page views     normalize log1p
noise                 a normal draw per impression, never stored   nothing: it is the noise
====================  ==========================================  =========================

Because every part but the noise is known, so is each row's click probability given what a
model can see (the noise integrated out), and with it the best AUC any model can reach on these
rows: the Bayes-optimal AUC. The parameters (:class:`FeedModel`) put it near 0.78.

The users, items and all effects (the "world") depend on the seed only; the impressions on the
seed and the day. Two days drawn with one seed are two days of the same feed, so a model trained
on one day is right on the next. docs/demo-data.md describes the model and its figures.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from datetime import UTC, date, datetime
from typing import Any

import numpy as np
import numpy.typing as npt

from weiflow.demo.metrics import auc_standard_error, log_loss, roc_auc

__all__ = [
    "COMPONENT_FEATURES",
    "DEFAULT_HOLDOUT_FRACTION",
    "DEFAULT_ROWS",
    "GENERATOR_REPORT",
    "REPORT_SCHEMA",
    "Categorical",
    "FeedModel",
    "Impressions",
    "arrow_table",
    "generate",
    "report",
    "write_impressions",
]

# About 200 impressions per user (2,000 users): enough clicks per user and item for their effects to be
# learned to within 1-2% of the Bayes-optimal AUC. At 200,000 rows a user's ~10 clicks leave so much
# estimation noise that the best model measured stopped at 98.1% (docs/demo-data.md).
DEFAULT_ROWS = 400_000
# feed_ctr.xml splits its samples 0.9/0.1: the same share of rows is held out here.
DEFAULT_HOLDOUT_FRACTION = 0.1
GENERATOR_REPORT = "_generator.json"  # a leading '_': Spark, Hadoop and dataset_size() skip it
REPORT_SCHEMA = "weiflow.demo.data/1"

# Which feature function of feed_ctr.xml (or its demo twin) each part of the logit needs.
COMPONENT_FEATURES: dict[str, str] = {
    "age": "piecewise(age)",
    "gender": "pickcat(gender)",
    "city": "pickcat(city)",
    "device": "pickcat(device)",
    "age_city": "descartes(age_b, city)",
    "user": "combinehash(uid)",
    "item": "combinehash(item_id)",
    "hist_ctr": "normalize(hist_ctr, zscore)",
    "page_views": "normalize(page_views, log1p)",
}

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]

_MS_PER_DAY = 86_400_000
# Gauss-Hermite nodes that integrate the per-impression noise out of the click probability;
# 16 are exact to ~1e-9 for a logistic curve under noise with a standard deviation below 1.
_HERMITE_NODES = 16
# Separate random streams, so that a change in one (say, the holdout) never moves the others.
_WORLD, _IMPRESSIONS, _HOLDOUT = 0, 1, 2


@dataclass(frozen=True)
class FeedModel:
    """The generative model's parameters. Effects are on the logit scale; shares sum to 1."""

    users: int = 2_000
    items: int = 400
    cities: int = 40
    # The same boundaries as feed_ctr.xml's age_b, so that the steps are learnable exactly.
    age_boundaries: tuple[int, ...] = (18, 25, 35, 50)
    # One effect per bucket (<18, 18-24, 25-34, 35-49, 50+): up then down, so no slope fits it.
    age_effects: tuple[float, ...] = (-0.8, 0.45, 0.2, -0.25, -0.7)
    age_mean: float = 34.0
    age_sd: float = 12.0
    age_missing_share: float = 0.03
    age_missing_effect: float = -0.35
    genders: tuple[str, ...] = ("f", "m")
    gender_shares: tuple[float, ...] = (0.48, 0.52)
    gender_effects: tuple[float, ...] = (0.3, -0.25)
    gender_missing_share: float = 0.05  # missing stays 0 (pickcat's unknown id)
    devices: tuple[str, ...] = ("android", "ios", "web")
    device_shares: tuple[float, ...] = (0.55, 0.35, 0.10)
    device_effects: tuple[float, ...] = (0.0, 0.35, -0.6)
    city_effect_sd: float = 0.4
    age_city_effect_sd: float = 0.35
    user_effect_sd: float = 0.45
    item_effect_sd: float = 0.45
    # Popularity falls off as 1 / (rank + offset): a few big cities and hit items, a long tail.
    city_rank_offset: float = 3.0
    item_rank_offset: float = 10.0
    user_activity_sd: float = 0.6  # log-normal activity: some users see many more items
    # hist_ctr ~ Beta(a, b): mostly near 0.05, a long right tail.
    hist_ctr_beta: tuple[float, float] = (0.7, 14.0)
    hist_ctr_effect: float = 0.4  # per standard deviation of hist_ctr
    # page_views = floor(exp(N(mean, sd))): log-normal, a heavy tail.
    page_views_log_mean: float = 2.5
    page_views_log_sd: float = 1.2
    page_views_effect: float = 0.35  # per standard deviation of log1p(page_views)
    noise_sd: float = 0.5
    intercept: float = -2.45

    def parameters(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Categorical:
    """A string column as codes into ``labels``; code -1 is a missing value."""

    codes: IntArray
    labels: tuple[str, ...]

    def values(self) -> list[str | None]:
        """The column as Python values (slow: for tests and small samples)."""
        return [self.labels[code] if code >= 0 else None for code in self.codes.tolist()]


@dataclass(frozen=True)
class Impressions:
    """One day of generated impressions and what the generator knows about each of them."""

    day: date
    seed: int
    model: FeedModel
    uid: Categorical
    item_id: Categorical
    age: IntArray  # -1 where missing
    gender: Categorical
    city: Categorical
    device: Categorical
    hist_ctr: FloatArray
    page_views: IntArray
    ts_ms: IntArray  # milliseconds since the epoch, UTC, ascending
    label: npt.NDArray[np.int32]
    # The logit without the noise: everything a model can know. Its parts, by COMPONENT_FEATURES key.
    logit: FloatArray
    components: dict[str, FloatArray]
    # P(click | what a model can see) = E[sigmoid(logit + noise)] over the noise.
    click_probability: FloatArray
    holdout: BoolArray
    holdout_fraction: float = field(default=DEFAULT_HOLDOUT_FRACTION)

    @property
    def rows(self) -> int:
        return int(self.label.shape[0])


def _sigmoid(x: FloatArray) -> FloatArray:
    return np.asarray(0.5 * (1.0 + np.tanh(0.5 * x)), dtype=np.float64)  # never overflows, unlike 1/(1+exp(-x))


def _noisy_click_probability(logit: FloatArray, noise_sd: float) -> FloatArray:
    """E[sigmoid(logit + e)], e ~ N(0, noise_sd^2), by Gauss-Hermite quadrature."""
    if noise_sd == 0:
        return _sigmoid(logit)
    nodes, weights = np.polynomial.hermite.hermgauss(_HERMITE_NODES)
    total = np.zeros_like(logit)
    for node, weight in zip(nodes, weights, strict=True):
        total += weight * _sigmoid(logit + math.sqrt(2.0) * noise_sd * node)
    return total / math.sqrt(math.pi)


def _rank_weights(count: int, offset: float) -> FloatArray:
    weights = 1.0 / (np.arange(count, dtype=np.float64) + 1.0 + offset)
    return np.asarray(weights / weights.sum(), dtype=np.float64)


def _shares(shares: tuple[float, ...]) -> FloatArray:
    values = np.asarray(shares, dtype=np.float64)
    return np.asarray(values / values.sum(), dtype=np.float64)


@dataclass(frozen=True)
class _World:
    """Users, items, cities and every effect: fixed by the seed, shared by all days."""

    user_activity: FloatArray
    user_age: IntArray
    user_age_bucket: IntArray  # as piecewise numbers them; len(boundaries) + 1 = missing
    user_gender: IntArray
    user_city: IntArray
    user_effect: FloatArray
    item_popularity: FloatArray
    item_effect: FloatArray
    city_effect: FloatArray
    age_city_effect: FloatArray  # [age bucket, city]


def _random_effects(rng: np.random.Generator, shares: FloatArray, sd: float) -> FloatArray:
    """Normal effects, one per level, rescaled to mean 0 and standard deviation ``sd`` over the rows.

    Rescaled because with a few dozen levels of very unequal sizes the raw draws' spread over the
    rows moves by a third from seed to seed, and the Bayes AUC with it.
    """
    raw = rng.normal(0.0, 1.0, shares.shape)
    centred = raw - np.sum(shares * raw)
    return np.asarray(centred * sd / math.sqrt(np.sum(shares * centred**2)), dtype=np.float64)


def _interaction_effects(rng: np.random.Generator, shares: FloatArray, sd: float) -> FloatArray:
    """Normal effects, one per cell of a two-way table, with no main effect left in them.

    Every row and every column of the table averages 0 over the rows, so the interaction adds
    nothing the two main effects already carry: only a cross of the two features learns it.
    """
    effects = rng.normal(0.0, 1.0, shares.shape)
    for axis in (1, 0, 1, 0, 1, 0):  # exact after one pass when the shares are a product of margins; nearly so here
        totals = shares.sum(axis=axis, keepdims=True)
        effects -= (shares * effects).sum(axis=axis, keepdims=True) / np.where(totals > 0, totals, 1.0)
    return np.asarray(effects * sd / math.sqrt(np.sum(shares * effects**2)), dtype=np.float64)


def _world(model: FeedModel, rng: np.random.Generator) -> _World:
    users = model.users
    age = np.clip(np.rint(rng.normal(model.age_mean, model.age_sd, users)), 13, 80).astype(np.int64)
    age[rng.random(users) < model.age_missing_share] = -1
    bucket = np.searchsorted(np.asarray(model.age_boundaries), age, side="right").astype(np.int64)
    bucket[age < 0] = len(model.age_boundaries) + 1
    gender = rng.choice(len(model.genders), users, p=_shares(model.gender_shares)).astype(np.int64)
    gender[rng.random(users) < model.gender_missing_share] = -1
    activity = rng.lognormal(0.0, model.user_activity_sd, users)
    activity /= activity.sum()
    city = rng.choice(model.cities, users, p=_rank_weights(model.cities, model.city_rank_offset))
    item_popularity = _rank_weights(model.items, model.item_rank_offset)
    # The share of impressions in each city and (age bucket, city) cell, as the users' activity sets them.
    city_shares = np.bincount(city, weights=activity, minlength=model.cities).astype(np.float64)
    buckets = len(model.age_boundaries) + 2
    cells = np.bincount(bucket * model.cities + city, weights=activity, minlength=buckets * model.cities)
    cell_shares = cells.astype(np.float64).reshape(buckets, model.cities)
    return _World(
        user_activity=activity,
        user_age=age,
        user_age_bucket=bucket,
        user_gender=gender,
        user_city=city,
        user_effect=_random_effects(rng, activity, model.user_effect_sd),
        item_popularity=item_popularity,
        item_effect=_random_effects(rng, item_popularity, model.item_effect_sd),
        city_effect=_random_effects(rng, city_shares, model.city_effect_sd),
        age_city_effect=_interaction_effects(rng, cell_shares, model.age_city_effect_sd),
    )


def _labels(prefix: str, count: int) -> tuple[str, ...]:
    width = len(str(count - 1))
    return tuple(f"{prefix}{i:0{width}d}" for i in range(count))


def _check(rows: int, holdout_fraction: float, model: FeedModel) -> None:
    if rows <= 0:
        raise ValueError(f"rows must be positive, got {rows}")
    if not 0.0 < holdout_fraction <= 1.0:
        raise ValueError(f"holdout fraction must be in (0, 1], got {holdout_fraction}")
    if len(model.age_effects) != len(model.age_boundaries) + 1:
        raise ValueError("age_effects needs one effect per age bucket: len(age_boundaries) + 1")
    if list(model.age_boundaries) != sorted(model.age_boundaries):
        raise ValueError("age_boundaries must be ascending")
    for name, labels, shares, effects in (
        ("gender", model.genders, model.gender_shares, model.gender_effects),
        ("device", model.devices, model.device_shares, model.device_effects),
    ):
        if not len(labels) == len(shares) == len(effects):
            raise ValueError(f"{name}: labels, shares and effects differ in length")
    if min(model.users, model.items, model.cities) <= 0:
        raise ValueError("users, items and cities must be positive")


def generate(
    rows: int = DEFAULT_ROWS,
    day: date | None = None,
    *,
    seed: int = 0,
    holdout_fraction: float = DEFAULT_HOLDOUT_FRACTION,
    model: FeedModel | None = None,
) -> Impressions:
    """Draw ``rows`` impressions of ``day`` (default: 2026-11-01); the same arguments, the same rows."""
    model = model or FeedModel()
    day = day or date(2026, 11, 1)
    _check(rows, holdout_fraction, model)
    world = _world(model, np.random.default_rng([seed, _WORLD]))
    rng = np.random.default_rng([seed, _IMPRESSIONS, day.toordinal()])

    user = rng.choice(model.users, rows, p=world.user_activity)
    item = rng.choice(model.items, rows, p=world.item_popularity)
    device = rng.choice(len(model.devices), rows, p=_shares(model.device_shares))
    hist_ctr = rng.beta(*model.hist_ctr_beta, rows)
    page_views = np.floor(rng.lognormal(model.page_views_log_mean, model.page_views_log_sd, rows)).astype(np.int64)
    # Rows are independent: handing them the day's times in order gives a time-ordered log for free.
    day_start_ms = int(datetime(day.year, day.month, day.day, tzinfo=UTC).timestamp() * 1000)
    ts_ms = np.sort(rng.integers(0, _MS_PER_DAY, rows)) + day_start_ms

    bucket, city, gender = world.user_age_bucket[user], world.user_city[user], world.user_gender[user]
    a, b = model.hist_ctr_beta
    hist_ctr_mean, hist_ctr_sd = a / (a + b), math.sqrt(a * b / ((a + b) ** 2 * (a + b + 1)))
    # log1p(floor(exp(x))) is close to x for the bulk of page views: centre and scale by the log-normal's own.
    age_effects = np.asarray([*model.age_effects, model.age_missing_effect])
    components: dict[str, FloatArray] = {
        "age": age_effects[bucket],
        "gender": np.where(gender >= 0, np.asarray(model.gender_effects)[gender], 0.0),
        "city": world.city_effect[city],
        "device": np.asarray(model.device_effects)[device],
        "age_city": world.age_city_effect[bucket, city],
        "user": world.user_effect[user],
        "item": world.item_effect[item],
        "hist_ctr": model.hist_ctr_effect * (hist_ctr - hist_ctr_mean) / hist_ctr_sd,
        "page_views": model.page_views_effect
        * (np.log1p(page_views) - model.page_views_log_mean)
        / model.page_views_log_sd,
    }
    assert components.keys() == COMPONENT_FEATURES.keys()
    logit = model.intercept + np.sum(list(components.values()), axis=0)
    noise = rng.normal(0.0, model.noise_sd, rows)
    label = (rng.random(rows) < _sigmoid(logit + noise)).astype(np.int32)
    holdout = np.random.default_rng([seed, _HOLDOUT, day.toordinal()]).random(rows) < holdout_fraction

    return Impressions(
        day=day,
        seed=seed,
        model=model,
        uid=Categorical(user, _labels("u", model.users)),
        item_id=Categorical(item, _labels("i", model.items)),
        age=world.user_age[user],
        gender=Categorical(gender, model.genders),
        city=Categorical(city, _labels("c", model.cities)),
        device=Categorical(device, model.devices),
        hist_ctr=hist_ctr,
        page_views=page_views,
        ts_ms=ts_ms,
        label=label,
        logit=logit,
        components=components,
        click_probability=_noisy_click_probability(logit, model.noise_sd),
        holdout=holdout,
        holdout_fraction=holdout_fraction,
    )


def _auc_or_none(labels: npt.NDArray[np.int32], scores: FloatArray) -> float | None:
    try:
        return roc_auc(labels, scores)
    except ValueError:  # one class only (a handful of rows): no AUC to report
        return None


def _rounded(value: float | None, digits: int = 6) -> float | None:
    return None if value is None else round(value, digits)


def report(impressions: Impressions) -> dict[str, Any]:
    """What the generator knows about its rows, as JSON: the Bayes-optimal AUC and log loss, overall
    and on the holdout, and how much each part of the logit matters.

    ``bayes_auc`` ranks every row by its true click probability; on any random subset (such as the
    pipeline's own split) the best AUC has the same expectation, within ``holdout.bayes_auc_se``.
    ``components.<part>.auc_without`` is the best AUC with that part unknown: what a model that
    lacks its feature function can reach at most.
    """
    label, logit, p = impressions.label, impressions.logit, impressions.click_probability
    holdout = impressions.holdout
    positives = int(label[holdout].sum())
    negatives = int(holdout.sum()) - positives
    holdout_auc = _auc_or_none(label[holdout], logit[holdout])
    components = {}
    for name, part in impressions.components.items():
        auc_without = _auc_or_none(label, logit - part)
        components[name] = {
            "feature": COMPONENT_FEATURES[name],
            "logit_variance": _rounded(float(np.var(part))),
            "auc_without": _rounded(auc_without),
        }
    return {
        "schema": REPORT_SCHEMA,
        "rows": impressions.rows,
        "day": impressions.day.isoformat(),
        "seed": impressions.seed,
        "positive_rate": _rounded(float(label.mean())),
        # The logit ranks the rows exactly as the click probability does (the noise integral is monotone).
        "bayes_auc": _rounded(_auc_or_none(label, logit)),
        "bayes_logloss": _rounded(log_loss(label, p)),
        "holdout": {
            # Not the pipeline's own split, which draws its rows in Spark: both are random samples of the
            # same rows, so their Bayes AUCs differ by sampling noise, about bayes_auc_se.
            "how": "a random share of the rows, drawn from the seed and the day alone",
            "fraction": impressions.holdout_fraction,
            "rows": int(holdout.sum()),
            "positives": positives,
            "bayes_auc": _rounded(holdout_auc),
            "bayes_auc_se": _rounded(
                auc_standard_error(holdout_auc, positives, negatives) if holdout_auc is not None else None
            ),
            "bayes_logloss": _rounded(log_loss(label[holdout], p[holdout]) if holdout.any() else None),
        },
        "logit_variance": _rounded(float(np.var(logit))),
        "noise_variance": impressions.model.noise_sd**2,
        "components": components,
        "model": impressions.model.parameters(),
    }


def arrow_table(impressions: Impressions) -> Any:
    import pyarrow as pa

    def strings(column: Categorical) -> Any:
        # Strings built once per distinct value, then gathered: a million rows take milliseconds.
        codes = pa.array(column.codes, mask=column.codes < 0)
        return pa.array(column.labels, pa.string()).take(codes)

    age = impressions.age
    return pa.table(
        {
            "uid": strings(impressions.uid),
            "item_id": strings(impressions.item_id),
            "age": pa.array(age.astype(np.int32), mask=age < 0),
            "gender": strings(impressions.gender),
            "city": strings(impressions.city),
            "device": strings(impressions.device),
            "hist_ctr": pa.array(impressions.hist_ctr),
            "page_views": pa.array(impressions.page_views),
            "ts": pa.array(impressions.ts_ms, pa.timestamp("ms", tz="UTC")),
            "label": pa.array(impressions.label),
        }
    )


def write_impressions(impressions: Impressions, uri: str, *, run_id: str) -> dict[str, Any]:
    """Write the rows as Parquet to ``uri`` with the :func:`report` beside them, atomically.

    The directory appears, with ``_SUCCESS``, only once everything is written; a failure leaves
    what was there before. Returns the report (with ``uri``). Needs pyarrow.
    """
    import pyarrow.parquet as pq

    from weiflow.storage import atomic_output

    table = arrow_table(impressions)
    summary = {**report(impressions), "uri": uri}
    with atomic_output(uri, run_id=run_id) as out:
        # Row groups of 256k rows: Spark reads a large day with one task per row group.
        pq.write_table(table, out.path / "part-00000.parquet", row_group_size=1 << 18)
        (out.path / GENERATOR_REPORT).write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
        out.rows = impressions.rows
    return summary
