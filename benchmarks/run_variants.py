"""Run one dataset under several config variants and compare them.

    python benchmarks/run_variants.py --config configs/twitter-gmner.toml \
        --variants benchmarks/variants/gate-thresholds.toml --out benchmarks/results/gate

A variants file lists named sets of overrides (the same syntax as `--set`):

    [[variant]]
    name = "tau=0.3"
    set = ["uncertainty.options.threshold=0.3"]

Each variant runs in its own run directory under --out (so reruns resume and
MLLM answers come from each run's cache); variants whose training inputs are
equal (same train fingerprint: data, tagger options, labels) share one trained
tagger instead of each training its own. The comparison table (metrics, MLLM
calls, tokens, failures, seconds per stage) is written as Markdown and JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import tomllib

from refineg_core.config import load_config
from refineg_core.pipeline.orchestrator import Pipeline


def load_variants(path: Path) -> list[dict[str, Any]]:
    data = tomllib.loads(path.read_text(encoding="utf-8"))
    variants = data.get("variant", [])
    if not variants:
        raise SystemExit(f"{path}: no [[variant]] tables")
    for i, v in enumerate(variants):
        if "name" not in v:
            raise SystemExit(f"{path}: variant {i} has no name")
        v.setdefault("set", [])
    return variants


def run_variant(
    config_path: Path,
    variant: dict[str, Any],
    out: Path,
    extra: list[str],
    trained: dict[str, tuple[str, Path]],
) -> dict:
    """Run one variant; a tagger whose training inputs match an earlier variant's
    (same train fingerprint) is reused through ``tagger.load_from``, not retrained."""
    run_dir = out / variant["name"].replace("/", "_").replace(" ", "_")
    config = load_config(config_path, [*extra, *variant["set"]])
    config.run_dir = run_dir

    def log(m: str) -> None:
        print(f"[{variant['name']}] {m}", file=sys.stderr)

    with Pipeline(config, log=log) as probe:
        key = probe.fingerprint("train").digest if config.stages.train else None
    shared = trained.get(key) if key else None
    if shared is not None and not config.tagger.load_from:
        config.tagger.load_from = shared[1]
        log(f"sharing the tagger trained for variant {shared[0]} (same training inputs)")
    with Pipeline(config, log=log) as pipeline:
        summary = pipeline.run()
        if key and shared is None:
            trained[key] = (variant["name"], pipeline.tagger_dir())
    row: dict[str, Any] = {
        "variant": variant["name"],
        "overrides": variant["set"],
        "tagger": f"shared ({shared[0]})" if shared else "trained here",
    }
    for stage, data in summary.get("stages", {}).items():
        row[f"{stage}_s"] = data.get("seconds")
        backend = data.get("backend") or {}
        for key in ("calls", "cached_calls", "failed_calls", "prompt_tokens", "completion_tokens"):
            if key in backend:
                row[f"{stage}_{key}"] = backend[key]
    stages = summary.get("stages", {})
    if "predict" in stages:
        row["delegated_entities"] = stages["predict"].get("entities_delegated")
        row["delegated_samples"] = stages["predict"].get("samples_delegated")
    final = summary.get("final", {})
    row["failures"] = final.get("failures")
    for stage, metrics in summary.get("eval", {}).items():
        for metric, f1 in metrics.items():
            if f1 is not None:
                row[f"{stage}:{metric}_f1"] = round(f1, 2)
    return row


def to_markdown(rows: list[dict[str, Any]]) -> str:
    columns: list[str] = []
    for row in rows:
        columns += [c for c in row if c not in columns and c != "overrides"]
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        lines.append("| " + " | ".join(str(row.get(c, "")) for c in columns) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--config", type=Path, required=True)
    ap.add_argument("--variants", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--set", action="append", default=[], help="override applied to every variant")
    args = ap.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    trained: dict[str, tuple[str, Path]] = {}
    variants = load_variants(args.variants)
    rows = [run_variant(args.config, v, args.out, args.set, trained) for v in variants]
    saved = len(variants) - len(trained)
    print(
        f"tagger trainings: {len(trained)} for {len(variants)} variants ({saved} saved)",
        file=sys.stderr,
    )
    (args.out / "comparison.json").write_text(json.dumps(rows, indent=2), encoding="utf-8")
    table = to_markdown(rows)
    (args.out / "comparison.md").write_text(table, encoding="utf-8")
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
