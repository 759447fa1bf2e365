"""The five component contracts. Each is deliberately narrow.

A plugin is a class with a nested pydantic ``Options`` model (unknown keys are
rejected) and a constructor ``__init__(self, options, labels)``. Everything
else — concurrency, caching, resuming, writing files, progress — is the core's
job, so a plugin author writes only the part that is really theirs.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

import pydantic

from refineg_core.chat import ChatRequest, ChatResponse
from refineg_core.labels import LabelSet
from refineg_core.types import (
    Demonstration,
    GateDecision,
    Sample,
    SynthesisCandidate,
    TaggerPrediction,
)

if TYPE_CHECKING:
    from refineg_core.boxcodecs import BoxCodec


class PluginOptions(pydantic.BaseModel):
    """Base of every plugin's options: a typo in a key is an error, not a no-op."""

    model_config = pydantic.ConfigDict(extra="forbid", frozen=True)


class Plugin:
    """Common constructor: validated options plus the task's label set."""

    Options: ClassVar[type[PluginOptions]] = PluginOptions

    def __init__(self, options: PluginOptions | None = None, labels: LabelSet | None = None):
        self.options = options if options is not None else self.Options()
        self.labels = labels

    def close(self) -> None:
        """Release what the plugin holds (threads, models, connections).

        The run that built the plugin calls it exactly once when the run ends,
        error or not; the default has nothing to release.
        """

    def __enter__(self):
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class MLLMBackend(Plugin):
    """One method: answer a chat request (text and images) with text and usage.

    Raise ``BackendError(retryable=...)`` on failure and ``BackendUnavailable``
    when nothing can be reached at all. ``max_concurrency`` tells the core how
    many ``complete`` calls it may run at once (from threads).
    """

    #: Whether the backend can see images (text-only backends refuse image parts).
    supports_images: ClassVar[bool] = True

    @abc.abstractmethod
    def complete(self, request: ChatRequest) -> ChatResponse: ...

    @property
    def box_codec(self) -> BoxCodec:
        """The frame the model reads and writes boxes in (default: the ``pixels`` frame)."""
        frame = self.__dict__.get("_default_box_frame")
        if frame is None:  # built once: loading a plugin per sample would cost ~5 ms each
            from refineg_core.registry import create_box_frame

            frame = self.__dict__["_default_box_frame"] = create_box_frame("pixels")
        return frame

    @property
    def max_concurrency(self) -> int:
        return 1

    def describe(self) -> str:
        """A one-line description for logs ("openai at http://...:8000, model X")."""
        return type(self).__name__

    def check_available(self) -> str | None:
        """Return None when usable, else a reason (checked once before a stage)."""
        return None

    def report(self) -> dict:
        """Facts for the run summary beyond calls and tokens (e.g. per-endpoint counts)."""
        return {}

    def cache_identity(self) -> dict:
        """What, besides the request, determines an answer (model, sampling options)."""
        return {"backend": type(self).__name__, **self.options.model_dump(mode="json")}


class Tagger(Plugin):
    """A supervised sequence tagger that also reports per-token label marginals."""

    #: Options that change only how a trained tagger runs (batch size, device),
    #: never what it learned: changing them must not retrain it.
    inference_options: ClassVar[frozenset[str]] = frozenset()
    #: Sub-folders of a saved tagger that hold caches derived from its files (an
    #: exported model...): written on load, so not part of what the tagger *is*.
    derived_folders: ClassVar[frozenset[str]] = frozenset()

    @abc.abstractmethod
    def fit(self, train: Sequence[Sample], dev: Sequence[Sample] | None = None) -> dict:
        """Train on gold samples; return a report (losses, dev F1 per epoch...)."""

    @abc.abstractmethod
    def predict(self, samples: Sequence[Sample]) -> list[TaggerPrediction]: ...

    @abc.abstractmethod
    def save(self, directory: Path) -> None: ...

    @classmethod
    @abc.abstractmethod
    def load(
        cls,
        directory: Path,
        options: PluginOptions | None = None,
        labels: LabelSet | None = None,
    ) -> Tagger:
        """A saved tagger, with the config's validated options and labels.

        Options that only affect inference (batch size, device...) must take
        effect; the core decides whether the saved weights are still current.
        """


class UncertaintyEstimator(Plugin):
    """Turns tagger predictions into keep/delegate decisions.

    It sees the whole set at once so budget modes ("delegate the 10% most
    uncertain") can be implemented.
    """

    @abc.abstractmethod
    def decide(
        self, samples: Sequence[Sample], predictions: Sequence[TaggerPrediction]
    ) -> list[GateDecision]: ...

    @property
    def budget(self) -> float | None:
        """The fraction of *all* samples the gate may delegate, or None (no cap).

        A gate with a budget implements ``decide_each`` (decisions without the
        cap, ranked by ``GateDecision.priority``); streaming stages then call it
        chunk by chunk and apply the cap over the whole input in a second pass
        (``refineg_core.gating.within_budget``), so the result equals ``decide``
        on the whole set.
        """
        return None

    def decide_each(
        self, samples: Sequence[Sample], predictions: Sequence[TaggerPrediction]
    ) -> list[GateDecision]:
        """Decisions that depend on each sample alone (no budget applied)."""
        return self.decide(samples, predictions)

    @property
    def calibrates(self) -> bool:
        """Whether this gate, with its options, fits anything on dev (``calibrate``);
        the run then predicts dev first and the gate's output depends on dev."""
        return type(self).calibrate is not UncertaintyEstimator.calibrate

    def calibrate(self, samples: Sequence[Sample], predictions: Sequence[TaggerPrediction]) -> dict:
        """Fit any parameters on gold ``samples`` (dev) and their predictions; return a report.

        Called before ``decide`` when dev data is available; the default has nothing to fit.
        """
        return {}


class ContextSelector(Plugin):
    """Chooses in-context demonstrations for a query from a labelled pool."""

    @abc.abstractmethod
    def index(self, pool: Sequence[Sample]) -> None:
        """Embed/prepare the pool once (plugins should cache across runs)."""

    @abc.abstractmethod
    def select(self, query: Sample, k: int) -> list[Demonstration]: ...

    def select_many(self, queries: Sequence[Sample], k: int) -> list[list[Demonstration]]:
        """``select`` for a batch, one list per query in order. Stages call this so
        a selector can embed and score all queries at once; the default loops."""
        return [self.select(q, k) for q in queries]


class Synthesizer(Plugin):
    """Generates new labelled sentences from one gold seed through an LLM backend.

    The core runs seeds concurrently, validates candidates (names on word
    boundaries, known types), de-duplicates, tags them, writes them resumably
    and reports the yield; the plugin builds the request(s) and parses the
    answer. Raise ``BackendError`` when the answer cannot be parsed at all.
    """

    @abc.abstractmethod
    def synthesize(self, seed: Sample, backend: MLLMBackend) -> list[SynthesisCandidate]: ...


#: The five slots: config key -> (entry-point group, base class).
SLOTS: dict[str, tuple[str, type[Plugin]]] = {
    "synthesizer": ("refineg.synthesizers", Synthesizer),
    "tagger": ("refineg.taggers", Tagger),
    "uncertainty": ("refineg.uncertainty", UncertaintyEstimator),
    "backend": ("refineg.mllm_backends", MLLMBackend),
    "selector": ("refineg.context_selectors", ContextSelector),
}
