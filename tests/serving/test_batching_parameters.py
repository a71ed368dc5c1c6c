"""--batching_parameters_file: TensorFlow Serving's BatchingParameters in protobuf text format."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.serving.conftest import assert_config_error
from weiflow.errors import ConfigError
from weiflow.serving.config import BatchingParameters, parse_batching_parameters, read_batching_parameters_file

# The example of TensorFlow Serving's batching guide (batching/README.md), comments added.
DOCUMENTED_EXAMPLE = """\
# Latency-tolerant CPU settings.
max_batch_size { value: 128 }
batch_timeout_micros { value: 0 }
max_enqueued_batches { value: 1000000 }
num_batch_threads { value: 8 }   # one per core
"""


def test_documented_example(tmp_path: Path) -> None:
    path = tmp_path / "batching.txt"
    path.write_text(DOCUMENTED_EXAMPLE)
    params = read_batching_parameters_file(path)
    assert params == BatchingParameters(
        max_batch_size=128, batch_timeout_micros=0, max_enqueued_batches=1_000_000, num_batch_threads=8
    )


def test_fields_left_out_take_tensorflow_servings_defaults() -> None:
    params = parse_batching_parameters("# nothing but a comment\n")
    assert params.max_batch_size == 1000  # SharedBatchScheduler's input_batch_size_limit
    assert params.batch_timeout_micros == 0
    assert params.max_enqueued_batches == 10
    assert params.num_batch_threads >= 1  # the CPUs this process may use
    assert params.thread_pool_name == "batch_threads"
    assert params.allowed_batch_sizes == ()
    assert params.pad_variable_length_inputs is False


def test_every_field() -> None:
    params = parse_batching_parameters(
        """
        max_batch_size { value: 64 }
        batch_timeout_micros { value: 2000 }
        max_enqueued_batches { value: 100 }
        num_batch_threads { value: 4 }
        thread_pool_name { value: "scoring" }
        allowed_batch_sizes: 8
        allowed_batch_sizes: [16, 32]
        allowed_batch_sizes: 64
        pad_variable_length_inputs: true
        enable_large_batch_splitting { value: false }
        """
    )
    assert params == BatchingParameters(
        max_batch_size=64,
        batch_timeout_micros=2000,
        max_enqueued_batches=100,
        num_batch_threads=4,
        thread_pool_name="scoring",
        allowed_batch_sizes=(8, 16, 32, 64),
        pad_variable_length_inputs=True,
    )


@pytest.mark.parametrize(
    ("text", "where", "expected", "hint"),
    [
        (
            "max_batch_size { value: 64 }\nallowed_batch_sizes: [8, 32]\n",
            "2:1",
            "must equal max_batch_size",
            "end the list with 64",
        ),
        (
            "max_batch_size { value: 64 }\nallowed_batch_sizes: [32, 16, 64]\n",
            "2:1",
            "entries must be increasing; got [32, 16, 64]",
            "smallest first",
        ),
        (
            "# default max_batch_size is 1000\nallowed_batch_sizes: [8, 16]\n",
            "2:1",
            "max_batch_size is 1000",
            "end the list",
        ),
        (
            "max_batch_size { value: 4 }\nallowed_batch_sizes: [0, 4]\n",
            "2:1",
            "must be positive; the first is 0",
            "from 1",
        ),
        ("max_batch_size { value: 0 }\n", "1:1", "max_batch_size must be positive; was 0", "N >= 1"),
        ("\nnum_batch_threads { value: 0 }\n", "2:1", "num_batch_threads must be positive; was 0", "N >= 1"),
        ("max_enqueued_batches { value: -1 }\n", "1:1", "max_enqueued_batches must be positive; was -1", "N >= 1"),
        ("batch_timeout_micros { value: -5 }\n", "1:1", "must not be negative; was -5", "0 closes a batch"),
        # Syntax, and the mistakes people make with TensorFlow Serving's wrapped numbers.
        ("max_batch_size: 128\n", "1:17", 'Expected "{"', "max_batch_size { value: 128 }"),
        ("max_batch_size { value: 12.5 }\n", "1:25", "Couldn't parse integer", "protobuf text format"),
        (
            "\n\nmax_batch_sise { value: 8 }\n",
            "3:1",
            'no field named "max_batch_sise"',
            "did you mean 'max_batch_size'?",
        ),
        ("max_batch_size { valeu: 8 }\n", "1:18", 'no field named "valeu"', "did you mean 'value'?"),
        (
            "enable_large_batch_splitting { value: true }\n",
            "1:1",
            "enable_large_batch_splitting is not supported",
            "raise max_batch_size",
        ),
        (
            "max_execution_batch_size { value: 8 }\n",
            "1:1",
            "only applies with enable_large_batch_splitting",
            "remove it",
        ),
    ],
)
def test_errors_name_file_line_and_fix(text: str, where: str, expected: str, hint: str) -> None:
    assert_config_error(lambda: parse_batching_parameters(text, "batching.txt"), "batching.txt", where, expected, hint)


def test_dataclass_checks_itself_when_built_in_code() -> None:
    with pytest.raises(ConfigError, match="last entry of allowed_batch_sizes must equal max_batch_size"):
        BatchingParameters(max_batch_size=8, allowed_batch_sizes=(4,))
    with pytest.raises(ConfigError, match="num_batch_threads must be positive"):
        BatchingParameters(num_batch_threads=0)


def test_unreadable_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"^--batching_parameters_file=.*nope.txt: cannot read it"):
        read_batching_parameters_file(tmp_path / "nope.txt")
