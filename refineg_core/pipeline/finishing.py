"""The end of a run: the final outputs, the scores of every stage against gold, the counts."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import attrs

from refineg_core.evaluation import evaluate, evaluate_stream
from refineg_core.formats.native import iter_results, read_results
from refineg_core.pipeline.order import STAGES
from refineg_core.pipeline.outputs import write_outputs
from refineg_core.pipeline.stagerun import StageRun
from refineg_core.runstore import write_json
from refineg_core.types import SampleResult


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


def finish(run: StageRun, results: Iterable[SampleResult]) -> None:
    """Write the final outputs in every format and evaluate against gold."""
    run.prepare_run_dir()
    counts = FinalCounts()
    formats = run.config.outputs.formats
    written = write_outputs(results, run.run_dir, formats, observe=counts.add)
    final: dict[str, Any] = counts.as_dict()
    final["outputs"] = {fmt: str(path) for fmt, path in written.paths.items()}
    if written.overlaps_dropped:
        final["overlaps_dropped"] = written.overlaps_dropped
    if written.removed:  # an earlier run's files of formats [outputs] no longer names
        final["outputs_removed"] = [str(p) for p in written.removed]
    if final["grounding_not_attempted"] and run.stage_mode("ground") is not False:
        run.log(
            f"final: {final['grounding_not_attempted']} entities were never grounded "
            "(boxes: null in final.jsonl); the Twitter and CCKS files cannot say so and "
            "show them without a box"
        )
    run.summary["final"] = final
    evaluate_stages(run)


def evaluate_stages(run: StageRun) -> None:
    """Score each stage file against gold (streamed beside them when it is the predict
    data, all in input order; other gold is loaded)."""
    if run.inputs.source("gold") is None:
        return
    paths = {
        stage: run.run_dir / f"{stage}.jsonl"
        for stage in STAGES[1:]
        if (run.run_dir / f"{stage}.jsonl").exists()
    }
    if not paths:
        return
    if run.config.data.gold is None:
        streams = {stage: (lambda p=path: iter_results(p)) for stage, path in paths.items()}
        metrics = evaluate_stream(lambda: run.inputs.iter_samples("gold"), streams)
    else:
        gold = list(run.inputs.require("gold").samples)
        metrics = None
        if any(s.entities for s in gold):
            metrics = {stage: evaluate(gold, read_results(p)) for stage, p in paths.items()}
    if metrics is None:  # no gold entities: nothing to score
        return
    report = {stage: m.to_dict() for stage, m in metrics.items()}
    write_json(run.run_dir / "eval.json", report)
    # the numbers `refineg eval` prints, from the same computation (no double rounding)
    run.summary["eval"] = {stage: m.headline() for stage, m in metrics.items()}
