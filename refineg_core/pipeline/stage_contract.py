"""The MLLM-stage contract: what one stage (refine, ground, a variant) supplies.

A stage supplies only what is its own (``MLLMStage``):

- ``needs_call(result)``: whether the sample is sent at all (cheap; decides
  which samples a skipped stage marks for retry, and what a plan counts);
- ``request(result)``: the chat request for one sample (ground's carries its
  demonstrations) as a ``Call``, or a ``Skip`` naming why the sample passes
  through without a call;
- ``judge(result, call, text)``: the stage's reading of the answer text (a
  ``Judgement``: how many items it held, how many were usable, why the rest
  were refused), or ``AnswerError`` when the text holds no answer at all;
- ``apply(result, call, judgement)``: the sample's new entities.

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
from refineg_core.errors import DataError
from refineg_core.interfaces import ContextSelector, MLLMBackend, Synthesizer
from refineg_core.labels import LabelSet
from refineg_core.pipeline.summary import StageSummary
from refineg_core.types import Entity, Sample, SampleResult


class AnswerError(DataError):
    """An answer holding nothing a stage can read; ``kind`` (``empty``, ``no_json``,
    ``invalid_json``, ``truncated``, ``not_a_list``, ``too_large``) becomes the
    sample's failure kind. The one error ``judge`` raises: the frame records it as
    an unusable answer (not cached, retried by the next run)."""

    def __init__(self, kind: str, message: str, *, where: str | None = None) -> None:
        self.kind = kind
        super().__init__(message, where=where)


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
    """A stage's reading of an answer.

    ``items`` counts what the answer listed and ``usable`` what the stage
    understood; an answer with items but none usable is a failure (``refused``
    says why, item kinds -> count) and is not cached. ``truncated`` (cut off by
    the token limit) and ``repaired`` (read leniently) are counted by the frame.
    ``counts`` go to the stage's counters and ``info`` into ``meta[stage]``,
    whether the answer was usable or not.
    """

    value: Any
    usable: int
    items: int = attrs.field(kw_only=True)
    truncated: bool = attrs.field(default=False, kw_only=True)
    repaired: bool = attrs.field(default=False, kw_only=True)
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


class Stage(abc.ABC):
    """Every stage plugin (kind ``stage``): an ``MLLMStage`` or a ``SynthStage``."""

    @property
    @abc.abstractmethod
    def name(self) -> str:
        """The stage it runs as, a class attribute: its file, ``meta`` key and failures'
        stage. A plugin that replaces a stage has that stage's name (``refine``)."""


#: The file a synthesis stage writes in its folder: what training adds
#: (``data.use_synthesized``), in the native JSONL format.
SYNTH_SAMPLES_FILE = "synthetic.jsonl"


class SynthStage(Stage):
    """The synthesis stage (``[synth] plugin``, default ``synth``), built with ``cls()``."""

    name = "synth"

    @abc.abstractmethod
    def run(
        self,
        seeds: Sequence[Sample],
        synthesizer: Synthesizer,
        backend: MLLMBackend,
        labels: LabelSet,
        settings: Any,
        out_dir: Path,
        *,
        debug: bool = False,
    ) -> Mapping[str, Any]:
        """Write samples made from ``seeds`` to ``out_dir / SYNTH_SAMPLES_FILE``,
        resuming an earlier run there; the yield (the run summary's ``synth``)."""


class MLLMStage(Stage):
    """What one MLLM stage supplies to the frame (see the module docstring)."""

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
    def judge(self, result: SampleResult, call: Call, text: str) -> Judgement:
        """Read the answer text; raises only ``AnswerError``, whatever a model wrote."""

    @abc.abstractmethod
    def apply(self, result: SampleResult, call: Call, judgement: Judgement) -> Applied:
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
