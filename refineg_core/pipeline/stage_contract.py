"""The stage contract: what a stage plugin (kind ``stage``, ``refineg.stages``) supplies.

An ``MLLMStage`` (refine, ground, a variant; ``[refine] plugin``...) writes only
what is its own (``needs_call``, ``request``, ``judge``, ``apply``); the frame
(``mllm_stage``) owns the backend, cache, breaker, retries, counters and
failures. A ``SynthStage`` (``[synth] plugin``) turns seeds into training
samples. Apart from the frame so the kinds table names it without importing it.
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
    """What ``judge`` raises for an answer with nothing to read: an unusable answer
    (not cached, asked again by the next run); ``kind`` (``no_json``, ...) is the
    sample's failure kind."""

    def __init__(self, kind: str, message: str, *, where: str | None = None) -> None:
        self.kind = kind
        super().__init__(message, where=where)


@attrs.frozen
class Skip:
    """No call for this sample: it passes through unchanged, counted as ``counter``."""

    counter: str


@attrs.frozen
class Call:
    """What a stage asks about one sample. ``info`` opens its ``meta[stage]``,
    ``meta`` goes beside it, ``counts`` are counted now, ``context`` is the stage's."""

    request: ChatRequest
    info: Mapping[str, Any] = attrs.field(factory=dict)
    meta: Mapping[str, Any] = attrs.field(factory=dict)
    counts: Mapping[str, int] = attrs.field(factory=dict)
    context: Any = None


@attrs.frozen
class Judgement:
    """A stage's reading of an answer: of its ``items``, ``usable`` were understood;
    items but none usable is a failure (``refused``: why, kind -> count), never
    cached. The frame counts ``truncated`` and ``repaired`` answers; ``counts``
    and ``info`` (into ``meta[stage]``) are kept, usable or not."""

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
    """What a run offers ``MLLMStage.build``; the costly parts (indexing the
    selector embeds the pool, ``reachable`` may ask the backend) are functions."""

    backend: MLLMBackend
    labels: LabelSet
    #: The config's table of this stage, with ``[prompts]``'s wording filled in.
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
        """The stage for one chunk of ``items``; one needing more of the run than
        ``cls(backend, labels, settings)`` (ground: the selector) takes it here."""
        return cls(setup.backend, setup.labels, setup.settings)

    @abc.abstractmethod
    def needs_call(self, result: SampleResult) -> bool:
        """Whether this sample is sent (cheap: what a skipped stage marks, a plan counts)."""

    @abc.abstractmethod
    def request(self, result: SampleResult) -> Call | Skip:
        """The request for one sample, or the ``Skip`` saying why there is none."""

    @abc.abstractmethod
    def judge(self, result: SampleResult, call: Call, text: str) -> Judgement:
        """Read the answer text; raises only ``AnswerError``, whatever a model wrote."""

    @abc.abstractmethod
    def apply(self, result: SampleResult, call: Call, judgement: Judgement) -> Applied:
        """The sample's entities after a usable answer."""

    # ---- optional: defaults do nothing
    def unusable(self) -> str | None:
        """Why this backend cannot serve the stage at all (it is then skipped)."""
        return None

    def start(self, results: Sequence[SampleResult], out_path: Path) -> None:
        """Before a chunk's work (and before its unfinished lines are forgotten)."""

    def stop(self) -> None:
        """After a chunk's work, also when it failed."""

    def notes(self, summary: StageSummary, results: Sequence[SampleResult], skipped: bool) -> None:
        """Add the stage's own facts to a chunk's summary."""


def dry_run(
    stage: MLLMStage, results: Sequence[SampleResult]
) -> Iterator[tuple[SampleResult, ChatRequest]]:
    """Every request ``stage`` would send for ``results``, in order, without a call."""
    for result in results:
        if stage.needs_call(result):
            call = stage.request(result)
            if isinstance(call, Call):
                yield result, call.request
