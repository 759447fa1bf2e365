"""Run one dataset under several config variants (and seeds) and compare them.

    python benchmarks/run_variants.py --config configs/twitter-gmner.toml \
        --variants benchmarks/variants/gate-thresholds.toml --out benchmarks/results/gate

A variants file lists named sets of overrides (the same syntax as `--set`), and
optionally the seeds to repeat each variant with:

    seeds = [1, 2, 3]                      # optional; --seeds 1,2,3 overrides
    seed_key = "tagger.options.seed"       # optional; the key each seed is set at

    [[variant]]
    name = "tau=0.3"
    set = ["uncertainty.options.threshold=0.3"]

Each (variant, seed) runs in its own run directory under --out, so a rerun
resumes. Two things are paid once, not per variant:

* the tagger: variants whose training inputs are equal (same train
  fingerprint: data, tagger options, seed, labels) share one trained tagger;
* MLLM answers: every run uses one response cache (``--cache``, default
  ``OUT/cache``). A cache key holds everything that determines an answer
  (backend identity, model, prompt, images, decoding options), so a prompt two
  variants both send is asked once; each run's summary counts it as a cached
  call.

The table printed (and written as ``comparison.md``) has the columns a paper
shows: F1 per stage, MLLM requests sent, requests answered from the cache and
tokens spent; with seeds, each cell is ``mean ± sd`` over the seeds, and
``comparison.json`` holds every seed's value with min and max. ``--full`` also
writes ``comparison-full.md``: every raw count of every run.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path
from typing import Any

import tomllib

from refineg_core.config import load_config
from refineg_core.pipeline.orchestrator import Pipeline

#: The compact table: (column title, stage, metric) for F1 columns.
F1_COLUMNS = (
    ("tagger MNER", "predict", "mner"),
    ("refine MNER", "refine", "mner"),
    ("ground GMNER", "ground", "gmner"),
    ("ground EEG", "ground", "eeg"),
)
#: (column title, row key) for the MLLM cost columns.
COST_COLUMNS = (
    ("requests", "requests"),
    ("cached", "cached_requests"),
    ("tokens", "tokens"),
)


def load_variants(path: Path) -> tuple[list[dict[str, Any]], list[int], str]:
    """The variants, the seeds and the seed's config key of a variants file."""
    data = tomllib.loads(path.read_text(encoding="utf-8"))
    variants = data.get("variant", [])
    if not variants:
        raise SystemExit(f"{path}: no [[variant]] tables")
    names = set()
    for i, v in enumerate(variants):
        if "name" not in v:
            raise SystemExit(f"{path}: variant {i} has no name")
        if v["name"] in names:
            raise SystemExit(f"{path}: variant name {v['name']!r} is used twice")
        names.add(v["name"])
        v.setdefault("set", [])
    seeds = data.get("seeds", [])
    if not isinstance(seeds, list) or not all(isinstance(s, int) for s in seeds):
        raise SystemExit(f"{path}: seeds must be a list of integers")
    return variants, seeds, str(data.get("seed_key", "tagger.options.seed"))


def run_name(variant: str, seed: int | None) -> str:
    name = variant.replace("/", "_").replace(" ", "_")
    return name if seed is None else f"{name}/seed-{seed}"


def run_variant(
    config_path: Path,
    variant: dict[str, Any],
    seed: tuple[str, int] | None,
    out: Path,
    cache: Path,
    extra: list[str],
    trained: dict[str, tuple[str, Path]],
) -> dict[str, Any]:
    """Run one variant at one seed; a tagger whose training inputs match an earlier
    run's (same train fingerprint) is reused through ``tagger.load_from``."""
    overrides = [*extra, *variant["set"]]
    if seed is not None:
        overrides.append(f"{seed[0]}={seed[1]}")
    name = run_name(variant["name"], seed[1] if seed else None)
    config = load_config(config_path, overrides)
    config.run_dir = out / name
    if config.cache_dir is None:
        config.cache_dir = cache

    def log(m: str) -> None:
        print(f"[{name}] {m}", file=sys.stderr)

    with Pipeline(config, log=log) as probe:
        key = probe.fingerprint("train").digest if config.stages.train else None
    shared = trained.get(key) if key else None
    if shared is not None and not config.tagger.load_from:
        config.tagger.load_from = shared[1]
        log(f"sharing the tagger trained for {shared[0]} (same training inputs)")
    with Pipeline(config, log=log) as pipeline:
        summary = pipeline.run()
        if key and shared is None:
            trained[key] = (name, pipeline.tagger_dir())
    row = summary_row(summary)
    row.update(
        variant=variant["name"],
        seed=seed[1] if seed else None,
        overrides=variant["set"],
        tagger=f"shared ({shared[0]})" if shared else "trained here",
    )
    return row


def summary_row(summary: dict[str, Any]) -> dict[str, Any]:
    """One run's numbers: every raw count (for ``--full``) and the compact ones."""
    row: dict[str, Any] = {}
    requests = cached = tokens = 0
    for stage, data in summary.get("stages", {}).items():
        row[f"{stage}_s"] = data.get("seconds")
        backend = data.get("backend") or {}
        for key in ("calls", "cached_calls", "failed_calls", "prompt_tokens", "completion_tokens"):
            if key in backend:
                row[f"{stage}_{key}"] = backend[key]
        requests += backend.get("calls", 0) + backend.get("failed_calls", 0)
        cached += backend.get("cached_calls", 0)
        tokens += backend.get("prompt_tokens", 0) + backend.get("completion_tokens", 0)
    row.update(requests=requests, cached_requests=cached, tokens=tokens)
    stages = summary.get("stages", {})
    if "predict" in stages:
        row["delegated_entities"] = stages["predict"].get("entities_delegated")
        row["delegated_samples"] = stages["predict"].get("samples_delegated")
    row["failures"] = summary.get("final", {}).get("failures")
    for stage, metrics in summary.get("eval", {}).items():
        for metric, f1 in metrics.items():
            if f1 is not None:
                row[f"{stage}:{metric}_f1"] = round(100 * f1, 2)
    return row


def spread(values: list[float]) -> dict[str, Any]:
    """Mean, sample standard deviation, min and max of one column over seeds."""
    return {
        "values": values,
        "mean": statistics.fmean(values),
        "sd": statistics.stdev(values) if len(values) > 1 else 0.0,
        "min": min(values),
        "max": max(values),
    }


def compare(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One entry per variant: each compact column's spread over the variant's seeds."""
    table: list[dict[str, Any]] = []
    for name in dict.fromkeys(r["variant"] for r in rows):
        mine = [r for r in rows if r["variant"] == name]
        entry: dict[str, Any] = {"variant": name, "seeds": [r["seed"] for r in mine]}
        for title, stage, metric in F1_COLUMNS:
            values = [r[f"{stage}:{metric}_f1"] for r in mine if f"{stage}:{metric}_f1" in r]
            if len(values) == len(mine):
                entry[title] = spread(values)
        for title, key in COST_COLUMNS:
            entry[title] = spread([float(r[key]) for r in mine])
        table.append(entry)
    return table


def to_markdown(table: list[dict[str, Any]]) -> str:
    """The compact table: F1 with one decimal, counts as integers, ± sd over seeds."""
    titles = [t for t, _, _ in F1_COLUMNS if any(t in e for e in table)]
    titles += [t for t, _ in COST_COLUMNS]
    with_seeds = any(len(e["seeds"]) > 1 for e in table)
    head = ["variant", *(["seeds"] if with_seeds else []), *titles]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for e in table:
        cells = [e["variant"]] + ([str(len(e["seeds"]))] if with_seeds else [])
        for t in titles:
            cells.append(_cell(e.get(t), integer=t in dict(COST_COLUMNS)))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _cell(col: dict[str, Any] | None, *, integer: bool) -> str:
    if col is None:
        return "–"
    fmt = "{:.0f}" if integer else "{:.1f}"
    text = fmt.format(col["mean"])
    if len(col["values"]) > 1:
        text += " ± " + fmt.format(col["sd"])
    return text


def to_full_markdown(rows: list[dict[str, Any]]) -> str:
    """Every raw column of every run (the lab view)."""
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
    ap.add_argument("--seeds", help="comma-separated seeds (overrides the variants file's)")
    ap.add_argument("--cache", type=Path, help="the shared MLLM response cache (OUT/cache)")
    ap.add_argument("--full", action="store_true", help="also write every raw count")
    args = ap.parse_args(argv)
    # imported here: tests load this file as a module from outside benchmarks/
    from harness import record

    session = record(args)
    variants, seeds, seed_key = load_variants(args.variants)
    if args.seeds:
        try:
            seeds = [int(s) for s in args.seeds.split(",")]
        except ValueError:
            bad = f"--seeds must be comma-separated integers, not {args.seeds!r}"
            raise SystemExit(bad) from None
    args.out.mkdir(parents=True, exist_ok=True)
    cache = (args.cache or args.out / "cache").resolve()
    trained: dict[str, tuple[str, Path]] = {}
    runs = [(v, (seed_key, s) if seeds else None) for v in variants for s in seeds or [None]]
    rows = [
        run_variant(args.config, v, seed, args.out, cache, args.set, trained) for v, seed in runs
    ]
    saved = len(runs) - len(trained)
    print(f"tagger trainings: {len(trained)} for {len(runs)} runs ({saved} saved)", file=sys.stderr)
    print(
        f"MLLM requests sent: {sum(r['requests'] for r in rows)}, answered from the shared "
        f"cache {cache}: {sum(r['cached_requests'] for r in rows)}",
        file=sys.stderr,
    )
    table = compare(rows)
    session.write({"runs": rows, "variants": table}, args.out / "comparison.json")
    text = to_markdown(table)
    (args.out / "comparison.md").write_text(text, encoding="utf-8")
    if args.full:
        (args.out / "comparison-full.md").write_text(to_full_markdown(rows), encoding="utf-8")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
