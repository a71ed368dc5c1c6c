"""The canned models, as plain ``tf.Module``s over the feature map's mapped ids.

Every model maps a batch of features (``{name: [batch]}``: int64 ids for categorical
features, float32 for numeric ones) to one logit per example. They are plain modules,
not Keras models, because Keras 3 does not train under ``ParameterServerStrategy``;
variables made inside the strategy's scope live on the parameter servers.

A custom model is a callable ``build(inputs: list[FeatureInput], attrs: dict) -> tf.Module``
whose module is callable the same way. Plug-ins name it in their ``Plugin(models=...)``. To
train with ``optimizer="dc-asgd"`` the module also needs ``call_with_reads(features)``, which
returns the logits and a :class:`Read` of every variable the pass used (see ``CannedModel``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import tensorflow as tf

__all__ = ["CANNED", "FeatureInput", "Read", "build_model"]


@dataclass(frozen=True)
class FeatureInput:
    """One model input: a categorical feature with its cardinality, or a numeric one (cardinality None)."""

    name: str
    cardinality: int | None = None

    @property
    def categorical(self) -> bool:
        return self.cardinality is not None

    @property
    def dtype(self) -> tf.DType:
        return tf.int64 if self.categorical else tf.float32


@dataclass(frozen=True)
class Read:
    """What one forward pass read from a variable, for an optimizer that needs it (dc-asgd).

    ``value`` is the whole variable as read or, with ``indices``, the rows gathered at them
    (shape ``indices.shape + variable.shape[1:]``). It must be the very tensor the pass computed
    with: under asynchronous training a second read may already see other workers' updates.
    """

    variable: tf.Variable
    value: tf.Tensor
    indices: tf.Tensor | None = None


def _glorot(shape: Sequence[int], seed: int) -> tf.Tensor:
    limit = math.sqrt(6.0 / (shape[0] + shape[-1]))
    return tf.random.stateless_uniform(shape, seed=[seed, 0], minval=-limit, maxval=limit)


class _Seeds:
    """Deterministic, distinct seeds for each variable, so a rerun starts from the same weights."""

    def __init__(self, seed: int) -> None:
        self.next = seed * 1000

    def __call__(self) -> int:
        self.next += 1
        return self.next


class _Packed:
    """Many small parameters laid out in one flat vector: (offset, shape) per name.

    On a parameter-server cluster every variable a step touches costs a transfer each way,
    so the canned models keep two variables in all: one table for every categorical id and
    one vector for every dense weight. The optimizers are elementwise (sgd, adagrad, adam,
    dc-asgd), so packing changes no arithmetic.
    """

    def __init__(self) -> None:
        self.slots: dict[str, tuple[int, tuple[int, ...]]] = {}
        self.initial: list[tf.Tensor] = []
        self.size = 0

    def add(self, name: str, value: tf.Tensor) -> None:
        self.slots[name] = (self.size, tuple(value.shape))
        self.initial.append(tf.reshape(value, [-1]))
        self.size += int(tf.size(value))

    def initial_value(self) -> tf.Tensor:
        return tf.concat(self.initial, 0) if self.initial else tf.zeros([1])

    def get(self, flat: tf.Tensor, name: str) -> tf.Tensor:
        offset, shape = self.slots[name]
        return tf.reshape(flat[offset : offset + math.prod(shape)], shape)


class CannedModel(tf.Module):
    """The wide part (a weight per id and per real input), the deep part (embeddings, ReLU layers), or both.

    Wide & deep is Cheng et al., 2016. With ``residual``, every deep layer after the first adds
    its input back (He et al., 2016), so all layers keep the first layer's width. Every
    categorical feature's ids are rows of one table (feature k's rows start at its offset); a
    row holds the wide weight, then the embedding.
    """

    def __init__(
        self,
        inputs: Sequence[FeatureInput],
        *,
        wide: bool,
        deep: bool,
        residual: bool,
        hidden: Sequence[int],
        dim: int,
        seed: int,
    ) -> None:
        super().__init__(name="model")
        seeds = _Seeds(seed)
        self.wide, self.deep, self.residual, self.dim = wide, deep, residual, dim if deep else 0
        self.categorical = [f.name for f in inputs if f.categorical]
        self.reals = [f.name for f in inputs if not f.categorical]
        cards = [f.cardinality or 0 for f in inputs if f.categorical]
        self.offsets = [sum(cards[:k]) for k in range(len(cards))]
        rows = max(1, sum(cards))
        columns = []
        if wide:
            columns.append(tf.zeros([rows, 1]))
        if deep:
            columns.append(tf.random.stateless_normal([rows, dim], seed=[seeds(), 0], stddev=0.05))
        self.table = tf.Variable(tf.concat(columns, 1), name="id_table")

        self.packed = _Packed()
        if wide:
            self.packed.add("wide/reals", tf.zeros([len(self.reals)]))
            self.packed.add("wide/bias", tf.zeros([]))
        self.layers = 0
        if deep:
            width = dim * len(self.categorical) + len(self.reals)
            for i, units in enumerate([hidden[0]] * len(hidden) if residual else hidden):
                self.packed.add(f"hidden_{i}/kernel", _glorot([width, units], seeds()))
                self.packed.add(f"hidden_{i}/bias", tf.zeros([units]))
                width = units
                self.layers += 1
            self.packed.add("logit/kernel", _glorot([width, 1], seeds()))
            self.packed.add("logit/bias", tf.zeros([1]))
        self.dense = tf.Variable(self.packed.initial_value(), name="dense")
        self.packed.initial = []  # the variable holds them now

    def __call__(self, features: Mapping[str, tf.Tensor]) -> tf.Tensor:
        return self.call_with_reads(features)[0]

    def call_with_reads(self, features: Mapping[str, tf.Tensor]) -> tuple[tf.Tensor, list[Read]]:
        """The logits, and what this pass read: the dense vector whole, the table's gathered rows only."""
        flat = tf.convert_to_tensor(self.dense)  # one read of every dense weight per step
        reads = [Read(self.dense, flat)]
        reals = tf.stack([features[n] for n in self.reals], 1) if self.reals else None
        rows = None
        if self.categorical:
            ids = tf.stack([features[n] + o for n, o in zip(self.categorical, self.offsets, strict=True)], 1)
            rows = tf.gather(self.table, ids)  # [batch, features, wide + dim]: one gather, on the table's PS
            reads.append(Read(self.table, rows, ids))
        logit = tf.zeros([tf.shape(next(iter(features.values())))[0]])
        if self.wide:
            logit += self.packed.get(flat, "wide/bias")
            if rows is not None:
                logit += tf.reduce_sum(rows[:, :, 0], 1)
            if reals is not None:
                logit += tf.linalg.matvec(reals, self.packed.get(flat, "wide/reals"))
        if self.deep:
            parts = []
            if rows is not None:
                parts.append(tf.reshape(rows[:, :, int(self.wide) :], [-1, self.dim * len(self.categorical)]))
            if reals is not None:
                parts.append(reals)
            x = tf.concat(parts, 1) if len(parts) > 1 else parts[0]
            for i in range(self.layers):
                y = tf.nn.relu(
                    x @ self.packed.get(flat, f"hidden_{i}/kernel") + self.packed.get(flat, f"hidden_{i}/bias")
                )
                x = x + y if self.residual and i > 0 else y
            logit += tf.squeeze(x @ self.packed.get(flat, "logit/kernel"), 1) + self.packed.get(flat, "logit/bias")
        return logit, reads


Builder = Callable[[list[FeatureInput], dict[str, Any]], tf.Module]


def _canned(wide: bool, deep: bool, residual: bool = False) -> Builder:
    def build(inputs: list[FeatureInput], attrs: dict[str, Any]) -> tf.Module:
        return CannedModel(
            inputs,
            wide=wide,
            deep=deep,
            residual=residual,
            hidden=list(attrs.get("hidden-units") or [64, 32]),
            dim=int(attrs.get("embedding-dim", 8)),
            seed=int(attrs.get("seed", 0)),
        )

    return build


CANNED: dict[str, Builder] = {
    "logistic": _canned(wide=True, deep=False),
    "dnn": _canned(wide=False, deep=True),
    "wide_deep": _canned(wide=True, deep=True),
    "residual_dnn": _canned(wide=False, deep=True, residual=True),
}


def build_model(
    name: str, inputs: list[FeatureInput], attrs: dict[str, Any], custom: Mapping[str, Callable[..., Any]]
) -> tf.Module:
    """The model called ``name``: canned, or a plug-in's (``custom``: name to build callable)."""
    build = CANNED.get(name) or custom.get(name)
    if build is None:
        known = sorted({*CANNED, *custom})
        raise ValueError(f"unknown model '{name}'; known models: {', '.join(known)}")
    model = build(inputs, attrs)
    if not callable(model):
        raise TypeError(f"model '{name}': its build function returned {type(model).__name__}, not a callable module")
    return model
