"""Training settings in a file: ``train --config FILE`` and ``train --print-config``.

A file holds ``TrainConfig`` fields by name (``max_lr``, not ``--max-lr``), flat, in TOML,
YAML or JSON, chosen by the file's suffix. A run folder's own ``config.json`` is such a
file: read as ``RunSettings``, its own keys (``lr_source``, ``report``) are skipped, so
a run repeats from its folder. Precedence: the defaults, then the file, then the flags
typed. Relative paths in a file are relative to the file's folder, so a file means the
same data from anywhere.

Reading uses ``tomllib`` (``tomli`` before Python 3.11), PyYAML and ``json``. Writing TOML
is done here, in a dozen lines, because the standard library reads TOML but does not write
it, and a flat table of numbers, strings and booleans needs no extra dependency.
"""

from __future__ import annotations

import dataclasses
import json
import math
import sys
from pathlib import Path
from typing import Any

from .config import PATH_FIELDS, TrainConfig, as_saved_run, check_field, field_types
from .errors import ConfigError
from .records.records import RunSettings

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib

FORMATS = {".toml": "toml", ".yaml": "yaml", ".yml": "yaml", ".json": "json"}


def file_format(path: str | Path) -> str:
    """toml, yaml or json, from ``path``'s suffix."""
    suffix = Path(path).suffix.lower()
    if suffix not in FORMATS:
        raise ConfigError(
            f"{path}: unknown config file type {suffix or '(no suffix)'!r}; "
            "use .toml, .yaml, .yml or .json"
        )
    return FORMATS[suffix]


def _parse(path: Path, kind: str) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
        raise ConfigError(f"cannot read config file {path}: {reason}") from None
    try:
        if kind == "toml":
            return tomllib.loads(text)
        if kind == "json":
            return json.loads(text)
        import yaml

        return yaml.safe_load(text)
    except Exception as e:  # each parser has its own error class; all mean the same here
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ConfigError(f"{path} is not valid {kind.upper()}: {first}") from None


def read_config_file(path: str | Path) -> dict[str, Any]:
    """The settings a file holds, checked key by key (unknown keys and wrong types are
    errors naming the key and the file)."""
    path = Path(path).expanduser()
    kind = file_format(path)
    values = _parse(path, kind)
    if values is None:
        values = {}
    if not isinstance(values, dict):
        raise ConfigError(f"{path}: expected a table of settings, got {type(values).__name__}")
    if RunSettings.written_by_a_run(values):  # a run's config.json: repeat what it trained
        values = as_saved_run(values)
    values = RunSettings.from_dict(values).config  # lr_source and report are no settings
    fields = {f.name: f for f in dataclasses.fields(TrainConfig)}
    types = field_types()
    out: dict[str, Any] = {}
    for key, value in values.items():
        if key not in fields:
            raise ConfigError(
                f"{path}: unknown key {key!r} (keys are TrainConfig fields, e.g. max_lr)"
            )
        if kind == "yaml" and types[key] is float and isinstance(value, str):
            value = _yaml_number(value)  # YAML 1.1 reads 1e-3 (no dot) as text
        try:
            check_field(fields[key], value, types[key])
        except ConfigError as e:
            raise ConfigError(f"{path}: {key}: {e}") from None
        if key in PATH_FIELDS and value is not None:
            value = str((path.parent / Path(value).expanduser()).absolute())
        out[key] = value
    return out


def _yaml_number(text: str) -> float | str:
    try:
        value = float(text)
    except ValueError:
        return text
    return value if math.isfinite(value) else text


def resolved_settings(config: TrainConfig) -> dict[str, Any]:
    """The config's fields with a value (None means "not set" and is left out)."""
    return {k: v for k, v in config.to_dict().items() if v is not None}


def format_config(config: TrainConfig, kind: str = "toml") -> str:
    """``config`` as a file of ``kind`` that ``read_config_file`` reads back to it."""
    settings = resolved_settings(config)
    if kind == "json":
        return json.dumps(settings, indent=2) + "\n"
    if kind == "yaml":
        import yaml

        return yaml.safe_dump(settings, sort_keys=False)
    if kind != "toml":
        raise ConfigError(f"--print-config takes toml, yaml or json, got {kind!r}")
    lines = ["# cifar-resnet training settings (TrainConfig fields)"]
    lines += [f"{key} = {_toml_value(value)}" for key, value in settings.items()]
    return "\n".join(lines) + "\n"


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)  # a finite float's repr is a valid TOML float and reads back equal
    return json.dumps(str(value))  # a TOML basic string has JSON's escapes
