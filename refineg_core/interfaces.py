"""The plugin contracts, each narrow: concurrency, caching, resuming, files and
progress are the core's job, so an author writes only what is really theirs.
What a plugin can do beyond its contract it declares as a class attribute; the
core never guesses it from which methods were overridden. Authors import it all
from ``refineg.plugin``."""

from __future__ import annotations

import abc
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import pydantic

from refineg_core.chat import ChatRequest, ChatResponse
from refineg_core.labels import LabelSet
from refineg_core.types import (
    Box,
    Demonstration,
    GateDecision,
    Sample,
    SynthesisCandidate,
    TaggerPrediction,
)


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
        """Release threads, models, connections: called once when the run ends, error or not."""

    def __enter__(self):
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class MLLMBackend(Plugin):
    """Answers a chat request; raises ``BackendError(retryable=...)`` on failure and
    ``BackendUnavailable`` when nothing can be reached. ``max_concurrency``: how
    many ``complete`` calls the core may run at once (from threads)."""

    #: Whether the backend can see images (text-only backends refuse image parts).
    supports_images: ClassVar[bool] = True

    @abc.abstractmethod
    def complete(self, request: ChatRequest) -> ChatResponse: ...

    @property
    def box_codec(self) -> BoxCodec | None:
        """The frame the model writes boxes in; None: ``pixels`` (built by the core)."""
        return None

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

    @classmethod
    def supplied_extras(cls, options: PluginOptions) -> frozenset[str]:
        """The extras its predictions carry with ``options``, declared so the run can
        refuse a gate needing another before it trains or loads anything."""
        return frozenset()

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
        """A saved tagger; inference-only options must take effect (the core decides
        whether the saved weights are still current)."""


class UncertaintyEstimator(Plugin):
    """Keep/delegate decisions; sees the whole set so a budget ("the 10% most
    uncertain") can be applied."""

    @abc.abstractmethod
    def decide(
        self, samples: Sequence[Sample], predictions: Sequence[TaggerPrediction]
    ) -> list[GateDecision]: ...

    @property
    def budget(self) -> float | None:
        """The fraction of *all* samples the gate may delegate, or None. A gate with a
        budget implements ``decide_each`` (uncapped, ranked by priority) so streaming
        stages can apply the cap over the whole input afterwards (``gating``)."""
        return None

    def decide_each(
        self, samples: Sequence[Sample], predictions: Sequence[TaggerPrediction]
    ) -> list[GateDecision]:
        """Decisions that depend on each sample alone (no budget applied)."""
        return self.decide(samples, predictions)

    #: The extras the gate reads; checked against ``Tagger.supplied_extras`` before any work.
    needs_extras: ClassVar[tuple[str, ...]] = ()

    #: True when ``calibrate`` fits on dev data (then data.dev enters predict's
    #: fingerprint); overriding ``calibrate`` requires it (checked at load).
    calibrates: bool = False

    def calibrate(self, samples: Sequence[Sample], predictions: Sequence[TaggerPrediction]) -> dict:
        """Fit on gold dev ``samples`` and their predictions; return a report."""
        return {}


class ContextSelector(Plugin):
    """Chooses in-context demonstrations for a query from a labelled pool."""

    @abc.abstractmethod
    def index(self, pool: Sequence[Sample]) -> None:
        """Embed/prepare the pool once (plugins should cache across runs)."""

    @abc.abstractmethod
    def select(self, query: Sample, k: int) -> list[Demonstration]: ...

    def select_many(self, queries: Sequence[Sample], k: int) -> list[list[Demonstration]]:
        """``select`` for a batch, so a selector can embed all queries at once."""
        return [self.select(q, k) for q in queries]


class Synthesizer(Plugin):
    """New labelled sentences from one gold seed through an LLM backend; the core
    validates, de-duplicates and writes them. ``BackendError``: unparseable answer."""

    @abc.abstractmethod
    def synthesize(self, seed: Sample, backend: MLLMBackend) -> list[SynthesisCandidate]: ...


class BoxCodec(Plugin, abc.ABC):
    """Maps original-image pixels to and from a model's box frame (each MLLM answers
    in its own: pixels of the resized image, a 0-1000 grid...). ``decode`` turns
    an invalid answer into "no box", never an exception. Built as
    ``Frame(options, labels)`` or, from code, ``Frame(key=value, ...)``."""

    #: The name a config selects the frame by (the entry-point name).
    name: ClassVar[str] = "frame"
    Options: ClassVar[type[PluginOptions]] = PluginOptions

    def __init__(
        self,
        options: PluginOptions | None = None,
        labels: LabelSet | None = None,
        **settings: Any,
    ) -> None:
        if options is not None and settings:
            raise TypeError("give either an Options instance or keyword settings, not both")
        super().__init__(options if options is not None else self.Options(**settings), labels)

    @abc.abstractmethod
    def model_size(self, original: tuple[int, int]) -> tuple[int, int]:
        """The (width, height) the image is sent to the model at."""

    @abc.abstractmethod
    def encode(self, box: Box, original: tuple[int, int]) -> list[float]:
        """Original pixels -> the model's frame, written as a model would write it."""

    @abc.abstractmethod
    def decode_raw(self, coords: Sequence[float], original: tuple[int, int]) -> tuple[float, ...]:
        """Four numbers of the model's frame -> (x1, y1, x2, y2) original pixels, unclipped."""

    @abc.abstractmethod
    def box_format(self) -> str:
        """The prompt's ``$box_format``: a phrase completing "Each box is ..."."""

    def image_tokens(self, original: tuple[int, int]) -> int | None:
        """Tokens one image costs at ``model_size(original)`` (cost plans); None: unknown."""
        return None

    def decode(self, coords: Any, original: tuple[int, int] | None) -> Box | None:
        """Untrusted model answer -> a box in original pixels, or None unless it is four
        finite numbers that stay non-empty after clipping."""
        if original is None or isinstance(coords, (str, bytes)):
            return None
        try:
            if len(coords) != 4 or any(isinstance(c, bool) for c in coords):
                return None
            values = [float(c) for c in coords]
        except (TypeError, ValueError, OverflowError):  # OverflowError: a 400-digit int
            return None
        if not all(math.isfinite(v) for v in values):
            return None
        try:
            raw = self.decode_raw(values, original)
        except (ArithmeticError, ValueError):
            return None
        return Box.clipped(*raw, original)

    def decode_all(
        self, answers: Sequence[Any], original: tuple[int, int] | None
    ) -> tuple[list[Box], int]:
        """The valid boxes of several answers, and how many were invalid."""
        decoded = [self.decode(coords, original) for coords in answers]
        boxes = [b for b in decoded if b is not None]
        return boxes, len(decoded) - len(boxes)

    def describe(self) -> str:
        """The frame and its settings in one line (run summaries, cache identity)."""
        set_ = self.options.model_dump(exclude_defaults=True)
        return self.name + (f" {set_}" if set_ else "")
