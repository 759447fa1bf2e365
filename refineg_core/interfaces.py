"""The plugin contracts: the five components and the box frame. Each is narrow.

A plugin is a class with a nested pydantic ``Options`` model (unknown keys are
rejected) and a constructor ``__init__(self, options, labels)``. Everything
else — concurrency, caching, resuming, writing files, progress — is the core's
job, so a plugin author writes only the part that is really theirs. What a
plugin *can* do beyond its contract it declares as a class attribute (a gate
``calibrates``, a tagger's ``inference_options``...); the core never guesses it
from which methods were overridden. The table of plugin kinds (entry-point
group, base class, config key) is ``refineg_core.kinds``; the dataset format
contract is ``refineg_core.formats.base.DatasetFormat``. Plugin authors import
all of it from one module, ``refineg.plugin``.
"""

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
    def box_codec(self) -> BoxCodec | None:
        """The frame the model reads and writes boxes in; None (the default): the
        ``pixels`` frame, which the core builds (``registry.backend_frame``)."""
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
        """The extras (``refineg_core.extras.EXTRAS``) this tagger's predictions carry
        with ``options``; the run refuses a gate that needs one not listed here.

        Declared, not discovered: the core asks before it trains or loads anything.
        The default reports none (marginals only).
        """
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

    #: The extras (``refineg_core.extras.EXTRAS``) the gate reads from every
    #: ``TaggerPrediction``; the run checks the tagger supplies them
    #: (``Tagger.supplied_extras``) before any work.
    needs_extras: ClassVar[tuple[str, ...]] = ()

    #: True when ``calibrate`` fits parameters on dev data: the core then calls it
    #: once before ``decide`` and fingerprints data.dev into the predict stage.
    #: A gate that overrides ``calibrate`` must say so here (checked at load); a
    #: gate whose options decide it (a precision target) makes it a property.
    calibrates: bool = False

    def calibrate(self, samples: Sequence[Sample], predictions: Sequence[TaggerPrediction]) -> dict:
        """Fit any parameters on gold ``samples`` (dev) and their predictions; return a report.

        Called before ``decide`` when the class declares ``calibrates = True`` and
        dev data is available; the default has nothing to fit.
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


class BoxCodec(Plugin, abc.ABC):
    """Maps between original-image pixels and a model's box frame.

    Every MLLM sees a resized image and answers in its own frame (pixels of what
    it saw, a 0-1000 grid, x/y/width/height...). A frame maps gold boxes of
    demonstrations into that frame, answers back into original-image pixels, and
    says in one sentence how the model should write a box.

    A frame author writes ``model_size``, ``encode``, ``decode_raw`` and
    ``box_format``; ``decode``/``decode_all`` validate untrusted answers for them
    (an invalid answer becomes "no box", never an exception). A frame is a plugin
    like the others: built as ``Frame(options, labels)`` by the registry (labels
    unused) or, from code, ``Frame(key=value, ...)``.
    """

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
        """How a box is written, for the prompt's ``$box_format``.

        One phrase completing "Each box is ...", naming the four numbers and
        their frame, e.g. "[x1, y1, x2, y2]: integers on a 0-1000 grid ...".
        """

    def image_tokens(self, original: tuple[int, int]) -> int | None:
        """Tokens the model spends on one image sent at ``model_size(original)``, for
        cost plans; None when the frame does not know its model's image cost."""
        return None

    def decode(self, coords: Any, original: tuple[int, int] | None) -> Box | None:
        """Model answer -> a valid box in original pixels, or None when it is not one.

        ``coords`` is untrusted (parsed from model text): anything that is not
        four finite numbers, or that is empty after clipping, is None.
        """
        if original is None or isinstance(coords, (str, bytes)):
            return None
        try:
            if len(coords) != 4:
                return None
            if any(isinstance(c, bool) for c in coords):
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
        """Decode several answered boxes; return the valid ones and how many were invalid."""
        boxes: list[Box] = []
        invalid = 0
        for coords in answers:
            box = self.decode(coords, original)
            if box is None:
                invalid += 1
            else:
                boxes.append(box)
        return boxes, invalid

    def describe(self) -> str:
        """The frame and its settings in one line (run summaries, cache identity)."""
        set_ = self.options.model_dump(exclude_defaults=True)
        return self.name + (f" {set_}" if set_ else "")
