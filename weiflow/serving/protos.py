"""The protobuf schemas behind TensorFlow Serving's text-format configuration files.

``--model_config_file`` is a ``ModelServerConfig`` in text format: its schema comes from the
``tensorflow-serving-api`` wheel (``tensorflow_serving.config``), installed with ``--no-deps``
because it declares the full ``tensorflow`` package, which clashes with the pinned
``tensorflow-cpu`` (``./dev`` does it). Its ``config`` modules import only ``google.protobuf``
(about 30 ms), never TensorFlow; its ``apis`` modules do import TensorFlow.

``--batching_parameters_file`` is a ``BatchingParameters`` message, which the wheel does not
ship (it lives in ``tensorflow_serving/servables/tensorflow/session_bundle_config.proto``, part of
the C++ server only). It is declared here, field for field, with TensorFlow Serving's names and
types (``google.protobuf.Int64Value`` wrappers, so ``max_batch_size { value: 128 }``), in a
descriptor pool of its own so it cannot collide with a copy some other package registers.
Only the text format is relied on, which matches fields by name.

Nothing outside :mod:`weiflow.serving.config` sees these types: it turns them into
dataclasses.
"""

from __future__ import annotations

import functools
from typing import Any

from weiflow.errors import ConfigError

__all__ = ["BATCHING_PARAMETERS_FIELDS", "batching_parameters_class", "model_server_config_class"]

# name -> (field number, type, wrapped). The numbers follow session_bundle_config.proto; the two
# large-batch-splitting fields are newer than the rest and are parsed only to be refused clearly.
BATCHING_PARAMETERS_FIELDS: dict[str, tuple[int, str, bool]] = {
    "max_batch_size": (1, "int64", True),
    "batch_timeout_micros": (2, "int64", True),
    "max_enqueued_batches": (3, "int64", True),
    "num_batch_threads": (4, "int64", True),
    "thread_pool_name": (5, "string", True),
    "allowed_batch_sizes": (6, "repeated int64", False),
    "pad_variable_length_inputs": (7, "bool", False),
    "enable_large_batch_splitting": (8, "bool", True),
    "max_execution_batch_size": (9, "int64", True),
}

_INSTALL_HINT = (
    "install TensorFlow Serving's protos without their 'tensorflow' dependency (it clashes with "
    "tensorflow-cpu): pip install --no-deps -c requirements/constraints.txt tensorflow-serving-api "
    "(./dev does this)"
)


@functools.cache
def model_server_config_class() -> Any:
    """TensorFlow Serving's ``ModelServerConfig`` message class (``--model_config_file``)."""
    try:
        from tensorflow_serving.config import model_server_config_pb2
    except ImportError as exc:
        raise ConfigError(
            f"reading --model_config_file needs tensorflow-serving-api ({exc}); {_INSTALL_HINT}"
        ) from None
    return model_server_config_pb2.ModelServerConfig


@functools.cache
def batching_parameters_class() -> Any:
    """A ``tensorflow.serving.BatchingParameters`` message class (``--batching_parameters_file``)."""
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, wrappers_pb2

    field_proto = descriptor_pb2.FieldDescriptorProto
    wrapper_types = {
        "int64": ".google.protobuf.Int64Value",
        "string": ".google.protobuf.StringValue",
        "bool": ".google.protobuf.BoolValue",
    }
    scalar_types = {"int64": field_proto.TYPE_INT64, "bool": field_proto.TYPE_BOOL}

    file = descriptor_pb2.FileDescriptorProto(
        name="weiflow/serving/batching_parameters.proto",
        package="tensorflow.serving",
        syntax="proto3",
        dependency=[wrappers_pb2.DESCRIPTOR.name],
    )
    message = file.message_type.add(name="BatchingParameters")
    for name, (number, type_name, wrapped) in BATCHING_PARAMETERS_FIELDS.items():
        field = message.field.add(name=name, number=number, label=field_proto.LABEL_OPTIONAL)
        if wrapped:
            field.type = field_proto.TYPE_MESSAGE
            field.type_name = wrapper_types[type_name]
        elif type_name.startswith("repeated "):
            field.label = field_proto.LABEL_REPEATED
            field.type = scalar_types[type_name.removeprefix("repeated ")]
        else:
            field.type = scalar_types[type_name]

    pool = descriptor_pool.DescriptorPool()
    pool.AddSerializedFile(wrappers_pb2.DESCRIPTOR.serialized_pb)
    pool.Add(file)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("tensorflow.serving.BatchingParameters"))
