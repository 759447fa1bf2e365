"""The worker: a run's built plugins, and the work on one chunk.

A ``Worker`` owns the plugins a config names (tagger, gate, backend, selector:
built once by its ``RunContext`` and closed together) and processes one chunk
at a time: tagger + gate over samples (``tag``), or one MLLM stage over results
(``run_mllm_chunk``). Everything about the run directory, fingerprints, reuse and
the summary is the ``Pipeline``'s; the worker knows none of it. That is why both
engines depend on the worker only: the local engine calls the run's own worker,
and each Ray actor builds its own worker from the same config, so the outputs are
equal. The Python API (``Pipeline.pipe``) drives the same worker in memory.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from refineg_core.config import Config, DataSource
from refineg_core.formats import Dataset, load_source
from refineg_core.interfaces import UncertaintyEstimator
from refineg_core.mllm_cache import CachedBackend
from refineg_core.pipeline import mllm_driver
from refineg_core.pipeline.call_health import StageHealth
from refineg_core.pipeline.context import RunContext
from refineg_core.pipeline.runner import StageSummary
from refineg_core.posts import StageLog, finish_results
from refineg_core.types import GateVerdict, Sample, SampleResult

Log = Callable[[str], None]
#: Called with a data source and the warnings met reading it.
OnWarnings = Callable[[DataSource, Sequence[str]], None]
#: (the chunk's input results, earlier results of the same samples to keep)
MllmChunk = tuple[list[SampleResult], list[SampleResult]]


class Worker:
    """The run's plugins, built once, and the per-chunk work of every stage."""

    def __init__(
        self,
        config: Config,
        *,
        cache_dir: Path | None = None,
        debug: bool = False,
        log: Log | None = None,
        on_warnings: OnWarnings | None = None,
    ) -> None:
        self.config = config
        self.labels = config.label_set
        self.run_dir = Path(config.run_dir)
        self.debug = debug
        self.log: Log = log or (lambda msg: None)
        self.context = RunContext(config, Path(cache_dir or self.run_dir / "cache"))
        #: The gate's calibration report once it was calibrated (or skipped).
        self.calibration: dict | None = None
        self._on_warnings = on_warnings
        self._datasets: dict[str, Dataset | None] = {}

    def close(self) -> None:
        """Close every plugin the worker built (idempotent)."""
        self.context.close()

    def __enter__(self) -> Worker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ----------------------------------------------------------------- inputs
    def dataset(self, key: str) -> Dataset | None:
        """A configured split by name (train, dev, predict, gold, pool), loaded once."""
        if key not in self._datasets:
            data = self.config.data
            source: DataSource | None = getattr(data, key)
            fallback = {"pool": "train", "gold": "predict"}.get(key)
            if source is None and fallback:  # the same data, read once
                self._datasets[key] = self.dataset(fallback)
            else:
                self._datasets[key] = self._load(source, f"data.{key}") if source else None
        return self._datasets[key]

    def _load(self, source: DataSource, config_key: str = "data") -> Dataset:
        ds = load_source(source, config_key=config_key)
        self._note_warnings(source, ds.warnings)
        return ds

    def _note_warnings(self, source: DataSource, warnings: Sequence[str]) -> None:
        if self._on_warnings is not None:
            self._on_warnings(source, warnings)

    # ---------------------------------------------------------------- plugins
    def backend(self, key: str = "backend") -> CachedBackend | None:
        return self.context.backend(key)

    def tagger_dir(self) -> Path:
        return Path(self.config.tagger.load_from or self.run_dir / "tagger")

    def load_tagger(self):
        tagger = self.context.tagger(self.tagger_dir())
        # A tagger that may run a lower-precision path checks its F1 on data.dev
        # once, at its first load (bert_crf's precision = "fast").
        wants = getattr(tagger, "wants_dev_check", None)
        if wants is not None and wants():
            dev = self.dataset("dev")
            tagger.check_precision(list(dev.samples) if dev is not None else None)
        return tagger

    def stage_settings(self, stage: str):
        """An MLLM stage's settings with the config's prompt wording filled in."""
        return mllm_driver.stage_settings(self.config, stage)

    def stage_mode(self, stage: str) -> bool | str:
        """``True``, ``False`` or ``"auto"`` for an MLLM stage, all settings considered."""
        mode = getattr(self.config.stages, stage)
        if not getattr(self.config, stage).enabled:
            return False
        return mode

    # ------------------------------------------------------------ tagger + gate
    def _gate_calibrates(self) -> bool:
        # an instance's: a gate's options may decide it (a precision target)
        return bool(self.context.gate().calibrates)

    def calibrated_gate(self) -> UncertaintyEstimator:
        """The run's gate, calibrated once on data.dev when the estimator fits
        parameters (e.g. a temperature); its report is ``self.calibration``."""
        gate = self.context.gate()
        if self._gate_calibrates() and self.calibration is None:
            dev = self.dataset("dev")
            if dev is None:
                self.log(
                    f"uncertainty: {self.config.uncertainty.plugin} fits on data.dev, "
                    "which is not configured"
                )
                self.calibration = {"skipped": "no data.dev"}
            else:
                samples = list(dev.samples)
                predictions = self.load_tagger().predict(samples)
                self.calibration = gate.calibrate(samples, predictions)
                promised = self.calibration.get("guarantee")
                if promised:  # what the gate promises, said where the user looks
                    self.log(
                        f"uncertainty: {promised['promise']}: threshold "
                        f"{promised['threshold']:.4g} chosen on {len(samples)} data.dev samples "
                        f"({promised['calibration_items']} {promised['unit']} items), "
                        f"precision there {promised['realized_precision']}"
                    )
        return gate

    def tag(self, samples: Sequence[Sample], *, each: bool = False) -> list[SampleResult]:
        """The tagger's entities with the gate's verdict, in memory. ``each``: decide
        every sample alone (a chunk of a streamed corpus; the budget comes later)."""
        samples = list(samples)
        predictions = self.load_tagger().predict(samples)
        gate = self.calibrated_gate()
        decide = gate.decide_each if each else gate.decide
        decisions = decide(samples, predictions)
        return [
            SampleResult(s, d.entities, gate=GateVerdict.of(d))
            for s, d in zip(samples, decisions, strict=True)
        ]

    # ------------------------------------------------------------- MLLM stages
    def run_mllm_chunk(
        self,
        stage: str,
        items: Sequence[SampleResult],
        earlier: Sequence[SampleResult],
        part: Path,
        health: StageHealth,
    ) -> tuple[list[SampleResult], StageSummary]:
        """One chunk of refine or ground (``refineg_core.pipeline.mllm_driver.run_chunk``)."""
        return mllm_driver.run_chunk(self, stage, items, earlier, part, health)

    def annotate(self, samples: list[Sample]) -> list[SampleResult]:
        """Tag, gate, refine and ground posts in memory (the Python API): MLLM stages
        run when a backend is configured; nothing is written but the MLLM cache.
        Each result's ``meta["stages"]`` says which stages ran or were skipped, and why."""
        import tempfile

        from refineg_core.pipeline.ground import run_ground
        from refineg_core.pipeline.refine import run_refine

        log = StageLog()
        results = self.tag(samples)
        log.ran("predict")
        backend = self.backend()
        if backend is None:
            for stage in ("refine", "ground"):
                log.skipped(stage, "no backend configured")
            return finish_results(samples, results, log)
        with tempfile.TemporaryDirectory(prefix="refineg-api-") as tmp:
            if self.stage_mode("refine") is not False:
                results, summary = run_refine(
                    results,
                    backend,
                    self.labels,
                    self.stage_settings("refine"),
                    Path(tmp) / "r.jsonl",
                )
                log.record("refine", summary)
            else:
                log.skipped("refine", "stages.refine = false")
            if self.stage_mode("ground") is not False:
                selector = self._indexed_selector()
                results, summary = run_ground(
                    results,
                    [],
                    selector,
                    backend,
                    self.labels,
                    self.stage_settings("ground"),
                    Path(tmp) / "g.jsonl",
                )
                log.record("ground", summary)
            else:
                log.skipped("ground", "stages.ground = false")
        return finish_results(samples, results, log)

    def _indexed_selector(self):
        """The selector, indexed once on the demonstration pool (None without one)."""
        selector = self.context.selector()
        if selector is None or self.config.ground.k == 0:
            return None
        if not getattr(self, "_pool_indexed", False):
            pool = self.dataset("pool")
            if pool is None:
                return None
            selector.index(list(pool.samples))
            self._pool_indexed = True
        return selector
