"""Configuration in one place: ``weiflow.toml`` plus ``WEIFLOW_*`` environment variables.

Defaults work with no file at all. Lookup: ``$WEIFLOW_CONFIG`` if set, else the first
``weiflow.toml`` in the working directory or one of its parents. Relative paths in the file
are relative to the file; environment variables win over the file.

================  ========================  ============================================
key               variable                  default
================  ========================  ============================================
var_dir           WEIFLOW_VAR_DIR           ``var/`` beside weiflow.toml (or the cwd)
storage           WEIFLOW_STORAGE           ``file://<var_dir>/storage``
storage_roots     WEIFLOW_STORAGE_ROOTS     ``storage`` (always one of them); the only places
                                            retention deletes under. A list of URIs in the
                                            file, comma-separated in the variable
database_url      WEIFLOW_DATABASE_URL      ``sqlite:///<var_dir>/weiflow.db``
max_spec_bytes    WEIFLOW_MAX_SPEC_BYTES    1048576
center_url        WEIFLOW_CENTER_URL        none: runs report to the run log only
center_token      WEIFLOW_CENTER_TOKEN      none (the center's API token for the runtime)
airflow_url       WEIFLOW_AIRFLOW_URL       none: the console links to no Airflow run
                                            (Airflow's UI, e.g. ``http://127.0.0.1:8080``)
allowed_callables WEIFLOW_ALLOWED_CALLABLES none: any module. Else the only packages or
                                            modules a spec's ``callable=`` may name (a list
                                            in the file, comma-separated in the variable);
                                            any other is a validation error
================  ========================  ============================================
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from weiflow.errors import ConfigError
from weiflow.spec.parser import DEFAULT_MAX_SPEC_BYTES
from weiflow.spec.report import did_you_mean
from weiflow.spec.uris import uri_problem

__all__ = ["CONFIG_FILE_NAME", "Settings", "load_settings"]

CONFIG_FILE_NAME = "weiflow.toml"
_KEYS = (
    "var_dir",
    "storage",
    "storage_roots",
    "database_url",
    "max_spec_bytes",
    "center_url",
    "center_token",
    "airflow_url",
    "allowed_callables",
)
_ROOTS_EXAMPLE = 'storage_roots = ["file:///data/weiflow", "s3://bucket/weiflow"]'


@dataclass(frozen=True)
class Settings:
    var_dir: Path
    storage: str
    database_url: str
    max_spec_bytes: int
    config_file: Path | None = None
    center_url: str | None = None
    center_token: str | None = None
    # Where retention may delete: ``storage`` first, then the configured extra roots, as URIs.
    storage_roots: tuple[str, ...] = ()
    # Airflow's UI, for the console's links back to a run (none: no links).
    airflow_url: str | None = None
    # The packages or modules a spec's callable= may name; empty: any (an operator's allow-list).
    allowed_callables: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        # Datasets live under ``storage`` by default: however Settings was built, it is a root.
        if self.storage not in self.storage_roots:
            object.__setattr__(self, "storage_roots", (self.storage, *self.storage_roots))

    @property
    def runs_dir(self) -> Path:
        """Where the JSON-lines run logs go."""
        return self.var_dir / "runs"

    @property
    def spool_dir(self) -> Path:
        """Events waiting for the control center (see :class:`weiflow.tracking.CenterTracker`)."""
        return self.var_dir / "center-spool"


def _find_config(cwd: Path, env: Mapping[str, str]) -> Path | None:
    explicit = env.get("WEIFLOW_CONFIG")
    if explicit:
        path = Path(explicit).expanduser()
        if not path.is_file():
            raise ConfigError(f"WEIFLOW_CONFIG={explicit}: no such file")
        return path.resolve()
    for directory in (cwd, *cwd.parents):
        candidate = directory / CONFIG_FILE_NAME
        if candidate.is_file():
            return candidate.resolve()
    return None


def load_settings(env: Mapping[str, str] | None = None, cwd: Path | None = None) -> Settings:
    """Settings from the config file (if any) and the environment; raises :class:`ConfigError`."""
    env = os.environ if env is None else env
    cwd = (cwd or Path.cwd()).resolve()
    path = _find_config(cwd, env)
    raw: dict[str, object] = {}
    base = cwd
    if path is not None:
        base = path.parent
        try:
            document = tomllib.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{path}: cannot read: {exc}") from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: {exc}") from exc
        section = document.get("weiflow", document)
        if not isinstance(section, dict):
            raise ConfigError(f"{path}: 'weiflow' must be a table ([weiflow]), got {section!r}")
        raw = dict(section)
        for key in raw:
            if key not in _KEYS:
                hint = did_you_mean(key, _KEYS) or "known keys: " + ", ".join(_KEYS)
                raise ConfigError(f"{path}: unknown key '{key}' ({hint})")
    for key in _KEYS:
        value = env.get("WEIFLOW_" + key.upper())
        if value:
            raw[key] = value

    def text(key: str) -> str | None:
        value = raw.get(key)
        if value is not None and not isinstance(value, str):
            raise ConfigError(f"{path or 'environment'}: '{key}' must be a string, got {value!r}")
        return value

    var_text = text("var_dir")
    var_dir = (base / Path(var_text).expanduser()) if var_text else base / "var"
    var_dir = var_dir.resolve()
    storage = text("storage") or f"file://{var_dir / 'storage'}"
    if "://" not in storage:
        storage = f"file://{(base / storage).resolve()}"
    database_url = text("database_url") or f"sqlite:///{var_dir / 'weiflow.db'}"
    max_bytes_raw = raw.get("max_spec_bytes", DEFAULT_MAX_SPEC_BYTES)
    try:
        max_bytes = int(str(max_bytes_raw))
    except ValueError:
        raise ConfigError(f"max_spec_bytes must be a whole number, got {max_bytes_raw!r}") from None
    if max_bytes < 1024:
        raise ConfigError(f"max_spec_bytes must be at least 1024, got {max_bytes}")
    center_url = text("center_url")
    if center_url and not center_url.startswith(("http://", "https://")):
        raise ConfigError(f"center_url must start with http:// or https://, got {center_url!r}")
    airflow_url = text("airflow_url")
    if airflow_url and not airflow_url.startswith(("http://", "https://")):
        raise ConfigError(f"airflow_url must start with http:// or https://, got {airflow_url!r}")
    storage = storage.rstrip("/")
    roots_source = "WEIFLOW_STORAGE_ROOTS" if env.get("WEIFLOW_STORAGE_ROOTS") else str(path or "environment")
    storage_roots = _storage_roots(raw.get("storage_roots"), roots_source, base, storage)
    return Settings(
        var_dir,
        storage,
        database_url,
        max_bytes,
        path,
        center_url=center_url.rstrip("/") if center_url else None,
        center_token=text("center_token"),
        storage_roots=storage_roots,
        airflow_url=airflow_url.rstrip("/") if airflow_url else None,
        allowed_callables=_allowed_callables(raw.get("allowed_callables"), env, path),
    )


_MODULE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*")


def _allowed_callables(value: object, env: Mapping[str, str], path: Path | None) -> tuple[str, ...]:
    """The allow-list of modules for callables: dotted module names, from the file's list or the variable's commas."""
    source = "WEIFLOW_ALLOWED_CALLABLES" if env.get("WEIFLOW_ALLOWED_CALLABLES") else str(path or "environment")
    if value is None:
        return ()
    if isinstance(value, str):
        items = [item.strip() for item in value.split(",") if item.strip()]
    elif isinstance(value, list) and all(isinstance(item, str) for item in value):
        items = [item.strip() for item in value]
    else:
        raise ConfigError(f"{source}: 'allowed_callables' must be a list of module names, got {value!r}")
    for item in items:
        if not _MODULE_NAME.fullmatch(item):
            raise ConfigError(
                f"{source}: 'allowed_callables' entry {item!r} is not a module name (write e.g. "
                'allowed_callables = ["team_steps", "mycompany.ranking"])'
            )
    return tuple(dict.fromkeys(items))


def _storage_roots(value: object, source: str, base: Path, storage: str) -> tuple[str, ...]:
    """``storage`` and the configured roots as URIs, relative paths resolved like ``storage``, duplicates dropped.

    Retention deletes only strictly inside one of these, so a root that would let it delete
    everything (a whole file system) or whose meaning is unclear (``..``) is an error here,
    not a surprise at the first sweep.
    """
    if value is None:
        items: list[str] = []
    elif isinstance(value, str) and source == "WEIFLOW_STORAGE_ROOTS":
        items = [item.strip() for item in value.split(",") if item.strip()]
    elif isinstance(value, list) and all(isinstance(item, str) for item in value):
        items = [item.strip() for item in value]
    else:
        raise ConfigError(f"{source}: 'storage_roots' must be a list of URIs, got {value!r} (write {_ROOTS_EXAMPLE})")
    roots = [storage]
    for item in items:
        if not item:
            raise ConfigError(f"{source}: 'storage_roots' has an empty entry (write {_ROOTS_EXAMPLE})")
        root = item if "://" in item else f"file://{(base / Path(item).expanduser()).resolve()}"
        problem = uri_problem(root)  # what a dataset URI may be, a root may be
        if problem:
            raise ConfigError(f"{source}: storage root {problem}")
        protocol, _, rest = root.partition("://")
        if not any(rest.split("/")):
            raise ConfigError(
                f"{source}: storage root {item!r} is a whole file system: retention could delete anything "
                "under it; name the directory WeiFlow writes to"
            )
        root = f"{protocol}://{rest.rstrip('/')}"
        if root not in roots:
            roots.append(root)
    return tuple(roots)
