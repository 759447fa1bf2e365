"""``refineg config show --defaults``: every option of the resolved config and of each
selected plugin, with value and description, so a user sees what a run will use."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pydantic

from refineg_core import secrets
from refineg_core.config import (
    DEPRECATED_ENGINE_KEYS,
    SLOT_NAMES,
    Config,
    effective,
    slot_kind,
)

#: One table of the printed config: its dotted name and (key, value, description) rows.
Table = tuple[str, list[tuple[str, Any, str]]]


def _tables(prefix: str, model: pydantic.BaseModel) -> Iterator[Table]:
    """The model's scalar rows, then each sub-model as a table of its own."""
    rows: list[tuple[str, Any, str]] = []
    subs: list[tuple[str, Any]] = []
    for name, field in type(model).model_fields.items():
        if field.exclude:
            continue
        value = getattr(model, name)
        if isinstance(value, pydantic.BaseModel):
            subs.append((name, value))
        else:
            rows.append((name, value, field.description or ""))
    yield prefix, rows
    for name, sub in subs:
        yield from _tables(f"{prefix}.{name}" if prefix else name, sub)


def full_config(config: Config) -> list[Table]:
    """Every table with defaults filled in, plugin ``options`` as the plugin validates them."""
    from refineg_core import registry

    config = effective(config)
    tables: list[Table] = []
    for prefix, rows in _tables("", config):
        plugin = prefix in SLOT_NAMES or prefix == "engine"
        keep = [(k, v, d) for k, v, d in rows if not (k == "options" and plugin)]
        if prefix == "engine":  # moved into engine.options when the config loaded
            keep = [row for row in keep if row[0] not in DEPRECATED_ENGINE_KEYS]
        tables.append((prefix, keep))
        if prefix in SLOT_NAMES:
            slot = config.slot(prefix)
            assert slot is not None
            kind, name, raw = slot_kind(prefix), slot.plugin, slot.options
        elif prefix == "engine":  # the engine plugin's own options, like a slot's
            kind, name, raw = "engine", config.engine.kind, config.engine.options
        else:
            continue
        cls = registry.load_class(kind, name, config_key=prefix)
        options = registry.validate_options(kind, name, cls, raw, config_key=prefix)
        tables.extend(_tables(f"{prefix}.options", options))
    return tables


def toml_value(value: Any) -> str:
    """A TOML value (``config show`` with or without ``--defaults``)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {toml_value(v)}" for k, v in value.items()) + " }"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    return json.dumps(str(value))


def _shown(key: str, value: Any) -> Any:
    """A value as JSON data, redacted like ``config.json`` (by key and inside URLs)."""
    return secrets.redact({key: pydantic.TypeAdapter(Any).dump_python(value, mode="json")})[key]


def full_config_data(config: Config) -> dict[str, Any]:
    """``full_config`` as one nested mapping (``config show --defaults --json``)."""
    out: dict[str, Any] = {}
    for name, rows in full_config(config):
        node = out
        for part in name.split(".") if name else ():
            node = node.setdefault(part, {})
        for key, value, _ in rows:
            node[key] = _shown(key, value)
    return out


def render_full_config(config: Config) -> str:
    """TOML text with a ``#`` comment above each documented key; secrets redacted."""
    lines: list[str] = []
    for name, rows in full_config(config):
        if not rows:
            continue
        if name:
            lines.append(f"\n[{name}]")
        for key, value, description in rows:
            value = _shown(key, value)
            if description:
                lines.append(f"# {description}")
            # TOML has no null: an unset key is shown commented out.
            lines.append(f"# {key} = (unset)" if value is None else f"{key} = {toml_value(value)}")
    return "\n".join(lines).lstrip("\n") + "\n"
