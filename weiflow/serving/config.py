"""``weiflow serve``'s operator-facing configuration, as TensorFlow Serving spells it.

Three inputs, read the way ``tensorflow_model_server`` reads them so an operator's scripts and
files work unchanged:

- the flags (:func:`parse_server_options`): ``--rest_api_port=8501 --model_name=NAME
  --model_base_path=DIR``, ``--model_config_file=FILE``, ``--enable_batching``,
  ``--batching_parameters_file=FILE``, ``--file_system_poll_wait_seconds=N``; plus WeiFlow's
  ``--repository URI`` and ``--rest_api_host`` (default 127.0.0.1: every WeiFlow server binds
  the loopback unless told otherwise, where TensorFlow Serving binds every interface);
- ``--model_config_file`` (:func:`read_model_config_file`): a ``ModelServerConfig`` in protobuf
  text format whose ``model_config_list`` names the models, their base paths, version policies
  and version labels;
- ``--batching_parameters_file`` (:func:`read_batching_parameters_file`): a
  ``BatchingParameters`` in text format; fields left out take TensorFlow Serving's defaults.

The files are parsed by protobuf's own text-format parser against TensorFlow Serving's
schemas (:mod:`weiflow.serving.protos`), then turned into the frozen dataclasses below: the rest
of the service never sees a protobuf type. Every mistake is a :class:`~weiflow.errors.ConfigError`
that names the file, the line and column, and the fix.

:func:`resolve_versions` applies a version policy to the version directories found under a
base path (latest N, all, specific), reporting specific versions and labelled versions that are
not there.
"""

from __future__ import annotations

import argparse
import difflib
import itertools
import os
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from weiflow.errors import ConfigError, Diagnostic
from weiflow.modelrepo.contracts import parse_version
from weiflow.serving.protos import batching_parameters_class, model_server_config_class

__all__ = [
    "DEFAULT_REST_API_HOST",
    "DEFAULT_REST_API_PORT",
    "MAX_CONFIG_FILE_BYTES",
    "AllVersions",
    "BatchingParameters",
    "LatestVersions",
    "ModelConfig",
    "ServerOptions",
    "SpecificVersions",
    "VersionPolicy",
    "VersionSelection",
    "build_argument_parser",
    "parse_batching_parameters",
    "parse_model_config",
    "parse_server_options",
    "read_batching_parameters_file",
    "read_model_config_file",
    "resolve_versions",
    "versions_on_disk",
]

# A model config listing thousands of models is a few hundred KiB; anything far larger is the
# wrong file (a SavedModel, a log), and reading it whole into memory would be the only effect.
MAX_CONFIG_FILE_BYTES = 1 << 20
DEFAULT_REST_API_HOST = "127.0.0.1"
# TensorFlow Serving's documented REST port. Its own flag defaults to 0 ("no REST API"), but REST
# is all weiflow serve speaks, so 0 here means "any free port" (what tests and benches want).
DEFAULT_REST_API_PORT = 8501
DEFAULT_MAX_REQUEST_BYTES = 64 * 1024 * 1024  # a request body beyond this is refused (413) before it is read
TENSORFLOW_PLATFORM = "tensorflow"
# TensorFlow Serving's REST paths (/v1/models/{name}/labels/{label}) cannot carry these.
_UNROUTABLE = re.compile(r"[/:\s]")
# The thread pool name tensorflow_model_server gives batching when no parameters file is given.
_SERVER_BATCH_THREAD_POOL = "model_server_batch_threads"


# ---------------------------------------------------------------------------------------------
# Version policies and their resolution against the directories on disk
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LatestVersions:
    """Serve the ``num_versions`` highest versions present (TensorFlow Serving's default: 1)."""

    num_versions: int = 1


@dataclass(frozen=True)
class AllVersions:
    """Serve every version present."""


@dataclass(frozen=True)
class SpecificVersions:
    """Serve exactly these versions (ascending); those not on disk are reported, not invented."""

    versions: tuple[int, ...]


VersionPolicy = LatestVersions | AllVersions | SpecificVersions


@dataclass(frozen=True)
class VersionSelection:
    """What a policy selects among the versions on disk.

    ``versions``: to serve, ascending. ``missing``: specific versions the policy names that are
    not on disk. ``unavailable_labels``: labels pointing at a version not selected (TensorFlow
    Serving refuses those unless ``--allow_version_labels_for_unavailable_models``).
    """

    versions: tuple[int, ...]
    missing: tuple[int, ...] = ()
    unavailable_labels: Mapping[str, int] = field(default_factory=lambda: MappingProxyType({}))


def versions_on_disk(names: Iterable[str]) -> list[int]:
    """The versions a base path's entry names stand for, ascending; other names are skipped.

    The model repository's rule (:func:`weiflow.modelrepo.contracts.parse_version`): canonical
    decimals from 1. TensorFlow Serving would also read "007" as 7, so two directories could
    claim one version; such names are not versions here.
    """
    return sorted({version for name in names if (version := parse_version(name)) is not None})


def resolve_versions(
    policy: VersionPolicy, on_disk: Iterable[int], labels: Mapping[str, int] | None = None
) -> VersionSelection:
    """Apply ``policy`` to the versions found on disk, as TensorFlow Serving's file system source does."""
    present = sorted(set(on_disk))
    missing: tuple[int, ...] = ()
    match policy:
        case LatestVersions(num_versions=count):
            selected = tuple(present[-max(count, 1) :]) if present else ()
        case AllVersions():
            selected = tuple(present)
        case SpecificVersions(versions=wanted):
            selected = tuple(v for v in wanted if v in present)
            missing = tuple(v for v in wanted if v not in present)
    unavailable = {label: version for label, version in (labels or {}).items() if version not in selected}
    return VersionSelection(selected, missing, MappingProxyType(unavailable))


# ---------------------------------------------------------------------------------------------
# The configuration dataclasses
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelConfig:
    """One model to serve: a ``config { ... }`` entry of ``model_config_list``."""

    name: str
    base_path: str
    version_policy: VersionPolicy = LatestVersions()
    version_labels: Mapping[str, int] = field(default_factory=lambda: MappingProxyType({}))
    # Always "tensorflow": the only platform weiflow serve loads (checked when parsed).
    platform: str = TENSORFLOW_PLATFORM


def _schedulable_cpus() -> int:
    """TensorFlow's MaxParallelism(): the CPUs this process may run on (the affinity mask)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


@dataclass(frozen=True)
class BatchingParameters:
    """How requests to one model version are batched; TensorFlow Serving's meaning and defaults.

    A batch closes when it holds ``max_batch_size`` rows or its first request has waited
    ``batch_timeout_micros``; ``num_batch_threads`` batches run at once; at most
    ``max_enqueued_batches`` wait, beyond which requests are refused at once. With
    ``allowed_batch_sizes``, a batch is padded up to the next allowed size (so a model sees few
    distinct shapes).
    """

    max_batch_size: int = 1000
    batch_timeout_micros: int = 0
    max_enqueued_batches: int = 10
    num_batch_threads: int = field(default_factory=_schedulable_cpus)
    thread_pool_name: str = "batch_threads"
    allowed_batch_sizes: tuple[int, ...] = ()
    pad_variable_length_inputs: bool = False

    def __post_init__(self) -> None:
        problems = _batching_problems(
            self.max_batch_size,
            self.batch_timeout_micros,
            self.max_enqueued_batches,
            self.num_batch_threads,
            self.allowed_batch_sizes,
        )
        if problems:
            raise ConfigError("; ".join(f"{message} ({hint})" for _, message, hint in problems))


def _batching_problems(
    max_batch_size: int,
    batch_timeout_micros: int,
    max_enqueued_batches: int,
    num_batch_threads: int,
    allowed_batch_sizes: Sequence[int],
) -> list[tuple[str, str, str]]:
    """TensorFlow Serving's checks on batching parameters, as (field, message, hint)."""
    problems = []
    for name, value in (
        ("max_batch_size", max_batch_size),
        ("max_enqueued_batches", max_enqueued_batches),
        ("num_batch_threads", num_batch_threads),
    ):
        if value < 1:
            problems.append((name, f"{name} must be positive; was {value}", f"set {name} {{ value: N }} with N >= 1"))
    if batch_timeout_micros < 0:
        problems.append(
            (
                "batch_timeout_micros",
                f"batch_timeout_micros must not be negative; was {batch_timeout_micros}",
                "0 closes a batch as soon as a thread is free; a few thousand trades latency for fuller batches",
            )
        )
    if allowed_batch_sizes:
        if allowed_batch_sizes[0] < 1:
            problems.append(
                (
                    "allowed_batch_sizes",
                    f"allowed_batch_sizes entries must be positive; the first is {allowed_batch_sizes[0]}",
                    "list batch sizes from 1",
                )
            )
        if any(b <= a for a, b in itertools.pairwise(allowed_batch_sizes)):
            problems.append(
                (
                    "allowed_batch_sizes",
                    f"allowed_batch_sizes entries must be increasing; got {list(allowed_batch_sizes)}",
                    "list each size once, smallest first",
                )
            )
        if allowed_batch_sizes[-1] != max_batch_size:
            problems.append(
                (
                    "allowed_batch_sizes",
                    f"the last entry of allowed_batch_sizes must equal max_batch_size; it is {allowed_batch_sizes[-1]}"
                    f", max_batch_size is {max_batch_size}",
                    f"end the list with {max_batch_size}, or set max_batch_size {{ value: {allowed_batch_sizes[-1]} }}",
                )
            )
    return problems


# ---------------------------------------------------------------------------------------------
# Reading the text-format files
# ---------------------------------------------------------------------------------------------


def _config_error(source: str, line: int, col: int, message: str, hint: str | None = None) -> ConfigError:
    return ConfigError(str(Diagnostic(source, line, col, message, hint)))


def _read_config_text(path: str | os.PathLike[str], flag: str) -> str:
    """The file's text: bounded, UTF-8, or an error naming the flag that pointed at it."""
    try:
        with Path(path).open("rb") as stream:
            data = stream.read(MAX_CONFIG_FILE_BYTES + 1)
    except OSError as exc:
        raise ConfigError(f"{flag}={path}: cannot read it ({exc.strerror or exc})") from None
    if len(data) > MAX_CONFIG_FILE_BYTES:
        raise ConfigError(
            f"{flag}={path}: larger than {MAX_CONFIG_FILE_BYTES // 1024} KiB; is it the right file? "
            f"(expected protobuf text format)"
        )
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise _config_error(str(path), line, 1, "not UTF-8 text", f"{flag} takes protobuf text format") from None


class _TextPositions:
    """Finds where a field sits in a text-format file, to point errors found after parsing.

    protobuf's Python parser keeps no positions, so this searches the text with comments
    blanked out (columns unchanged). Good enough for pointing a reader at a line; when a
    pattern is not found the enclosing block's line is used.
    """

    def __init__(self, text: str) -> None:
        self.lines = [_blank_comment(line) for line in text.splitlines()]
        self.config_lines = [
            n for n, line in enumerate(self.lines, 1) for _ in re.finditer(r"\bconfig\s*:?\s*\{", line)
        ]

    def find(self, pattern: str, start: int = 1, end: int | None = None) -> tuple[int, int] | None:
        regex = re.compile(pattern)
        for number in range(start, (end or len(self.lines)) + 1):
            if number - 1 < len(self.lines) and (match := regex.search(self.lines[number - 1])):
                return number, match.start() + 1
        return None

    def config_block(self, index: int) -> tuple[int, int | None]:
        """Line range (first, last or None) of the ``index``-th ``config { ... }`` entry."""
        if index >= len(self.config_lines):
            return 1, None
        last = self.config_lines[index + 1] - 1 if index + 1 < len(self.config_lines) else None
        return self.config_lines[index], last


def _blank_comment(line: str) -> str:
    """``line`` with a ``#`` comment replaced by spaces; a ``#`` inside a string is kept."""
    quote = ""
    escaped = False
    for position, char in enumerate(line):
        if escaped:
            escaped = False
        elif quote and char == "\\":
            escaped = True
        elif quote:
            quote = "" if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char == "#":
            return line[:position] + " " * (len(line) - position)
    return line


def _parse_text(text: str, message: Any, source: str) -> None:
    """Parse ``text`` into ``message``; a parse error names the line, the column and the fix."""
    from google.protobuf import text_format

    try:
        text_format.Parse(text, message)
    except text_format.ParseError as exc:
        line, col = exc.GetLine() or 1, exc.GetColumn() or 1
        detail = re.sub(r"^\d+:\d+ : ", "", str(exc))
        raise _config_error(source, line, col, detail, _parse_hint(detail, text, message)) from None


def _parse_hint(detail: str, text: str, message: Any) -> str:
    what = message.DESCRIPTOR.name
    if unknown := re.search(r'Message type "([^"]+)" has no field named "([^"]+)"', detail):
        # The fields of the message the name was written in, not of the whole file.
        fields = [f.name for f in message.DESCRIPTOR.file.pool.FindMessageTypeByName(unknown.group(1)).fields]
        close = difflib.get_close_matches(unknown.group(2), fields, n=1)
        if close:
            return f"did you mean '{close[0]}'?"
        return f"{unknown.group(1).rsplit('.', 1)[-1]} has the fields {', '.join(sorted(fields))}"
    blanked = "\n".join(_blank_comment(line) for line in text.splitlines())
    if 'Expected "}"' in detail and blanked.count("{") > blanked.count("}"):
        return "a block is not closed: a '}' is missing"
    if 'Expected "{"' in detail and what == "BatchingParameters":
        return "TensorFlow Serving wraps this number in a message: write e.g. max_batch_size { value: 128 }"
    return f"the file is a {what} in protobuf text format, e.g. field: value, or field {{ ... }}; # starts a comment"


def read_model_config_file(path: str | os.PathLike[str]) -> tuple[ModelConfig, ...]:
    """The models a ``--model_config_file`` lists, in file order."""
    return parse_model_config(_read_config_text(path, "--model_config_file"), str(path))


def parse_model_config(text: str, source: str = "<model config>") -> tuple[ModelConfig, ...]:
    """Parse a ``ModelServerConfig`` text (``model_config_list { config { ... } ... }``)."""
    message = model_server_config_class()()
    _parse_text(text, message, source)
    positions = _TextPositions(text)
    if message.WhichOneof("config") == "custom_model_config":
        line, col = positions.find(r"\bcustom_model_config\b") or (1, 1)
        raise _config_error(
            source, line, col, "custom_model_config is not supported", "list the models in model_config_list { ... }"
        )
    entries = list(message.model_config_list.config)
    if not entries:
        raise _config_error(
            source,
            1,
            1,
            "the file lists no models",
            'add model_config_list { config { name: "my_model" base_path: "/models/my_model" '
            'model_platform: "tensorflow" } }',
        )
    models: list[ModelConfig] = []
    first_line: dict[str, int] = {}
    for index, entry in enumerate(entries):
        model = _model_config(entry, index, positions, source)
        block_line, _ = positions.config_block(index)
        if model.name in first_line:
            raise _config_error(
                source,
                block_line,
                1,
                f"model '{model.name}' is listed twice (lines {first_line[model.name]} and {block_line})",
                "give each model one config entry; serve several of its versions with a version policy",
            )
        first_line[model.name] = block_line
        models.append(model)
    return tuple(models)


def _model_config(entry: Any, index: int, positions: _TextPositions, source: str) -> ModelConfig:
    start, end = positions.config_block(index)

    def fail(pattern: str | None, message: str, hint: str) -> ConfigError:
        """The error, at the first match of ``pattern`` in this entry, else at the entry."""
        where = positions.find(pattern, start, end) if pattern else None
        line, col = where or (start, 1)
        return _config_error(source, line, col, message, hint)

    name = entry.name
    label = f"model '{name}'" if name else f"config entry {index + 1}"
    if not name:
        raise fail(None, f"{label} has no name", 'add name: "my_model" (clients call /v1/models/my_model)')
    if _UNROUTABLE.search(name):
        raise fail(
            r"\bname\b", f"invalid model name {name!r}", "a name cannot contain '/', ':' or spaces: REST paths carry it"
        )
    if not entry.base_path:
        raise fail(
            None, f"{label} has no base_path", 'add base_path: "/models/NAME" (its version directories: 1, 2, ...)'
        )

    platform = entry.model_platform
    if entry.model_type:  # deprecated ModelType enum: TensorFlow Serving still reads it
        if platform:
            raise fail(
                r"\bmodel_type\b", f"{label} sets both model_type (deprecated) and model_platform", "drop model_type"
            )
        tensorflow_type = entry.DESCRIPTOR.fields_by_name["model_type"].enum_type.values_by_name["TENSORFLOW"].number
        if entry.model_type != tensorflow_type:
            raise fail(
                r"\bmodel_type\b", f"{label}: model_type OTHER cannot be served", 'use model_platform: "tensorflow"'
            )
        platform = TENSORFLOW_PLATFORM
    if not platform:
        raise fail(None, f"{label} has no model_platform", 'add model_platform: "tensorflow"')
    if platform != TENSORFLOW_PLATFORM:
        raise fail(
            r"\bmodel_platform\b",
            f"{label}: model_platform {platform!r} is not served",
            'weiflow serve loads TensorFlow SavedModels: model_platform: "tensorflow"',
        )
    if entry.HasField("logging_config"):
        raise fail(r"\blogging_config\b", f"{label}: logging_config (request logging) is not supported", "remove it")

    policy = _version_policy(entry.model_version_policy, label, fail)
    labels: dict[str, int] = {}
    for version_label, version in sorted(entry.version_labels.items()):
        # Point at this label's entry, not at the first version_labels of the model.
        label_key = rf"\bkey\s*:\s*['\"]{re.escape(version_label)}['\"]"
        if not version_label or _UNROUTABLE.search(version_label):
            raise fail(
                label_key,
                f"{label}: invalid version label {version_label!r}",
                "a label cannot be empty or contain '/', ':' or spaces: /v1/models/NAME/labels/LABEL carries it",
            )
        if version < 1:
            raise fail(
                label_key,
                f"{label}: label '{version_label}' points at version {version}",
                "versions start at 1",
            )
        labels[version_label] = version
    return ModelConfig(name, entry.base_path, policy, MappingProxyType(labels), platform)


def _version_policy(policy: Any, label: str, fail: Callable[[str, str, str], ConfigError]) -> VersionPolicy:
    """The entry's policy; ``fail(pattern, message, hint)`` builds an error pointing at the pattern."""
    choice = policy.WhichOneof("policy_choice")
    if choice is None or choice == "latest":
        # TensorFlow Serving serves at least one: num_versions 0 (or unset) means 1.
        return LatestVersions(max(policy.latest.num_versions, 1))
    if choice == "all":
        return AllVersions()
    versions = sorted(set(policy.specific.versions))
    if not versions:
        raise fail(
            r"\bspecific\b",
            f"{label}: the specific version policy lists no versions",
            "write specific { versions: 1 versions: 2 }, or use latest { num_versions: N } / all {}",
        )
    if versions[0] < 1:
        raise fail(r"\bversions\b", f"{label}: version {versions[0]} cannot exist", "version directories are 1, 2, ...")
    return SpecificVersions(tuple(versions))


def read_batching_parameters_file(path: str | os.PathLike[str]) -> BatchingParameters:
    """The parameters a ``--batching_parameters_file`` sets, TensorFlow Serving's defaults for the rest."""
    return parse_batching_parameters(_read_config_text(path, "--batching_parameters_file"), str(path))


def parse_batching_parameters(text: str, source: str = "<batching parameters>") -> BatchingParameters:
    """Parse a ``BatchingParameters`` text (``max_batch_size { value: 128 }`` ...)."""
    message = batching_parameters_class()()
    _parse_text(text, message, source)
    positions = _TextPositions(text)

    def fail(field_name: str, problem: str, hint: str) -> ConfigError:
        line, col = positions.find(rf"\b{field_name}\b") or (1, 1)
        return _config_error(source, line, col, problem, hint)

    if message.HasField("enable_large_batch_splitting") and message.enable_large_batch_splitting.value:
        raise fail(
            "enable_large_batch_splitting",
            "enable_large_batch_splitting is not supported",
            "remove it: a request larger than max_batch_size is refused, so raise max_batch_size if requests are large",
        )
    if message.HasField("max_execution_batch_size"):
        raise fail(
            "max_execution_batch_size",
            "max_execution_batch_size only applies with enable_large_batch_splitting, which is not supported",
            "remove it and set max_batch_size",
        )

    defaults = BatchingParameters()
    values: dict[str, Any] = {}
    for name in ("max_batch_size", "batch_timeout_micros", "max_enqueued_batches", "num_batch_threads"):
        values[name] = getattr(message, name).value if message.HasField(name) else getattr(defaults, name)
    allowed = tuple(message.allowed_batch_sizes)
    if problems := _batching_problems(**values, allowed_batch_sizes=allowed):
        raise fail(*problems[0])
    return BatchingParameters(
        **values,
        thread_pool_name=(
            message.thread_pool_name.value if message.HasField("thread_pool_name") else defaults.thread_pool_name
        ),
        allowed_batch_sizes=allowed,
        pad_variable_length_inputs=message.pad_variable_length_inputs,
    )


# ---------------------------------------------------------------------------------------------
# The flags
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ServerOptions:
    """``weiflow serve``'s flags, checked. Exactly one source of models is set:
    ``model_config_file``, ``model_base_path`` (with ``model_name``) or ``repository``.

    ``notices``: flags accepted for compatibility with ``tensorflow_model_server`` but without
    effect here, one sentence each, for the server to log at startup.
    """

    rest_api_port: int = DEFAULT_REST_API_PORT
    rest_api_host: str = DEFAULT_REST_API_HOST
    model_name: str = "default"
    model_base_path: str = ""
    model_config_file: str = ""
    model_config_file_poll_wait_seconds: int = 0
    repository: str = ""
    repository_models: tuple[str, ...] = ()  # --model_name with --repository: serve only these (else every model)
    file_system_poll_wait_seconds: int = 1
    enable_batching: bool = False
    batching_parameters_file: str = ""
    workers: int = 1
    max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES
    allow_version_labels_for_unavailable_models: bool = False
    notices: tuple[str, ...] = ()

    def model_configs(self) -> tuple[ModelConfig, ...]:
        """The models the flags name: the config file's list, or the one ``--model_base_path`` model.

        With ``--repository`` the models come from the repository instead (its routing decides
        the versions); asking here is a programming error.
        """
        if self.repository:
            raise ValueError("--repository: the models come from the repository, not from flags")
        if self.model_config_file:
            return read_model_config_file(self.model_config_file)
        return (ModelConfig(self.model_name, self.model_base_path),)

    def batching_parameters(self) -> BatchingParameters | None:
        """None without ``--enable_batching``; else the file's parameters, or TensorFlow Serving's defaults."""
        if not self.enable_batching:
            return None
        if self.batching_parameters_file:
            return read_batching_parameters_file(self.batching_parameters_file)
        return BatchingParameters(thread_pool_name=_SERVER_BATCH_THREAD_POOL)


def _flag_bool(value: str) -> bool:
    """TensorFlow's flag parser: ``--flag``, ``--flag=true|false|1|0``."""
    lowered = value.lower()
    if lowered in ("true", "1"):
        return True
    if lowered in ("false", "0"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {value!r}")


def _whole_number(value: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {value!r}") from None


def _port(value: str) -> int:
    port = _whole_number(value)
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"a port is 0-65535, got {port}")
    return port


def _seconds(value: str) -> int:
    seconds = _whole_number(value)
    if seconds < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {seconds}")
    return seconds


def build_argument_parser(prog: str = "weiflow serve") -> argparse.ArgumentParser:
    """The flags of ``tensorflow_model_server`` that weiflow serve honours, plus its own.

    Both ``--flag=value`` (TensorFlow Serving's spelling) and ``--flag value`` work. Prefixes are
    not accepted (``allow_abbrev=False``): TensorFlow's parser has none, and ``--model`` would be
    ambiguous.
    """
    parser = argparse.ArgumentParser(
        prog=prog,
        allow_abbrev=False,
        description="Serve TensorFlow SavedModels over TensorFlow Serving's REST API, plus raw-feature scoring.",
    )
    add = parser.add_argument
    add("--rest_api_port", type=_port, default=DEFAULT_REST_API_PORT, help="REST port (0: any free port)")
    add("--rest_api_host", default=DEFAULT_REST_API_HOST, help="address to bind (default: %(default)s)")
    add("--model_name", default=None, help="name of the model served from --model_base_path (default: 'default')")
    add("--model_base_path", default="", help="directory holding the model's version directories 1, 2, ...")
    add("--model_config_file", default="", help="a ModelServerConfig text file listing the models to serve")
    add(
        "--model_config_file_poll_wait_seconds",
        type=_seconds,
        default=0,
        help="re-read --model_config_file this often (0: read once)",
    )
    add(
        "--repository",
        default="",
        help="serve the models of this WeiFlow model repository (every one, or --model_name's), with their routing",
    )
    add(
        "--file_system_poll_wait_seconds",
        type=_seconds,
        default=1,
        help="look for new versions this often (0: only at startup)",
    )
    add("--enable_batching", type=_flag_bool, nargs="?", const=True, default=False, help="batch concurrent requests")
    add("--workers", type=_whole_number, default=1, help="server processes, each with every model loaded (default 1)")
    add(
        "--max_request_bytes",
        type=_whole_number,
        default=DEFAULT_MAX_REQUEST_BYTES,
        help="larger request bodies get 413 (default: %(default)s)",
    )
    add("--batching_parameters_file", default="", help="a BatchingParameters text file (needs --enable_batching)")
    add(
        "--allow_version_labels_for_unavailable_models",
        type=_flag_bool,
        nargs="?",
        const=True,
        default=False,
        help="let a label point at a version that is not loaded yet",
    )
    # tensorflow_model_server's gRPC port: accepted so scripts keep working; no gRPC is served.
    add("--port", type=_port, default=None, help=argparse.SUPPRESS)
    return parser


def parse_server_options(argv: Sequence[str]) -> ServerOptions:
    """Parse and check ``weiflow serve``'s flags.

    Usage errors (an unknown flag, a port that is not a number) exit as argparse does; the rules
    between flags raise :class:`~weiflow.errors.ConfigError`. They follow ``tensorflow_model_server``:
    one of ``--model_base_path`` / ``--model_config_file`` is required, and with a config file
    ``--model_name`` and ``--model_base_path`` are ignored (a notice says so); a batching
    parameters file needs ``--enable_batching``. ``--repository`` is a third source of models and
    combines with neither; with it, ``--model_name`` picks the one model to serve.
    """
    args = build_argument_parser().parse_args(list(argv))
    notices: list[str] = []
    from_flags = [
        flag
        for flag, value in (("--model_name", args.model_name), ("--model_base_path", args.model_base_path))
        if value
    ]

    if args.repository and (args.model_config_file or args.model_base_path):
        other = "--model_config_file" if args.model_config_file else "--model_base_path"
        raise ConfigError(
            f"--repository and {other} both name the models to serve; give one: --repository serves the models "
            f"of a WeiFlow model repository (--model_name picks one of them), --model_config_file a TensorFlow "
            "Serving list, --model_base_path one model"
        )
    if not (args.repository or args.model_config_file or args.model_base_path):
        raise ConfigError(
            "no models to serve: both --model_base_path and --model_config_file are empty; give "
            "--model_name=NAME --model_base_path=DIR, --model_config_file=FILE, or --repository=URI"
        )
    if args.model_config_file and from_flags:
        # tensorflow_model_server's rule: the config file wins. Said, not silently dropped.
        notices.append(f"{' and '.join(from_flags)} ignored: --model_config_file lists the models")
    if args.model_config_file_poll_wait_seconds and not args.model_config_file:
        notices.append("--model_config_file_poll_wait_seconds ignored: no --model_config_file")
    elif args.model_config_file_poll_wait_seconds:
        # New versions of the listed models are still found (--file_system_poll_wait_seconds).
        notices.append(
            "--model_config_file_poll_wait_seconds ignored: the model list is read at startup; restart to change it"
        )
    model_name = args.model_name or "default"
    repository_models = (args.model_name,) if args.repository and args.model_name else ()
    if (args.model_base_path or repository_models) and not args.model_config_file and _UNROUTABLE.search(model_name):
        raise ConfigError(
            f"--model_name={model_name!r}: a name cannot contain '/', ':' or spaces (REST paths carry it)"
        )
    if args.batching_parameters_file and not args.enable_batching:
        raise ConfigError(
            f"--batching_parameters_file={args.batching_parameters_file} given but batching is not enabled; "
            f"add --enable_batching (or drop the file)"
        )
    if not 1 <= args.workers <= 64:
        raise ConfigError(f"--workers={args.workers}: give 1 to 64 server processes")
    if args.max_request_bytes < 1024:
        raise ConfigError(f"--max_request_bytes={args.max_request_bytes}: allow at least 1024 bytes")
    if args.allow_version_labels_for_unavailable_models:
        notices.append(
            "--allow_version_labels_for_unavailable_models ignored: a label pin answers only once its version is loaded"
        )
    if args.port is not None:
        notices.append(f"--port={args.port} ignored: weiflow serve has no gRPC API; REST is on --rest_api_port")
    return ServerOptions(
        rest_api_port=args.rest_api_port,
        rest_api_host=args.rest_api_host,
        model_name=model_name,
        model_base_path=args.model_base_path,
        model_config_file=args.model_config_file,
        model_config_file_poll_wait_seconds=args.model_config_file_poll_wait_seconds,
        repository=args.repository,
        repository_models=repository_models,
        file_system_poll_wait_seconds=args.file_system_poll_wait_seconds,
        enable_batching=args.enable_batching,
        batching_parameters_file=args.batching_parameters_file,
        workers=args.workers,
        max_request_bytes=args.max_request_bytes,
        allow_version_labels_for_unavailable_models=args.allow_version_labels_for_unavailable_models,
        notices=tuple(notices),
    )
