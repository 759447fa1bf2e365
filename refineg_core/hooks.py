"""pluggy for what many plugins may answer (stage events, CLI commands, metrics),
registered through the ``refineg`` entry-point group and called through ``Hooks``."""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping, Sequence
from functools import cache
from typing import Any

import pluggy

from refineg_core.errors import PluginError

PROJECT = "refineg"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


class HookSpecs:
    @hookspec
    def refineg_stage_started(self, stage: str, total: int) -> None:
        """A stage is about to process ``total`` items."""

    @hookspec
    def refineg_stage_finished(self, stage: str, summary: Mapping[str, Any]) -> None:
        """A stage finished; ``summary`` holds its counts and seconds."""

    @hookspec
    def refineg_add_commands(self, subparsers: argparse._SubParsersAction) -> None:
        """Add subcommands to the ``refineg`` CLI (set ``func`` via ``set_defaults``)."""

    @hookspec
    def refineg_extra_metrics(
        self, gold: Sequence[Any], predicted: Sequence[Any]
    ) -> Mapping[str, float] | None:
        """Return extra named metrics for an evaluation (samples aligned by id)."""


class Hooks:
    """Typed facade over the plugin manager."""

    def __init__(self, pm: pluggy.PluginManager) -> None:
        self.pm = pm

    def stage_started(self, stage: str, total: int) -> None:
        self.pm.hook.refineg_stage_started(stage=stage, total=total)

    def stage_finished(self, stage: str, summary: Mapping[str, Any]) -> None:
        self.pm.hook.refineg_stage_finished(stage=stage, summary=summary)

    def add_commands(self, subparsers: argparse._SubParsersAction) -> None:
        self.pm.hook.refineg_add_commands(subparsers=subparsers)

    def extra_metrics(self, gold: Sequence[Any], predicted: Sequence[Any]) -> dict[str, float]:
        merged: dict[str, float] = {}
        for result in self.pm.hook.refineg_extra_metrics(gold=gold, predicted=predicted):
            if result:
                merged.update(result)
        return merged

    def has_extra_metrics(self) -> bool:
        """Whether any plugin adds metrics (they see the whole set, so scoring loads it)."""
        return bool(self.pm.hook.refineg_extra_metrics.get_hookimpls())

    def register(self, plugin: object, name: str | None = None) -> None:
        self.pm.register(plugin, name=name)
        self.pm.check_pending()

    def unregister(self, plugin: object) -> None:
        self.pm.unregister(plugin)


def make_plugin_manager(load_entry_points: bool = True) -> pluggy.PluginManager:
    """A plugin manager with every hook plugin loaded, or only those
    ``REFINEG_HOOK_PLUGINS`` names (a way out when a broken plugin blocks the CLI)."""
    pm = pluggy.PluginManager(PROJECT)
    pm.add_hookspecs(HookSpecs)
    if not load_entry_points:
        return pm
    only = os.environ.get("REFINEG_HOOK_PLUGINS")
    names = [None] if only is None else [n.strip() for n in only.split(",") if n.strip()]
    for name in names:
        try:
            pm.load_setuptools_entrypoints(PROJECT, name=name)
        except Exception as exc:  # a broken hook plugin must be loud, like pytest
            raise PluginError(
                f"a 'refineg' hook plugin failed to load: {type(exc).__name__}: {exc} "
                "(set REFINEG_HOOK_PLUGINS to the names to load, or uninstall the broken package)"
            ) from exc
    pm.check_pending()
    return pm


@cache
def get_hooks() -> Hooks:
    """The process-wide hooks (entry points loaded once)."""
    return Hooks(make_plugin_manager())


def hook_plugins() -> list[tuple[str, str, str]]:
    """(name, distribution, version) of every hook plugin loaded from entry points."""
    pm = get_hooks().pm
    return sorted(
        (pm.get_name(plugin) or "?", dist.project_name, dist.version)
        for plugin, dist in pm.list_plugin_distinfo()
    )
