"""weiflow serve's flags, spelled and checked as tensorflow_model_server does."""

from __future__ import annotations

from pathlib import Path

import pytest

from weiflow.errors import ConfigError
from weiflow.serving.config import (
    BatchingParameters,
    LatestVersions,
    ModelConfig,
    ServerOptions,
    build_argument_parser,
    parse_server_options,
)


def test_tensorflow_serving_command_line_unchanged() -> None:
    # The command line of TensorFlow Serving's REST tutorial, program name dropped.
    options = parse_server_options(
        ["--rest_api_port=8501", "--model_name=half_plus_two", "--model_base_path=/models/half_plus_two"]
    )
    assert options.rest_api_port == 8501
    assert options.model_name == "half_plus_two"
    assert options.model_base_path == "/models/half_plus_two"
    assert options.model_configs() == (ModelConfig("half_plus_two", "/models/half_plus_two", LatestVersions(1)),)
    assert options.notices == ()


def test_defaults_bind_loopback() -> None:
    options = parse_server_options(["--model_base_path=/m"])
    assert options == ServerOptions(model_base_path="/m")
    assert options.rest_api_host == "127.0.0.1"
    assert options.rest_api_port == 8501
    assert options.model_name == "default"  # tensorflow_model_server's default name
    assert options.file_system_poll_wait_seconds == 1
    assert options.enable_batching is False
    assert options.batching_parameters() is None


def test_space_separated_values_work_too() -> None:
    options = parse_server_options(["--rest_api_host", "0.0.0.0", "--rest_api_port", "0", "--repository", "/repo"])
    assert (options.rest_api_host, options.rest_api_port, options.repository) == ("0.0.0.0", 0, "/repo")


@pytest.mark.parametrize(
    ("flag", "expected"),
    [
        ("--enable_batching", True),
        ("--enable_batching=true", True),
        ("--enable_batching=True", True),
        ("--enable_batching=1", True),
        ("--enable_batching=false", False),
        ("--enable_batching=0", False),
    ],
)
def test_boolean_flags_as_tensorflow_parses_them(flag: str, expected: bool) -> None:
    assert parse_server_options(["--model_base_path=/m", flag]).enable_batching is expected


def test_batching_without_a_file_uses_tensorflow_servings_defaults() -> None:
    params = parse_server_options(["--model_base_path=/m", "--enable_batching"]).batching_parameters()
    assert params == BatchingParameters(thread_pool_name="model_server_batch_threads")


def test_batching_parameters_file_is_read(tmp_path: Path) -> None:
    path = tmp_path / "batching.txt"
    path.write_text("max_batch_size { value: 32 }\nbatch_timeout_micros { value: 500 }\n")
    options = parse_server_options(
        ["--model_base_path=/m", "--enable_batching=true", f"--batching_parameters_file={path}"]
    )
    params = options.batching_parameters()
    assert params is not None
    assert (params.max_batch_size, params.batch_timeout_micros) == (32, 500)


def test_model_config_file_is_read_and_wins_over_single_model_flags(tmp_path: Path) -> None:
    path = tmp_path / "models.config"
    path.write_text(
        "model_config_list {\n"
        "  config { name: 'a' base_path: '/a' model_platform: 'tensorflow' }\n"
        "  config { name: 'b' base_path: '/b' model_platform: 'tensorflow' }\n"
        "}\n"
    )
    options = parse_server_options(
        [
            f"--model_config_file={path}",
            "--model_name=x",
            "--model_base_path=/x",
            "--model_config_file_poll_wait_seconds=60",
        ]
    )
    assert [model.name for model in options.model_configs()] == ["a", "b"]
    assert options.model_config_file_poll_wait_seconds == 60
    # tensorflow_model_server ignores them silently; weiflow serve says so.
    assert options.notices == (
        "--model_name and --model_base_path ignored: --model_config_file lists the models",
        "--model_config_file_poll_wait_seconds ignored: the model list is read at startup; restart to change it",
    )


def test_grpc_port_is_accepted_and_said_to_be_ignored() -> None:
    options = parse_server_options(["--port=8500", "--rest_api_port=8501", "--model_base_path=/m"])
    assert options.notices == ("--port=8500 ignored: weiflow serve has no gRPC API; REST is on --rest_api_port",)


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        ([], "no models to serve: both --model_base_path and --model_config_file are empty"),
        (["--model_name=m"], "no models to serve"),
        (["--repository=/r", "--model_config_file=/c"], "--repository and --model_config_file both name the models"),
        (["--repository=/r", "--model_base_path=/m"], "--repository and --model_base_path both name the models"),
        (
            ["--model_base_path=/m", "--batching_parameters_file=/b.txt"],
            "--batching_parameters_file=/b.txt given but batching is not enabled; add --enable_batching",
        ),
        (
            ["--model_base_path=/m", "--enable_batching=false", "--batching_parameters_file=/b.txt"],
            "--batching_parameters_file=/b.txt given but batching is not enabled",
        ),
        (["--model_base_path=/m", "--model_name=a/b"], "--model_name='a/b': a name cannot contain"),
    ],
)
def test_conflicts_and_missing_flags(argv: list[str], expected: str) -> None:
    with pytest.raises(ConfigError, match="^" + expected.replace("(", r"\(").replace(")", r"\)").replace(".", r"\.")):
        parse_server_options(argv)


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--rest_api_port=http"], "--rest_api_port: expected a whole number, got 'http'"),
        (["--rest_api_port=70000"], "--rest_api_port: a port is 0-65535, got 70000"),
        (
            ["--file_system_poll_wait_seconds=1.5"],
            "--file_system_poll_wait_seconds: expected a whole number, got '1.5'",
        ),
        (["--file_system_poll_wait_seconds=-1"], "--file_system_poll_wait_seconds: must be 0 or more, got -1"),
        (["--enable_batching=yes"], "--enable_batching: expected true or false, got 'yes'"),
        (["--model_base=/m"], "unrecognized arguments: --model_base=/m"),  # no prefixes
        (["--tensorflow_session_parallelism=4"], "unrecognized arguments"),
    ],
)
def test_usage_errors_exit_like_any_command(argv: list[str], expected: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        parse_server_options(argv)
    assert exited.value.code == 2
    assert expected in capsys.readouterr().err


def test_help_lists_the_flags_but_not_the_compatibility_only_port() -> None:
    text = build_argument_parser().format_help()
    for flag in ("--rest_api_port", "--rest_api_host", "--model_config_file", "--enable_batching", "--repository"):
        assert flag in text
    assert "--port " not in text


def test_model_name_picks_one_model_of_the_repository() -> None:
    options = parse_server_options(["--repository=/r", "--model_name=feed_ctr"])
    assert (options.repository, options.repository_models) == ("/r", ("feed_ctr",))
    assert parse_server_options(["--repository=/r"]).repository_models == ()
    with pytest.raises(ConfigError, match="cannot contain"):
        parse_server_options(["--repository=/r", "--model_name=a/b"])


def test_repository_options_have_no_flag_models() -> None:
    options = parse_server_options(["--repository=file:///srv/models"])
    with pytest.raises(ValueError, match="come from the repository"):
        options.model_configs()
