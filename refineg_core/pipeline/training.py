"""The stages before prediction: synthesis (a ``SynthStage`` plugin) and training.

Training is skipped while the saved tagger's fingerprint (``refineg-trained.json``)
matches; a retrained tagger changes predict's fingerprint (its content digest).
"""

from __future__ import annotations

import shutil
import time
from typing import Any

from refineg_core import registry
from refineg_core.errors import ConfigError, PluginError
from refineg_core.formats import load_dataset
from refineg_core.hooks import get_hooks
from refineg_core.pipeline.fingerprint import freshness, read_record, write_record
from refineg_core.pipeline.order import TRAINED_MARKER
from refineg_core.pipeline.predicting import tagger_inference
from refineg_core.pipeline.stage_contract import SynthStage
from refineg_core.pipeline.stagerun import StageRun
from refineg_core.types import Sample


def synth_class(config: Any) -> type[SynthStage]:
    """The stage plugin ``[synth] plugin`` names (exit 2 when it is not one)."""
    name = config.synth.plugin
    cls = registry.load_class("stage", name, config_key="synth")
    if not issubclass(cls, SynthStage):
        raise PluginError(f"stage plugin {name!r} is not a SynthStage", where="synth.plugin")
    return cls


def synth(run: StageRun) -> dict[str, Any]:
    """Synthesize labelled samples from data.train with the synthesis backend."""
    started = time.perf_counter()
    stage = synth_class(run.config)()  # a misspelt plugin stops the run before any work
    seeds = run.inputs.require("train")
    synthesizer = run.worker.context.synthesizer()
    backend = run.worker.backend("synth_backend")
    if backend is None:
        raise ConfigError("synthesis needs a backend", where="synth_backend.plugin")
    run.prepare_run_dir()
    report = stage.run(
        list(seeds.samples),
        synthesizer,
        backend,
        run.labels,
        run.config.synth,
        run.run_dir / "synth",
        debug=run.debug,
    )
    run.planner.forget("train")  # the synthesized data may have changed
    return run.record("synth", dict(report), started)


def training_samples(run: StageRun) -> list[Sample]:
    """data.train, every extra training file and (when asked) the synthesized samples,
    their entity types checked against the label set."""
    samples = list(run.inputs.require("train").samples)
    for extra in run.config.data.extra_train:
        samples += run.inputs.load(extra).samples
    synth_file = run.planner.synth_file()
    if run.config.data.use_synthesized:
        if not synth_file.exists():
            raise ConfigError(
                f"{synth_file} does not exist; run `refineg synth` first",
                where="data.use_synthesized",
            )
        samples += load_dataset(synth_file, "jsonl").samples
    run.labels.check_types((e.type for s in samples for e in s.entities), where="data.train")
    return samples


def train(run: StageRun, *, force: bool = False) -> dict[str, Any]:
    """Train and save the tagger, or reuse the one whose fingerprint still matches."""
    started = time.perf_counter()
    target = run.worker.tagger_dir()
    if run.config.tagger.load_from:
        return run.record("train", {"skipped": f"using saved tagger {target}"}, started)
    fp = run.planner.fingerprint("train")
    fresh = freshness(fp, read_record(target / TRAINED_MARKER))
    if fresh.state == "fresh" and not force:
        run.log(f"train: reusing the tagger at {target} (same data and options)")
        return run.record("train", {"reused": True, "tagger": str(target)}, started)
    if fresh.state == "stale":
        run.log(f"train: retraining: {fresh.why()}")
    elif target.exists() and fresh.state == "missing" and any(target.iterdir()):
        run.log(f"train: {target} has no {TRAINED_MARKER}; retraining")
    samples = training_samples(run)
    dev = run.inputs.dataset("dev")
    tagger = run.worker.context.untrained_tagger()
    hooks = get_hooks()
    hooks.stage_started("train", len(samples))
    run.log(f"train: {len(samples)} samples, dev {len(dev) if dev else 0}")
    report = tagger.fit(samples, list(dev.samples) if dev else None)
    run.prepare_run_dir()
    run.worker.context.forget_tagger(target)
    if target.exists():
        shutil.rmtree(target)
    tagger.save(target)
    output = run.planner.saved_tagger_digest(target)
    write_record(target / TRAINED_MARKER, fp, complete=True, output=output)
    run.planner.forget("predict")
    data = {"train_samples": len(samples), "tagger": str(target), "report": report}
    if (inference := tagger_inference(run, tagger)) is not None:
        data["inference"] = inference
    data = run.record("train", data, started)
    hooks.stage_finished("train", data)
    return data
