"""The MLLM-stage contract: what one stage (refine, ground, a variant) supplies.

A stage supplies only what is its own (``MLLMStage``):

- ``needs_call(result)``: whether the sample is sent at all (cheap; decides
  which samples a skipped stage marks for retry, and what a plan counts);
- ``request(result)``: the chat request for one sample (ground's carries its
  demonstrations) as a ``Call``, or a ``Skip`` naming why the sample passes
  through without a call;
- ``judge(result, call, answer)``: the stage's reading of a parsed answer
  (a ``Judgement``: how many items were usable, and why the rest were refused);
- ``apply(result, call, judgement, answer)``: the sample's new entities.

Stages are plugins (kind ``stage``, entry-point group ``refineg.stages``; the
built-in ``refine`` and ``ground`` are the ``refineg_stages`` package's). The
config's ``[refine] plugin`` / ``[ground] plugin`` names the one a run uses,
and the run builds it per chunk with ``MLLMStage.build`` from a ``StageSetup``.
The frame that runs a stage is ``refineg_core.pipeline.mllm_stage``; this
module is apart from it so the kinds table can name the contract without
importing the frame. ``dry_run`` is the public way to see the requests a stage
would send without sending any (``refineg plan``).
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import attrs

from refineg_core.chat import ChatRequest
from refineg_core.interfaces import ContextSelector, MLLMBackend
from refineg_core.labels import LabelSet
from refineg_core.pipeline.answers import ParsedAnswer
from refineg_core.pipeline.summary import StageSummary
from refineg_core.types import Entity, SampleResult


@attrs.frozen
class Skip:
    """No call for this sample: it passes through unchanged, counted as ``counter``."""

    counter: str


@attrs.frozen
class Call:
    """What a stage asks about one sample, and what it needs to read the answer.

    ``info`` opens the sample's ``meta[stage]``; ``meta`` goes beside it (ground's
    ``demos``); ``counts`` are counted once the call is prepared; ``context`` is the
    stage's own (refine's delegation, ground's image size).
    """

    request: ChatRequest
    info: Mapping[str, Any] = attrs.field(factory=dict)
    meta: Mapping[str, Any] = attrs.field(factory=dict)
    counts: Mapping[str, int] = attrs.field(factory=dict)
    context: Any = None


@attrs.frozen
class Judgement:
    """A stage's reading of a parsed answer.

    ``usable`` counts the items it understood; an answer with items but none
    usable is a failure (``refused`` says why, item kinds -> count) and is not
    cached. ``counts`` go to the stage's counters and ``info`` into
    ``meta[stage]``, whether the answer was usable or not.
    """

    value: Any
    usable: int
    refused: Mapping[str, int] = attrs.field(factory=dict)
    counts: Mapping[str, int] = attrs.field(factory=dict)
    info: Mapping[str, Any] = attrs.field(factory=dict)


@attrs.frozen
class Applied:
    """A usable answer applied: the sample's entities, with counts and meta entries."""

    entities: tuple[Entity, ...]
    counts: Mapping[str, int] = attrs.field(factory=dict)
    info: Mapping[str, Any] = attrs.field(factory=dict)


@attrs.frozen
class StageSetup:
    """What a run offers a stage class building the stage for one chunk
    (``MLLMStage.build``).

    The costly or probing parts are functions, called only by a stage that
    needs them: indexing the selector embeds the whole demonstration pool, and
    ``reachable`` may ask the backend once.
    """

    backend: MLLMBackend
    labels: LabelSet
    #: The config's table of this stage (``[refine]``, ``[ground]``), with the
    #: prompt wording of ``[prompts]`` filled in.
    settings: Any
    #: Whether the stage is switched on (``[stages]`` and its ``enabled``).
    enabled: bool = True
    #: Whether the backend answers (asked once per stage, then remembered).
    reachable: Callable[[], bool] = lambda: True
    #: The configured selector, not indexed (None without one).
    selector: Callable[[], ContextSelector | None] = lambda: None
    #: The selector indexed on the demonstration pool (None without one, or k = 0).
    indexed_selector: Callable[[], ContextSelector | None] = lambda: None
    #: How many samples the demonstration pool holds.
    pool_size: Callable[[], int] = lambda: 0


class MLLMStage(abc.ABC):
    """What one MLLM stage supplies to the frame (see the module docstring)."""

    #: The stage's name: its file, its ``meta`` key, its failures' stage. A plugin
    #: that replaces a stage has that stage's name (``refine``, ``ground``).
    name: ClassVar[str]
    #: What an answer without a usable item leaves (ends that failure's message).
    kept_on_failure: ClassVar[str]
    #: What happens to what a truncated answer did not reach (ends that message).
    unreached: ClassVar[str]

    def __init__(
        self, backend: MLLMBackend, labels: LabelSet | None = None, settings: Any = None
    ) -> None:
        self.backend = backend
        self.labels = labels
        self.settings = settings

    @classmethod
    def build(cls, setup: StageSetup, items: Sequence[SampleResult]) -> MLLMStage:
        """The stage for one chunk of ``items`` (a run calls this, once per chunk).

        The default is ``cls(backend, labels, settings)``; a stage that needs more
        of the run (ground: the selector and the pool) takes it from ``setup``.
        """
        return cls(setup.backend, setup.labels, setup.settings)

    @abc.abstractmethod
    def needs_call(self, result: SampleResult) -> bool:
        """Whether this sample is sent to the backend."""

    @abc.abstractmethod
    def request(self, result: SampleResult) -> Call | Skip:
        """The request for one sample (or why there is none)."""

    @abc.abstractmethod
    def judge(self, result: SampleResult, call: Call, answer: ParsedAnswer) -> Judgement:
        """Read a parsed answer; must not raise on anything a model may write."""

    @abc.abstractmethod
    def apply(
        self, result: SampleResult, call: Call, judgement: Judgement, answer: ParsedAnswer
    ) -> Applied:
        """The sample's entities after a usable answer."""

    # ---- optional: defaults do nothing
    def unusable(self) -> str | None:
        """Why this backend cannot serve the stage at all (the stage is then skipped)."""
        return None

    def start(self, results: Sequence[SampleResult], out_path: Path) -> None:
        """Before a chunk's work (and before its unfinished lines are forgotten)."""
        return None

    def stop(self) -> None:
        """After a chunk's work, also when it failed."""
        return None

    def notes(self, summary: StageSummary, results: Sequence[SampleResult], skipped: bool) -> None:
        """Add the stage's own facts to a chunk's summary."""
        return None


def dry_run(
    stage: MLLMStage, results: Sequence[SampleResult]
) -> Iterator[tuple[SampleResult, ChatRequest]]:
    """Every request ``stage`` would send for ``results``, in order, without a call."""
    for result in results:
        if stage.needs_call(result):
            call = stage.request(result)
            if isinstance(call, Call):
                yield result, call.request
