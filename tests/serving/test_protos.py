"""The text-format schemas: TensorFlow Serving's protos as installed, and BatchingParameters declared here."""

from __future__ import annotations

import re
from importlib.metadata import version
from pathlib import Path

from weiflow.serving.protos import BATCHING_PARAMETERS_FIELDS, batching_parameters_class, model_server_config_class

CONSTRAINTS = Path(__file__).resolve().parents[2] / "requirements" / "constraints.txt"


def test_installed_tensorflow_serving_api_is_the_pinned_one() -> None:
    # ./dev installs it apart (--no-deps); a stale .venv would read configs with other protos.
    pin = re.search(r"^tensorflow-serving-api==(\S+)$", CONSTRAINTS.read_text(), re.MULTILINE)
    assert pin, "requirements/constraints.txt pins tensorflow-serving-api"
    assert version("tensorflow-serving-api") == pin.group(1)


def test_model_server_config_is_tensorflow_servings_own() -> None:
    descriptor = model_server_config_class().DESCRIPTOR
    assert descriptor.full_name == "tensorflow.serving.ModelServerConfig"
    assert descriptor.file.name == "tensorflow_serving/config/model_server_config.proto"


def test_batching_parameters_schema() -> None:
    message_class = batching_parameters_class()
    assert message_class is batching_parameters_class()  # built once
    fields = message_class.DESCRIPTOR.fields_by_name
    assert message_class.DESCRIPTOR.full_name == "tensorflow.serving.BatchingParameters"
    assert set(fields) == set(BATCHING_PARAMETERS_FIELDS)
    assert fields["max_batch_size"].message_type.full_name == "google.protobuf.Int64Value"
    assert fields["thread_pool_name"].message_type.full_name == "google.protobuf.StringValue"
    assert fields["enable_large_batch_splitting"].message_type.full_name == "google.protobuf.BoolValue"
    assert fields["allowed_batch_sizes"].is_repeated
    assert fields["pad_variable_length_inputs"].message_type is None
