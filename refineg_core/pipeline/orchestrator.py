"""The three ReFineG stages (plus synthesis) wired to a run directory.

Each stage reads what the previous one wrote in the run directory and writes
its own file as it goes, so any stage can be (re)run alone and an interrupted
run resumes. Layout of a run directory:

    config.json            the resolved, redacted config
    synth/                 synthetic.jsonl/.conll + report.json (the yield)
    tagger/                the trained tagger
    predict.jsonl          tagger + gate (entities with uncertainty, gate info)
    refine.jsonl           after MLLM refinement of delegated samples
    ground.jsonl           after MLLM grounding (boxes)
    final.jsonl            the last stage's results (+ .ccks.json, twitter/)
    eval.json              metrics per stage when gold labels exist
    summary.json           counts and seconds per stage
    cache/                 MLLM response cache
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from refineg_core import registry
from refineg_core.config import Config, DataSource, redacted_dump, slot_kind
from refineg_core.errors import ConfigError, RefinegError
from refineg_core.formats import Dataset, load_dataset
from refineg_core.formats.native import read_results, write_jsonl
from refineg_core.hooks import get_hooks
from refineg_core.interfaces import (
    ContextSelector,
    MLLMBackend,
    Plugin,
    Synthesizer,
    Tagger,
    UncertaintyEstimator,
)
from refineg_core.mllm_cache import CachedBackend
from refineg_core.pipeline.outputs import write_outputs
from refineg_core.types import GateDecision, Sample, SampleResult

Log = Callable[[str], None]


def gate_meta(decision: GateDecision) -> dict[str, Any]:
    """How the gate decided, stored with each prediction for the refinement stage."""
    return {
        "delegate_sample": decision.delegate_sample,
        "missed_uncertainty": round(float(decision.missed_uncertainty), 6),
        "delegated": [[e.start, e.end, e.type] for e in decision.delegated],
    }


class Pipeline:
    """Runs stages of one config against one run directory."""

    def __init__(self, config: Config, *, debug: bool = False, log: Log | None = None) -> None:
        self.config = config
        self.labels = config.label_set
        self.run_dir = Path(config.run_dir)
        self.debug = debug
        self.log: Log = log or (lambda msg: None)
        self.summary: dict[str, Any] = {"stages": {}}
        self._datasets: dict[str, Dataset | None] = {}
        self.run_dir.mkdir(parents=True, exist_ok=True)
        (self.run_dir / "config.json").write_text(
            json.dumps(redacted_dump(config), indent=2), encoding="utf-8"
        )

    # ----------------------------------------------------------------- inputs
    def _load(self, source: DataSource) -> Dataset:
        ds = load_dataset(
            source.path,
            source.format,
            xml_dir=source.xml_dir,
            images_dir=source.images_dir,
            entities=source.entities,
            limit=source.limit,
        )
        if ds.warnings:
            log_path = self.run_dir / "data-warnings.log"
            with log_path.open("a", encoding="utf-8") as fh:
                fh.write("\n".join(ds.warnings) + "\n")
            self.log(f"{source.path}: {len(ds.warnings)} data warnings (see {log_path})")
        return ds

    def dataset(self, key: str) -> Dataset | None:
        """A configured split by name (train, dev, predict, gold, pool), loaded once."""
        if key not in self._datasets:
            data = self.config.data
            source: DataSource | None = getattr(data, key)
            if source is None and key == "pool":
                source = data.train
            if source is None and key == "gold":
                source = data.predict
            self._datasets[key] = self._load(source) if source else None
        return self._datasets[key]

    def require(self, key: str) -> Dataset:
        ds = self.dataset(key)
        if ds is None:
            raise ConfigError(f"this stage needs data.{key}", where=f"data.{key}")
        return ds

    # ---------------------------------------------------------------- plugins
    def plugin(self, key: str) -> Plugin:
        slot = self.config.slot(key)
        if slot is None:
            raise ConfigError(f"no plugin configured for {key}", where=f"{key}.plugin")
        return registry.create(
            slot_kind(key), slot.plugin, slot.options, self.labels, config_key=key
        )

    def _options(self, key: str):
        slot = self.config.slot(key)
        assert slot is not None
        return registry.validate_options(
            slot_kind(key), slot.plugin, registry.load_class(slot_kind(key), slot.plugin),
            slot.options, config_key=key,
        )

    def backend(self, key: str = "backend") -> CachedBackend | None:
        """The configured backend wrapped in the shared on-disk response cache."""
        if self.config.slot(key) is None:
            if key == "synth_backend":
                return self.backend("backend")
            return None
        inner = self.plugin(key)
        assert isinstance(inner, MLLMBackend)
        return CachedBackend(inner, self.run_dir / "cache")

    # ----------------------------------------------------------------- stages
    def _record(self, stage: str, data: dict[str, Any], started: float) -> None:
        data = {**data, "seconds": round(time.perf_counter() - started, 3)}
        self.summary["stages"][stage] = data

    def synth(self) -> dict[str, Any]:
        from refineg_core.pipeline.synth import SynthSettings, run_synthesis

        started = time.perf_counter()
        seeds = self.require("train")
        synthesizer = self.plugin("synthesizer")
        assert isinstance(synthesizer, Synthesizer)
        backend = self.backend("synth_backend")
        if backend is None:
            raise ConfigError("synthesis needs a backend", where="synth_backend.plugin")
        settings = SynthSettings.model_validate(self.config.synth)
        report = run_synthesis(
            list(seeds.samples),
            synthesizer,
            backend,
            self.labels,
            settings,
            self.run_dir / "synth",
            debug=self.debug,
        )
        data = report.as_dict()
        self._record("synth", data, started)
        return data

    def tagger_dir(self) -> Path:
        return Path(self.config.tagger.load_from or self.run_dir / "tagger")

    def training_samples(self) -> list[Sample]:
        samples = list(self.require("train").samples)
        for extra in self.config.data.extra_train:
            samples += self._load(extra).samples
        from refineg_core.pipeline.synth import SAMPLES_FILE

        synth_file = self.run_dir / "synth" / SAMPLES_FILE
        if self.config.data.use_synthesized:
            if not synth_file.exists():
                raise ConfigError(
                    f"{synth_file} does not exist; run `refineg synth` first",
                    where="data.use_synthesized",
                )
            samples += load_dataset(synth_file, "jsonl").samples
        self.labels.check_types((e.type for s in samples for e in s.entities), where="data.train")
        return samples

    def train(self, *, force: bool = False) -> dict[str, Any]:
        started = time.perf_counter()
        target = self.tagger_dir()
        if self.config.tagger.load_from and not force:
            self._record("train", {"skipped": f"using saved tagger {target}"}, started)
            return self.summary["stages"]["train"]
        if (target / "manifest.json").exists() and not force:
            self.log(f"train: tagger already trained at {target} (use --force to retrain)")
            self._record("train", {"skipped": "already trained", "tagger": str(target)}, started)
            return self.summary["stages"]["train"]
        train = self.training_samples()
        dev = self.dataset("dev")
        tagger = self.plugin("tagger")
        assert isinstance(tagger, Tagger)
        hooks = get_hooks()
        hooks.stage_started("train", len(train))
        self.log(f"train: {len(train)} samples, dev {len(dev) if dev else 0}")
        report = tagger.fit(train, list(dev.samples) if dev else None)
        tagger.save(target)
        data = {"train_samples": len(train), "tagger": str(target), "report": report}
        self._record("train", data, started)
        hooks.stage_finished("train", self.summary["stages"]["train"])
        return self.summary["stages"]["train"]

    def load_tagger(self) -> Tagger:
        cls = registry.load_class("tagger", self.config.tagger.plugin)
        directory = self.tagger_dir()
        if not directory.exists():
            raise RefinegError(
                f"no trained tagger at {directory}; run `refineg train` first "
                "or set tagger.load_from"
            )
        tagger = cls.load(directory, self._options('tagger'), self.labels)  # type: ignore[attr-defined]
        assert isinstance(tagger, Tagger)
        return tagger

    def predict(self) -> list[SampleResult]:
        """Tagger + gate over data.predict. Atomic: written once, whole (the gate's
        budget mode ranks the whole set, so partial output would be wrong)."""
        started = time.perf_counter()
        out = self.run_dir / "predict.jsonl"
        samples = list(self.require("predict").samples)
        if out.exists() and (self.run_dir / "predict.done").exists():
            results = read_results(out)
            if {r.id for r in results} == {s.id for s in samples}:
                self.log(f"predict: reusing {out}")
                self._record("predict", self._gate_counts(results, resumed=True), started)
                return results
        hooks = get_hooks()
        hooks.stage_started("predict", len(samples))
        tagger = self.load_tagger()
        gate = self.plugin("uncertainty")
        assert isinstance(gate, UncertaintyEstimator)
        predictions = tagger.predict(samples)
        decisions = gate.decide(samples, predictions)
        results = [
            SampleResult(s, d.entities, meta={"gate": gate_meta(d)})
            for s, d in zip(samples, decisions, strict=True)
        ]
        write_jsonl(results, out)
        (self.run_dir / "predict.done").touch()
        self._record("predict", self._gate_counts(results), started)
        hooks.stage_finished("predict", self.summary["stages"]["predict"])
        return results

    @staticmethod
    def _gate_counts(results: Sequence[SampleResult], resumed: bool = False) -> dict[str, Any]:
        gates = [r.meta.get("gate", {}) for r in results]
        delegated = sum(len(g.get("delegated", ())) for g in gates)
        total = sum(len(r.entities) for r in results)
        return {
            "samples": len(results),
            "entities": total,
            "entities_kept": total - delegated,
            "entities_delegated": delegated,
            "samples_delegated": sum(bool(g.get("delegate_sample")) for g in gates),
            "resumed": resumed,
        }

    def _stage_input(self, *names: str) -> list[SampleResult]:
        for name in names:
            path = self.run_dir / f"{name}.jsonl"
            if path.exists() and (name != "predict" or (self.run_dir / "predict.done").exists()):
                return read_results(path)
        raise RefinegError(f"nothing to work on in {self.run_dir}: run `refineg predict` first")

    def refine(self, results: Sequence[SampleResult] | None = None) -> list[SampleResult]:
        from refineg_core.pipeline.refine import RefineSettings, run_refine

        started = time.perf_counter()
        results = list(results) if results is not None else self._stage_input("predict")
        backend = self.backend()
        if backend is None:
            self.log("refine: no backend configured; tagger predictions pass through")
            self._record("refine", {"skipped": "no backend configured"}, started)
            return results
        settings = RefineSettings.model_validate(self.config.refine)
        settings = settings.model_copy(update={"wording": self.config.prompts})
        out, summary = run_refine(
            results,
            backend,
            self.labels,
            settings,
            self.run_dir / "refine.jsonl",
            debug=self.debug,
        )
        self._record("refine", self._stage_dict(summary, backend), started)
        return out

    def ground(self, results: Sequence[SampleResult] | None = None) -> list[SampleResult]:
        from refineg_core.pipeline.ground import GroundSettings, run_ground

        started = time.perf_counter()
        results = list(results) if results is not None else self._stage_input("refine", "predict")
        backend = self.backend()
        if backend is None:
            self.log("ground: no backend configured; entities stay without boxes")
            self._record("ground", {"skipped": "no backend configured"}, started)
            return results
        settings = GroundSettings.model_validate(self.config.ground)
        settings = settings.model_copy(update={"wording": self.config.prompts})
        selector = self.plugin("selector") if self.config.selector else None
        pool = self.dataset("pool")
        # Embedding the pool is the expensive part of grounding: only when calls will follow.
        will_call = settings.enabled and backend.check_available() is None
        if selector is not None and pool is not None and will_call:
            assert isinstance(selector, ContextSelector)
            selector.index(list(pool.samples))
        out, summary = run_ground(
            results,
            list(pool.samples) if pool else [],
            selector,
            backend,
            self.labels,
            settings,
            self.run_dir / "ground.jsonl",
            debug=self.debug,
        )
        self._record("ground", self._stage_dict(summary, backend), started)
        return out

    @staticmethod
    def _stage_dict(summary: Any, backend: CachedBackend) -> dict[str, Any]:
        """The stage's own counts plus what its (per-stage) cached backend spent."""
        return {
            **summary.as_dict(),
            "backend": {
                **backend.stats,
                "prompt_tokens": backend.usage.prompt_tokens,
                "completion_tokens": backend.usage.completion_tokens,
            },
        }

    # ------------------------------------------------------------------- run
    def run(self, *, force_train: bool = False) -> dict[str, Any]:
        stages = self.config.stages
        started = time.perf_counter()
        if stages.synth:
            self.synth()
        if stages.train:
            self.train(force=force_train)
        results: list[SampleResult] | None = None
        if stages.predict:
            results = self.predict()
        if stages.refine:
            results = self.refine(results)
        if stages.ground:
            results = self.ground(results)
        if results is not None:
            self.finish(results)
        self.summary["seconds"] = round(time.perf_counter() - started, 3)
        self.write_summary()
        return self.summary

    def finish(self, results: Sequence[SampleResult]) -> None:
        """Write the final outputs in every format and evaluate against gold."""
        written = write_outputs(results, self.run_dir)
        self.summary["final"] = {
            "samples": len(results),
            "entities": sum(len(r.entities) for r in results),
            "with_boxes": sum(1 for r in results for e in r.entities if e.boxes),
            "samples_with_failures": sum(1 for r in results if r.failures),
            "failures": sum(len(r.failures) for r in results),
            "outputs": {fmt: str(path) for fmt, path in written.paths.items()},
        }
        if written.overlaps_dropped:
            self.summary["final"]["twitter_overlaps_dropped"] = written.overlaps_dropped
        self.evaluate_stages()

    def evaluate_stages(self) -> None:
        gold = self.dataset("gold")
        if gold is None or not any(s.entities for s in gold.samples):
            return
        from refineg_core.evaluation import evaluate

        report: dict[str, Any] = {}
        for stage in ("predict", "refine", "ground"):
            path = self.run_dir / f"{stage}.jsonl"
            if path.exists():
                metrics = evaluate(list(gold.samples), read_results(path))
                report[stage] = metrics.to_dict()
        (self.run_dir / "eval.json").write_text(json.dumps(report, indent=2), encoding="utf-8")
        self.summary["eval"] = {
            stage: {k: v.get("f1") for k, v in m.items() if isinstance(v, dict) and "f1" in v}
            for stage, m in report.items()
        }

    def write_summary(self) -> None:
        (self.run_dir / "summary.json").write_text(
            json.dumps(self.summary, indent=2, default=str), encoding="utf-8"
        )
