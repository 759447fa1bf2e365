"""The predict stage: tagger + gate over data.predict, chunk by chunk, resumable.

A gate with a budget ranks the whole input: the first pass writes uncapped
decisions (``predict.uncapped.jsonl``), the second keeps the budget's most
uncertain samples delegated.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import attrs

from refineg_core.errors import RefinegError
from refineg_core.formats.native import iter_results, write_jsonl
from refineg_core.gating import within_budget
from refineg_core.hooks import get_hooks
from refineg_core.interfaces import Tagger
from refineg_core.pipeline.chunked import (
    StageOutput,
    append_results,
    chunks,
    skip_written,
    written_ids,
)
from refineg_core.pipeline.stagerun import StageRun
from refineg_core.progress import bar
from refineg_core.types import SampleResult


def predict(run: StageRun) -> StageOutput:
    started = time.perf_counter()
    out = run.run_dir / "predict.jsonl"
    uncapped = run.run_dir / "predict.uncapped.jsonl"
    tagger_dir = run.worker.tagger_dir()
    if not run.config.tagger.load_from and not tagger_dir.is_dir():
        raise RefinegError(
            f"no trained tagger at {tagger_dir}; run `refineg train` first or set tagger.load_from"
        )
    _, total = run.inputs.source_stats("predict")
    if total == 0:  # a finished, empty run (a day without posts), said out loud
        source = run.inputs.source("predict")
        run.log(f"predict: {source.path if source else None} holds no samples; outputs are empty")
    run.prepare_run_dir()
    if run.reuse("predict", out, uncapped):
        run.record("predict", gate_counts(iter_results(out), resumed=True), started)
        return StageOutput("predict", out)
    hooks = get_hooks()
    gate = run.calibrated_gate()
    work = out if gate.budget is None else uncapped
    done = written_ids(work)
    work.touch()  # an empty input is an empty (finished) stage file, not a missing one
    run.store.write(run.planner.fingerprint("predict"), complete=False)
    hooks.stage_started("predict", total - len(done))
    samples = skip_written(run.inputs.iter_samples("predict"), done, lambda s: s.id, work)
    progress = bar(desc="predict", total=total, initial=len(done), unit="sample")
    try:
        for results in run.engine().tag(chunks(samples, run.chunk_size)):
            append_results(work, results)
            progress.update(len(results))
    finally:
        progress.close()
    capped = 0
    if gate.budget is not None:
        capped = apply_budget(uncapped, out, gate.budget)
    run.finish_stage("predict", out)
    data = gate_counts(iter_results(out), resumed=bool(done))
    if gate.budget is not None:
        data["capped_by_budget"] = capped
    data["engine"] = run.engine().report("predict")
    if (inference := tagger_inference(run)) is not None:
        data["tagger_inference"] = inference
    data = run.record("predict", data, started)
    hooks.stage_finished("predict", data)
    return StageOutput("predict", out)


def apply_budget(uncapped: Path, out: Path, budget: float) -> int:
    """Keep the budget's most uncertain delegated samples; return how many were capped."""
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


def gate_counts(results: Iterable[SampleResult], resumed: bool = False) -> dict[str, Any]:
    samples = entities = delegated = samples_delegated = 0
    for r in results:
        samples += 1
        entities += len(r.entities)
        if r.gate is not None:
            delegated += len(r.gate.delegated)
            samples_delegated += r.gate.delegate_sample
    return {
        "samples": samples,
        "entities": entities,
        "entities_kept": entities - delegated,
        "entities_delegated": delegated,
        "samples_delegated": samples_delegated,
        "resumed": resumed,
    }


def tagger_inference(run: StageRun, tagger: Tagger | None = None) -> dict[str, Any] | None:
    """The tagger's inference report (None when it lives in the engine's workers)."""
    if tagger is None and run.config.engine.kind != "local":
        return None
    report = getattr(tagger or run.load_tagger(), "inference_report", None)
    return report() if report is not None else None
