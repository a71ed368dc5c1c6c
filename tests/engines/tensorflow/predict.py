"""Predictions from a fresh process: ``checkpoint JOB.json`` or ``savedmodel DIR``, rows as JSON on stdin.

Used by the export test, so neither model is loaded in the pytest process.
"""

from __future__ import annotations

import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def main() -> None:
    import tensorflow as tf

    kind, where = sys.argv[1], sys.argv[2]
    rows: dict[str, list[float]] = json.load(sys.stdin)
    if kind == "checkpoint":
        from weiflow.engines.tensorflow.job import TrainJob
        from weiflow.engines.tensorflow.trainer import load_trained

        job = TrainJob.load(where)
        model = load_trained(job)
        features = {i.name: tf.constant(rows[i.name], tf.int64 if i.cardinality else tf.float32) for i in job.inputs}
        probabilities = tf.sigmoid(model(features))
    else:
        serve = tf.saved_model.load(where).signatures["serving_default"]
        specs = serve.structured_input_signature[1]
        probabilities = serve(**{k: tf.constant(rows[k], spec.dtype) for k, spec in specs.items()})["probability"]
    json.dump([float(p) for p in probabilities.numpy()], sys.stdout)


if __name__ == "__main__":
    main()
