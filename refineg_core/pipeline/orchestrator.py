"""The three ReFineG stages (plus synthesis) wired to a run directory.

A ``Pipeline`` owns one run: its ``RunContext`` builds every plugin once and
closes them all when the run ends (``with Pipeline(config) as p``). Each stage
reads what the previous one wrote and writes its own file as it goes, so any
stage can be (re)run alone and an interrupted run resumes. A stage reuses its
earlier output only when its fingerprint (data digests, plugin options,
settings, prompts, backend identity, upstream output) is unchanged; otherwise
it and everything downstream recompute, and the log says why. The run store
(``refineg_core.runstore``) owns the directory: its lock, its stage records
and how every file is written.

Layout of a run directory:

    refineg.lock           held by the one process writing here (its pid and command)
    config.json            the resolved, redacted config
    stages/<stage>.json    each stage's fingerprint and whether it finished
    synth/                 synthetic.jsonl/.conll + report.json (the yield)
    tagger/                the trained tagger + refineg-trained.json (its fingerprint)
    predict.jsonl          tagger + gate (entities with uncertainty, gate verdicts)
    refine.jsonl           after MLLM refinement of delegated samples
    ground.jsonl           after MLLM grounding (boxes)
    final.jsonl            the last stage's results (+ .ccks.json, twitter/)
    eval.json              metrics per stage when gold labels exist
    summary.json           counts and seconds per stage
    cache/                 MLLM response cache (usable answers only)
"""

from __future__ import annotations

import contextlib
import json
import shutil
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import attrs

from refineg_core import preflight, secrets
from refineg_core.config import Config, DataSource, redacted_dump
from refineg_core.errors import ConfigError, RefinegError, StageUnavailable
from refineg_core.formats import Dataset, iter_source, load_dataset
from refineg_core.formats.native import iter_results, read_results, write_jsonl
from refineg_core.formats.paths import output_dir
from refineg_core.gating import within_budget
from refineg_core.hooks import get_hooks
from refineg_core.interfaces import UncertaintyEstimator
from refineg_core.mllm_cache import CachedBackend
from refineg_core.pipeline.chunked import (
    PreviousResults,
    StageOutput,
    append_results,
    chunks,
    skip_written,
    written_ids,
)
from refineg_core.pipeline.context import RunContext
from refineg_core.pipeline.fingerprint import (
    Fingerprint,
    Freshness,
    dataset_digest,
    file_digest,
    flatten,
    freshness,
    read_record,
    samples_digest,
    tree_digest,
    write_record,
)
from refineg_core.pipeline.outputs import write_outputs
from refineg_core.pipeline.runner import StageSummary
from refineg_core.pipeline.spent import add, delta
from refineg_core.pipeline.stagekit import StageHealth, needs_retry
from refineg_core.pipeline.verdict import judge
from refineg_core.pipeline.worker import Worker
from refineg_core.posts import as_sample, check_image, check_many, check_text
from refineg_core.progress import bar, silenced
from refineg_core.runstore import RunStore, set_aside, write_json, write_text
from refineg_core.types import Sample, SampleResult

Log = Callable[[str], None]

#: The fingerprinted stages, upstream first.
STAGES = ("train", "predict", "refine", "ground")
#: The marker the core writes into a tagger folder once training finished.
TRAINED_MARKER = "refineg-trained.json"


class Pipeline:
    """Runs the stages of one config against one run directory, owning its plugins."""

    def __init__(self, config: Config, *, debug: bool = False, log: Log | None = None) -> None:
        self.config = config
        self.labels = config.label_set
        self.run_dir = Path(config.run_dir)
        self.debug = debug
        self.log: Log = log or (lambda msg: None)
        self.summary: dict[str, Any] = {"stages": {}}
        self.worker = Worker(
            config,
            cache_dir=config.cache_dir or self.run_dir / "cache",
            debug=debug,
            log=self.log,
            on_warnings=self._note_warnings,
        )
        self.store = RunStore(self.run_dir)
        self._warnings: list[str] = []
        self._fingerprints: dict[str, Fingerprint] = {}
        self._stats: dict[str, tuple[str, int]] = {}
        self._engine = None
        self._run_dir_ready = False
        self._saved_tagger_checked = False
        self._preflighted: set[str] = set()

    # -------------------------------------------------------------- lifecycle
    def close(self) -> None:
        """Close every plugin the run built, and the engine, then release the run
        directory (idempotent)."""
        try:
            if self._engine is not None:
                self._engine.close()
                self._engine = None
            self.worker.close()
        finally:
            self.store.close()

    def __enter__(self) -> Pipeline:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def lock_run_dir(self) -> Path:
        """Create the run directory if needed and take its lock for this pipeline's
        life: a command that writes calls this before any work, so a second process
        on the same directory is refused at once (``RunDirBusy``, exit 2)."""
        self.store.open(make_dir=lambda path: output_dir(path, config_key="run_dir"))
        return self.run_dir

    def prepare_run_dir(self) -> Path:
        """Lock the run directory on first write (the Python API's writers lock here)
        and write the resolved config, with a clear error when it cannot be."""
        if self._run_dir_ready:
            return self.run_dir
        self.lock_run_dir()
        write_json(self.run_dir / "config.json", redacted_dump(self.config))
        self._run_dir_ready = True
        self._write_warnings()
        return self.run_dir

    def discard_if_unused(self) -> None:
        """After a failed command: remove a run directory this command created and
        that holds no stage output yet, so no half-made run is left behind."""
        self.store.discard_if_unused()

    def _write_warnings(self) -> None:
        if self._run_dir_ready and self._warnings:
            # Rewritten, not appended: the log describes this run's data only.
            write_text(self.run_dir / "data-warnings.log", "\n".join(self._warnings) + "\n")

    # ----------------------------------------------------------------- inputs
    def _load(self, source: DataSource, config_key: str = "data") -> Dataset:
        return self.worker._load(source, config_key)

    def _note_warnings(self, source: DataSource, warnings: Sequence[str]) -> None:
        if warnings:
            self._warnings.extend(warnings)
            self._write_warnings()
            where = self.run_dir / "data-warnings.log"
            self.log(f"{source.path}: {len(warnings)} data warnings (see {where})")

    def dataset(self, key: str) -> Dataset | None:
        """A configured split by name (train, dev, predict, gold, pool), loaded once."""
        return self.worker.dataset(key)

    def _source(self, key: str) -> DataSource | None:
        source: DataSource | None = getattr(self.config.data, key)
        fallback = {"pool": "train", "gold": "predict"}.get(key)
        return self._source(fallback) if source is None and fallback else source

    def iter_samples(self, key: str) -> Iterator[Sample]:
        """A configured split streamed one sample at a time (what the corpus stages
        read); its warnings were recorded by the pass that fingerprinted it."""
        source = self._source(key)
        if source is None:
            raise ConfigError(f"this stage needs data.{key}", where=f"data.{key}")
        return iter_source(source, [], config_key=f"data.{key}")

    def source_stats(self, key: str) -> tuple[str, int]:
        """(content digest, number of samples) of a split, from one streamed pass that
        also validates it and records its warnings (computed once per run)."""
        if key not in self._stats:
            source = self._source(key)
            if source is None:
                raise ConfigError(f"this stage needs data.{key}", where=f"data.{key}")
            warnings: list[str] = []
            count = 0

            def counted() -> Iterator[Sample]:
                nonlocal count
                for sample in iter_source(source, warnings, config_key=f"data.{key}"):
                    count += 1
                    yield sample

            digest = samples_digest(counted())
            self._note_warnings(source, warnings)
            self._stats[key] = (digest, count)
        return self._stats[key]

    def require(self, key: str) -> Dataset:
        ds = self.dataset(key)
        if ds is None:
            raise ConfigError(f"this stage needs data.{key}", where=f"data.{key}")
        return ds

    # ---------------------------------------------------------------- plugins
    @property
    def context(self) -> RunContext:
        """The run's built plugins (owned by its worker)."""
        return self.worker.context

    def backend(self, key: str = "backend") -> CachedBackend | None:
        return self.worker.backend(key)

    def tagger_dir(self) -> Path:
        return self.worker.tagger_dir()

    def load_tagger(self):
        if self.config.tagger.load_from and not self._saved_tagger_checked:
            preflight.check_saved_tagger(self, self.log)  # never serve stale predictions
            self._saved_tagger_checked = True
        return self.worker.load_tagger()

    def _tagger_inference(self, tagger=None) -> dict[str, Any] | None:
        """The tagger's account of its inference back-end, for the run summary."""
        if tagger is None and self.config.engine.kind != "local":
            return None  # the tagger lives in the engine's workers
        report = getattr(tagger or self.load_tagger(), "inference_report", None)
        return report() if report is not None else None

    # ----------------------------------------------------------- fingerprints
    def fingerprint(self, stage: str) -> Fingerprint:
        """What ``stage`` would be made from now (computed once per run)."""
        if stage not in self._fingerprints:
            builder = getattr(self, f"_parts_{stage}")
            self._fingerprints[stage] = Fingerprint(stage, builder())
        return self._fingerprints[stage]

    def _tagger_options(self) -> tuple[dict[str, Any], dict[str, Any]]:
        """(training options, inference-only options) of the configured tagger."""
        cls = self.context.plugin_class("tagger")
        options = self.context.options("tagger").model_dump(mode="json")
        infer = getattr(cls, "inference_options", frozenset())
        train = {k: v for k, v in options.items() if k not in infer}
        return train, {k: v for k, v in options.items() if k in infer}

    def _parts_train(self) -> dict[str, Any]:
        if self.config.tagger.load_from:
            return {"tagger.saved": self._saved_tagger_digest(self.tagger_dir())}
        train_opts, _ = self._tagger_options()
        parts: dict[str, Any] = {
            "tagger.plugin": self.config.tagger.plugin,
            **flatten(train_opts, "tagger.options"),
            "labels.types": list(self.labels.types),
            "data.train": dataset_digest(self.require("train")),
            "data.dev": dataset_digest(self.dataset("dev")),
        }
        for i, extra in enumerate(self.config.data.extra_train):
            parts[f"data.extra_train.{i}"] = dataset_digest(self._load(extra))
        if self.config.data.use_synthesized:
            parts["data.synthesized"] = file_digest(self._synth_file())
        return parts

    def _saved_tagger_digest(self, directory: Path) -> str | None:
        """What a saved tagger is: its files, not the caches its plugin derives on load."""
        cls = self.context.plugin_class("tagger")
        return tree_digest(directory, skip=getattr(cls, "derived_folders", ()))

    def _tagger_digest(self) -> str | None:
        """The trained tagger's content digest (what predict's output depends on)."""
        if self.config.tagger.load_from:
            return self.fingerprint("train").parts["tagger.saved"]
        record = read_record(self.tagger_dir() / TRAINED_MARKER)
        return record.output if record else None

    def _parts_predict(self) -> dict[str, Any]:
        _, infer_opts = self._tagger_options()
        return {
            "upstream.tagger": self._tagger_digest(),
            **flatten(infer_opts, "tagger.options"),
            "uncertainty.plugin": self.config.uncertainty.plugin,
            **flatten(
                self.context.options("uncertainty").model_dump(mode="json"), "uncertainty.options"
            ),
            "data.predict": self.source_stats("predict")[0],
            # a gate that fits on dev (temperature) decides differently when dev changes
            **(
                {"data.dev": dataset_digest(self.dataset("dev"))} if self._gate_calibrates() else {}
            ),
        }

    def stage_settings(self, stage: str):
        """An MLLM stage's settings with the config's prompt wording filled in."""
        return self.worker.stage_settings(stage)

    def _mllm_parts(self, stage: str) -> dict[str, Any]:
        backend = self.backend()
        settings = self.stage_settings(stage)
        return {
            f"upstream.{self._upstream(stage)}": self._output_digest(self._upstream(stage)),
            f"stages.{stage}": self.stage_mode(stage),
            **flatten(settings.model_dump(mode="json"), stage),
            **flatten(dict(self.labels.descriptions), "labels"),
            **flatten(secrets.redact(backend.cache_identity()) if backend else None, "backend"),
        }

    def _parts_refine(self) -> dict[str, Any]:
        return self._mllm_parts("refine")

    def _parts_ground(self) -> dict[str, Any]:
        parts = self._mllm_parts("ground")
        if self.config.selector is not None:
            parts["selector.plugin"] = self.config.selector.plugin
            parts.update(
                flatten(
                    self.context.options("selector").model_dump(mode="json"), "selector.options"
                )
            )
        parts["data.pool"] = dataset_digest(self.dataset("pool"))
        return parts

    def _upstream(self, stage: str) -> str:
        if stage == "ground" and self.stage_mode("refine") is not False:
            return "refine"
        return "predict"

    def _output_digest(self, stage: str) -> str | None:
        record = self.store.read(stage)
        return record.output if record else None

    def stage_mode(self, stage: str) -> bool | str:
        """``True``, ``False`` or ``"auto"`` for an MLLM stage, all settings considered."""
        return self.worker.stage_mode(stage)

    def status(self) -> dict[str, Freshness]:
        """Each stage as fresh / stale (with the reasons) / partial / missing."""
        out: dict[str, Freshness] = {}
        for stage in STAGES:
            if stage == "train":
                if self.config.tagger.load_from:
                    differ = preflight.saved_tagger_differences(self)
                    why = ("tagger.load_from was trained with other options:", *(differ or ()))
                    fresh = Freshness("fresh", ("using tagger.load_from",))
                    out[stage] = Freshness("stale", why) if differ else fresh
                    continue
                record = read_record(self.tagger_dir() / TRAINED_MARKER)
            else:
                record = self.store.read(stage)
            # a stale upstream will recompute (and change) this stage's input; a
            # partial one only retries its failures, which this stage then sees as changed
            upstream_stale = [s for s, f in out.items() if f.state in ("stale", "missing")]
            fresh = freshness(self.fingerprint(stage), record)
            problem = (
                None
                if stage == "train"
                else self.store.output_problem(stage, self.run_dir / f"{stage}.jsonl")
            )
            if problem is not None and fresh.state != "stale":
                fresh = Freshness("stale", (f"{problem}; a rerun recomputes it",))
            if fresh.state == "fresh" and upstream_stale:
                fresh = Freshness("stale", (f"upstream {upstream_stale[-1]} is not fresh",))
            out[stage] = fresh
        return out

    # ----------------------------------------------------------------- stages
    def _record(self, stage: str, data: dict[str, Any], started: float) -> dict[str, Any]:
        data = {**data, "seconds": round(time.perf_counter() - started, 3)}
        self.summary["stages"][stage] = data
        return data

    def _synth_file(self) -> Path:
        from refineg_core.pipeline.synth import SAMPLES_FILE

        return self.run_dir / "synth" / SAMPLES_FILE

    def synth(self) -> dict[str, Any]:
        from refineg_core.pipeline.synth import run_synthesis

        started = time.perf_counter()
        seeds = self.require("train")
        synthesizer = self.context.synthesizer()
        backend = self.backend("synth_backend")
        if backend is None:
            raise ConfigError("synthesis needs a backend", where="synth_backend.plugin")
        self.prepare_run_dir()
        report = run_synthesis(
            list(seeds.samples),
            synthesizer,
            backend,
            self.labels,
            self.config.synth,
            self.run_dir / "synth",
            debug=self.debug,
        )
        self._fingerprints.pop("train", None)  # the synthesized data may have changed
        return self._record("synth", report.as_dict(), started)

    def training_samples(self) -> list[Sample]:
        samples = list(self.require("train").samples)
        for extra in self.config.data.extra_train:
            samples += self._load(extra).samples
        synth_file = self._synth_file()
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
        if self.config.tagger.load_from:
            return self._record("train", {"skipped": f"using saved tagger {target}"}, started)
        fp = self.fingerprint("train")
        fresh = freshness(fp, read_record(target / TRAINED_MARKER))
        if fresh.state == "fresh" and not force:
            self.log(f"train: reusing the tagger at {target} (same data and options)")
            return self._record("train", {"reused": True, "tagger": str(target)}, started)
        if fresh.state == "stale":
            self.log(f"train: retraining: {fresh.why()}")
        elif target.exists() and fresh.state == "missing" and any(target.iterdir()):
            self.log(f"train: {target} has no {TRAINED_MARKER}; retraining")
        train = self.training_samples()
        dev = self.dataset("dev")
        tagger = self.context.untrained_tagger()
        hooks = get_hooks()
        hooks.stage_started("train", len(train))
        self.log(f"train: {len(train)} samples, dev {len(dev) if dev else 0}")
        report = tagger.fit(train, list(dev.samples) if dev else None)
        self.prepare_run_dir()
        self.context.forget_tagger(target)
        if target.exists():
            shutil.rmtree(target)
        tagger.save(target)
        output = self._saved_tagger_digest(target)
        write_record(target / TRAINED_MARKER, fp, complete=True, output=output)
        self._fingerprints.pop("predict", None)
        data = {"train_samples": len(train), "tagger": str(target), "report": report}
        if (inference := self._tagger_inference(tagger)) is not None:
            data["inference"] = inference
        data = self._record("train", data, started)
        hooks.stage_finished("train", data)
        return data

    def _reuse(self, stage: str, out: Path, *scratch: Path) -> bool:
        """True when the stage's earlier output may be reused as it is (fingerprint
        matches, finished, file intact). Output made from other inputs is deleted
        with the stage's ``scratch`` files; a partial one is kept to resume."""
        fp = self.fingerprint(stage)
        record = self.store.read(stage)
        fresh = freshness(fp, record)
        on_disk = file_digest(out)
        intact = record is not None and on_disk is not None and record.output == on_disk
        if fresh.state == "fresh" and intact:
            self.log(f"{stage}: reusing {out} (inputs unchanged)")
            return True
        if fresh.state == "stale":
            self.log(f"{stage}: recomputing: {fresh.why()}")
        elif fresh.state == "partial":
            self.log(f"{stage}: resuming: {fresh.why()}")
        if fresh.state != "partial":  # lines made from other inputs are never resumed
            for path in (out, *scratch):
                path.unlink(missing_ok=True)
        return False

    def _finish_stage(self, stage: str, out: Path, pending: int = 0) -> None:
        self.store.write(
            self.fingerprint(stage), complete=True, output=file_digest(out), pending=pending
        )
        for downstream in STAGES[STAGES.index(stage) + 1 :]:
            self._fingerprints.pop(downstream, None)

    @property
    def chunk_size(self) -> int:
        return self.config.engine.chunk_size

    def engine(self):
        """The configured engine (built once): this process, or Ray."""
        if self._engine is None:
            from refineg_core.pipeline.engines import build_engine

            self._engine = build_engine(self.worker)
        return self._engine

    def predict(self) -> StageOutput:
        """Tagger + gate over data.predict, chunk by chunk, appended in input order.

        An interrupted run resumes after the last result written. With a budget
        the gate ranks the whole input: the first pass writes every chunk's
        uncapped decisions, the second keeps the budget's most uncertain samples.
        """
        started = time.perf_counter()
        out = self.run_dir / "predict.jsonl"
        uncapped = self.run_dir / "predict.uncapped.jsonl"
        if not self.config.tagger.load_from and not self.tagger_dir().is_dir():
            raise RefinegError(
                f"no trained tagger at {self.tagger_dir()}; run `refineg train` first "
                "or set tagger.load_from"
            )
        _, total = self.source_stats("predict")
        if total == 0:  # a finished, empty run (a day without posts), said out loud
            self.log(f"predict: {self._source('predict').path} holds no samples; outputs are empty")
        self.prepare_run_dir()
        if self._reuse("predict", out, uncapped):
            self._record("predict", self._gate_counts(iter_results(out), resumed=True), started)
            return StageOutput("predict", out)
        hooks = get_hooks()
        gate = self.calibrated_gate()
        work = out if gate.budget is None else uncapped
        done = written_ids(work)
        work.touch()  # an empty input is an empty (finished) stage file, not a missing one
        self.store.write(self.fingerprint("predict"), complete=False)
        hooks.stage_started("predict", total - len(done))
        samples = skip_written(self.iter_samples("predict"), done, lambda s: s.id, work)
        progress = bar(desc="predict", total=total, initial=len(done), unit="sample")
        try:
            for results in self.engine().tag(chunks(samples, self.chunk_size)):
                append_results(work, results)
                progress.update(len(results))
        finally:
            progress.close()
        capped = 0
        if gate.budget is not None:
            capped = self._apply_budget(uncapped, out, gate.budget)
        self._finish_stage("predict", out)
        data = self._gate_counts(iter_results(out), resumed=bool(done))
        if gate.budget is not None:
            data["capped_by_budget"] = capped
        data["engine"] = self.engine().report("predict")
        if (inference := self._tagger_inference()) is not None:
            data["tagger_inference"] = inference
        data = self._record("predict", data, started)
        hooks.stage_finished("predict", data)
        return StageOutput("predict", out)

    @staticmethod
    def _apply_budget(uncapped: Path, out: Path, budget: float) -> int:
        """The budget's second pass: rank every delegated sample of the whole input,
        write ``out`` with the others kept whole; return how many were capped."""
        delegated: list[tuple[int, float]] = []
        n = 0
        for n, result in enumerate(iter_results(uncapped), start=1):
            if result.gate is not None and result.gate.delegate_sample:
                delegated.append((n - 1, result.gate.priority))
        keep = within_budget(delegated, n, budget)
        capped = len(delegated) - len(keep)

        def decided() -> Iterator[SampleResult]:
            for i, result in enumerate(iter_results(uncapped)):
                gate = result.gate
                if gate is not None and gate.delegate_sample and i not in keep:
                    result = attrs.evolve(result, gate=gate.capped())
                yield result

        write_jsonl(decided(), out)
        uncapped.unlink()
        return capped

    def _gate_calibrates(self) -> bool:
        return self.worker._gate_calibrates()

    def calibrated_gate(self) -> UncertaintyEstimator:
        """The run's gate, calibrated once on data.dev when the estimator fits
        parameters; its report goes into the summary."""
        gate = self.worker.calibrated_gate()
        self._note_calibration()
        return gate

    def _note_calibration(self) -> None:
        if self.worker.calibration is not None:
            self.summary["calibration"] = self.worker.calibration

    def tag(self, samples: Sequence[Sample], *, each: bool = False) -> list[SampleResult]:
        """The tagger's entities with the gate's verdict, in memory (see ``Worker.tag``)."""
        results = self.worker.tag(samples, each=each)
        self._note_calibration()
        return results

    # ------------------------------------------------------------ Python API
    def __call__(
        self, text: str | Sample, *, image: str | Path | None = None, progress: bool = False
    ) -> SampleResult:
        """Annotate one post: ``pipe("Obama visits Paris", image="photo.jpg")``.

        Returns the result with entities (type, span, character offsets, text,
        uncertainty, source, boxes; ``boxes is None`` when grounding was not
        attempted) and ``meta["stages"]`` (what ran, what was skipped and why).
        MLLM stages run when the backend answers and are skipped otherwise, as
        with ``"auto"``; nothing is written to the run directory but the MLLM
        cache. Bad arguments raise at once (``refineg_core.api``); no progress
        is printed unless ``progress=True``.
        """
        text, image = check_text(text), check_image(image)
        return next(iter(self.pipe([text], images=[image], progress=progress)))

    def pipe(
        self,
        texts: Iterable[str | Sample],
        *,
        images: Iterable[str | Path | None] | None = None,
        batch_size: int = 256,
        progress: bool = False,
    ) -> Iterator[SampleResult]:
        """Annotate many posts, ``batch_size`` at a time, yielding results in order.

        256, not 64: the tagger sorts each batch by length into encoder calls, and
        from 64 posts it got 1.3x fewer sentences per CPU-second than from 256 (more
        padding, more calls; 1 thread, issue 20), which were as fast as one call.
        """
        check_many(texts, "texts")
        if images is not None:
            check_many(images, "images")
        image_iter = iter(images) if images is not None else None
        batch: list[Sample] = []
        for i, text in enumerate(texts):
            image = next(image_iter, None) if image_iter is not None else None
            batch.append(as_sample(text, image, i, where=(f"texts[{i}]", f"images[{i}]")))
            if len(batch) >= batch_size:
                yield from self._annotate(batch, progress)
                batch = []
        if batch:
            yield from self._annotate(batch, progress)

    def _annotate(self, samples: list[Sample], progress: bool = False) -> list[SampleResult]:
        with contextlib.nullcontext() if progress else silenced():
            results = self.worker.annotate(samples)
        self._note_calibration()
        return results

    @staticmethod
    def _gate_counts(results: Iterable[SampleResult], resumed: bool = False) -> dict[str, Any]:
        counts = dict.fromkeys(
            ("samples", "entities", "entities_delegated", "samples_delegated"), 0
        )
        for r in results:
            counts["samples"] += 1
            counts["entities"] += len(r.entities)
            if r.gate is not None:
                counts["entities_delegated"] += len(r.gate.delegated)
                counts["samples_delegated"] += r.gate.delegate_sample
        return {
            "samples": counts["samples"],
            "entities": counts["entities"],
            "entities_kept": counts["entities"] - counts["entities_delegated"],
            "entities_delegated": counts["entities_delegated"],
            "samples_delegated": counts["samples_delegated"],
            "resumed": resumed,
        }

    def _stage_input(self, stage: str) -> StageOutput:
        upstream = self._upstream(stage)
        path = self.run_dir / f"{upstream}.jsonl"
        if not path.exists() or self.store.read(upstream) is None:
            raise RefinegError(
                f"nothing to work on in {self.run_dir}: run `refineg {upstream}` first"
            )
        return StageOutput(upstream, path)

    def _mllm_stage(self, stage: str, results: Iterable[SampleResult] | None) -> StageOutput:
        """The frame of refine and ground: reuse, or run chunk by chunk with the shared
        backend (resuming what an earlier run left), and record what it spent."""
        started = time.perf_counter()
        self.check_backends((stage,))  # `refineg refine` alone is checked too
        source = results if results is not None else self._stage_input(stage)
        out = self.run_dir / f"{stage}.jsonl"
        earlier_file = self.run_dir / f"{stage}.prev.jsonl"
        part = self.run_dir / f"{stage}.part.jsonl"
        self.prepare_run_dir()
        backend = self.backend()
        mode = self.stage_mode(stage)
        if backend is None:
            if mode is True:
                raise ConfigError(f"stages.{stage} = true needs a [backend]", where="backend")
            self.log(f"{stage}: no backend configured; results pass through")
            self._record(stage, {"skipped": "no backend configured"}, started)
            if isinstance(source, StageOutput):
                return source
            return StageOutput(stage, items=tuple(source))
        if self._reuse(stage, out, earlier_file, part):
            self._record(stage, {"reused": True, "samples": _count(iter_results(out))}, started)
            return StageOutput(stage, out)
        if out.exists():  # a partial earlier run: its results seed the chunks they belong to
            set_aside(out, earlier_file)
        out.touch()  # an empty input is an empty (finished) stage file, not a missing one
        self.store.write(self.fingerprint(stage), complete=False)
        before, report_before = backend.meter.snapshot(), backend.report()
        earlier = PreviousResults(earlier_file)
        summary = StageSummary(stage)
        pending = 0
        work = (
            (chunk, earlier.take([r.id for r in chunk]))
            for chunk in chunks(source, self.chunk_size)
        )
        for new, chunk_summary in self.engine().mllm(stage, work):
            append_results(out, new)
            pending += sum(needs_retry(r, stage) for r in new)
            summary.merge(chunk_summary)
            if judge(stage, summary, mode is True).hopeless:
                break  # a required stage whose backend is down: unfinished, a rerun resumes
        else:
            earlier_file.unlink(missing_ok=True)
            part.unlink(missing_ok=True)
            self._finish_stage(stage, out, pending)
        # this stage's share of counters the whole run shares (both stages, every actor)
        spent = (backend.meter.snapshot() - before).as_dict()
        spent.update(delta(backend.report(), report_before))
        spent = add(spent, self.engine().usage(stage))
        report = self.engine().report(stage)
        data = {**summary.as_dict(), "backend": spent, "engine": report}
        verdict = judge(stage, summary, mode is True)  # the one place a stage fails
        if verdict.note():
            data["verdict"] = verdict.note()
            if not verdict.failed:
                self.log(f"{stage}: {verdict.note()}")
        self._record(stage, data, started)
        if verdict.failed:
            self.write_summary()
            raise StageUnavailable(verdict.note() or "failed", where=stage)
        return StageOutput(stage, out)

    def run_mllm_chunk(
        self,
        stage: str,
        items: Sequence[SampleResult],
        earlier: Sequence[SampleResult],
        part: Path,
        health: StageHealth,
    ) -> tuple[list[SampleResult], StageSummary]:
        """One chunk of refine or ground (see ``Worker.run_mllm_chunk``)."""
        return self.worker.run_mllm_chunk(stage, items, earlier, part, health)

    def check_backends(self, stages: Sequence[str]) -> None:
        """Check the backends of these MLLM stages once per run, before their work
        (``refineg_core.preflight``: exit 3 for a required one that cannot work)."""
        todo = [s for s in stages if s not in self._preflighted]
        preflight.check_backends(self, self.log, todo)
        self._preflighted.update(todo)

    def refine(self, results: Iterable[SampleResult] | None = None) -> StageOutput:
        return self._mllm_stage("refine", results)

    def ground(self, results: Iterable[SampleResult] | None = None) -> StageOutput:
        return self._mllm_stage("ground", results)

    # ------------------------------------------------------------------- run
    def run(self, *, force_train: bool = False) -> dict[str, Any]:
        stages = self.config.stages
        started = time.perf_counter()
        self.check_backends(preflight.MLLM_STAGES)  # before any work
        if stages.predict and not self._saved_tagger_checked:
            preflight.check_saved_tagger(self, self.log)
            self._saved_tagger_checked = True
        if stages.synth:
            self.synth()
        if stages.train:
            self.train(force=force_train)
        results: StageOutput | None = None
        if stages.predict:
            results = self.predict()
        if self.stage_mode("refine") is not False:
            results = self.refine(results)
        if self.stage_mode("ground") is not False:
            results = self.ground(results)
        if results is not None:
            self.finish(results)
        self.summary["seconds"] = round(time.perf_counter() - started, 3)
        self.write_summary()
        return self.summary

    def finish(self, results: Iterable[SampleResult]) -> None:
        """Write the final outputs in every format and evaluate against gold (each a
        streamed pass over the last stage's results)."""
        self.prepare_run_dir()
        counts = FinalCounts()
        written = write_outputs(results, self.run_dir, observe=counts.add)
        final: dict[str, Any] = counts.as_dict()
        final["outputs"] = {fmt: str(path) for fmt, path in written.paths.items()}
        if written.overlaps_dropped:
            final["twitter_overlaps_dropped"] = written.overlaps_dropped
        if final["grounding_not_attempted"] and self.stage_mode("ground") is not False:
            self.log(
                f"final: {final['grounding_not_attempted']} entities were never grounded "
                "(boxes: null in final.jsonl); the Twitter and CCKS files cannot say so and "
                "show them without a box"
            )
        self.summary["final"] = final
        self.evaluate_stages()

    def evaluate_stages(self) -> None:
        """Score each stage file against gold. Gold that is the predict data itself is
        streamed once beside every stage file (all in input order); other gold is loaded."""
        if self._source("gold") is None:
            return
        from refineg_core.evaluation import evaluate, evaluate_stream

        paths = {
            stage: self.run_dir / f"{stage}.jsonl"
            for stage in ("predict", "refine", "ground")
            if (self.run_dir / f"{stage}.jsonl").exists()
        }
        if not paths:
            return
        if self.config.data.gold is None:
            streams = {stage: (lambda p=path: iter_results(p)) for stage, path in paths.items()}
            metrics = evaluate_stream(lambda: self.iter_samples("gold"), streams)
        else:
            gold = list(self.require("gold").samples)
            metrics = None
            if any(s.entities for s in gold):
                metrics = {stage: evaluate(gold, read_results(p)) for stage, p in paths.items()}
        if metrics is None:  # no gold entities: nothing to score
            return
        report = {stage: m.to_dict() for stage, m in metrics.items()}
        write_json(self.run_dir / "eval.json", report)
        # the numbers `refineg eval` prints, from the same computation (no double rounding)
        self.summary["eval"] = {stage: m.headline() for stage, m in metrics.items()}

    def write_summary(self) -> None:
        self.prepare_run_dir()
        write_text(
            self.run_dir / "summary.json",
            secrets.scrub(json.dumps(self.summary, indent=2, default=str)),
        )


@attrs.define
class FinalCounts:
    """What ``summary.json`` says about the final results, counted as they stream by."""

    samples: int = 0
    entities: int = 0
    with_boxes: int = 0
    judged_not_groundable: int = 0
    grounding_not_attempted: int = 0
    samples_with_failures: int = 0
    failures: int = 0

    def add(self, r: SampleResult) -> None:
        self.samples += 1
        self.entities += len(r.entities)
        self.with_boxes += sum(1 for e in r.entities if e.boxes)
        self.judged_not_groundable += sum(1 for e in r.entities if e.boxes == ())
        self.grounding_not_attempted += sum(1 for e in r.entities if e.boxes is None)
        self.samples_with_failures += bool(r.failures)
        self.failures += len(r.failures)

    def as_dict(self) -> dict[str, Any]:
        return attrs.asdict(self)


def _count(items: Iterable[Any]) -> int:
    return sum(1 for _ in items)
