"""A loaded model version: signatures, calls, TF Serving's metadata and errors, warm-up, and an oracle.

The oracle is the same SavedModel loaded with ``tf.saved_model.load`` in another process; the
metadata is checked against TF Serving's own protos and against the documented JSON shape.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.serving.conftest import HALF_PLUS_TWO, MULTI_IO, NAN, STRINGS, WIDE, feature_map_for_wide
from weiflow.serving.servable import WARMUP_FILE, Servable, ServableError

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def servables(saved_models: dict[str, Path]) -> dict[str, Servable]:
    return {name: Servable.load(name, 1, path) for name, path in saved_models.items()}


def test_signatures_list_serving_default_first_with_dtypes_and_shapes(servables: dict[str, Servable]) -> None:
    half = servables[HALF_PLUS_TWO]
    assert list(half.signatures) == ["serving_default", "half_plus_three"]
    default = half.signature(None)
    assert default is half.signature("") is half.signature("serving_default")
    assert default.method_name == "tensorflow/serving/predict"
    assert default.inputs["x"].dtype == np.float32 and default.inputs["x"].shape == (None,)
    multi = servables[MULTI_IO].signature()
    assert {n: (i.dtype, i.shape) for n, i in multi.inputs.items()} == {
        "a": (np.dtype(np.float32), (None,)),
        "b": (np.dtype(np.int64), (None, 2)),
    }
    assert set(multi.outputs) == {"sum", "twice"}
    assert servables[STRINGS].signature().inputs["data"].dtype == np.dtype(object)
    assert half.load_seconds > 0 and half.feature_map is None and half.online is None


def test_unknown_signature_is_refused_in_tf_servings_words(servables: dict[str, Servable]) -> None:
    with pytest.raises(ServableError) as caught:
        servables[HALF_PLUS_TWO].signature("half_plus_four")
    assert caught.value.message == 'Serving signature name: "half_plus_four" not found in signature def'
    assert caught.value.code == "INVALID_ARGUMENT"


def test_run_converts_inputs_to_the_declared_dtypes(servables: dict[str, Servable]) -> None:
    half = servables[HALF_PLUS_TWO]
    out = half.run("serving_default", {"x": np.array([1.0, 2.0, 5.0])})  # float64 in, float32 declared
    assert out["y"].dtype == np.float32
    np.testing.assert_array_equal(out["y"], [2.5, 3.0, 4.5])
    np.testing.assert_array_equal(half.run("half_plus_three", {"x": [1, 2, 5]})["y"], [3.5, 4.0, 5.5])  # type: ignore[dict-item]
    multi = servables[MULTI_IO].run("", {"a": np.array([0.5]), "b": np.array([[1, 2]], dtype=np.int32)})
    assert multi["sum"].tolist() == [3.5] and multi["twice"].tolist() == [[2, 4]]
    strings = servables[STRINGS].run("serving_default", {"data": np.array([b"ab\xff", "caf\u00e9".encode()], object)})
    assert strings["length"].tolist() == [3, 5] and strings["echo_bytes"].tolist() == [b"ab\xff", b"caf\xc3\xa9"]


def test_missing_extra_and_unknown_inputs_get_tf_servings_messages(servables: dict[str, Servable]) -> None:
    multi = servables[MULTI_IO]
    cases: list[tuple[dict[str, np.ndarray], str]] = [
        (
            {"a": np.zeros(1)},
            "input size does not match signature: 1!=2 len({a}) != len({a,b}). Sent extra: {}. "
            "Missing but required: {b}.",
        ),
        (
            {"a": np.zeros(1), "b": np.zeros((1, 2)), "c": np.zeros(1)},
            "input size does not match signature: 3!=2 len({a,b,c}) != len({a,b}). Sent extra: {c}. "
            "Missing but required: {}.",
        ),
        (
            {"a": np.zeros(1), "c": np.zeros(1)},
            "input tensor alias not found in signature: c. Inputs expected to be in the set {a,b}.",
        ),
    ]
    for inputs, message in cases:
        with pytest.raises(ServableError) as caught:
            multi.run("serving_default", inputs)
        assert caught.value.message == message


def test_a_shape_the_signature_refuses_is_a_servable_error(servables: dict[str, Servable]) -> None:
    with pytest.raises(ServableError) as caught:
        servables[MULTI_IO].run("serving_default", {"a": np.zeros(2), "b": np.zeros((2, 3))})
    assert caught.value.message == "input 'b' has shape [2,3], the signature takes [-1,2]"


def test_metadata_is_tf_servings_get_model_metadata_json(
    servables: dict[str, Servable], saved_models: dict[str, Path]
) -> None:
    from google.protobuf import json_format
    from tensorflow.python.tools import saved_model_utils
    from tensorflow_serving.apis import get_model_metadata_pb2, model_pb2

    metadata = servables[HALF_PLUS_TWO].metadata()
    # The documented shape (api_rest.md, GetModelMetadataResponse), field by field.
    assert metadata["model_spec"] == {"name": HALF_PLUS_TWO, "signature_name": "", "version": "1"}
    signature_defs = metadata["metadata"]["signature_def"]["signature_def"]
    assert {"serving_default", "half_plus_three"} <= set(signature_defs)
    default = signature_defs["serving_default"]
    assert default["method_name"] == "tensorflow/serving/predict"
    x = default["inputs"]["x"]
    assert x["dtype"] == "DT_FLOAT"
    assert x["tensor_shape"] == {"dim": [{"size": "-1", "name": ""}], "unknown_rank": False}
    assert x["name"].endswith(":0")
    assert default["outputs"]["y"]["dtype"] == "DT_FLOAT"
    # The oracle: TF Serving's ToJsonString, done with its own protos on TensorFlow's reading of the graph.
    options = {"always_print_fields_with_no_presence": True, "preserving_proto_field_name": True}
    spec = model_pb2.ModelSpec(name=HALF_PLUS_TWO, signature_name="")
    spec.version.value = 1
    graph = saved_model_utils.get_meta_graph_def(str(saved_models[HALF_PLUS_TWO]), "serve")
    signature_map = get_model_metadata_pb2.SignatureDefMap(signature_def=graph.signature_def)
    expected = {
        "model_spec": json_format.MessageToDict(spec, **options),
        "metadata": {"signature_def": json_format.MessageToDict(signature_map, **options)},
    }
    assert json.loads(json.dumps(metadata)) == expected


def test_load_refuses_what_is_not_a_working_savedmodel(saved_models: dict[str, Path], tmp_path: Path) -> None:
    empty = tmp_path / "empty" / "1"
    empty.mkdir(parents=True)
    with pytest.raises(ServableError) as caught:
        Servable.load("empty", 1, empty)
    assert str(empty) in caught.value.message and "not a SavedModel" in caught.value.message

    garbage = tmp_path / "garbage" / "1"
    garbage.mkdir(parents=True)
    (garbage / "saved_model.pb").write_bytes(b"\x00not a protobuf\xff" * 10)
    with pytest.raises(ServableError) as caught:
        Servable.load("garbage", 1, garbage)
    assert str(garbage) in caught.value.message and caught.value.code == "FAILED_PRECONDITION"

    half_copied = tmp_path / "half" / "1"
    shutil.copytree(saved_models[HALF_PLUS_TWO], half_copied)
    for data in (half_copied / "variables").glob("variables.data*"):
        data.unlink()
    with pytest.raises(ServableError) as caught:
        Servable.load("half", 1, half_copied)
    assert str(half_copied) in caught.value.message and "does not load" in caught.value.message


# -- warm-up -------------------------------------------------------------------------


def _write_warmup(version_dir: Path, requests: list[tuple[str, dict[str, Any]]], classify: int = 0) -> None:
    import tensorflow as tf
    from tensorflow_serving.apis import classification_pb2, predict_pb2, prediction_log_pb2

    (version_dir / WARMUP_FILE).parent.mkdir(parents=True, exist_ok=True)
    with tf.io.TFRecordWriter(str(version_dir / WARMUP_FILE)) as writer:
        for signature_name, inputs in requests:
            request = predict_pb2.PredictRequest()
            request.model_spec.name = version_dir.parent.name
            request.model_spec.signature_name = signature_name
            for name, value in inputs.items():
                request.inputs[name].CopyFrom(tf.make_tensor_proto(value))
            entry = prediction_log_pb2.PredictionLog(predict_log=prediction_log_pb2.PredictLog(request=request))
            writer.write(entry.SerializeToString())
        for _ in range(classify):
            entry = prediction_log_pb2.PredictionLog(
                classify_log=prediction_log_pb2.ClassifyLog(request=classification_pb2.ClassificationRequest())
            )
            writer.write(entry.SerializeToString())


def _copy(saved_models: dict[str, Path], name: str, tmp_path: Path) -> Path:
    target = tmp_path / name / "1"
    shutil.copytree(saved_models[name], target)
    return target


def test_warmup_replays_tf_servings_prediction_log_records(saved_models: dict[str, Path], tmp_path: Path) -> None:
    version_dir = _copy(saved_models, MULTI_IO, tmp_path)
    requests = [
        ("", {"a": np.array([1.0], np.float32), "b": np.array([[1, 2]], np.int64)}),
        ("serving_default", {"a": np.zeros(3, np.float32), "b": np.ones((3, 2), np.int64)}),
    ]
    _write_warmup(version_dir, requests, classify=1)
    servable = Servable.load(MULTI_IO, 1, version_dir)
    assert servable.warmup() == 2  # the classify record is skipped: this service has no classify API
    with pytest.raises(ServableError, match=r"Number of warmup records exceeds the maximum \(2\)"):
        servable.warmup(max_records=2)


def test_warmup_refuses_a_record_the_model_cannot_answer(saved_models: dict[str, Path], tmp_path: Path) -> None:
    version_dir = _copy(saved_models, MULTI_IO, tmp_path)
    _write_warmup(version_dir, [("serving_default", {"a": np.array([1.0], np.float32)})])
    with pytest.raises(ServableError, match="warm-up record 0 failed: input size does not match signature"):
        Servable.load(MULTI_IO, 1, version_dir).warmup()


def test_warmup_refuses_a_model_answering_nan(
    saved_models: dict[str, Path], servables: dict[str, Servable], tmp_path: Path
) -> None:
    with pytest.raises(ServableError) as caught:
        servables[NAN].warmup()  # no warm-up file: examples from the signature
    assert "output 'y' is NaN or infinite for 8 of 8 values" in caught.value.message
    assert caught.value.code == "FAILED_PRECONDITION"
    version_dir = _copy(saved_models, NAN, tmp_path)
    _write_warmup(version_dir, [("", {"x": np.array([1.0, 2.0], np.float32)})])
    with pytest.raises(ServableError, match="output 'y' is NaN or infinite for 2 of 2 values on warm-up record 0"):
        Servable.load(NAN, 1, version_dir).warmup()


def test_a_weiflow_model_warms_up_from_its_feature_map_and_scores_raw_rows(servables: dict[str, Servable]) -> None:
    wide = servables[WIDE]
    assert wide.feature_map == feature_map_for_wide()
    assert wide.online is not None
    assert wide.warmup() == 1  # ids cycle through each feature's cardinality: all valid
    rows: list[dict[str, object]] = [{"city": "sh", "age": 25}, {"city": "paris", "age": None}]
    mapped = wide.online.transform_rows(rows)
    # sh is the 2nd value of the vocabulary; 25 passes 1 boundary; unseen and null take their ids.
    assert [(r["city"], r["age_bucket"]) for r in mapped] == [(2, 1), (0, 4)]
    inputs = {name: np.array([r[name] for r in mapped]) for name in ("city", "age_bucket")}
    out = wide.run("serving_default", inputs)
    np.testing.assert_allclose(out["probability"], 1 / (1 + np.exp(-out["logit"])), rtol=1e-6)


def test_close_drops_the_model(saved_models: dict[str, Path]) -> None:
    servable = Servable.load(HALF_PLUS_TWO, 1, saved_models[HALF_PLUS_TWO])
    servable.close()
    with pytest.raises(ServableError, match="unloaded"):
        servable.run("serving_default", {"x": np.zeros(1)})


# -- the oracle: the same SavedModels loaded by TensorFlow in another process ---------

_ORACLE = textwrap.dedent(
    """
    import os, sys
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "2"
    import numpy as np, tensorflow as tf
    cases = np.load(sys.argv[1], allow_pickle=True)["cases"].tolist()
    answers = []
    for path, signature, inputs in cases:
        function = tf.saved_model.load(path).signatures[signature]
        outputs = function(**{k: tf.constant(v) for k, v in inputs.items()})
        answers.append({k: v.numpy() for k, v in outputs.items()})
    np.savez(sys.argv[2], answers=np.array(answers, dtype=object))
    """
)


def test_outputs_equal_tensorflow_loading_the_same_savedmodel_in_another_process(
    saved_models: dict[str, Path], servables: dict[str, Servable], tmp_path: Path
) -> None:
    rng = np.random.default_rng(7)
    cases: list[tuple[str, str, dict[str, np.ndarray]]] = [
        (HALF_PLUS_TWO, "serving_default", {"x": rng.normal(size=64).astype(np.float32)}),
        (HALF_PLUS_TWO, "half_plus_three", {"x": rng.normal(size=5).astype(np.float32)}),
        (MULTI_IO, "serving_default", {"a": rng.normal(size=9).astype(np.float32), "b": rng.integers(-9, 9, (9, 2))}),
        (STRINGS, "serving_default", {"data": np.array([b"", b"abc", "\u00e9t\u00e9".encode()], dtype=object)}),
        (WIDE, "serving_default", {"city": rng.integers(0, 4, 50), "age_bucket": rng.integers(0, 5, 50)}),
    ]
    request = tmp_path / "cases.npz"
    payload = np.empty(len(cases), dtype=object)
    payload[:] = [(str(saved_models[model]), signature, inputs) for model, signature, inputs in cases]
    np.savez(request, cases=payload)
    answer = tmp_path / "answers.npz"
    subprocess.run([sys.executable, "-c", _ORACLE, str(request), str(answer)], check=True, timeout=120)
    expected = np.load(answer, allow_pickle=True)["answers"].tolist()
    for (model, signature, inputs), oracle in zip(cases, expected, strict=True):
        got = servables[model].run(signature, inputs)
        assert set(got) == set(oracle), model
        for name, value in oracle.items():
            if value.dtype == object:
                assert got[name].tolist() == value.tolist()
            else:
                np.testing.assert_allclose(got[name], value, rtol=1e-6, err_msg=f"{model}/{signature}/{name}")
