"""One loaded model version: its signatures, a fast call path, TF Serving's metadata and warm-up.

A :class:`Servable` wraps ``tf.saved_model.load`` of one version directory. It keeps each serving
signature's concrete function (called directly: no ``tf.function`` tracing per request), the
signature's inputs and outputs as plain :class:`Signature` data (what the REST layer needs to
parse a request without touching TensorFlow), the version's feature map when it has one
(``assets.extra/featuremap.json``, mapped online by :class:`~weiflow.features.online.OnlineFeatures`),
and the answer TensorFlow Serving gives for ``GET /v1/models/{m}/versions/{v}/metadata``, built
from the SavedModel's own ``SignatureDef`` protos with TF Serving's JSON options.

Error texts that a client can see (unknown signature, missing or extra inputs) are TF Serving's
own words, so a client written against it reads the same thing.

TensorFlow is imported when a model is loaded, never at import time.
"""

from __future__ import annotations

import logging
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from weiflow.errors import WeiflowError
from weiflow.features.featuremap import FeatureMap
from weiflow.features.online import OnlineFeatures
from weiflow.modelrepo.contracts import ASSETS_EXTRA_DIR, FEATURE_MAP_PATH, SAVED_MODEL_FILES

__all__ = [
    "DEFAULT_SIGNATURE",
    "WARMUP_FILE",
    "Servable",
    "ServableError",
    "Signature",
    "TensorInfo",
]

log = logging.getLogger(__name__)

DEFAULT_SIGNATURE = "serving_default"
WARMUP_FILE = f"{ASSETS_EXTRA_DIR}/tf_serving_warmup_requests"  # TF Serving's name and place
SERVE_TAG = "serve"
_FEATURE_MAP_EXAMPLES = 8
_NUMERIC_EXAMPLES = (0.0, 1.0, -1.0, 0.5, 2.0, -0.5, 10.0, 0.25)


class ServableError(WeiflowError):
    """A model version cannot load, warm up or answer a request; ``hint`` says what to do.

    ``code`` is the gRPC status name TensorFlow Serving would report (``INVALID_ARGUMENT`` for a bad
    request, ``FAILED_PRECONDITION`` for a model that cannot serve): the HTTP layer maps it to a status.
    """

    def __init__(self, message: str, hint: str | None = None, *, code: str = "INVALID_ARGUMENT") -> None:
        self.message = message
        self.hint = hint
        self.code = code
        super().__init__(message + (f"\n    hint: {hint}" if hint else ""))


@dataclass(frozen=True)
class TensorInfo:
    """One named input or output of a signature: its alias, NumPy dtype and shape (None: any size)."""

    name: str
    dtype: np.dtype[Any]
    shape: tuple[int | None, ...]


@dataclass(frozen=True)
class Signature:
    """A serving signature as plain data: what a request must carry and what it gets back."""

    name: str
    method_name: str
    inputs: dict[str, TensorInfo]
    outputs: dict[str, TensorInfo]


class Servable:
    """One loaded version of one model. Safe to call from several threads (TensorFlow is)."""

    model: str
    version: int
    path: Path
    feature_map: FeatureMap | None
    online: OnlineFeatures | None
    load_seconds: float
    signatures: dict[str, Signature]

    def __init__(
        self,
        model: str,
        version: int,
        path: Path,
        *,
        loaded: Any,
        signature_defs: dict[str, Any],
        feature_map: FeatureMap | None,
        load_seconds: float,
    ) -> None:
        self.model = model
        self.version = version
        self.path = path
        self.feature_map = feature_map
        self.online = OnlineFeatures(feature_map) if feature_map is not None and feature_map.fitted else None
        self.load_seconds = load_seconds
        self._loaded = loaded
        self._signature_defs = signature_defs
        functions = dict(getattr(loaded, "signatures", {}))
        names = sorted(functions, key=lambda name: (name != DEFAULT_SIGNATURE, name))
        self._functions: dict[str, Any] = {name: functions[name] for name in names}
        self.signatures = {name: _signature(name, functions[name], signature_defs.get(name)) for name in names}
        # TensorInfo.shape cannot say "any rank"; such inputs skip the shape check.
        self._any_rank = {
            (name, alias)
            for name in names
            for alias, spec in functions[name].structured_input_signature[1].items()
            if spec.shape.rank is None
        }
        self._metadata_signatures: dict[str, Any] | None = None

    # -- loading ---------------------------------------------------------------------

    @classmethod
    def load(cls, model: str, version: int, path: Path) -> Servable:
        """Load the SavedModel in ``path``; a :class:`ServableError` naming it if it is not one or is broken."""
        path = Path(path)
        if not any((path / name).is_file() for name in SAVED_MODEL_FILES):
            raise ServableError(
                f"{path}: not a SavedModel (no {' or '.join(SAVED_MODEL_FILES)})",
                "a version directory holds what tf.saved_model.save wrote; is the copy complete?",
                code="FAILED_PRECONDITION",
            )
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        started = time.perf_counter()
        signature_defs, metadata_signatures = _read_signature_defs(path)
        import tensorflow as tf

        try:
            loaded = tf.saved_model.load(str(path))
        except Exception as exc:  # TensorFlow raises many types for a broken model
            raise ServableError(
                f"{path}: the SavedModel does not load: {type(exc).__name__}: {_first_line(exc)}",
                "export the model again; a half-copied variables/ directory is the usual cause",
                code="FAILED_PRECONDITION",
            ) from None
        feature_map = _read_feature_map(path)
        servable = cls(
            model,
            version,
            path,
            loaded=loaded,
            signature_defs=signature_defs,
            feature_map=feature_map,
            load_seconds=time.perf_counter() - started,
        )
        servable._metadata_signatures = metadata_signatures
        if not servable.signatures:
            raise ServableError(
                f"{path}: the SavedModel has no signatures to serve",
                f"export it with signatures={{'{DEFAULT_SIGNATURE}': ...}}",
                code="FAILED_PRECONDITION",
            )
        return servable

    # -- signatures ------------------------------------------------------------------

    def signature(self, name: str | None = None) -> Signature:
        """The signature ``name`` (None or "" for ``serving_default``), in TF Serving's words if unknown."""
        key = name or DEFAULT_SIGNATURE
        found = self.signatures.get(key)
        if found is None:
            raise ServableError(f'Serving signature name: "{key}" not found in signature def')
        return found

    def run(self, signature: str, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Call ``signature`` on ``inputs`` (converted to the declared dtypes); its outputs as arrays."""
        spec = self.signature(signature)
        declared = spec.inputs
        if len(inputs) != len(declared) or any(name not in declared for name in inputs):
            raise ServableError(_inputs_mismatch(inputs, declared))
        import tensorflow as tf

        feed: dict[str, Any] = {}
        for name, info in declared.items():
            value = inputs[name]
            if not isinstance(value, np.ndarray) or value.dtype != info.dtype:
                value = np.asarray(value, dtype=info.dtype)
            if not _fits(value.shape, info.shape) and (spec.name, name) not in self._any_rank:
                # A loaded signature does not check shapes itself (nor does TF Serving's session feed):
                # a [2,3] batch for a [-1,2] input would be scored into garbage instead of refused.
                sent, takes = _shape_text(value.shape), _shape_text(info.shape)
                raise ServableError(f"input '{name}' has shape {sent}, the signature takes {takes}")
            feed[name] = tf.constant(value)
        function = self._functions.get(spec.name)
        if function is None:
            raise ServableError(f"{self.model} version {self.version} is unloaded", code="FAILED_PRECONDITION")
        try:
            outputs = function(**feed)
        except (TypeError, ValueError, tf.errors.InvalidArgumentError) as exc:
            raise ServableError(_first_line(exc)) from None
        except tf.errors.OpError as exc:
            raise ServableError(_first_line(exc), code="INTERNAL") from None
        return {name: tensor.numpy() for name, tensor in outputs.items()}

    # -- TF Serving's metadata -------------------------------------------------------

    def metadata(self) -> dict[str, Any]:
        """What TF Serving answers for ``GET /v1/models/{m}/versions/{v}/metadata``, as a dict."""
        return {
            "model_spec": {"name": self.model, "signature_name": "", "version": str(self.version)},
            "metadata": {"signature_def": {"signature_def": self._metadata_signatures or {}}},
        }

    # -- warm-up ---------------------------------------------------------------------

    def warmup(self, *, max_records: int = 1000) -> int:
        """Replay the version's warm-up requests (or feature-map examples); the number of requests run.

        TF Serving's ``assets.extra/tf_serving_warmup_requests`` (a TFRecord of ``PredictionLog``) when
        present: its ``predict_log`` requests are run, other kinds skipped (this service has no
        classify or regress API). Otherwise a batch of examples made from the signature and the
        feature map's cardinalities, as the publish load check does. Any output that is NaN or
        infinite refuses the version: better to keep serving the old one.
        """
        warmup_file = self.path / WARMUP_FILE
        if warmup_file.is_file():
            return self._replay_warmup_file(warmup_file, max_records)
        # Without serving_default (TF Serving serves such models too), the first signature stands in.
        spec = self.signatures.get(DEFAULT_SIGNATURE) or next(iter(self.signatures.values()))
        self._check_finite(self.run(spec.name, self._feature_map_examples(spec)), "feature-map warm-up examples")
        return 1

    def _replay_warmup_file(self, warmup_file: Path, max_records: int) -> int:
        import tensorflow as tf
        from tensorflow_serving.apis import prediction_log_pb2

        replayed = 0
        try:
            records = [record.numpy() for record in tf.data.TFRecordDataset(str(warmup_file))]
        except tf.errors.OpError as exc:
            raise ServableError(
                f"{warmup_file}: unreadable warm-up records: {_first_line(exc)}",
                "write it with tf.io.TFRecordWriter, one serialized PredictionLog per record",
                code="FAILED_PRECONDITION",
            ) from None
        if len(records) > max_records:
            # TF Serving refuses the version too, rather than warming up for minutes.
            raise ServableError(
                f"Number of warmup records exceeds the maximum ({max_records}) at {warmup_file}",
                code="FAILED_PRECONDITION",
            )
        for index, record in enumerate(records):
            entry = prediction_log_pb2.PredictionLog()
            try:
                entry.ParseFromString(record)
            except Exception as exc:  # protobuf's DecodeError, not importable under one name everywhere
                raise ServableError(
                    f"{warmup_file}: record {index} is not a PredictionLog: {exc}", code="FAILED_PRECONDITION"
                ) from None
            if entry.WhichOneof("log_type") != "predict_log":
                log.warning("%s: record %d is a %s, skipped", warmup_file, index, entry.WhichOneof("log_type"))
                continue
            request = entry.predict_log.request
            name = request.model_spec.signature_name or DEFAULT_SIGNATURE
            inputs = {alias: tf.make_ndarray(proto) for alias, proto in request.inputs.items()}
            try:
                outputs = self.run(name, inputs)
            except ServableError as exc:
                raise ServableError(
                    f"{warmup_file}: warm-up record {index} failed: {exc.message}", code="FAILED_PRECONDITION"
                ) from None
            self._check_finite(outputs, f"warm-up record {index}")
            replayed += 1
        return replayed

    def _feature_map_examples(self, spec: Signature) -> dict[str, np.ndarray]:
        cards = {k: v for k, v in (self.feature_map.cardinalities() if self.feature_map else {}).items() if v}
        inputs: dict[str, np.ndarray] = {}
        for name, info in spec.inputs.items():
            dims = [_FEATURE_MAP_EXAMPLES if dim is None else dim for dim in info.shape] or [_FEATURE_MAP_EXAMPLES]
            dims[0] = _FEATURE_MAP_EXAMPLES
            count = math.prod(dims)
            kind = info.dtype.kind
            if kind in "iu":
                # Every id valid: cycle through the feature's cardinality.
                values: np.ndarray = np.arange(count, dtype=np.int64) % cards.get(name, 1)
            elif kind == "f":
                values = np.resize(np.asarray(_NUMERIC_EXAMPLES, dtype=np.float64), count)
            elif kind == "b":
                values = np.arange(count) % 2 == 0
            elif kind in "OSU":
                values = np.asarray([b""] * count, dtype=object)
            else:
                raise ServableError(
                    f"{self.path}: input '{name}' has dtype {info.dtype}, which warm-up cannot feed",
                    f"add {WARMUP_FILE} with example requests",
                    code="FAILED_PRECONDITION",
                )
            inputs[name] = values.reshape(dims).astype(info.dtype)
        return inputs

    def _check_finite(self, outputs: dict[str, np.ndarray], what: str) -> None:
        for name, array in sorted(outputs.items()):
            if array.dtype.kind in "fc" and not np.all(np.isfinite(array)):
                bad = int(array.size - np.count_nonzero(np.isfinite(array)))
                raise ServableError(
                    f"{self.path}: output '{name}' is NaN or infinite for {bad} of {array.size} values on {what}",
                    "the version is refused; fix the model (or its inputs' ranges) and publish a new version",
                    code="FAILED_PRECONDITION",
                )

    def close(self) -> None:
        """Drop every TensorFlow reference so the version's memory can be released."""
        self._functions = {}
        self._loaded = None

    def __repr__(self) -> str:
        return f"Servable({self.model!r}, {self.version}, {str(self.path)!r})"


# -- helpers -------------------------------------------------------------------------


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _fits(shape: tuple[int, ...], declared: tuple[int | None, ...]) -> bool:
    if len(shape) != len(declared):
        return False
    return all(want is None or got == want for got, want in zip(shape, declared, strict=True))


def _shape_text(shape: tuple[int | None, ...]) -> str:
    return "[" + ",".join("-1" if dim is None else str(dim) for dim in shape) + "]"


def _inputs_mismatch(inputs: dict[str, Any], declared: dict[str, TensorInfo]) -> str:
    """TF Serving's text (predict_util.cc) for a request whose input names differ from the signature's."""
    sent, wanted = sorted(inputs), sorted(declared)
    if len(sent) != len(wanted):
        extra = sorted(set(sent) - set(wanted))
        missing = sorted(set(wanted) - set(sent))
        return (
            f"input size does not match signature: {len(sent)}!={len(wanted)} len({{{','.join(sent)}}}) != "
            f"len({{{','.join(wanted)}}}). Sent extra: {{{','.join(extra)}}}. "
            f"Missing but required: {{{','.join(missing)}}}."
        )
    alias = next(name for name in sent if name not in declared)
    return (
        f"input tensor alias not found in signature: {alias}. Inputs expected to be in the set {{{','.join(wanted)}}}."
    )


def _read_signature_defs(path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """The serving meta graph's SignatureDef protos by name, and the same as TF Serving prints them."""
    from google.protobuf import json_format, text_format
    from tensorflow.core.protobuf import meta_graph_pb2, saved_model_pb2

    saved_model = saved_model_pb2.SavedModel()
    binary = path / SAVED_MODEL_FILES[0]
    try:
        if binary.is_file():
            saved_model.ParseFromString(binary.read_bytes())
        else:
            text_format.Parse((path / SAVED_MODEL_FILES[1]).read_text(), saved_model)
    except Exception as exc:  # protobuf's DecodeError / ParseError
        raise ServableError(
            f"{path}: the SavedModel's graph does not parse: {_first_line(exc)}",
            "the file is truncated or not a SavedModel; export it again",
            code="FAILED_PRECONDITION",
        ) from None
    if not saved_model.meta_graphs:
        raise ServableError(f"{path}: the SavedModel has no meta graph", code="FAILED_PRECONDITION")
    # TF Serving loads the meta graph tagged exactly {"serve"}.
    graph = next(
        (g for g in saved_model.meta_graphs if list(g.meta_info_def.tags) == [SERVE_TAG]),
        next((g for g in saved_model.meta_graphs if SERVE_TAG in g.meta_info_def.tags), None),
    )
    if graph is None:
        graph = saved_model.meta_graphs[0]
    # TF Serving answers with a tensorflow.serving.SignatureDefMap holding the meta graph's whole map
    # (the init op's entry included), printed with always_print_primitive_fields and
    # preserve_proto_field_names. MetaGraphDef has the same map field and needs no TF Serving import.
    signature_map = meta_graph_pb2.MetaGraphDef(signature_def=graph.signature_def)
    as_json = json_format.MessageToDict(
        signature_map, always_print_fields_with_no_presence=True, preserving_proto_field_name=True
    ).get("signature_def", {})
    return dict(graph.signature_def), as_json


def _read_feature_map(path: Path) -> FeatureMap | None:
    feature_map_file = path / FEATURE_MAP_PATH
    if not feature_map_file.is_file():
        return None
    from weiflow.features.featuremap import FeatureError

    try:
        return FeatureMap.from_json(feature_map_file.read_text(), source=str(feature_map_file))
    except FeatureError as exc:
        raise ServableError(f"{feature_map_file}: {exc.message}", exc.hint, code="FAILED_PRECONDITION") from None


def _signature(name: str, function: Any, proto: Any) -> Signature:
    """A signature's plain description, from the concrete function (and its SignatureDef's method name)."""
    # Loaded signatures always take keyword tensors and return a dict (tf.saved_model.load wraps them so).
    input_specs = function.structured_input_signature[1]
    inputs = {alias: _tensor_info(alias, spec) for alias, spec in sorted(input_specs.items())}
    output_specs = function.structured_outputs
    outputs = {alias: _tensor_info(alias, output_specs[alias]) for alias in sorted(output_specs)}
    method_name = proto.method_name if proto is not None else "tensorflow/serving/predict"
    return Signature(name=name, method_name=method_name, inputs=inputs, outputs=outputs)


def _tensor_info(alias: str, spec: Any) -> TensorInfo:
    dtype = spec.dtype
    numpy_dtype = np.dtype(object) if dtype.name == "string" else np.dtype(dtype.as_numpy_dtype)
    shape = tuple(spec.shape.as_list()) if spec.shape.rank is not None else ()
    return TensorInfo(name=alias, dtype=numpy_dtype, shape=shape)
