"""--model_config_file: TensorFlow Serving's model_config_list in protobuf text format."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.serving.conftest import assert_config_error
from weiflow.errors import ConfigError
from weiflow.serving.config import (
    MAX_CONFIG_FILE_BYTES,
    AllVersions,
    LatestVersions,
    ModelConfig,
    SpecificVersions,
    parse_model_config,
    read_model_config_file,
)

# The examples of TensorFlow Serving's configuration guide (serving_config.md), comments added.
TWO_MODELS = """\
# Two models, each serving its latest version (the default policy).
model_config_list {
  config {
    name: 'my_first_model'
    base_path: '/tmp/my_first_model/'
    model_platform: 'tensorflow'
  }
  config {
    name: 'my_second_model'   # a trailing comment
    base_path: '/tmp/my_second_model/'
    model_platform: 'tensorflow'
  }
}
"""

EVERY_POLICY = """\
model_config_list {
  config {
    name: "pinned"
    base_path: "/models/pinned"
    model_platform: "tensorflow"
    model_version_policy {
      specific {
        versions: 43
        versions: 42
      }
    }
    version_labels {
      key: 'stable'
      value: 42
    }
    version_labels {
      key: 'canary'
      value: 43
    }
  }
  config {
    name: "everything"
    base_path: "gs://bucket/models/everything"
    model_platform: "tensorflow"
    model_version_policy { all: {} }
  }
  config {
    name: "latest_two"
    base_path: "/models/latest_two"
    model_platform: "tensorflow"
    model_version_policy { latest { num_versions: 2 } }
  }
}
"""


def test_documented_two_model_example() -> None:
    models = parse_model_config(TWO_MODELS)
    assert models == (
        ModelConfig("my_first_model", "/tmp/my_first_model/"),
        ModelConfig("my_second_model", "/tmp/my_second_model/"),
    )
    assert all(model.version_policy == LatestVersions(1) for model in models)
    assert all(model.platform == "tensorflow" and not model.version_labels for model in models)


def test_every_version_policy_and_labels() -> None:
    pinned, everything, latest_two = parse_model_config(EVERY_POLICY)
    assert pinned.version_policy == SpecificVersions((42, 43))
    assert dict(pinned.version_labels) == {"stable": 42, "canary": 43}
    assert everything.version_policy == AllVersions()
    assert everything.base_path == "gs://bucket/models/everything"
    assert latest_two.version_policy == LatestVersions(2)


def test_compact_spellings_text_format_allows() -> None:
    # Colons before blocks, commas between entries, one line: all valid text format, all seen in the wild.
    text = (
        'model_config_list: { config: { name: "a", base_path: "/a", model_platform: "tensorflow" }, '
        'config: { name: "b", base_path: "/b", model_platform: "tensorflow", '
        "model_version_policy: { specific: { versions: [3, 1] } } }, }"
    )
    a, b = parse_model_config(text)
    assert (a.name, b.name) == ("a", "b")
    assert b.version_policy == SpecificVersions((1, 3))


def test_latest_zero_versions_means_one_as_in_tensorflow_serving() -> None:
    text = 'model_config_list { config { name: "m" base_path: "/m" model_platform: "tensorflow" '
    text += "model_version_policy { latest { } } } }"
    assert parse_model_config(text)[0].version_policy == LatestVersions(1)


def test_deprecated_model_type_tensorflow_is_read_as_the_platform() -> None:
    text = 'model_config_list { config { name: "m" base_path: "/m" model_type: TENSORFLOW } }'
    assert parse_model_config(text)[0].platform == "tensorflow"


def test_read_from_file_names_it_in_errors(tmp_path: Path) -> None:
    good = tmp_path / "models.config"
    good.write_text(TWO_MODELS)
    assert len(read_model_config_file(good)) == 2

    bad = tmp_path / "bad.config"
    bad.write_text("model_config_list {\n  config {\n    nmae: 'x'\n  }\n}\n")
    with pytest.raises(ConfigError) as caught:
        read_model_config_file(bad)
    message = str(caught.value)
    assert message.startswith(f"{bad}:3:5: error: ")
    assert 'no field named "nmae"' in message
    assert "did you mean 'name'?" in message


@pytest.mark.parametrize(
    ("text", "where", "expected", "hint"),
    [
        # Syntax: protobuf's parser gives the line and column.
        (
            "model_config_list {\n  config {\n    name: 'x'\n",
            "3:11",
            'Expected "}"',
            "a block is not closed: a '}' is missing",
        ),
        ("model_config_list {\n  config { name: x }\n}\n", "2:18", "Expected string", "text format"),
        ("model_config_lists {}\n", "1:1", 'no field named "model_config_lists"', "did you mean 'model_config_list'"),
        (
            "model_config_list {\n config {\n  name: 'm'\n  model_version_policy { newest {} }\n }\n}\n",
            "4:26",
            'no field named "newest"',
            "ServableVersionPolicy has the fields all, latest, specific",
        ),
        # Meaning: found after parsing, pointed at the field's line.
        ("", "1:1", "the file lists no models", "model_config_list { config {"),
        ("model_config_list {\n  config {\n    base_path: '/m'\n  }\n}\n", "2:1", "has no name", 'name: "my_model"'),
        (
            "model_config_list {\n  config {\n    name: 'm'\n    model_platform: 'tensorflow'\n  }\n}\n",
            "2:1",
            "model 'm' has no base_path",
            "base_path:",
        ),
        (
            "model_config_list {\n  config {\n    name: 'a/b'\n    base_path: '/m'\n  }\n}\n",
            "3:5",
            "invalid model name 'a/b'",
            "REST paths",
        ),
        (
            "model_config_list {\n  config {\n    name: 'm'\n    base_path: '/m'\n  }\n}\n",
            "2:1",
            "model 'm' has no model_platform",
            'model_platform: "tensorflow"',
        ),
        (
            "model_config_list {\n  config {\n    name: 'm'\n    base_path: '/m'\n"
            "    model_platform: 'pytorch'\n  }\n}\n",
            "5:5",
            "model_platform 'pytorch' is not served",
            "SavedModels",
        ),
        (
            "model_config_list { config {\n name: 'm' base_path: '/m'\n model_type: TENSORFLOW\n"
            " model_platform: 'tensorflow' } }",
            "3:2",
            "both model_type (deprecated) and model_platform",
            "drop model_type",
        ),
        (
            "model_config_list {\n  config {\n    name: 'm'\n    base_path: '/m'\n    model_platform: 'tensorflow'\n"
            "    model_version_policy { specific {} }\n  }\n}\n",
            "6:28",
            "specific version policy lists no versions",
            "latest { num_versions: N }",
        ),
        (
            "model_config_list {\n  config {\n    name: 'm'\n    base_path: '/m'\n    model_platform: 'tensorflow'\n"
            "    model_version_policy { specific { versions: 0 } }\n  }\n}\n",
            "6:39",
            "version 0 cannot exist",
            "1, 2, ...",
        ),
        (
            "model_config_list {\n  config {\n    name: 'm'\n    base_path: '/m'\n    model_platform: 'tensorflow'\n"
            "    version_labels { key: 'stable' value: 1 }\n"
            "    version_labels { key: 'a:b' value: 1 }\n  }\n}\n",
            "7:22",
            "invalid version label 'a:b'",
            "/labels/LABEL",
        ),
        (
            "model_config_list {\n  config { name: 'm' base_path: '/m' model_platform: 'tensorflow' }\n"
            "  # the same model again, by mistake\n"
            "  config { name: 'm' base_path: '/m2' model_platform: 'tensorflow' }\n}\n",
            "4:1",
            "model 'm' is listed twice (lines 2 and 4)",
            "one config entry",
        ),
        (
            "model_config_list { config { name: 'm' base_path: '/m' model_platform: 'tensorflow'\n"
            "  logging_config { sampling_config { sampling_rate: 0.1 } } } }",
            "2:3",
            "logging_config (request logging) is not supported",
            "remove it",
        ),
        (
            "custom_model_config {\n  type_url: 'type.googleapis.com/example.Config'\n}\n",
            "1:1",
            "custom_model_config is not supported",
            "model_config_list",
        ),
    ],
)
def test_errors_name_file_line_and_fix(text: str, where: str, expected: str, hint: str) -> None:
    assert_config_error(lambda: parse_model_config(text, "models.config"), "models.config", where, expected, hint)


def test_comment_mentioning_a_field_does_not_misplace_the_error() -> None:
    text = (
        "model_config_list {\n"
        "  config {\n"
        "    name: 'm'  # model_platform: 'tensorflow' is missing on purpose\n"
        "    base_path: '/m#not-a-comment'\n"
        "    model_platform: 'onnx'\n"
        "  }\n"
        "}\n"
    )
    with pytest.raises(ConfigError, match=r"^models.config:5:5: error: model 'm': model_platform 'onnx'"):
        parse_model_config(text, "models.config")


def test_oversized_missing_and_binary_files(tmp_path: Path) -> None:
    big = tmp_path / "big.config"
    big.write_bytes(b"#" * (MAX_CONFIG_FILE_BYTES + 1))
    with pytest.raises(ConfigError, match=r"--model_config_file=.*big.config: larger than 1024 KiB"):
        read_model_config_file(big)
    with pytest.raises(ConfigError, match=r"--model_config_file=.*absent.config: cannot read it"):
        read_model_config_file(tmp_path / "absent.config")
    binary = tmp_path / "saved_model.pb"
    binary.write_bytes(b"model_config_list {}\n\xff\xfe\x00")
    with pytest.raises(ConfigError, match=r"saved_model.pb:2:1: error: not UTF-8 text"):
        read_model_config_file(binary)


def test_reading_config_files_loads_no_tensorflow() -> None:
    # The tensorflow-serving-api config protos depend on protobuf alone: parsing a config is cheap.
    code = """
import sys
from weiflow.serving.config import parse_batching_parameters, parse_model_config
parse_model_config(sys.argv[1])
parse_batching_parameters("max_batch_size { value: 8 }")
print(sorted(m for m in sys.modules if m == "tensorflow" or m.startswith("tensorflow.")))
"""
    argv = [sys.executable, "-c", code, TWO_MODELS]
    out = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
