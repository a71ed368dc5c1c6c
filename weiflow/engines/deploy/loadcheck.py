"""The publish load check, run in its own process: ``python -m weiflow.engines.deploy.loadcheck DIR``.

Loads the SavedModel in ``DIR`` with ``tf.saved_model.load``, scores a small batch of warm-up
examples through its ``serving_default`` signature, and prints one JSON line on stdout:
``{"ok": true, "examples": N, "outputs": [...]}`` or ``{"ok": false, "reason": "..."}``.
Exit code 0 when the model passed, 1 when it did not.

The warm-up inputs come from the signature itself (one column per input): categorical ids cycle
through the feature map's cardinality for the input of the same name (``assets.extra/featuremap.json``),
so every example is a valid id; numeric inputs take a few finite values around 0. A model that
does not load, has no serving signature, fails to score or answers NaN or infinity is refused.
It runs in a separate process because loading a model runs its graph: a broken one may crash
or hang, and the publisher (a deploy node, or the CLI) must outlive it and say why.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

__all__ = ["WARMUP_EXAMPLES", "check", "main"]

WARMUP_EXAMPLES = 8
_NUMERIC = (0.0, 1.0, -1.0, 0.5, 2.0, -0.5, 10.0, 0.25)


def _cardinalities(model_dir: Path) -> dict[str, int]:
    from weiflow.features.featuremap import FeatureMap
    from weiflow.modelrepo.contracts import FEATURE_MAP_PATH

    path = model_dir / FEATURE_MAP_PATH
    if not path.is_file():
        return {}
    cards = FeatureMap.from_json(path.read_text(), source=str(path)).cardinalities()
    return {name: card for name, card in cards.items() if card}


def check(model_dir: Path) -> dict[str, Any]:
    """Load and score ``model_dir``; the JSON-able verdict."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import numpy as np
    import tensorflow as tf

    try:
        loaded = tf.saved_model.load(str(model_dir))
    except Exception as exc:  # TensorFlow raises many types for a broken model
        return {"ok": False, "reason": f"the SavedModel does not load: {type(exc).__name__}: {exc}"}
    signature = getattr(loaded, "signatures", {}).get("serving_default")
    if signature is None:
        return {"ok": False, "reason": "the SavedModel has no 'serving_default' signature for serving to call"}
    cards = _cardinalities(model_dir)
    inputs: dict[str, Any] = {}
    for name, spec in signature.structured_input_signature[1].items():
        shape = [WARMUP_EXAMPLES if dim is None else dim for dim in spec.shape.as_list()] or [WARMUP_EXAMPLES]
        if shape[0] != WARMUP_EXAMPLES:
            shape = [WARMUP_EXAMPLES, *shape[1:]]
        count = int(np.prod(shape))
        if spec.dtype.is_integer:
            card = cards.get(name, 1)
            values = np.arange(count, dtype=np.int64) % card
        elif spec.dtype.is_floating:
            values = np.resize(np.asarray(_NUMERIC, dtype=np.float64), count)
        elif spec.dtype == tf.string:
            values = np.asarray([""] * count, dtype=object)
        else:
            return {"ok": False, "reason": f"input '{name}' has dtype {spec.dtype.name}, which serving cannot feed"}
        inputs[name] = tf.constant(values.reshape(shape), dtype=spec.dtype)
    try:
        outputs = signature(**inputs)
    except Exception as exc:
        return {"ok": False, "reason": f"scoring warm-up examples failed: {type(exc).__name__}: {exc}"}
    for name, tensor in sorted(outputs.items()):
        array = np.asarray(tensor.numpy())
        if array.dtype.kind in "fc" and not np.all(np.isfinite(array)):
            bad = int(np.size(array) - np.count_nonzero(np.isfinite(array)))
            return {
                "ok": False,
                "reason": f"output '{name}' is NaN or infinite for {bad} of {np.size(array)} values "
                f"on {WARMUP_EXAMPLES} warm-up examples",
            }
    return {"ok": True, "examples": WARMUP_EXAMPLES, "inputs": sorted(inputs), "outputs": sorted(outputs)}


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m weiflow.engines.deploy.loadcheck SAVEDMODEL_DIR", file=sys.stderr)
        return 2
    verdict = check(Path(args[0]))
    print(json.dumps(verdict), flush=True)
    return 0 if verdict["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
