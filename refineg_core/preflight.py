"""Checks a run makes before any work, so a problem costs seconds, not a training:
a required MLLM stage's backend works now (else exit 3), an ``"auto"`` stage that
will be skipped says so at the start, and a saved tagger was trained with the
config's options (inference-only ones may differ; else exit 2).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from refineg_core.errors import ConfigError, StageUnavailable
from refineg_core.pipeline.fingerprint import flatten, read_record
from refineg_core.pipeline.order import MLLM_STAGES, TRAINED_MARKER

#: The run's ``Pipeline`` (importing it would close an import circle).
Pipeline = Any


def check_backends(
    pipeline: Pipeline, log: Callable[[str], None], stages: Sequence[str] = MLLM_STAGES
) -> dict[str, str]:
    """Raise for a required stage whose backend cannot work; return (and log) why each
    ``"auto"`` one will be skipped."""
    skipped: dict[str, str] = {}
    availability: dict[str, str | None] = {}
    for stage in stages:
        mode = pipeline.stage_mode(stage)
        if mode is False:
            continue
        backend = pipeline.backend()
        if backend is None:
            if mode is True:
                raise ConfigError(f"stages.{stage} = true needs a [backend]", where="backend")
            reason = "no backend configured"
        else:
            if "checked" not in availability:
                availability["checked"] = backend.check_available()
            reason = availability["checked"]
            if reason is None and stage == "ground" and not backend.supports_images:
                reason = "it is text-only; grounding needs a backend that sees images"
            if reason is not None:
                reason = f"{backend.describe()}: {reason}"
        if reason is None:
            continue
        if mode is True:
            raise StageUnavailable(
                f'{reason} (checked before any work; set stages.{stage} = "auto" to skip '
                "the stage instead)",
                where=stage,
            )
        skipped[stage] = reason
        log(f'{stage}: will be skipped (stages.{stage} = "auto"): {reason}')
    return skipped


def saved_tagger_differences(pipeline: Pipeline) -> list[str] | None:
    """How the config's options differ from the saved tagger's (None: not recorded)."""
    config = pipeline.config
    folder = Path(config.tagger.load_from)
    record = read_record(folder / TRAINED_MARKER)
    if record is None:
        return None
    cls = pipeline.context.plugin_class("tagger")
    inference_only = set(getattr(cls, "inference_options", frozenset()))
    options = pipeline.context.options("tagger").model_dump(mode="json")
    now = {
        "tagger.plugin": config.tagger.plugin,
        **flatten({k: v for k, v in options.items() if k not in inference_only}, "tagger.options"),
    }
    defaults = _defaults(cls, inference_only)
    saved = {k: v for k, v in record.parts.items() if k == "tagger.plugin" or _is_option(k)}
    out = []
    for key in sorted(now.keys() | saved.keys()):
        if _option_name(key) in inference_only:
            continue
        if key not in saved:
            # an option newer than the saved tagger: fine while it keeps its default
            if key in defaults and defaults[key] == now[key]:
                continue
            out.append(f"{key} = {_show(now[key])} (the saved tagger does not record it)")
        elif key not in now:
            continue  # an option the plugin no longer has
        elif saved[key] != now[key]:
            out.append(f"{key} = {_show(now[key])} (trained with {_show(saved[key])})")
    return out


def check_saved_tagger(pipeline: Pipeline, log: Callable[[str], None]) -> None:
    """Refuse a saved tagger trained with other (not inference-only) options."""
    load_from = pipeline.config.tagger.load_from
    if load_from is None:
        return
    differences = saved_tagger_differences(pipeline)
    if differences is None:
        log(
            f"train: {load_from} has no {TRAINED_MARKER}: the options it was trained with "
            "cannot be compared with the config's"
        )
        return
    if differences:
        raise ConfigError(
            f"the saved tagger at {load_from} was trained with other options than the "
            f"config gives: {'; '.join(differences)}. Its predictions would not be what "
            "the config describes: either retrain (remove tagger.load_from, or point it at "
            "a tagger trained with these options) or set these options back to the saved "
            "values (a plugin may declare options that only shape inference in its "
            "inference_options)",
            where="tagger.load_from",
        )


def _is_option(key: str) -> bool:
    return key.startswith("tagger.options.")


def _option_name(key: str) -> str | None:
    return key.split(".")[2] if _is_option(key) else None


def _defaults(cls: type, inference_only: set[str]) -> dict[str, Any]:
    """The plugin's default options, flat (empty when they cannot be built alone)."""
    try:
        options = cls.Options().model_dump(mode="json")  # type: ignore[attr-defined]
    except Exception:  # an option without a default: nothing to compare against
        return {}
    return flatten({k: v for k, v in options.items() if k not in inference_only}, "tagger.options")


def _show(value: Any) -> str:
    text = json.dumps(value, default=str)
    return text if len(text) <= 60 else text[:57] + "..."
