"""Helpers shared by the serving tests."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from weiflow.errors import ConfigError


def assert_config_error(parse: Callable[[], object], source: str, where: str, expected: str, hint: str) -> None:
    """``parse`` raises a ConfigError at ``source:where`` whose message has ``expected`` and hint ``hint``."""
    with pytest.raises(ConfigError) as caught:
        parse()
    message = str(caught.value)
    assert message.startswith(f"{source}:{where}: error: "), message
    assert expected in message.split("\n    hint:", 1)[0], message
    assert hint in message.split("\n    hint:", 1)[1], message


# -- SavedModels for the prediction service's tests ---------------------------------
#
# Built once per session, in this process, with tf.saved_model.save; TensorFlow is imported only
# when a test asks for them. Each model is a version directory <root>/<model>/1, as a repository
# or --model_base_path lays them out.

HALF_PLUS_TWO = "half_plus_two"  # TF Serving's test model: y = 0.5x + 2 ("x" float [-1]); second signature +3
MULTI_IO = "multi_io"  # inputs a float [-1], b int64 [-1,2]; outputs sum float, twice int64
STRINGS = "strings"  # input data string [-1]; outputs length int32, echo_bytes string
WIDE = "wide"  # a WeiFlow export's shape: int64 ids city, age_bucket -> probability, logit; a feature map
NAN = "nan_model"  # answers NaN for every input


def feature_map_for_wide() -> Any:
    """The fitted feature map the ``wide`` model was trained on (city 4 ids, age_bucket 5 ids)."""
    from weiflow.features.featuremap import FeatureMap, Pickcat, Piecewise

    return FeatureMap(
        label="clicked",
        keep=(),
        features=(
            Pickcat("city", "city", vocabulary=("bj", "sh", "gz")),
            Piecewise("age_bucket", "age", (18.0, 30.0, 50.0)),
        ),
    )


def _build_models(root: Path) -> dict[str, Path]:
    import os

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    from weiflow.modelrepo.contracts import FEATURE_MAP_PATH

    def save(name: str, module: Any, signatures: dict[str, Any]) -> Path:
        path = root / name / "1"
        tf.saved_model.save(module, str(path), signatures=signatures)
        return path

    paths: dict[str, Path] = {}
    half = tf.Module()
    half.a, half.b, half.c = tf.Variable(0.5), tf.Variable(2.0), tf.Variable(3.0)
    half.serve = tf.function(lambda x: {"y": half.a * x + half.b}, input_signature=[tf.TensorSpec([None], tf.float32)])
    half.three = tf.function(lambda x: {"y": half.a * x + half.c}, input_signature=[tf.TensorSpec([None], tf.float32)])
    paths[HALF_PLUS_TWO] = save(
        HALF_PLUS_TWO,
        half,
        {"serving_default": half.serve.get_concrete_function(), "half_plus_three": half.three.get_concrete_function()},
    )

    multi = tf.Module()
    multi.serve = tf.function(
        lambda a, b: {"sum": a + tf.cast(tf.reduce_sum(b, axis=1), tf.float32), "twice": b * 2},
        input_signature=[tf.TensorSpec([None], tf.float32), tf.TensorSpec([None, 2], tf.int64)],
    )
    paths[MULTI_IO] = save(MULTI_IO, multi, {"serving_default": multi.serve.get_concrete_function()})

    strings = tf.Module()
    strings.serve = tf.function(
        lambda data: {"length": tf.strings.length(data), "echo_bytes": tf.identity(data)},
        input_signature=[tf.TensorSpec([None], tf.string)],
    )
    paths[STRINGS] = save(STRINGS, strings, {"serving_default": strings.serve.get_concrete_function()})

    wide = tf.Module()
    wide.city = tf.Variable(tf.linspace(-1.0, 1.0, 4))
    wide.age = tf.Variable(tf.linspace(0.5, -0.5, 5))
    wide.bias = tf.Variable(0.1)

    def score(city: Any, age_bucket: Any) -> dict[str, Any]:
        logit = tf.gather(wide.city, city) + tf.gather(wide.age, age_bucket) + wide.bias
        return {"probability": tf.sigmoid(logit), "logit": logit}

    wide.serve = tf.function(
        score, input_signature=[tf.TensorSpec([None], tf.int64, name="city"), tf.TensorSpec([None], tf.int64)]
    )
    paths[WIDE] = save(WIDE, wide, {"serving_default": wide.serve.get_concrete_function()})
    (paths[WIDE] / FEATURE_MAP_PATH).parent.mkdir(parents=True, exist_ok=True)
    (paths[WIDE] / FEATURE_MAP_PATH).write_text(feature_map_for_wide().to_json())

    broken = tf.Module()
    broken.serve = tf.function(lambda x: {"y": x * float("nan")}, input_signature=[tf.TensorSpec([None], tf.float32)])
    paths[NAN] = save(NAN, broken, {"serving_default": broken.serve.get_concrete_function()})
    return paths


@pytest.fixture(scope="session")
def saved_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Model name -> its version directory (``.../<model>/1``), built once per session."""
    return _build_models(tmp_path_factory.mktemp("models"))
