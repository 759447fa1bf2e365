"""The one owner of a run's components: each plugin a config names is built
once, shared by every stage (one backend object: a local model loads once, one
meter counts every call) and closed exactly once, error or not.
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path
from typing import Any

from refineg_core import registry
from refineg_core.config import Config, slot_kind
from refineg_core.errors import ConfigError, RefinegError
from refineg_core.extras import check_supply
from refineg_core.interfaces import (
    ContextSelector,
    MLLMBackend,
    Plugin,
    PluginOptions,
    Synthesizer,
    Tagger,
    UncertaintyEstimator,
)
from refineg_core.mllm_cache import CachedBackend

log = logging.getLogger(__name__)


class RunContext:
    """Builds each configured component once and closes them all together."""

    def __init__(self, config: Config, cache_dir: Path) -> None:
        self.config = config
        self.labels = config.label_set
        self.cache_dir = Path(cache_dir)
        self._built: dict[str, Any] = {}
        self._order: list[Any] = []
        self._closed = False

    def options(self, key: str) -> PluginOptions:
        cls = self.plugin_class(key)
        slot = self.config.slot(key)
        assert slot is not None  # plugin_class raised otherwise
        return registry.validate_options(
            slot_kind(key), slot.plugin, cls, slot.options, config_key=key
        )

    def plugin_class(self, key: str) -> type[Plugin]:
        slot = self.config.slot(key)
        if slot is None:
            raise ConfigError(f"no plugin configured for {key}", where=f"{key}.plugin")
        return registry.load_class(slot_kind(key), slot.plugin, config_key=key)

    def _once(self, name: str, build) -> Any:
        if self._closed:
            raise RefinegError("this run has been closed; open a new one")
        if name not in self._built:
            component = build()
            self._built[name] = component
            self._order.append(component)
        return self._built[name]

    def _plugin(self, key: str) -> Plugin:
        slot = self.config.slot(key)
        assert slot is not None
        return registry.create(
            slot_kind(key), slot.plugin, slot.options, self.labels, config_key=key
        )

    def gate(self) -> UncertaintyEstimator:
        gate = self._once("uncertainty", self._checked_gate)
        assert isinstance(gate, UncertaintyEstimator)
        return gate

    def check_gate_extras(self) -> None:
        """Refuse a gate needing extras the tagger does not report (loads classes only)."""
        gate, tagger = self.config.slot("uncertainty"), self.config.slot("tagger")
        if gate is None or tagger is None:
            return
        gate_cls = self.plugin_class("uncertainty")
        assert issubclass(gate_cls, UncertaintyEstimator)
        needed = gate_cls.needs_extras
        if needed:
            tagger_cls = self.plugin_class("tagger")
            assert issubclass(tagger_cls, Tagger)
            supplied = tagger_cls.supplied_extras(self.options("tagger"))
            check_supply(needed, supplied, gate=gate.plugin, tagger=tagger.plugin)

    def _checked_gate(self) -> Plugin:
        self.check_gate_extras()
        return self._plugin("uncertainty")

    def selector(self) -> ContextSelector | None:
        if self.config.selector is None:
            return None
        selector = self._once("selector", lambda: self._plugin("selector"))
        assert isinstance(selector, ContextSelector)
        return selector

    def synthesizer(self) -> Synthesizer:
        synthesizer = self._once("synthesizer", lambda: self._plugin("synthesizer"))
        assert isinstance(synthesizer, Synthesizer)
        return synthesizer

    def backend(self, key: str = "backend") -> CachedBackend | None:
        """The backend of ``key`` behind the response cache (``synth_backend``: else
        the same object as ``backend``)."""
        if self.config.slot(key) is None:
            return self.backend("backend") if key == "synth_backend" else None

        def build() -> CachedBackend:
            inner = self._plugin(key)
            assert isinstance(inner, MLLMBackend)
            return CachedBackend(inner, self.cache_dir)

        return self._once(key, build)

    def tagger(self, directory: Path) -> Tagger:

        def build() -> Tagger:
            # Looked up only to build: the entry-point scan cost ~17 ms per ``pipe`` batch.
            cls = self.plugin_class("tagger")
            if not Path(directory).is_dir():
                raise RefinegError(
                    f"no trained tagger at {directory}; run `refineg train` first "
                    "or set tagger.load_from"
                )
            tagger = cls.load(Path(directory), self.options("tagger"), self.labels)  # type: ignore[attr-defined]
            assert isinstance(tagger, Tagger)
            return tagger

        return self._once(f"tagger:{Path(directory).resolve()}", build)

    def untrained_tagger(self) -> Tagger:
        """A fresh tagger to fit (not cached)."""
        tagger = self._plugin("tagger")
        assert isinstance(tagger, Tagger)
        self._order.append(tagger)
        return tagger

    def forget_tagger(self, directory: Path) -> None:
        tagger = self._built.pop(f"tagger:{Path(directory).resolve()}", None)
        if tagger is not None:
            self._order.remove(tagger)
            tagger.close()

    def close(self) -> None:
        """Close every component once, newest first, even when one close fails."""
        if self._closed:
            return
        self._closed = True
        errors = []
        for component in reversed(self._order):
            try:
                component.close()
            except Exception as exc:  # closing must reach every component
                errors.append(exc)
                log.warning("closing %s failed: %s", type(component).__name__, exc)
        self._built.clear()
        self._order.clear()
        if errors:
            raise errors[0]

    def __enter__(self) -> RunContext:
        return self

    def __exit__(self, *exc: object) -> None:
        with contextlib.suppress(Exception) if exc[0] is not None else contextlib.nullcontext():
            self.close()
