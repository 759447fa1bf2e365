"""``refineg plan``: what each precision target would cost in MLLM calls.

For each target (default 0.85 / 0.90 / 0.95) the gate's guarantee-mode
threshold is chosen on the calibration split (``data.dev``) exactly as a run
with ``target_precision`` would choose it (``refineg_gates.guarantee_gate``),
and applied to the scores the predict stage already wrote: the posts it
delegates are the refine requests (one per post, under the default
``refine.delegate = "gate"``). A target the calibration split cannot support
is shown as refused, with the reason, as the run would refuse it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from refineg_core.types import SOURCE_TAGGER, SampleResult

DEFAULT_TARGETS = (0.85, 0.90, 0.95)


def parse_targets(text: str) -> tuple[float, ...]:
    """``"0.85,0.9"`` -> (0.85, 0.9); empty -> no table. Each strictly in (0, 1)."""
    out = []
    for part in text.split(","):
        if not part.strip():
            continue
        value = float(part)
        if not 0 < value < 1:
            raise ValueError(f"target {value} is not strictly between 0 and 1")
        out.append(value)
    return tuple(out)


def _delegated(results: Sequence[SampleResult], tau: float, tau_missed: float, missed: bool):
    posts = entities = 0
    for r in results:
        scores = [e.uncertainty for e in r.entities if e.source == SOURCE_TAGGER]
        hit = [s for s in scores if s > tau]
        miss = missed and r.gate is not None and r.gate.missed_uncertainty > tau_missed
        if hit or miss:
            posts += 1
            entities += len(hit)
    return posts, entities


def target_table(
    pipeline: Any, results: Sequence[SampleResult], targets: Sequence[float], risk: float | None
) -> dict[str, Any]:
    """Rows of (target -> threshold, posts delegated, refine requests) or why there are none."""
    from refineg_gates.decision import TokenScoreGate
    from refineg_gates.guarantee_gate import choose, score_posts, thresholds_for

    if not targets:
        return {"skipped": "no targets asked for"}
    gate = pipeline.calibrated_gate()
    if not isinstance(gate, TokenScoreGate):
        return {"skipped": f"the {pipeline.config.uncertainty.plugin} gate has no target mode"}
    dev = pipeline.dataset("dev")
    if dev is None:
        return {"skipped": "no data.dev to calibrate on"}
    opts = gate.options
    risk = risk if risk is not None else opts.risk
    samples = list(dev.samples)
    posts = score_posts(gate, samples, pipeline.load_tagger().predict(samples))
    rows = []
    for target in targets:
        choice = choose(
            posts,
            target=target,
            risk=risk,
            unit=opts.guarantee,
            missed_entities=opts.missed_entities,
        )
        row: dict[str, Any] = {"target": target, "threshold": choice.threshold}
        if choice.threshold is None:
            row["refused"] = choice.stop_reason
        else:
            tau, tau_missed = thresholds_for(choice.threshold, opts.guarantee, opts.threshold)
            n_posts, n_entities = _delegated(results, tau, tau_missed, opts.missed_entities)
            row.update(
                samples_delegated=n_posts,
                refine_requests=n_posts,
                entities_delegated=n_entities,
                calibration_precision=round(choice.realized_precision, 4),
            )
        rows.append(row)
    return {
        "unit": opts.guarantee,
        "risk": risk,
        "calibration_samples": len(posts),
        "samples": len(results),
        "missed_entity_threshold": (
            opts.threshold if opts.missed_entities and opts.guarantee == "entity" else None
        ),
        "rows": rows,
    }


def format_targets(table: dict[str, Any]) -> list[str]:
    """The table as terminal lines."""
    if "rows" not in table:
        return [f"targets: {table['skipped']}"]
    what = "kept-entity precision" if table["unit"] == "entity" else "exact kept posts"
    lines = [
        "",
        f"{what} target (risk {table['risk']:g}, calibrated on {table['calibration_samples']} "
        f"dev samples) -> MLLM calls on {table['samples']} samples:",
        f"{'target':>8}{'threshold':>12}{'delegated':>11}{'requests':>10}",
    ]
    for row in table["rows"]:
        if row["threshold"] is None:
            lines.append(f"{row['target']:>8.2f}{'refused':>12}  {row['refused']}")
        else:
            lines.append(
                f"{row['target']:>8.2f}{row['threshold']:>12.4g}"
                f"{row['samples_delegated']:>11}{row['refine_requests']:>10}"
            )
    if table["missed_entity_threshold"] is not None:
        lines.append(
            f"(posts with a possibly missed entity are delegated at the configured "
            f"threshold {table['missed_entity_threshold']:g})"
        )
    return lines
