"""The settings of the LLM stages (``[synth]``, ``[refine]``, ``[ground]``,
``[prompts]``), with the config's other models.

They live on the config side, not in the stage modules, so the config depends
on no stage: ``config.py`` imports this module, and the stages (the
``refineg_stages`` plugin's refine, ground and synth) import their settings
from here. A user's
prompt template is checked here, when the config is read, not after an hour
of calls: placeholders must be known
(``REFINE_FIELDS``...) and the required ones present. The templates themselves
and the requests they build are the stages' (``refineg_stages.prompts``).
"""

from __future__ import annotations

import string
from collections.abc import Sequence
from typing import Literal

import pydantic

from refineg_core.errors import ConfigError
from refineg_core.interfaces import PluginOptions

#: Placeholders of the refine prompt (see refineg_stages.prompts).
REFINE_FIELDS = frozenset(
    {"domain", "types", "labels", "generic_examples", "image_note", "text", "candidates"}
)
#: Placeholders of the ground system prompt.
GROUND_SYSTEM_FIELDS = frozenset({"domain", "types", "labels", "box_format"})
#: Placeholders of the ground query prompt (every demonstration and the query).
GROUND_QUERY_FIELDS = frozenset({"text", "entities", "size"})


def template_fields(template: str) -> set[str]:
    """The placeholder names a ``string.Template`` uses."""
    names = set()
    for m in string.Template.pattern.finditer(template):
        if m.group("invalid") is not None:
            raise ConfigError(f"invalid '$' at offset {m.start()} (write '$$' for a dollar sign)")
        name = m.group("named") or m.group("braced")
        if name:
            names.add(name)
    return names


def check_template(
    template: str, allowed: frozenset[str], required: Sequence[str], *, where: str | None
) -> str:
    """Validate a user template at config time, not after an hour of calls."""
    try:
        fields = template_fields(template)
    except ConfigError as exc:
        raise ConfigError(str(exc), where=where) from None
    unknown = sorted(fields - allowed)
    if unknown:
        raise ConfigError(
            f"unknown placeholders {['$' + u for u in unknown]}; "
            f"use {sorted('$' + a for a in allowed)}",
            where=where,
        )
    missing = [r for r in required if r not in fields]
    if missing:
        raise ConfigError(f"the template must use {['$' + m for m in missing]}", where=where)
    return template


def validate_template(template: str, allowed: frozenset[str], required: Sequence[str]) -> str:
    """``check_template`` for pydantic validators: a ValueError pydantic can locate."""
    try:
        return check_template(template, allowed, required, where=None)
    except ConfigError as exc:
        raise ValueError(str(exc)) from None


class PromptWording(PluginOptions):
    """``[prompts]`` in the config: the few words that differ between domains.

    The core's defaults are neutral; a dataset's config carries its own wording
    (configs/twitter-gmner.toml, configs/ccks.toml). The entity types and their
    descriptions (with examples of names) come from ``[labels]``.
    """

    #: What the texts are ($domain), e.g. "social media posts (tweets)".
    domain: str = pydantic.Field("texts", min_length=1)
    #: Generic nouns the model must never tag ($generic_examples).
    generic_examples: str = pydantic.Field("person, place, company, vehicle", min_length=1)


#: The neutral wording a config without ``[prompts]`` gets.
DEFAULT_WORDING = PromptWording()


class RefineSettings(PluginOptions):
    """``[refine]`` in the config."""

    enabled: bool = True
    max_tokens: int = pydantic.Field(1024, ge=16)
    temperature: float = pydantic.Field(0.1, ge=0.0, le=2.0)
    #: A ``string.Template`` replacing the default prompt (see refineg_stages.prompts).
    prompt: str | None = None
    #: Which samples go to the MLLM: ``gate`` (the uncertainty gate's decision),
    #: ``entities`` (every sample with a predicted entity, all of them delegated:
    #: the reference release's behaviour) or ``all`` (every sample).
    delegate: Literal["gate", "entities", "all"] = "gate"
    #: Domain wording; the run fills it from the config's ``[prompts]``.
    wording: PromptWording = pydantic.Field(default_factory=PromptWording)
    #: More names the model may write for a type, label -> names (e.g.
    #: ``{OTHER = ["event", "product"]}``); common ones (Person, organisation,
    #: place, misc...) and words of the type descriptions are understood already.
    type_synonyms: dict[str, list[str]] = pydantic.Field(default_factory=dict)
    #: The stage plugin that refines (``refineg.stages``; ``refineg plugins`` lists
    #: them): a variant registered under another name replaces the built-in.
    plugin: str = "refine"

    @pydantic.field_validator("prompt")
    @classmethod
    def _check_prompt(cls, value: str | None) -> str | None:
        if value is None:
            return None
        return validate_template(value, REFINE_FIELDS, ("text", "candidates"))


class GroundSettings(PluginOptions):
    """``[ground]`` in the config."""

    enabled: bool = True
    k: int = pydantic.Field(3, ge=0, le=16)
    max_tokens: int = pydantic.Field(1024, ge=16)
    temperature: float = pydantic.Field(0.1, ge=0.0, le=2.0)
    #: ``string.Template`` overrides (see refineg_stages.prompts for placeholders).
    system_prompt: str | None = None
    query_prompt: str | None = None
    #: Domain wording; the run fills it from the config's ``[prompts]``.
    wording: PromptWording = pydantic.Field(default_factory=PromptWording)
    #: The stage plugin that grounds (``refineg.stages``): a variant registered under
    #: another name replaces the built-in.
    plugin: str = "ground"

    @pydantic.field_validator("system_prompt")
    @classmethod
    def _check_system(cls, value: str | None) -> str | None:
        if value is None:
            return None
        return validate_template(value, GROUND_SYSTEM_FIELDS, ())

    @pydantic.field_validator("query_prompt")
    @classmethod
    def _check_query(cls, value: str | None) -> str | None:
        if value is None:
            return None
        return validate_template(value, GROUND_QUERY_FIELDS, ("text", "entities"))


class SynthSettings(pydantic.BaseModel):
    """The ``[synth]`` config section."""

    model_config = pydantic.ConfigDict(extra="forbid", frozen=True)

    #: The stage plugin that synthesizes (``refineg.stages``, a ``SynthStage``).
    plugin: str = "synth"
    scheme: Literal["BIO", "BIOES"] = "BIO"
    workers: int | None = pydantic.Field(None, ge=1, description="default: backend.max_concurrency")
    retries: int = pydantic.Field(1, ge=0, description="extra attempts on a retryable error")
    limit: int | None = pydantic.Field(None, ge=0, description="use only the first N seeds")
    dedupe: bool = True
    retry_failed: bool = pydantic.Field(True, description="a rerun retries seeds that failed")
    require_entities: bool = pydantic.Field(
        True,
        description="drop entity-less sentences written from a seed that has entities "
        "(every requested sentence had entities; an empty list means tags were forgotten)",
    )
