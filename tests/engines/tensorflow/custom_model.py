"""A custom model, as a plug-in would ship it: a factorization machine over the mapped ids."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import tensorflow as tf

from weiflow.engines.tensorflow.models import FeatureInput


class FactorizationMachine(tf.Module):
    """Pairwise interactions of categorical embeddings (Rendle, 2010), plus a bias."""

    def __init__(self, inputs: Sequence[FeatureInput], dim: int) -> None:
        super().__init__(name="fm")
        self.names = [f.name for f in inputs if f.categorical]
        self.tables = [
            tf.Variable(tf.random.stateless_normal([f.cardinality or 1, dim], seed=[i, 7], stddev=0.05))
            for i, f in enumerate(f for f in inputs if f.categorical)
        ]
        self.first = [tf.Variable(tf.zeros([f.cardinality or 1])) for f in inputs if f.categorical]
        self.bias = tf.Variable(0.0)

    def __call__(self, features: Mapping[str, tf.Tensor]) -> tf.Tensor:
        vectors = tf.stack([tf.gather(t, features[n]) for t, n in zip(self.tables, self.names, strict=True)], 1)
        square_of_sum = tf.square(tf.reduce_sum(vectors, 1))
        sum_of_squares = tf.reduce_sum(tf.square(vectors), 1)
        linear = tf.add_n([tf.gather(w, features[n]) for w, n in zip(self.first, self.names, strict=True)])
        return self.bias + linear + 0.5 * tf.reduce_sum(square_of_sum - sum_of_squares, 1)


def build(inputs: list[FeatureInput], attrs: dict[str, Any]) -> tf.Module:
    return FactorizationMachine(inputs, int(attrs.get("embedding-dim", 4)))
