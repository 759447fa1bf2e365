"""The worker: a run's built plugins, and the work on one chunk.

A ``Worker`` owns the plugins a config names (its ``RunContext``) and processes
one chunk: tagger + gate (``tag``) or one MLLM stage (``run_chunk``, with the
stage plugin ``[stage] plugin`` names, built per chunk: ``build_stage``). It
knows nothing of run directories, fingerprints or summaries (the
``Pipeline``'s), so both engines depend on it only (each Ray actor builds its
own from the config: equal outputs), and the Python API drives it in memory.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from refineg_core import registry
from refineg_core.config import Config
from refineg_core.errors import PluginError
from refineg_core.formats import Dataset
from refineg_core.interfaces import UncertaintyEstimator
from refineg_core.mllm_cache import CachedBackend
from refineg_core.pipeline.call_health import StageHealth
from refineg_core.pipeline.chunked import append_results, written_ids
from refineg_core.pipeline.context import RunContext
from refineg_core.pipeline.inputs import Inputs
from refineg_core.pipeline.mllm_stage import run_mllm_stage
from refineg_core.pipeline.runner import StageSummary
from refineg_core.pipeline.stage_contract import MLLMStage, StageSetup
from refineg_core.types import GateVerdict, Sample, SampleResult

Log = Callable[[str], None]


class Worker:
    """The run's plugins, built once, and the per-chunk work of every stage."""

    def __init__(
        self,
        config: Config,
        *,
        cache_dir: Path | None = None,
        debug: bool = False,
        log: Log | None = None,
        inputs: Inputs | None = None,
    ) -> None:
        self.config = config
        self.labels = config.label_set
        self.run_dir = Path(config.run_dir)
        self.debug = debug
        self.log: Log = log or (lambda msg: None)
        self.context = RunContext(config, Path(cache_dir or self.run_dir / "cache"))
        self.inputs = inputs or Inputs(config, log=self.log)  # the pipeline's, when it built me
        self.calibration: dict | None = None  # the gate's report once calibrated (or skipped)
        self._pool_indexed = False
        self._stage_classes: dict[str, type] = {}

    def close(self) -> None:
        self.context.close()

    def __enter__(self) -> Worker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def dataset(self, key: str) -> Dataset | None:
        return self.inputs.dataset(key)

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
        return stage_settings(self.config, stage)

    def stage_mode(self, stage: str) -> bool | str:
        """``True``, ``False`` or ``"auto"`` for an MLLM stage, all settings considered."""
        mode = getattr(self.config.stages, stage)
        if not getattr(self.config, stage).enabled:
            return False
        return mode

    def gate_calibrates(self) -> bool:
        """An instance's answer: its options may decide."""
        return bool(self.context.gate().calibrates)

    def calibrated_gate(self) -> UncertaintyEstimator:
        """The gate, calibrated once on data.dev when it fits parameters."""
        gate = self.context.gate()
        if self.gate_calibrates() and self.calibration is None:
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
        """Tagger + gate in memory; ``each``: decide every sample alone (a chunk of a
        streamed corpus; the budget comes later)."""
        samples = list(samples)
        predictions = self.load_tagger().predict(samples)
        gate = self.calibrated_gate()
        decide = gate.decide_each if each else gate.decide
        decisions = decide(samples, predictions)
        return [
            SampleResult(s, d.entities, gate=GateVerdict.of(d))
            for s, d in zip(samples, decisions, strict=True)
        ]

    def run_mllm_chunk(
        self,
        stage: str,
        items: Sequence[SampleResult],
        earlier: Sequence[SampleResult],
        part: Path,
        health: StageHealth,
    ) -> tuple[list[SampleResult], StageSummary]:
        return run_chunk(self, stage, items, earlier, part, health)

    def stage_class(self, stage: str):
        """Looked up once per worker: ``pipe`` runs a chunk per call."""
        if stage not in self._stage_classes:
            self._stage_classes[stage] = stage_class(self.config, stage)
        return self._stage_classes[stage]

    def _indexed_selector(self):
        selector = self.context.selector()
        if selector is None or self.config.ground.k == 0:
            return None
        if not self._pool_indexed:
            pool = self.dataset("pool")
            if pool is None:
                return None
            selector.index(list(pool.samples))
            self._pool_indexed = True
        return selector


def stage_settings(config: Any, stage: str) -> Any:
    """An MLLM stage's settings with the config's prompt wording filled in."""
    return getattr(config, stage).model_copy(update={"wording": config.prompts})


def stage_class(config: Any, stage: str) -> type[MLLMStage]:
    """The ``MLLMStage`` ``[stage] plugin`` names, running under the stage's name."""
    name = getattr(config, stage).plugin
    cls = registry.load_class("stage", name, config_key=stage)
    missing = [a for a in ("kept_on_failure", "unreached") if not hasattr(cls, a)]
    problem = None
    if not issubclass(cls, MLLMStage):
        problem = "is not an MLLMStage"
    elif getattr(cls, "name", None) != stage:
        problem = f"is named {getattr(cls, 'name', None)!r}; the {stage} stage's must be {stage!r}"
    elif missing:  # the frame ends failure messages with them: found out now, not mid-run
        problem = f"does not declare {', '.join(missing)}"
    if problem:
        raise PluginError(f"stage plugin {name!r} {problem}", where=f"{stage}.plugin")
    return cls


def build_stage(
    worker: Worker, stage: str, items: Sequence[SampleResult], health: StageHealth
) -> MLLMStage:
    backend = worker.backend()

    def pool_size() -> int:
        pool = worker.dataset("pool")
        return len(pool.samples) if pool else 0

    setup = StageSetup(
        backend,
        worker.labels,
        stage_settings(worker.config, stage),
        enabled=worker.stage_mode(stage) is not False,
        reachable=lambda: health.unavailable(backend) is None,
        selector=worker.context.selector,
        indexed_selector=worker._indexed_selector,
        pool_size=pool_size,
    )
    return worker.stage_class(stage).build(setup, items)


def run_chunk(
    worker: Worker,
    stage: str,
    items: Sequence[SampleResult],
    earlier: Sequence[SampleResult],
    part: Path | None,
    health: StageHealth,
) -> tuple[list[SampleResult], StageSummary]:
    """One chunk: ``earlier`` results of a stopped run are kept unless they need a
    retry; the rest are processed, each written to ``part`` as it finishes."""
    if part is not None:  # None: in memory (the Python API), nothing is written
        have = set(written_ids(part))  # a stopped run's results of this chunk stay
        append_results(part, [r for r in earlier if r.id not in have])
    enabled = getattr(worker.config, stage).enabled  # the wording does not matter here
    done = run_mllm_stage(
        build_stage(worker, stage, items, health),
        items,
        part,
        enabled=enabled,
        debug=worker.debug,
        health=health,
    )
    if part is not None:
        part.unlink(missing_ok=True)  # the chunk is whole: its caller commits it to the stage file
    return done
