"""Loading plugins of every kind: only the one a config names is imported (plugins
import torch), and failures are loud: an unknown name lists what is installed, an
import error names the distribution that shipped the broken plugin."""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator, Mapping
from importlib import metadata
from typing import Any

import attrs
import pydantic
import stevedore
from stevedore.exception import NoMatches

from refineg_core import kinds
from refineg_core.errors import PluginError
from refineg_core.extras import check_declared
from refineg_core.interfaces import (
    BoxCodec,
    MLLMBackend,
    Plugin,
    PluginOptions,
    UncertaintyEstimator,
)
from refineg_core.labels import LabelSet

# In-memory plugins registered by tests and notebooks: (group, name) -> class.
_IN_MEMORY: dict[tuple[str, str], type[Any]] = {}


@attrs.frozen
class InstalledPlugin:
    group: str
    name: str
    target: str
    distribution: str
    version: str

    def as_dict(self) -> dict[str, str]:
        return attrs.asdict(self)


def kind_spec(slot: str) -> tuple[str, type]:
    """(entry-point group, base class) of a plugin kind (``refineg_core.kinds``)."""
    found = kinds.kind(slot)
    return found.group, found.base


def slot_group(slot: str) -> str:
    return kind_spec(slot)[0]


def _where(slot: str, key: str) -> str:
    """The config path naming the plugin (``tagger.plugin``, ``data.train.format``)."""
    name_key = kinds.kind(slot).name_key
    return key if name_key is None else f"{key}.{name_key}"


def installed(group: str | None = None) -> list[InstalledPlugin]:
    """Every plugin entry point (without importing any), plus in-memory ones."""
    groups = [group] if group else list(kinds.groups())
    found: list[InstalledPlugin] = []
    for g in groups:
        for ep in metadata.entry_points(group=g):
            dist = ep.dist
            found.append(
                InstalledPlugin(
                    g,
                    ep.name,
                    ep.value,
                    dist.metadata["Name"] if dist else "?",
                    dist.version if dist else "?",
                )
            )
        found += [
            InstalledPlugin(g, name, f"{cls.__module__}:{cls.__qualname__}", "<memory>", "-")
            for (mg, name), cls in _IN_MEMORY.items()
            if mg == g
        ]
    return sorted(found, key=lambda p: (p.group, p.name))


def available_names(group: str) -> list[str]:
    return sorted({p.name for p in installed(group)})


def _unknown(slot: str, name: str, key: str) -> PluginError:
    names = available_names(slot_group(slot))
    plain = kinds.kind(slot).name_key == "plugin"
    what = f"{slot} plugin" if plain else f"unknown {slot.replace('_', ' ')}"
    return PluginError(
        f"{what} {name!r} is not installed; available: {', '.join(names) or 'none'}. "
        f"If it comes from another package, install that package into this environment.",
        where=_where(slot, key),
    )


def load_class(slot: str, name: str, *, config_key: str | None = None) -> type[Plugin]:
    """Import only the named plugin's class, loudly (errors name ``config_key``)."""
    key = config_key or slot
    group = slot_group(slot)
    if (group, name) in _IN_MEMORY:
        cls = _IN_MEMORY[(group, name)]
        _check_declared(slot, name, cls, "memory", _where(slot, key))
        return cls
    eps = [ep for ep in metadata.entry_points(group=group) if ep.name == name]
    if not eps:
        raise _unknown(slot, name, key)
    dist = eps[0].dist
    origin = f"{dist.metadata['Name']} {dist.version}" if dist else "an unknown distribution"

    def fail(_manager: Any, entrypoint: Any, exc: Exception) -> None:
        raise PluginError(
            f"{slot} plugin {name!r} from {origin} failed to import "
            f"({entrypoint.value}): {type(exc).__name__}: {exc}{_extra_hint(dist, exc)}",
            where=_where(slot, key),
        ) from exc

    try:
        manager = stevedore.DriverManager(
            namespace=group,
            name=name,
            invoke_on_load=False,
            on_load_failure_callback=fail,
        )
    except NoMatches:
        raise _unknown(slot, name, key) from None
    cls = manager.driver
    base = kind_spec(slot)[1]
    if not (isinstance(cls, type) and issubclass(cls, base)):
        raise PluginError(
            f"{slot} plugin {name!r} from {origin} is {cls!r}, not a {base.__name__} subclass",
            where=_where(slot, key),
        )
    _check_declared(slot, name, cls, origin, _where(slot, key))
    return cls


_REQUIREMENT = re.compile(
    r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)[^;]*;.*\bextra\s*==\s*[\"']([^\"']+)[\"']"
)


def _extra_hint(dist: metadata.Distribution | None, exc: Exception) -> str:
    """``; pip install 'DIST[EXTRA]'`` when an extra of the distribution provides the
    missing module: the user learns the command, not just the name."""
    missing = getattr(exc, "name", None) if isinstance(exc, ImportError) else None
    if not missing or dist is None:
        return ""
    wanted = _norm(missing.split(".")[0])
    extras = []
    for requirement in dist.requires or []:
        found = _REQUIREMENT.match(requirement)
        if found and _norm(found[1]) == wanted and found[2] not in ("dev", "all"):
            extras.append(found[2])
    if not extras:
        return ""
    extras.sort(key=lambda e: (_norm(e) != wanted, e))  # the extra named after it first
    also = f" (also in: {', '.join(extras[1:])})" if extras[1:] else ""
    return f"; pip install '{dist.metadata['Name']}[{extras[0]}]'{also}"


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _check_declared(slot: str, name: str, cls: type[Plugin], origin: str, where: str) -> None:
    """A capability is declared, never guessed: an undeclared ``calibrate`` override
    would silently never run, an undeclared extra never be given."""
    if not (slot == "uncertainty" and issubclass(cls, UncertaintyEstimator)):
        return
    check_declared(cls.needs_extras, f"uncertainty plugin {name!r} from {origin}")
    if cls.calibrate is not UncertaintyEstimator.calibrate and not cls.calibrates:
        raise PluginError(
            f"uncertainty plugin {name!r} from {origin} overrides calibrate() but does not "
            "declare `calibrates = True`; declare it so the core calls calibrate on data.dev",
            where=where,
        )


def validate_options(
    slot: str,
    name: str,
    cls: type[Plugin],
    options: Mapping[str, Any],
    *,
    config_key: str | None = None,
) -> PluginOptions:
    """Validate raw options against the plugin's own model; errors give the dotted path."""
    key = config_key or slot
    try:
        return cls.Options.model_validate(dict(options))
    except pydantic.ValidationError as exc:
        first = exc.errors()[0]
        path = ".".join(str(p) for p in first["loc"])
        raise PluginError(
            f"{first['msg']} (plugin {name!r})"
            + (
                f"; valid options: {', '.join(sorted(cls.Options.model_fields)) or 'none'}"
                if first["type"] == "extra_forbidden"
                else ""
            ),
            where=f"{key}.options.{path}" if path else f"{key}.options",
        ) from None


def create(
    slot: str,
    name: str,
    options: Mapping[str, Any] | None = None,
    labels: LabelSet | None = None,
    *,
    config_key: str | None = None,
) -> Plugin:
    """Load, validate options and instantiate one plugin."""
    cls = load_class(slot, name, config_key=config_key)
    options = validate_options(slot, name, cls, options or {}, config_key=config_key)
    return cls(options, labels)


def create_box_frame(
    name: str, options: Mapping[str, Any] | None = None, *, config_key: str | None = None
) -> BoxCodec:
    """Load, validate options and build the box frame ``name`` (errors name ``config_key``)."""
    key = config_key or "box_frame"
    cls = load_class("box_frame", name, config_key=key)
    try:
        validated = cls.Options.model_validate(dict(options or {}))
    except pydantic.ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(p) for p in first["loc"])
        valid = ", ".join(sorted(cls.Options.model_fields)) or "none"
        raise PluginError(
            f"box frame {name!r}: {field or 'options'}: {first['msg']} (its options: {valid})",
            where=key,
        ) from None
    return cls(validated)


_DEFAULT_FRAME: list[BoxCodec] = []


def backend_frame(backend: MLLMBackend) -> BoxCodec:
    """``backend``'s own ``box_codec``, or the ``pixels`` frame (built once: ~5 ms)."""
    frame = backend.box_codec
    if frame is not None:
        return frame
    if not _DEFAULT_FRAME:
        _DEFAULT_FRAME.append(create_box_frame("pixels"))
    return _DEFAULT_FRAME[0]


@contextlib.contextmanager
def registered(slot: str, name: str, cls: type[Plugin]) -> Iterator[type[Plugin]]:
    """Make ``cls`` selectable by ``name`` for the duration of a ``with`` block."""
    key = (slot_group(slot), name)
    previous = _IN_MEMORY.get(key)
    _IN_MEMORY[key] = cls
    try:
        yield cls
    finally:
        if previous is None:
            _IN_MEMORY.pop(key, None)
        else:
            _IN_MEMORY[key] = previous
