"""Checks a run makes before any work, so a problem costs seconds, not a training.

- Every MLLM stage set to ``true`` has a backend that works *now*: reachable,
  serving the model, usable for the stage (grounding needs images). This is
  checked whether or not any sample will need a call (data without images
  still proves nothing about the backend), and a failure ends the command
  with exit 3 before the tagger is trained or anything is written.
- Every ``"auto"`` stage whose backend is not available says so at the start:
  it will be skipped (and why), instead of only in the final summary.
- A saved tagger (``tagger.load_from``) was trained with the options the
  config gives now. Options the tagger plugin declares inference-only may
  differ (they shape prediction, not the saved weights); any other difference
  would serve predictions made by another model than the config describes,
  so it is refused (exit 2) naming each option and how to proceed.

Config values themselves (finite numbers, real URLs, no coercion) are checked
when the config is loaded (``refineg_core.config``).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from refineg_core.errors import ConfigError, StageUnavailable
from refineg_core.pipeline.fingerprint import flatten, read_record
from refineg_core.pipeline.order import MLLM_STAGES, TRAINED_MARKER

#: Functions here take the run's ``Pipeline`` (typed ``Any``: importing it would
#: close an import circle, since the orchestrator calls these checks).
Pipeline = Any


def check_backends(
    pipeline: Pipeline, log: Callable[[str], None], stages: Sequence[str] = MLLM_STAGES
) -> dict[str, str]:
    """Check the backend of every MLLM stage in ``stages`` that is not off; raise for a
    required one that cannot work, and return (and log) why each ``"auto"`` one will
    be skipped."""
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
    """How the config's training options differ from those the saved tagger
    (``tagger.load_from``) was trained with; None when the folder does not say."""
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
