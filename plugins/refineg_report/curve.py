"""The gate's risk-coverage curve for the report, drawn with matplotlib as a PNG.

From the predict stage's results (each entity with its gate uncertainty, each
post with its missed-entity score and the gate's verdict) and the gold: for
every threshold ``tau`` of the guarantee's fixed grid, the precision of the
entities the gate keeps (uncertainty ``<= tau``, exact span + type against
gold) against the share of posts it delegates (an entity above ``tau`` or a
missed-entity score above ``tau``: the threshold-mode gate). The run's own
decision is marked as a point (its real verdicts, whatever its mode), and a
precision target with its risk, when the run had one, as a line.

The PNG is embedded as base64, so the report stays one self-contained file.
matplotlib is an optional dependency (``pip install refineg[report]``);
without it the report says so instead of drawing.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Mapping, Sequence
from typing import Any

import attrs
import numpy as np

from refineg_core.types import SOURCE_TAGGER, Sample, SampleResult


@attrs.frozen
class Curve:
    delegated_share: np.ndarray
    kept_precision: np.ndarray  # NaN where nothing is kept
    run_delegated_share: float
    run_kept_precision: float | None
    entities: int
    samples: int


def _scored(r: SampleResult) -> list:
    return [e for e in r.entities if e.source == SOURCE_TAGGER and e.uncertainty is not None]


def risk_coverage(
    results: Sequence[SampleResult], gold: Mapping[str, Sample], grid: np.ndarray | None = None
) -> Curve | None:
    """The curve over the results that have a gate verdict and a gold sample
    (None when there are none: no gate ran, or no gold was given)."""
    from refineg_gates.guarantee import default_grid

    grid = default_grid() if grid is None else grid
    rows = [r for r in results if r.gate is not None and r.id in gold]
    if not rows:
        return None
    scores, right, post_of = [], [], []
    post_max = np.zeros(len(rows))
    run_kept = run_right = 0
    for i, r in enumerate(rows):
        keys = {e.key for e in gold[r.id].entities}
        ents = _scored(r)
        for e in ents:
            scores.append(e.uncertainty)
            right.append(e.key in keys)
            post_of.append(i)
            if e.key not in r.gate.delegated:
                run_kept += 1
                run_right += e.key in keys
        post_max[i] = max([r.gate.missed_uncertainty, *(e.uncertainty for e in ents)])
    s, ok = np.asarray(scores, dtype=float), np.asarray(right, dtype=bool)
    kept = s[None, :] <= grid[:, None]  # [G, E]
    n_kept = kept.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = np.where(n_kept > 0, (kept & ok[None, :]).sum(axis=1) / n_kept, np.nan)
    delegated = (post_max[None, :] > grid[:, None]).mean(axis=1)
    return Curve(
        delegated,
        precision,
        float(np.mean([r.gate.delegate_sample for r in rows])),
        run_right / run_kept if run_kept else None,
        len(s),
        len(rows),
    )


def curve_png(curve: Curve, guarantee: Mapping[str, Any] | None = None) -> str | None:
    """The curve as a ``data:image/png;base64,...`` URL; None without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        from matplotlib.figure import Figure
    except ImportError:
        return None
    fig = Figure(figsize=(6.4, 3.8), dpi=100)
    ax = fig.add_subplot()
    ax.plot(
        100 * curve.delegated_share,
        100 * curve.kept_precision,
        color="#3366cc",
        lw=1.8,
        label="kept-entity precision vs posts delegated (one threshold)",
    )
    if curve.run_kept_precision is not None:
        ax.plot(
            [100 * curve.run_delegated_share],
            [100 * curve.run_kept_precision],
            "o",
            color="#d62728",
            ms=8,
            label=f"this run: {100 * curve.run_delegated_share:.1f}% delegated, "
            f"precision {100 * curve.run_kept_precision:.1f}%",
        )
    if guarantee and guarantee.get("target_precision") is not None:
        target = 100 * float(guarantee["target_precision"])
        unit = "entities" if guarantee.get("unit", "entity") == "entity" else "posts (exact)"
        ax.axhline(
            target,
            color="#2ca02c",
            ls="--",
            lw=2.0,
            label=f"target {target:.0f}% ({unit}), guaranteed w.p. "
            f">= {100 * (1 - float(guarantee['risk'])):.0f}% at threshold "
            f"{float(guarantee['threshold']):.3g}",
        )
    ax.set_xlabel("posts delegated to the MLLM (%)")
    ax.set_ylabel("precision of kept entities (%)")
    ax.set_xlim(0, 100)
    ax.grid(alpha=0.3)
    ax.set_title(
        f"gate risk-coverage on {curve.samples} posts, {curve.entities} tagger entities",
        fontsize=10,
    )
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")
