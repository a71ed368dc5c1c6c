"""TensorFlow Serving's REST JSON for ``:predict``: requests in, answers out, errors in its words.

The formats (https://www.tensorflow.org/tfx/serving/api_rest) and their edge cases follow TF
Serving's own implementation (``tensorflow_serving/util/json_tensor.cc``):

- a request names an optional ``signature_name`` and carries either ``instances`` (row format: a
  list with one item per example, objects keyed by input name, or bare values when the signature
  has one input) or ``inputs`` (columnar: an object keyed by input name, or a bare value/list);
- values are typed by the signature: an int64 input refuses ``1.5`` and a float input refuses a
  string or an integer it cannot hold exactly; a string input takes ``{"b64": "..."}`` for bytes;
- every example of a row request must have the same shape; lists must be rectangular;
- answers mirror the request: ``{"predictions": [...]}`` (one output: its values; several: one
  object per row) or ``{"outputs": ...}``; string outputs whose name ends in ``_bytes`` are written
  as ``{"b64": ...}``; NaN and infinities as the tokens ``NaN``, ``Infinity``, ``-Infinity``.

Error messages are TF Serving's texts (an HTTP layer answers 400 ``{"error": message}``), except
JSON syntax errors, which carry Python's description of the fault where TF Serving carries
rapidjson's. Float outputs are the numbers TF Serving writes (float32 values as their shortest
6-digit or 9-digit decimal, so a client parses the same double), though not always the same text.

Parsing is built for single-example requests: scalars are checked one by one in plain Python,
rectangular numeric lists go through one ``np.array`` call, and only irregular input takes the
slow path that finds TF Serving's exact error.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from weiflow.serving.servable import ServableError, Signature, TensorInfo

__all__ = ["PredictRequest", "RequestError", "dumps", "parse_predict", "predict_response"]

_B64 = "b64"
_BYTES_SUFFIX = "_bytes"  # TF Serving's convention: such string outputs are binary
_STATUS_PREFIX = "INVALID_ARGUMENT: "  # how absl::Status::ToString() words a wrapped error


class RequestError(ValueError):
    """A request TF Serving would refuse with INVALID_ARGUMENT; ``str()`` is its message."""


class _Invalid(Exception):
    """An inner conversion error, wrapped with the element it came from before it reaches the client."""


@dataclass(frozen=True)
class PredictRequest:
    """A parsed ``:predict`` body: which signature, its inputs as arrays, and which format answers."""

    signature_name: str
    inputs: dict[str, np.ndarray]
    row_format: bool


# -- requests ------------------------------------------------------------------------


def parse_predict(body: bytes, signature_for: Callable[[str], Signature]) -> PredictRequest:
    """Parse a ``:predict`` body against the signature it names (``signature_for("")``: the default).

    A :class:`RequestError` with TF Serving's message for anything it would refuse; an unknown
    signature raised by ``signature_for`` as a :class:`ServableError` becomes one too.
    """
    if not body:
        raise RequestError("JSON Parse error: The document is empty")
    try:
        document = json.loads(body)
    except json.JSONDecodeError as exc:
        raise RequestError(f"JSON Parse error: {exc.msg} at offset: {exc.pos}") from None
    except UnicodeDecodeError as exc:
        raise RequestError(f"JSON Parse error: Invalid encoding in string. at offset: {exc.start}") from None
    if type(document) is not dict:
        raise RequestError(f"JSON Value: {_value_text(document)} Is not object")
    signature_name = document.get("signature_name", "")
    if type(signature_name) is not str:
        raise RequestError(
            f"JSON Value: {_value_text(document)} not formatted correctly. 'signature_name' key must be a string value."
        )
    try:
        signature = signature_for(signature_name)
    except ServableError as exc:
        if exc.code != "INVALID_ARGUMENT":
            raise
        raise RequestError(exc.message) from None
    infos = signature.inputs
    if not infos:
        raise RequestError(f"Failed to get input map for signature: {signature_name or 'DEFAULT'}")
    # A body without a JSON true/false cannot smuggle a boolean into a numeric list (NumPy would
    # read True as 1), so such lists may take the one-call NumPy path.
    numeric_lists_fast = b"true" not in body and b"false" not in body
    if "instances" in document:
        if "inputs" in document:
            raise RequestError(
                f"JSON Value: {_value_text(document)} Not formatted correctly expecting only one of "
                "'inputs' or 'instances' keys to exist "
            )
        instances = document["instances"]
        if type(instances) is not list:
            raise RequestError(f"JSON Value: {_value_text(document)} Excepting 'instances' to be an list/array")
        if not instances:
            raise RequestError(f"JSON Value: {_value_text(document)} No values in 'instances' array")
        inputs = _rows(instances, infos, numeric_lists_fast)
        return PredictRequest(signature_name, inputs, row_format=True)
    if "inputs" in document:
        try:
            inputs = _columns(document["inputs"], infos, numeric_lists_fast)
        except _Invalid as exc:
            raise RequestError(str(exc)) from None
        return PredictRequest(signature_name, inputs, row_format=False)
    raise RequestError("Missing 'inputs' or 'instances' key")


def _is_b64(value: object) -> bool:
    return type(value) is dict and len(value) == 1 and type(value.get(_B64)) is str


def _is_named_object(value: object) -> bool:
    return type(value) is dict and not _is_b64(value)


class _Column:
    """The values one input collects over the examples of a row request, checked for equal shapes."""

    __slots__ = ("info", "items", "shape", "size")

    def __init__(self, info: TensorInfo) -> None:
        self.info = info
        self.items: list[Any] = []
        self.shape: tuple[int, ...] | None = None
        self.size = 0

    def add(self, value: object, fast: bool) -> None:
        if type(value) is list:
            item: Any = _array(value, self.info, fast)
            shape, size = item.shape, item.size
        else:
            item, shape, size = _value(value, self.info, 0, 0), (), 1
        if self.shape is None:
            self.shape, self.size = shape, size
        elif size != self.size:
            raise _Invalid(f"Expecting tensor size: {self.size} but got: {size}")
        elif shape != self.shape:
            raise _Invalid(f"Expecting shape {_shape_text(self.shape)} but got: {_shape_text(shape)}")
        self.items.append(item)

    def tensor(self) -> np.ndarray:
        if self.shape == ():
            return _scalars_array(self.items, self.info.dtype)
        return np.stack(self.items)


def _rows(instances: list[Any], infos: dict[str, TensorInfo], fast: bool) -> dict[str, np.ndarray]:
    if type(instances[0]) is not dict and len(infos) > 1:
        raise RequestError(
            "instances is a plain list, but expecting list of objects as multiple input tensors required "
            "as per tensorinfo_map"
        )
    columns = {name: _Column(info) for name, info in infos.items()}
    if _is_named_object(instances[0]):
        for index, element in enumerate(instances):
            if not _is_named_object(element):
                raise RequestError(f"Expecting object but got list at item {index} of input list")
            for name, value in element.items():
                try:
                    column = columns.get(name)
                    if column is None:
                        raise _Invalid(f"JSON object: does not have named input: {name}")
                    column.add(value, fast)
                except _Invalid as exc:
                    raise RequestError(
                        f"Failed to process element: {index} key: {name} of 'instances' list. "
                        f"Error: {_STATUS_PREFIX}{exc}"
                    ) from None
            if len(element) != len(columns):  # every key is known by now: some input is missing
                raise RequestError(
                    f"Failed to process element: {index} of 'instances' list. JSON object: "
                    f"{_value_text(element)} keys must be equal to: {','.join(sorted(columns))}"
                )
    else:
        column = next(iter(columns.values()))
        for index, element in enumerate(instances):
            if _is_named_object(element):
                raise RequestError(f"Expecting value/list but got object at item {index} of input list")
            try:
                column.add(element, fast)
            except _Invalid as exc:
                raise RequestError(
                    f"Failed to process element: {index} of 'instances' list. Error: {_STATUS_PREFIX}{exc}"
                ) from None
    return {name: column.tensor() for name, column in columns.items()}


def _columns(value: object, infos: dict[str, TensorInfo], fast: bool) -> dict[str, np.ndarray]:
    if not _is_named_object(value):
        if len(infos) > 1:
            raise _Invalid(
                "inputs is a plain value/list, but expecting an object as multiple input tensors required "
                "as per tensorinfo_map"
            )
        name, info = next(iter(infos.items()))
        return {name: _tensor(value, info, fast)}
    assert isinstance(value, dict)
    tensors: dict[str, np.ndarray] = {}
    for name, info in sorted(infos.items()):
        if name not in value:
            raise _Invalid(f"Missing named input: {name} in 'inputs' object.")
        tensors[name] = _tensor(value[name], info, fast)
    # Keys the signature does not name are ignored, as TF Serving ignores them.
    return tensors


def _tensor(value: object, info: TensorInfo, fast: bool) -> np.ndarray:
    if type(value) is list:
        return _array(value, info, fast)
    return _scalars_array([_value(value, info, 0, 0)], info.dtype).reshape(())


def _scalars_array(values: list[Any], dtype: np.dtype[Any]) -> np.ndarray:
    if dtype.kind == "O":
        array = np.empty(len(values), dtype=object)
        array[:] = values
        return array
    if dtype.kind in "iu" and dtype.itemsize < 4:
        # TF Serving stores int8/int16/uint8 values as int32 and truncates them into the tensor.
        return np.asarray(values, dtype=np.int64).astype(dtype)
    return np.asarray(values, dtype=dtype)


# Which NumPy kinds a list may infer to and still take the fast path, by target kind.
_FAST_KINDS = {"f": "if", "i": "i", "u": "iu", "b": "b"}
_INT_RANGES = {
    np.dtype(np.int32): (-(2**31), 2**31 - 1),
    np.dtype(np.int16): (-(2**31), 2**31 - 1),
    np.dtype(np.int8): (-(2**31), 2**31 - 1),
    np.dtype(np.uint8): (-(2**31), 2**31 - 1),
    np.dtype(np.uint32): (0, 2**32 - 1),
    np.dtype(np.uint64): (0, 2**64 - 1),
}


def _array(value: list[Any], info: TensorInfo, fast: bool) -> np.ndarray:
    """A (nested) list as a dense array of the input's dtype, or TF Serving's error for it."""
    dtype = info.dtype
    if fast and dtype.kind in _FAST_KINDS:
        try:
            inferred = np.array(value)
        except (ValueError, OverflowError):  # ragged, or an integer beyond 64 bits
            inferred = None
        if inferred is not None and inferred.dtype.kind in _FAST_KINDS[dtype.kind]:
            converted = _fast_convert(inferred, dtype)
            if converted is not None:
                return converted
    shape = _dense_shape(value)
    values: list[Any] = []
    _fill(value, info, 0, shape, values)
    return _scalars_array(values, dtype).reshape(shape)


def _fast_convert(inferred: np.ndarray, dtype: np.dtype[Any]) -> np.ndarray | None:
    """``inferred`` as ``dtype`` when no value would be refused by TF Serving; None sends it the slow way."""
    if inferred.size == 0:
        return inferred.astype(dtype) if inferred.dtype.kind != "f" or dtype.kind == "f" else None
    kind = dtype.kind
    if kind == "f":
        if inferred.dtype.kind == "i":
            # Integers a float holds exactly: |v| < 2**digits.
            limit = 2**24 - 1 if dtype.itemsize == 4 else 2**53 - 1
            if int(inferred.max()) > limit or int(inferred.min()) < -limit:
                return None
            return inferred.astype(dtype)
        with np.errstate(over="ignore"):  # overflow is detected just below
            converted = inferred.astype(dtype)
        overflowed = dtype.itemsize < 8 and not np.isfinite(converted).all()
        if overflowed and (np.isfinite(inferred) & ~np.isfinite(converted)).any():  # beyond float32's range
            return None
        return converted
    if kind in "iu":
        bounds = _INT_RANGES.get(dtype)
        if bounds is not None and (int(inferred.min()) < bounds[0] or int(inferred.max()) > bounds[1]):
            return None
        return inferred.astype(dtype)
    return inferred  # bool


def _dense_shape(value: object) -> tuple[int, ...]:
    """The shape TF Serving reads off a value: the length of the first list at each depth."""
    dims: list[int] = []
    while type(value) is list:
        dims.append(len(value))
        if not value:
            break
        value = value[0]
    return tuple(dims)


def _fill(value: object, info: TensorInfo, level: int, shape: tuple[int, ...], out: list[Any]) -> None:
    rank = len(shape)
    if type(value) is not list:
        out.append(_value(value, info, level, rank))
        return
    if level >= rank:
        raise _Invalid(f"Encountered list at unexpected level: {level} expected < {rank}")
    if len(value) != shape[level]:
        raise _Invalid(
            f"Encountered list at unexpected size: {len(value)} at level: {level} expected size: {shape[level]}"
        )
    for item in value:
        _fill(item, info, level + 1, shape, out)


def _value(value: object, info: TensorInfo, level: int, rank: int) -> Any:
    """One leaf value checked against the input's dtype, as TF Serving's AddValueToTensor checks it."""
    if level != rank:
        raise _Invalid(
            f"JSON Value: {_value_text(value)} found at incorrect level: {level + 1} in the JSON DOM. "
            f"Expected at level: {rank}"
        )
    dtype = info.dtype
    kind = dtype.kind
    is_bool = isinstance(value, bool)
    if kind == "f":
        if isinstance(value, float):
            if dtype.itemsize == 4 and math.isfinite(value) and abs(value) > _FLOAT32_MAX:
                raise _Invalid(f"Cannot convert JSON value: {_value_text(value)} to float without loss of precision.")
            return value
        if isinstance(value, int) and not is_bool:
            limit = 2**24 - 1 if dtype.itemsize == 4 else 2**53 - 1
            if abs(value) > limit:
                target = "float" if dtype.itemsize == 4 else "double"
                raise _Invalid(
                    f"Cannot convert JSON value: {_value_text(value)} to {target} without loss of precision."
                )
            return value
    elif kind in "iu":
        if isinstance(value, int) and not is_bool:
            low, high = _INT_RANGES.get(dtype, (-(2**63), 2**63 - 1))
            if low <= value <= high:
                return value
    elif kind == "b":
        if is_bool:
            return value
    elif kind == "O":
        if isinstance(value, str):
            return value.encode()
        if isinstance(value, dict):
            return _decode_b64(value)
    else:
        raise _Invalid(f"Conversion of JSON Value: {_value_text(value)} to type: {_dtype_text(dtype)}")
    raise _Invalid(
        f"JSON Value: {_value_text(value)} Type: {_json_type(value)} is not of expected type: {_dtype_text(dtype)}"
    )


_FLOAT32_MAX = float(np.finfo(np.float32).max)


def _decode_b64(value: object) -> bytes:
    if not _is_b64(value):
        raise _Invalid(f"JSON Value: {_value_text(value)} not formatted correctly for base64 data")
    assert isinstance(value, dict)
    text: str = value[_B64]
    try:
        # absl::Base64Unescape accepts missing padding; Python's decoder needs it.
        return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise _Invalid("Unable to base64 decode") from None


# -- answers -------------------------------------------------------------------------


def predict_response(request: PredictRequest, outputs: dict[str, np.ndarray]) -> dict[str, Any]:
    """The answer TF Serving gives for ``request``: ``predictions`` (row format) or ``outputs``."""
    if not outputs:
        raise RequestError("Cannot convert empty tensor map to JSON")
    names = sorted(outputs)
    if not request.row_format:
        if len(names) == 1:
            return {"outputs": _json_values(names[0], outputs[names[0]])}
        return {"outputs": {name: _json_values(name, outputs[name]) for name in names}}
    batch_size = -1
    for name in names:
        array = outputs[name]
        if array.ndim == 0:
            raise RequestError(f"Tensor name: {name} has no shape information ")
        if batch_size >= 0 and array.shape[0] != batch_size:
            raise RequestError(
                f"Tensor name: {name} has inconsistent batch size: {array.shape[0]} expecting: {batch_size}"
            )
        batch_size = array.shape[0]
    if len(names) == 1:
        return {"predictions": _json_values(names[0], outputs[names[0]])}
    columns = [(name, _json_values(name, outputs[name])) for name in names]
    return {"predictions": [{name: values[row] for name, values in columns} for row in range(batch_size)]}


def _json_values(name: str, array: np.ndarray) -> Any:
    """An output tensor as nested Python values that serialize to what TF Serving writes."""
    kind = array.dtype.kind
    if kind == "f" and array.dtype.itemsize < 8:
        return _float32_values(array)
    if kind in {"O", "S"}:
        if name.endswith(_BYTES_SUFFIX):
            flat: list[Any] = [{_B64: base64.b64encode(bytes(v)).decode("ascii")} for v in array.reshape(-1)]
        else:
            flat = [v.decode("utf-8", errors="replace") if isinstance(v, bytes) else str(v) for v in array.reshape(-1)]
        return _nest(flat, array.shape)
    if kind not in "biu" and kind != "f":
        raise RequestError(f"Failed to write JSON value for tensor type: {_dtype_text(array.dtype)}")
    return array.tolist()


def _float32_values(array: np.ndarray) -> Any:
    """Float32 values as the doubles a client reads from TF Serving's text for them.

    TF Serving writes a float32 as its 6-significant-digit decimal when that reads back as the same
    float32, else with 9 digits; a client parses that text as a double. Writing the float32 widened
    to double instead would give 0.10000000149011612 where TF Serving gives 0.1.
    """
    out: list[float] = array.astype(np.float32).reshape(-1).tolist()  # exact float32 values, as doubles
    for index, value in enumerate(out):
        if math.isfinite(value):
            short = float(f"{value:.6g}")
            out[index] = short if _reads_back_as_float32(short, value) else float(f"{value:.9g}")
    return _nest(out, array.shape)


_FLOAT32 = struct.Struct("<f")


def _reads_back_as_float32(decimal: float, value: float) -> bool:
    try:
        return bool(_FLOAT32.unpack(_FLOAT32.pack(decimal))[0] == value)
    except OverflowError:  # rounded up past float32's largest value
        return False


def _nest(flat: list[Any], shape: tuple[int, ...]) -> Any:
    if not shape:
        return flat[0]
    if len(shape) == 1:
        return flat
    step = len(flat) // shape[0] if shape[0] else 0
    return [_nest(flat[i * step : (i + 1) * step], shape[1:]) for i in range(shape[0])]


def dumps(answer: dict[str, Any]) -> bytes:
    """``answer`` as compact JSON bytes; NaN and infinities as TF Serving's tokens, UTF-8 as is."""
    return json.dumps(answer, ensure_ascii=False, separators=(",", ":")).encode()


# -- TF Serving's texts for values in error messages --------------------------------


def _json_type(value: object) -> str:
    if value is None:
        return "Null"
    if value is True:
        return "True"
    if value is False:
        return "False"
    if isinstance(value, dict):
        return "Object"
    if isinstance(value, list):
        return "Array"
    if isinstance(value, str):
        return "String"
    return "Number"


_DTYPE_TEXTS = {
    "float32": "float",
    "float64": "double",
    "float16": "half",
    "object": "string",
    "bool": "bool",
    "complex64": "complex64",
    "complex128": "complex128",
}


def _dtype_text(dtype: np.dtype[Any]) -> str:
    """TensorFlow's DataTypeString: float, double, int64, string ..."""
    return _DTYPE_TEXTS.get(dtype.name, dtype.name)


def _shape_text(shape: tuple[int, ...]) -> str:
    return "[" + ",".join(str(dim) for dim in shape) + "]"


def _decimal_text(value: float) -> str:
    """TF Serving's WriteDecimal for a double: 6 significant digits if they read back, else 17; '.0' if whole."""
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "-Infinity" if value < 0 else "Infinity"
    text = f"{value:.6g}"
    if float(text) != value:
        text = f"{value:.17g}"
    if "." not in text and "e" not in text:
        text += ".0"
    return text


MAX_ERROR_VALUE_CHARS = 4096  # an error quotes at most this much of the request (TF Serving quotes it all)


def _value_text(value: object, depth: int = 0) -> str:
    """A JSON value as TF Serving's JsonValueToString prints it (rapidjson's PrettyWriter, 4-space indent),
    cut after :data:`MAX_ERROR_VALUE_CHARS`: an 8 MB body must not come back as an 18 MB error."""
    text = _full_value_text(value, depth)
    if depth == 0 and len(text) > MAX_ERROR_VALUE_CHARS:
        return text[:MAX_ERROR_VALUE_CHARS] + f"... ({len(text) - MAX_ERROR_VALUE_CHARS} more characters)"
    return text


def _full_value_text(value: object, depth: int = 0) -> str:
    if isinstance(value, float) and depth == 0:
        return _decimal_text(value)
    if isinstance(value, dict):
        if not value:
            return "{}"
        pad = "    " * (depth + 1)
        members = [f"{pad}{json.dumps(k, ensure_ascii=False)}: {_value_text(v, depth + 1)}" for k, v in value.items()]
        return "{\n" + ",\n".join(members) + "\n" + "    " * depth + "}"
    if isinstance(value, list):
        if not value:
            return "[]"
        pad = "    " * (depth + 1)
        items = [f"{pad}{_value_text(v, depth + 1)}" for v in value]
        return "[\n" + ",\n".join(items) + "\n" + "    " * depth + "]"
    if isinstance(value, float):
        return _decimal_text(value) if not math.isfinite(value) else repr(value)
    return json.dumps(value, ensure_ascii=False)
