"""TF Serving's REST JSON: the documented examples (api_rest.md) and the error texts of json_tensor.cc.

Most tests parse against signatures written here (no TensorFlow). The ``integration`` ones replay
the documented requests end to end against SavedModels the session builds.
"""

from __future__ import annotations

import base64
import json
import math
from pathlib import Path

import numpy as np
import pytest

from tests.serving.conftest import HALF_PLUS_TWO, MULTI_IO, STRINGS, WIDE
from weiflow.serving.servable import Servable, ServableError, Signature, TensorInfo
from weiflow.serving.tfjson import PredictRequest, RequestError, dumps, parse_predict, predict_response


def _signature(name: str = "serving_default", **inputs: tuple[object, tuple[int | None, ...]]) -> Signature:
    infos = {key: TensorInfo(key, np.dtype(dtype), shape) for key, (dtype, shape) in inputs.items()}  # type: ignore[call-overload]
    return Signature(name, "tensorflow/serving/predict", infos, {})


X_FLOAT = _signature(x=(np.float32, (None,)))
# The documented three-input example: "tag" a string, "signal" five numbers, "sensor" a 2x2 matrix.
TAG_SIGNAL_SENSOR = _signature(tag=(object, (None,)), signal=(np.int64, (None, 5)), sensor=(np.float32, (None, 2, 2)))


def _lookup(*signatures: Signature) -> object:
    by_name = {s.name: s for s in signatures}

    def signature_for(name: str) -> Signature:
        found = by_name.get(name or "serving_default")
        if found is None:
            raise ServableError(f'Serving signature name: "{name}" not found in signature def')
        return found

    return signature_for


def parse(body: object, *signatures: Signature) -> PredictRequest:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return parse_predict(raw, _lookup(*(signatures or (X_FLOAT,))))  # type: ignore[arg-type]


def refused(body: object, *signatures: Signature) -> str:
    with pytest.raises(RequestError) as caught:
        parse(body, *signatures)
    return str(caught.value)


# -- the documented request formats -------------------------------------------------


def test_row_format_list_of_scalars_for_a_single_input() -> None:
    request = parse({"instances": ["foo", "bar", "baz"]}, _signature(x=(object, (None,))))
    assert request.row_format and request.signature_name == ""
    assert request.inputs["x"].dtype == object and request.inputs["x"].tolist() == [b"foo", b"bar", b"baz"]


def test_row_format_list_of_tensors_for_a_single_input() -> None:
    request = parse({"instances": [[[1, 2]], [[3, 4]]]}, _signature(x=(np.int64, (None, 1, 2))))
    assert request.inputs["x"].shape == (2, 1, 2) and request.inputs["x"].dtype == np.int64
    assert request.inputs["x"].tolist() == [[[1, 2]], [[3, 4]]]


def test_row_and_columnar_formats_of_the_documented_three_input_example_agree() -> None:
    rows = {
        "instances": [
            {"tag": "foo", "signal": [1, 2, 3, 4, 5], "sensor": [[1, 2], [3, 4]]},
            {"tag": "bar", "signal": [3, 4, 1, 2, 5], "sensor": [[4, 5], [6, 8]]},
        ]
    }
    columns = {
        "inputs": {
            "tag": ["foo", "bar"],
            "signal": [[1, 2, 3, 4, 5], [3, 4, 1, 2, 5]],
            "sensor": [[[1, 2], [3, 4]], [[4, 5], [6, 8]]],
        }
    }
    by_rows, by_columns = parse(rows, TAG_SIGNAL_SENSOR), parse(columns, TAG_SIGNAL_SENSOR)
    assert by_rows.row_format and not by_columns.row_format
    for name in ("tag", "signal", "sensor"):
        assert by_rows.inputs[name].dtype == by_columns.inputs[name].dtype
        np.testing.assert_array_equal(by_rows.inputs[name], by_columns.inputs[name])
    assert by_rows.inputs["sensor"].dtype == np.float32 and by_rows.inputs["sensor"].shape == (2, 2, 2)


def test_columnar_inputs_need_not_share_the_batch_size_and_may_be_bare_values() -> None:
    signature = _signature(a=(np.float32, (None,)), b=(np.int64, (None, 2)))
    request = parse({"inputs": {"a": [1.5, 2, 3], "b": [[1, 2]], "ignored": 1}}, signature)
    assert request.inputs["a"].tolist() == [1.5, 2.0, 3.0] and request.inputs["b"].shape == (1, 2)
    assert parse({"inputs": 3}).inputs["x"].shape == ()
    assert parse({"inputs": [1.0, 2.0, 5.0]}).inputs["x"].tolist() == [1.0, 2.0, 5.0]


def test_b64_objects_carry_bytes_for_string_inputs() -> None:
    signature = _signature(image=(object, (None,)))
    documented = [{"b64": "aW1hZ2UgYnl0ZXM="}, {"b64": "YXdlc29tZSBpbWFnZSBieXRlcw=="}]
    assert parse({"instances": documented}, signature).inputs["image"].tolist() == [
        b"image bytes",
        b"awesome image bytes",
    ]
    raw = bytes(range(256))
    body = {"inputs": {"image": [{"b64": base64.b64encode(raw).decode()}, {"b64": "YQ"}]}}  # padding optional
    assert parse(body, signature).inputs["image"].tolist() == [raw, b"a"]
    named = _signature(image=(object, (None,)), caption=(object, (None,)))
    request = parse({"instances": [{"image": {"b64": "aW1hZ2UgYnl0ZXM="}, "caption": "seaside"}]}, named)
    assert request.inputs["image"].tolist() == [b"image bytes"] and request.inputs["caption"].tolist() == [b"seaside"]


def test_nan_and_infinity_tokens_are_accepted_for_floats() -> None:
    values = parse(b'{"instances": [1.0, -3.14, NaN, Infinity, -Infinity]}').inputs["x"]
    assert values.dtype == np.float32 and math.isnan(values[2]) and values[3] == np.inf and values[4] == -np.inf


def test_signature_name_picks_the_signature() -> None:
    other = _signature("other", y=(np.int64, (None,)))
    request = parse({"signature_name": "other", "instances": [1, 2]}, X_FLOAT, other)
    assert request.signature_name == "other" and request.inputs["y"].dtype == np.int64


def test_numeric_lists_take_the_fast_path_only_when_nothing_would_be_refused() -> None:
    ints = _signature(x=(np.int64, (None, 3)))
    assert parse({"instances": [[1, 2, 3]]}, ints).inputs["x"].dtype == np.int64
    float_in_ints = refused({"instances": [[1, 2.0, 3]]}, ints)
    assert float_in_ints.endswith("JSON Value: 2.0 Type: Number is not of expected type: int64")
    rows = _signature(x=(np.float32, (None, 2)))
    assert refused({"instances": [[1.5, True]]}, rows).endswith(
        "JSON Value: true Type: True is not of expected type: float"
    )
    assert refused({"instances": [[1, 16777217]]}, rows).endswith(
        "Cannot convert JSON value: 16777217 to float without loss of precision."
    )
    assert refused({"instances": [[1.0, 1e39]]}, rows).endswith(
        "Cannot convert JSON value: 1e+39 to float without loss of precision."
    )
    int32 = _signature(x=(np.int32, (None,)))
    assert refused({"inputs": [1, 2**31]}, int32) == (
        "JSON Value: 2147483648 Type: Number is not of expected type: int32"
    )


# -- the documented and implemented errors ------------------------------------------


def test_malformed_bodies() -> None:
    assert refused(b"") == "JSON Parse error: The document is empty"
    assert refused(b"{").startswith("JSON Parse error: ")
    assert refused(b"[1]") == "JSON Value: [\n    1\n] Is not object"
    assert refused({"signature_name": 1, "instances": [1.0]}) == (
        'JSON Value: {\n    "signature_name": 1,\n    "instances": [\n        1.0\n    ]\n} not formatted correctly. '
        "'signature_name' key must be a string value."
    )


def test_both_or_neither_of_instances_and_inputs() -> None:
    assert refused({"instances": [1.0], "inputs": [1.0]}) == (
        'JSON Value: {\n    "instances": [\n        1.0\n    ],\n    "inputs": [\n        1.0\n    ]\n} '
        "Not formatted correctly expecting only one of 'inputs' or 'instances' keys to exist "
    )
    assert refused({"signature_name": ""}) == "Missing 'inputs' or 'instances' key"
    assert refused({"instances": 1.0}) == (
        "JSON Value: {\n    \"instances\": 1.0\n} Excepting 'instances' to be an list/array"
    )
    assert refused({"instances": []}) == "JSON Value: {\n    \"instances\": []\n} No values in 'instances' array"


def test_unknown_signature() -> None:
    assert refused({"signature_name": "nope", "instances": [1.0]}) == (
        'Serving signature name: "nope" not found in signature def'
    )
    assert refused({"instances": [1.0]}, _signature()) == "Failed to get input map for signature: DEFAULT"


def test_row_format_shape_and_key_errors() -> None:
    pairs = _signature(x=(np.float32, (None, 2)))
    assert refused({"instances": [[1.0, 2.0], [1.0]]}, pairs) == (
        "Failed to process element: 1 of 'instances' list. Error: INVALID_ARGUMENT: Expecting tensor size: 2 but got: 1"
    )
    assert refused({"instances": [[1.0, 2.0], [[1.0], [2.0]]]}, pairs) == (
        "Failed to process element: 1 of 'instances' list. Error: INVALID_ARGUMENT: Expecting shape [2] but got: [2,1]"
    )
    assert refused({"instances": [[[1.0, 2.0], [3.0]]]}, pairs) == (
        "Failed to process element: 0 of 'instances' list. Error: INVALID_ARGUMENT: "
        "Encountered list at unexpected size: 1 at level: 1 expected size: 2"
    )
    assert refused({"instances": [[1.0, [2.0]]]}, pairs) == (
        "Failed to process element: 0 of 'instances' list. Error: INVALID_ARGUMENT: "
        "Encountered list at unexpected level: 1 expected < 1"
    )
    assert refused({"instances": [[[1.0], 2.0]]}, pairs) == (
        "Failed to process element: 0 of 'instances' list. Error: INVALID_ARGUMENT: "
        "JSON Value: 2.0 found at incorrect level: 2 in the JSON DOM. Expected at level: 2"
    )
    assert refused({"instances": [1.0, {"x": 1.0}]}) == "Expecting value/list but got object at item 1 of input list"
    assert refused({"instances": [{"x": 1.0}, 2.0]}) == "Expecting object but got list at item 1 of input list"
    assert refused({"instances": [{"x": 1.0, "y": 2}]}) == (
        "Failed to process element: 0 key: y of 'instances' list. Error: INVALID_ARGUMENT: "
        "JSON object: does not have named input: y"
    )
    two = _signature(a=(np.float32, (None,)), b=(np.float32, (None,)))
    assert refused({"instances": [{"a": 1.0}]}, two) == (
        "Failed to process element: 0 of 'instances' list. JSON object: {\n    \"a\": 1.0\n} keys must be equal to: a,b"
    )
    assert refused({"instances": [1.0, 2.0]}, two) == (
        "instances is a plain list, but expecting list of objects as multiple input tensors required as per "
        "tensorinfo_map"
    )
    assert refused({"inputs": [1.0]}, two) == (
        "inputs is a plain value/list, but expecting an object as multiple input tensors required as per tensorinfo_map"
    )
    assert refused({"inputs": {"a": [1.0]}}, two) == "Missing named input: b in 'inputs' object."


def test_value_type_errors() -> None:
    strings = _signature(x=(object, (None,)))
    assert refused({"inputs": ["a", 1]}, strings) == "JSON Value: 1 Type: Number is not of expected type: string"
    assert refused({"inputs": [{"b64": "!!"}]}, strings) == "Unable to base64 decode"
    assert refused({"inputs": [{"b64": "YQ==", "x": 1}]}, strings) == (
        'JSON Value: {\n    "b64": "YQ==",\n    "x": 1\n} not formatted correctly for base64 data'
    )
    assert refused({"inputs": ["a"]}) == 'JSON Value: "a" Type: String is not of expected type: float'
    assert refused({"inputs": [None]}) == "JSON Value: null Type: Null is not of expected type: float"
    assert refused({"inputs": [{"b64": "YQ=="}]}) == (
        'JSON Value: {\n    "b64": "YQ=="\n} Type: Object is not of expected type: float'
    )


# -- answers ---------------------------------------------------------------------------


def _request(row_format: bool) -> PredictRequest:
    return PredictRequest("", {}, row_format)


def test_row_format_answers() -> None:
    single = predict_response(_request(True), {"y": np.array([3.5, 4.0, 5.5], np.float32)})
    assert single == {"predictions": [3.5, 4.0, 5.5]}
    several = predict_response(_request(True), {"b": np.array([[1, 2], [3, 4]]), "a": np.array([0.5, 1.5], np.float32)})
    assert several == {"predictions": [{"a": 0.5, "b": [1, 2]}, {"a": 1.5, "b": [3, 4]}]}
    with pytest.raises(RequestError, match="Tensor name: b has inconsistent batch size: 1 expecting: 2"):
        predict_response(_request(True), {"a": np.zeros(2), "b": np.zeros(1)})
    with pytest.raises(RequestError, match="Tensor name: a has no shape information "):
        predict_response(_request(True), {"a": np.array(1, np.float32)})


def test_columnar_answers() -> None:
    assert predict_response(_request(False), {"y": np.array([3.5], np.float32)}) == {"outputs": [3.5]}
    assert predict_response(_request(False), {"y": np.array(2, np.float32)}) == {"outputs": 2.0}
    several = predict_response(_request(False), {"a": np.array([1, 2]), "b": np.array([[True]])})
    assert several == {"outputs": {"a": [1, 2], "b": [[True]]}}


def test_bytes_outputs_are_b64_only_when_named_so() -> None:
    outputs = {"echo_bytes": np.array([b"\xff\x00"], object), "text": np.array(["caf\u00e9".encode()], object)}
    assert predict_response(_request(True), outputs) == {
        "predictions": [{"echo_bytes": {"b64": "/wA="}, "text": "caf\u00e9"}]
    }


def test_float32_outputs_read_back_as_tf_serving_writes_them() -> None:
    values = np.array([0.1, 1 / 3, 1e-7, 123456789, np.nan, np.inf, -np.inf], np.float32)
    answer = dumps(predict_response(_request(False), {"y": values}))
    # 6 significant digits when they read back as the same float32, else 9; NaN and infinities as tokens.
    assert answer == b'{"outputs":[0.1,0.333333343,1e-07,123456792.0,NaN,Infinity,-Infinity]}'
    doubles = dumps(predict_response(_request(False), {"y": np.array([0.1, 1 / 3])}))
    assert json.loads(doubles)["outputs"] == [0.1, 1 / 3]


def test_dumps_is_compact_utf8() -> None:
    assert (
        dumps({"predictions": ["\u00e9t\u00e9"], "n": [1, 2.5]})
        == '{"predictions":["\u00e9t\u00e9"],"n":[1,2.5]}'.encode()
    )


# -- the documented examples end to end, against real SavedModels ----------------------


@pytest.fixture(scope="module")
def servables(saved_models: dict[str, Path]) -> dict[str, Servable]:
    return {name: Servable.load(name, 1, saved_models[name]) for name in (HALF_PLUS_TWO, MULTI_IO, STRINGS, WIDE)}


def _predict(servable: Servable, body: bytes) -> object:
    request = parse_predict(body, servable.signature)
    return json.loads(dumps(predict_response(request, servable.run(request.signature_name, request.inputs))))


@pytest.mark.integration
def test_documented_examples_against_savedmodels(servables: dict[str, Servable]) -> None:
    half = servables[HALF_PLUS_TWO]
    assert _predict(half, b'{"instances": [1.0,2.0,5.0]}') == {"predictions": [2.5, 3.0, 4.5]}
    assert _predict(half, b'{"signature_name": "half_plus_three", "instances": [1.0,2.0,5.0]}') == {
        "predictions": [3.5, 4.0, 5.5]
    }
    assert _predict(half, b'{"inputs": {"x": [1.0, 2.0, 5.0]}}') == {"outputs": [2.5, 3.0, 4.5]}
    assert _predict(half, b'{"instances": [{"x": 1.0}, {"x": 2}]}') == {"predictions": [2.5, 3.0]}
    nan = _predict(half, b'{"instances": [NaN, Infinity]}')
    assert math.isnan(nan["predictions"][0]) and nan["predictions"][1] == math.inf  # type: ignore[index]

    multi = servables[MULTI_IO]
    rows = b'{"instances": [{"a": 0.5, "b": [1, 2]}, {"a": 1.5, "b": [3, 4]}]}'
    assert _predict(multi, rows) == {"predictions": [{"sum": 3.5, "twice": [2, 4]}, {"sum": 8.5, "twice": [6, 8]}]}
    columns = b'{"inputs": {"a": [0.5, 1.5], "b": [[1, 2], [3, 4]]}}'
    assert _predict(multi, columns) == {"outputs": {"sum": [3.5, 8.5], "twice": [[2, 4], [6, 8]]}}

    strings = servables[STRINGS]
    documented = b'{"instances": [{"b64": "aW1hZ2UgYnl0ZXM="}, {"b64": "YXdlc29tZSBpbWFnZSBieXRlcw=="}]}'
    assert _predict(strings, documented) == {
        "predictions": [
            {"echo_bytes": {"b64": "aW1hZ2UgYnl0ZXM="}, "length": 11},
            {"echo_bytes": {"b64": "YXdlc29tZSBpbWFnZSBieXRlcw=="}, "length": 19},
        ]
    }
    assert _predict(strings, b'{"instances": ["foo", "bar", "baz"]}') == {
        "predictions": [
            {"echo_bytes": {"b64": base64.b64encode(s).decode()}, "length": 3} for s in (b"foo", b"bar", b"baz")
        ]
    }

    wide = servables[WIDE]
    answer = _predict(wide, b'{"instances": [{"city": 1, "age_bucket": 2}]}')
    (prediction,) = answer["predictions"]  # type: ignore[index]
    assert set(prediction) == {"logit", "probability"}
    assert prediction["probability"] == pytest.approx(1 / (1 + math.exp(-prediction["logit"])), rel=1e-6)
