"""Render ``benchmarks/results/tagger.md`` from the bench_tagger JSON files (a library of
``bench_tagger.py report``, no command of its own; the page benchmarks/pages/tagger.md
links the rendered file)."""

from __future__ import annotations


def command_of(doc: dict) -> str:
    """The command a result came from: its harness provenance, or the older top-level field."""
    return doc["provenance"]["command"] if "provenance" in doc else doc["command"]


def threads_of(doc: dict) -> int:
    """The thread count a result ran at (harness provenance, or the older top-level field)."""
    return doc["provenance"]["threads"] if "provenance" in doc else doc["threads"]


def pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}"


def render(docs: dict) -> str:
    out: list[str] = []
    if "twitter" in docs:
        d = docs["twitter"]
        out += [
            "### 1. Twitter-GMNER, full train split -> dev (MNER F1)",
            "",
            f"Command: `{command_of(d)}` (torch threads: {threads_of(d)}).",
            "",
            f"- Trained on {d['train_sentences']} tweets for {d['epochs']} epochs (seed "
            f"{d['seed']}), MiniLM-L6 (22M params, uncased) + word shapes + CRF, BIO.",
            f"- **Dev MNER F1 {pct(d['dev']['f1'])}** (P {pct(d['dev']['precision'])}, "
            f"R {pct(d['dev']['recall'])}); dev F1 per epoch: "
            + ", ".join(pct(x) for x in d["dev_f1_per_epoch"])
            + f" (best checkpoint: epoch {d['best_epoch']}, restored).",
            "- Training seconds per epoch on the full train split: "
            + ", ".join(f"{s:.0f}" for s in d["seconds_per_epoch"])
            + f"; peak RSS {d['peak_rss_mb']:.0f} MB.",
        ]
        if "twitter_noshape" in docs:
            n = docs["twitter_noshape"]
            out.append(
                f"- Same run **without the word-shape (casing) features**: dev F1 "
                f"{pct(n['dev']['f1'])} (P {pct(n['dev']['precision'])}, "
                f"R {pct(n['dev']['recall'])}); per epoch "
                + ", ".join(pct(x) for x in n["dev_f1_per_epoch"])
                + f". Command: `{command_of(n)}`."
            )
        out.append("")
    if "curve" in docs:
        d = docs["curve"]
        out += [
            "### 1b. Low-resource curve on Twitter-GMNER dev (MNER F1, mean ± sd over seeds)",
            "",
            f"Command: `{command_of(d)}`. Each seed draws its own random subset of train; fixed "
            f"epochs, no early stopping, evaluated on {d['dev_sentences']} dev tweets.",
            "",
            "| train tweets | epochs | shape features | seeds | F1 mean | sd | min | max |",
            "|---:|---:|:---:|---:|---:|---:|---:|---:|",
        ]
        epochs = {r["size"]: r["epochs"] for r in d["runs"]}
        for s in sorted(d["summary"], key=lambda r: (r["size"], not r["shape_features"])):
            out.append(
                f"| {s['size']} | {epochs[s['size']]} | {'on' if s['shape_features'] else 'off'} "
                f"| {s['n']} | {pct(s['mean_f1'])} | {pct(s['std_f1'])} | {pct(s['min_f1'])} "
                f"| {pct(s['max_f1'])} |"
            )
        for key in ("twitter", "twitter_noshape"):
            if key in docs:
                t = docs[key]
                out.append(
                    f"| {t['train_sentences']} (full)\\* | {t['epochs']} | "
                    f"{'on' if t.get('shape_features', True) else 'off'} | 1 | "
                    f"{pct(t['dev']['f1'])} | – | – | – |"
                )
        if "twitter" in docs:
            out += [
                "",
                "\\* full-split rows come from part 1: evaluated on all 1,500 dev "
                "tweets (the small sizes on the first 500), best epoch chosen on dev.",
            ]
        out.append("")
    variants = docs.get("ccks_variants", [])
    if variants:
        d0 = variants[0]
        removed = list({r["fold"]: r["synthetic_removed_for_leakage"] for r in d0["runs"]}.values())
        out += [
            "### 2. CCKS military NER: 5-fold CV on gold-500, gold vs gold + synthetic",
            "",
            f"Same folds in every run (split seed fixed). The synthetic file is de-duplicated "
            f"to {d0['synthetic_unique']} sentences; per fold every synthetic sentence that "
            "mentions a held-out fold's entity name (case-insensitive, word-boundary match) is "
            "removed (" + ", ".join(map(str, removed)) + " per fold), then the given number "
            "is sampled from the rest. Test = the held-out 100 gold sentences.",
            "",
            "| setting | synthetic | epochs | train sentences | F1 mean ± sd (5 folds) | "
            "pooled micro P / R / F1 | command |",
            "|---|---:|---:|---:|---:|---:|---|",
        ]
        for d in variants:
            for s in d["summary"]:
                r0 = next(r for r in d["runs"] if r["setting"] == s["setting"])
                p = d["pooled"][s["setting"]]
                synth = (
                    f"{d['synthetic_size']}"
                    + (" (with entities)" if d.get("synthetic_with_entities_only") else "")
                    if s["setting"] != "gold"
                    else "0"
                )
                out.append(
                    f"| {s['setting']} | {synth} | {r0['epochs']} | {r0['train_sentences']} "
                    f"| {pct(s['mean_f1'])} ± {pct(s['std_f1'])} "
                    f"| {pct(p['precision'])} / {pct(p['recall'])} / {pct(p['micro_f1'])} "
                    f"| `{command_of(d)}` |"
                )
        out.append("")
    if "twitter" in docs:
        g = docs["twitter"]["gate"]
        out += [
            "### 3. Entropy gate on Twitter-GMNER dev (tagger of part 1)",
            "",
            f'AUROC of entity uncertainty for "this predicted entity is wrong": mean '
            f"{g['auroc']['mean']:.3f}, max {g['auroc']['max']:.3f}. Tagger F1 without gate "
            f"{pct(g['tagger_f1'])}.",
            "",
            "**Oracle F1 is an upper bound**: it assumes every delegated sample comes back "
            "exactly right (gold). *Entity oracle* only drops wrong delegated entities "
            "(no recall gain).",
            "",
            "| τ | aggregate | entities delegated % | samples delegated % | kept precision | "
            "oracle F1 (upper bound) | entity-oracle F1 |",
            "|---:|---|---:|---:|---:|---:|---:|",
        ]
        for agg in ("mean", "max"):
            for r in g["rows"][agg]:
                out.append(
                    f"| {r['tau']:.1f} | {agg} | {pct(r['entities_delegated'])} | "
                    f"{pct(r['samples_delegated'])} | {pct(r['kept_precision'])} | "
                    f"{pct(r['oracle_f1'])} | {pct(r['entity_oracle_f1'])} |"
                )
        out += [
            "",
            "Budget mode (threshold 0, most uncertain samples first):",
            "",
            "| budget | samples delegated % | entities delegated % | kept precision | "
            "oracle F1 (upper bound) |",
            "|---:|---:|---:|---:|---:|",
        ]
        for r in g["budget_rows"]:
            out.append(
                f"| {r['budget']:.1f} | {pct(r['samples_delegated'])} | "
                f"{pct(r['entities_delegated'])} | {pct(r['kept_precision'])} | "
                f"{pct(r['oracle_f1'])} |"
            )
        out.append("")
    if "speed_inference" in docs:
        out += render_speed(docs)
    return "\n".join(out)


def _rng(t: dict, key: str, fmt: str = ".1f") -> str:
    r = t[key]
    return f"{r['median']:{fmt}} ({r['min']:{fmt}}-{r['max']:{fmt}})"


def _secs(t: dict) -> str:
    return f"{t['median_s']:.2f} ({t['min_s']:.2f}-{t['max_s']:.2f})"


def render_speed(docs: dict) -> list[str]:
    """Section 4 from bench_tagger_speed.py's JSON files (interleaved, same process)."""
    d = docs["speed_inference"]
    threads = list(d["by_threads"])
    quality = docs.get("speed_quality", {}).get("quality", {})
    base = quality.get("torch", {}).get("dev_mner_f1")
    out = [
        "### 4. Speed (2-core CPU shared with other jobs; interleaved, same process)",
        "",
        f"Command: `{command_of(d)}`. {d['dev_sentences']} dev tweets timed per repetition, "
        f"{d['reps']} interleaved repetitions after one excluded warm-up; median (min-max) "
        f"sentences/s; torch threads fixed per column (ONNX Runtime gets the same count); "
        f"load average at the end {', '.join(f'{x:.1f}' for x in d['load_average_at_end'])}. "
        + (
            f"Dev MNER F1 and model size on all {docs['speed_quality']['dev_sentences']} dev "
            f"tweets: `{command_of(docs['speed_quality'])}`."
            if quality
            else ""
        ),
        "",
        "| encoder back-end | dev MNER F1 | vs fp32 | model MB | "
        + " | ".join(f"sent/s, {t} thread(s)" for t in threads)
        + " | "
        + " | ".join(f"x pipeline b32 / b1, {t}t" for t in threads)
        + " |",
        "|---|---:|---:|---:|" + "---:|" * (2 * len(threads)),
    ]
    names = list(d["by_threads"][threads[0]]["timing"])
    for name in names:
        mode = name[name.find("[") + 1 : -1] if name.startswith("bert_crf") else None
        q = quality.get(mode, {}) if mode else {}
        f1 = pct(q["dev_mner_f1"]) if q else "-"
        delta = f"{100 * (q['dev_mner_f1'] - base):+.2f}" if q and base is not None else "-"
        size = f"{q['model_bytes'] / 1e6:.0f}" if q else "-"
        row = [f"bert_crf + gate, {mode}" if mode else f"transformers {name}", f1, delta, size]
        for t in threads:
            row.append(_rng(d["by_threads"][t]["timing"][name], "sentences_per_s"))
        for t in threads:
            ratios = d["by_threads"][t]["ratios"]
            if mode:
                row.append(
                    " / ".join(
                        f"{ratios[f'{name} / pipeline batch {b}']:.2f}x"
                        for b in (32, 1)
                        if f"{name} / pipeline batch {b}" in ratios
                    )
                )
            else:
                row.append("-")
        out.append("| " + " | ".join(row) + " |")
    if "compile_seconds" in d:
        out.append("")
        out.append(
            "torch.compile (dynamic shapes) compile time: "
            + ", ".join(f"{s:.0f} s at {t} thread(s)" for t, s in d["compile_seconds"].items())
            + "."
        )
    if "speed_train" in docs:
        tr = docs["speed_train"]
        out += [
            "",
            f"Training, same harness: `{command_of(tr)}` ({tr['train_items']} tweets = "
            f"{tr['steps_per_rep']} optimizer steps of batch {tr['batch_size']} per "
            f"repetition, {tr['reps']} repetitions):",
            "",
            "| torch threads | optimizer steps/s |",
            "|---|---:|",
        ]
        for name, t in tr["timing"].items():
            out.append(f"| {name} | {_rng(t, 'steps_per_s', '.2f')} |")
    if "speed_stage" in docs:
        st = docs["speed_stage"]
        out += [
            "",
            f"The main job's predict stage (`refineg predict`, configs/twitter-gmner.toml, "
            f"{st.get('samples', '?')} dev tweets, load + tag + gate + write; fresh process "
            f"each, {st['reps']} alternating repetitions, OMP_NUM_THREADS={threads_of(st)}): "
            f"`{command_of(st)}`",
            "",
            "| code | wall s per run (process start included) | predict stage s | "
            "MNER F1 of predict.jsonl |",
            "|---|---:|---:|---:|",
        ]
        for name, t in st["timing"].items():
            out.append(
                f"| {name} | {t['median_s']:.1f} ({t['min_s']:.1f}-{t['max_s']:.1f}) | "
                f"{_secs(st['stage_seconds'][name])} | {pct(st['dev_mner_f1'][name])} |"
            )
        out.append("")
        out.append(
            f"Predict stage speed-up (median stage seconds, as summary.json records them): "
            f"**{st['speedup_stage']:.2f}x**; median wall time per process: "
            f"**{st['speedup_wall']:.2f}x**."
        )
    notes = docs.get("speed_notes")
    if notes:
        out += ["", notes.strip()]
    out.append("")
    return out
