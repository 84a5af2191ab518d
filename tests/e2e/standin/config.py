"""Writing a bot config file whose [discord] table points at the stand-in.

tomllib only reads TOML, so the few value types a config holds are written here.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import tomllib

from .server import DiscordStandin


def merged(base: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """Deep merge: tables merge key by key, everything else is replaced."""
    result = dict(base)
    for key, value in overrides.items():
        if isinstance(value, Mapping) and isinstance(result.get(key), Mapping):
            result[key] = merged(result[key], value)
        else:
            result[key] = value
    return result


def write_bot_config(
    path: Path,
    standin: DiscordStandin,
    *,
    base: Path | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Path:
    """Write `base` (a TOML file, e.g. the repo's config.toml) with the stand-in's [discord]
    keys and then `overrides` ({"storage": {"data_dir": "..."}, ...}) merged in."""
    config: dict[str, Any] = {}
    if base is not None:
        config = tomllib.loads(base.read_text(encoding="utf-8"))
    config = merged(config, {"discord": standin.discord_config()})
    config = merged(config, overrides or {})
    path.write_text(dumps_toml(config), encoding="utf-8")
    return path


def dumps_toml(table: Mapping[str, Any]) -> str:
    lines: list[str] = []
    _write_table(lines, table, prefix=())
    return "\n".join(lines) + "\n"


def _write_table(lines: list[str], table: Mapping[str, Any], prefix: tuple[str, ...]) -> None:
    subtables = {k: v for k, v in table.items() if isinstance(v, Mapping)}
    if prefix and (len(subtables) < len(table) or not subtables):
        lines.append(f"[{'.'.join(_key(p) for p in prefix)}]")
    for key, value in table.items():
        if key not in subtables:
            lines.append(f"{_key(key)} = {_value(value)}")
    for key, value in subtables.items():
        if lines:
            lines.append("")
        _write_table(lines, value, (*prefix, key))


def _key(key: str) -> str:
    return key if key.replace("_", "").replace("-", "").isalnum() else json.dumps(key)


def _value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        # JSON's escapes (\n, \", \uXXXX for control characters) are all valid in a TOML
        # basic string; other characters go out as UTF-8.
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {type(value).__name__} to TOML: {value!r}")
