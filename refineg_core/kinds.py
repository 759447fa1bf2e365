"""The one table of plugin kinds: entry-point group, base class, config key.

The registry loads plugins by it, ``refineg plugins --kinds`` prints it, and
the docs test checks CONTRIBUTING's table against it, so a group name is
written here and nowhere else in the code. A third-party package plugs in by
declaring an entry point in the kind's group.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator

import attrs

from refineg_core.errors import PluginError
from refineg_core.formats.base import DatasetFormat
from refineg_core.interfaces import (
    BoxCodec,
    ContextSelector,
    MLLMBackend,
    Plugin,
    Synthesizer,
    Tagger,
    UncertaintyEstimator,
)
from refineg_core.pipeline.engine_contract import Engine
from refineg_core.pipeline.stage_contract import Stage


@attrs.frozen
class PluginKind:
    """One kind of plugin."""

    #: The kind's name (``registry.load_class(kind, name)``).
    name: str
    #: The entry-point group a package registers plugins of this kind under.
    group: str
    #: The class every plugin of this kind subclasses (a ``Plugin``, except an
    #: ``Engine``, built from the run's worker, and a ``Stage``, built by the run:
    #: neither takes options).
    base: type[Plugin] | type[Engine] | type[Stage]
    #: Where a config names the plugin (``tagger.plugin``, ``data.<split>.format``).
    config_key: str
    #: The key inside a config table that names the plugin (``plugin``,
    #: ``format``), or None when the config key itself holds the name.
    name_key: str | None = "plugin"
    #: Other class attributes a plugin may declare (capabilities, option kinds).
    declares: tuple[str, ...] = ()

    @property
    def required(self) -> tuple[str, ...]:
        """The methods a plugin of this kind must write (the base's abstract ones)."""
        return tuple(
            name
            for name, member in inspect.getmembers(self.base)
            if getattr(member, "__isabstractmethod__", False)
            or getattr(getattr(member, "__func__", None), "__isabstractmethod__", False)
        )

    def as_dict(self) -> dict[str, object]:
        return {
            "kind": self.name,
            "group": self.group,
            "base": self.base.__name__,
            "config_key": self.config_key,
            "required": list(self.required),
            "declares": list(self.declares),
        }


#: Every plugin kind, in the order a run uses them. pluggy hooks (events, extra
#: commands) are not plugins of a kind: see ``refineg_core.hooks``.
KINDS: tuple[PluginKind, ...] = (
    PluginKind("synthesizer", "refineg.synthesizers", Synthesizer, "synthesizer.plugin"),
    PluginKind(
        "tagger",
        "refineg.taggers",
        Tagger,
        "tagger.plugin",
        declares=("inference_options", "derived_folders", "supplied_extras"),
    ),
    PluginKind(
        "uncertainty",
        "refineg.uncertainty",
        UncertaintyEstimator,
        "uncertainty.plugin",
        declares=("calibrates", "needs_extras"),
    ),
    PluginKind(
        "backend",
        "refineg.mllm_backends",
        MLLMBackend,
        "backend.plugin",
        declares=("supports_images",),
    ),
    PluginKind("selector", "refineg.context_selectors", ContextSelector, "selector.plugin"),
    # an MLLMStage or a SynthStage; name (and an MLLM stage's kept_on_failure and
    # unreached) are required class attributes
    PluginKind("stage", "refineg.stages", Stage, "<stage>.plugin"),
    PluginKind(
        "format",
        "refineg.formats",
        DatasetFormat,
        "data.<split>.format",
        name_key="format",
        declares=("reads_limit",),
    ),
    PluginKind(
        "box_frame",
        "refineg.box_frames",
        BoxCodec,
        "backend.options.box_frame",
        name_key=None,
        declares=("name",),
    ),
    PluginKind("engine", "refineg.engines", Engine, "engine.kind", name_key="kind"),
)

_BY_NAME = {k.name: k for k in KINDS}


def kind(name: str) -> PluginKind:
    """The kind called ``name``; a clear error for anything else."""
    found = _BY_NAME.get(name)
    if found is None:
        raise PluginError(f"unknown plugin kind {name!r}; kinds are {sorted(_BY_NAME)}")
    return found


def group(name: str) -> str:
    """The entry-point group of the kind ``name``."""
    return kind(name).group


def groups() -> Iterator[str]:
    return (k.group for k in KINDS)
