"""The canned models, as plain ``tf.Module``s over the feature map's mapped ids.

Every model maps a batch of features (``{name: [batch]}``: int64 ids for categorical
features, float32 for numeric ones) to one logit per example. They are plain modules,
not Keras models, because Keras 3 does not train under ``ParameterServerStrategy``;
variables made inside the strategy's scope live on the parameter servers.

A custom model is a callable ``build(inputs: list[FeatureInput], attrs: dict) -> tf.Module``
whose module is callable the same way. Plug-ins name it in their ``Plugin(models=...)``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import tensorflow as tf

__all__ = ["CANNED", "FeatureInput", "build_model"]


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


class _Ids:
    """Every categorical feature's ids as rows of one table: feature k's ids start at offset k.

    One table per model part instead of one per feature means one gather and one sparse update
    per step: on a parameter-server cluster each variable a step touches costs a round trip.
    """

    def __init__(self, inputs: Sequence[FeatureInput]) -> None:
        self.names = [f.name for f in inputs if f.categorical]
        cards = [f.cardinality or 0 for f in inputs if f.categorical]
        self.offsets = [sum(cards[:k]) for k in range(len(cards))]
        self.rows = max(1, sum(cards))

    def __call__(self, features: Mapping[str, tf.Tensor]) -> tf.Tensor:
        """[batch, features] row indices into the shared table."""
        return tf.stack([features[n] + o for n, o in zip(self.names, self.offsets, strict=True)], axis=1)


class Linear(tf.Module):
    """The wide part: one weight per categorical id, one per numeric feature, and a bias."""

    def __init__(self, inputs: Sequence[FeatureInput], seeds: _Seeds) -> None:
        super().__init__(name="linear")
        self.ids = _Ids(inputs)
        self.reals = [f.name for f in inputs if not f.categorical]
        self.id_weights = tf.Variable(tf.zeros([self.ids.rows, 1]), name="id_weights")
        self.real_weights = tf.Variable(tf.zeros([max(1, len(self.reals))]), name="real_weights")
        self.bias = tf.Variable(0.0, name="bias")

    def __call__(self, features: Mapping[str, tf.Tensor]) -> tf.Tensor:
        logit = tf.convert_to_tensor(self.bias)
        if self.ids.names:
            logit += tf.reduce_sum(tf.nn.embedding_lookup(self.id_weights, self.ids(features)), axis=[1, 2])
        if self.reals:
            logit += tf.linalg.matvec(_reals(features, self.reals), self.real_weights)
        return logit


def _reals(features: Mapping[str, tf.Tensor], names: Sequence[str]) -> tf.Tensor:
    return tf.stack([features[n] for n in names], axis=1)


class Dense(tf.Module):
    def __init__(self, units_in: int, units_out: int, seeds: _Seeds, name: str) -> None:
        super().__init__(name=name)
        self.kernel = tf.Variable(_glorot([units_in, units_out], seeds()), name="kernel")
        self.bias = tf.Variable(tf.zeros([units_out]), name="bias")

    def __call__(self, x: tf.Tensor) -> tf.Tensor:
        return tf.matmul(x, self.kernel) + self.bias


class Deep(tf.Module):
    """The deep part: an embedding per categorical feature, numerics appended, then ReLU layers.

    With ``residual``, every layer after the first adds its input back (He et al., 2016):
    the layers keep the first layer's width so the sums line up.
    """

    def __init__(
        self, inputs: Sequence[FeatureInput], hidden: Sequence[int], dim: int, seeds: _Seeds, residual: bool
    ) -> None:
        super().__init__(name="deep")
        self.ids = _Ids(inputs)
        self.reals = [f.name for f in inputs if not f.categorical]
        self.dim = dim
        self.residual = residual
        self.embeddings = tf.Variable(
            tf.random.stateless_normal([self.ids.rows, dim], seed=[seeds(), 0], stddev=0.05), name="embeddings"
        )
        width = dim * len(self.ids.names) + len(self.reals)
        widths = [hidden[0]] * len(hidden) if residual else list(hidden)
        self.layers = []
        for i, units in enumerate(widths):
            self.layers.append(Dense(width, units, seeds, name=f"hidden_{i}"))
            width = units
        self.out = Dense(width, 1, seeds, name="logit")

    def __call__(self, features: Mapping[str, tf.Tensor]) -> tf.Tensor:
        parts = []
        if self.ids.names:
            looked_up = tf.nn.embedding_lookup(self.embeddings, self.ids(features))
            parts.append(tf.reshape(looked_up, [-1, self.dim * len(self.ids.names)]))
        if self.reals:
            parts.append(_reals(features, self.reals))
        x = tf.concat(parts, axis=1) if len(parts) > 1 else parts[0]
        for i, layer in enumerate(self.layers):
            y = tf.nn.relu(layer(x))
            x = x + y if self.residual and i > 0 else y
        return tf.squeeze(self.out(x), 1)


class CannedModel(tf.Module):
    """A sum of logits: the wide part, the deep part, or both (wide & deep, Cheng et al., 2016)."""

    def __init__(self, wide: Linear | None, deep: Deep | None) -> None:
        super().__init__(name="model")
        self.wide, self.deep = wide, deep

    def __call__(self, features: Mapping[str, tf.Tensor]) -> tf.Tensor:
        logits = [part(features) for part in (self.wide, self.deep) if part is not None]
        return tf.add_n(logits) if len(logits) > 1 else logits[0]


Builder = Callable[[list[FeatureInput], dict[str, Any]], tf.Module]


def _canned(wide: bool, deep: bool, residual: bool = False) -> Builder:
    def build(inputs: list[FeatureInput], attrs: dict[str, Any]) -> tf.Module:
        seeds = _Seeds(int(attrs.get("seed", 0)))
        hidden = list(attrs.get("hidden-units") or [64, 32])
        dim = int(attrs.get("embedding-dim", 8))
        return CannedModel(
            Linear(inputs, seeds) if wide else None,
            Deep(inputs, hidden, dim, seeds, residual) if deep else None,
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
