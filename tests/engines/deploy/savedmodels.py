"""Writes tiny SavedModels for the deploy tests: ``python savedmodels.py OUT_DIR`` (in its own process).

``OUT_DIR/good``: a logistic model over the feature map's two ids with a ``serving_default``
signature like the TensorFlow engine's export; ``OUT_DIR/nan``: the same, answering NaN.
Built in a child process so the test process never imports TensorFlow.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def build(out: Path, *, nan: bool) -> None:
    import tensorflow as tf

    class Model(tf.Module):
        def __init__(self) -> None:
            super().__init__()
            self.age = tf.Variable(tf.linspace(-1.0, 1.0, 8))
            self.city = tf.Variable(tf.linspace(-0.5, 0.5, 8))

        @tf.function(
            input_signature=[
                {
                    "age_b": tf.TensorSpec([None], tf.int64, name="age_b"),
                    "city": tf.TensorSpec([None], tf.int64, name="city"),
                }
            ]
        )
        def serve(self, features: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
            logit = tf.gather(self.age, features["age_b"]) + tf.gather(self.city, features["city"])
            if nan:
                logit = logit * float("nan")
            return {"probability": tf.sigmoid(logit), "logit": logit}

    model = Model()
    tf.saved_model.save(model, str(out), signatures={"serving_default": model.serve.get_concrete_function()})


if __name__ == "__main__":
    root = Path(sys.argv[1])
    build(root / "good", nan=False)
    build(root / "nan", nan=True)
