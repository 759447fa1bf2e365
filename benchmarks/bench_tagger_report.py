"""Render the Tagger section of RESULTS.md from the bench_tagger JSON files."""

from __future__ import annotations


def pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}"


def render(docs: dict) -> str:
    out: list[str] = []
    if "twitter" in docs:
        d = docs["twitter"]
        out += [
            "### 1. Twitter-GMNER, full train split -> dev (MNER F1)",
            "",
            f"Command: `{d['command']}` (torch threads: {d['threads']}).",
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
                + f". Command: `{n['command']}`.")
        out.append("")
    if "curve" in docs:
        d = docs["curve"]
        out += [
            "### 1b. Low-resource curve on Twitter-GMNER dev (MNER F1, mean ± sd over seeds)",
            "",
            f"Command: `{d['command']}`. Each seed draws its own random subset of train; fixed "
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
                f"| {pct(s['max_f1'])} |")
        for key in ("twitter", "twitter_noshape"):
            if key in docs:
                t = docs[key]
                out.append(f"| {t['train_sentences']} (full)\\* | {t['epochs']} | "
                           f"{'on' if t.get('shape_features', True) else 'off'} | 1 | "
                           f"{pct(t['dev']['f1'])} | – | – | – |")
        if "twitter" in docs:
            out += ["", "\\* full-split rows come from part 1: evaluated on all 1,500 dev "
                    "tweets (the small sizes on the first 500), best epoch chosen on dev."]
        out.append("")
    variants = docs.get("ccks_variants", [])
    if variants:
        d0 = variants[0]
        removed = list({r["fold"]: r["synthetic_removed_for_leakage"]
                        for r in d0["runs"]}.values())
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
                synth = (f"{d['synthetic_size']}" + (" (with entities)" if
                         d.get("synthetic_with_entities_only") else "")
                         if s["setting"] != "gold" else "0")
                out.append(
                    f"| {s['setting']} | {synth} | {r0['epochs']} | {r0['train_sentences']} "
                    f"| {pct(s['mean_f1'])} ± {pct(s['std_f1'])} "
                    f"| {pct(p['precision'])} / {pct(p['recall'])} / {pct(p['micro_f1'])} "
                    f"| `{d['command']}` |")
        out.append("")
    if "twitter" in docs:
        g = docs["twitter"]["gate"]
        out += [
            "### 3. Entropy gate on Twitter-GMNER dev (tagger of part 1)",
            "",
            f"AUROC of entity uncertainty for \"this predicted entity is wrong\": mean "
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
                out.append(f"| {r['tau']:.1f} | {agg} | {pct(r['entities_delegated'])} | "
                           f"{pct(r['samples_delegated'])} | {pct(r['kept_precision'])} | "
                           f"{pct(r['oracle_f1'])} | {pct(r['entity_oracle_f1'])} |")
        out += ["", "Budget mode (threshold 0, most uncertain samples first):", "",
                "| budget | samples delegated % | entities delegated % | kept precision | "
                "oracle F1 (upper bound) |", "|---:|---:|---:|---:|---:|"]
        for r in g["budget_rows"]:
            out.append(f"| {r['budget']:.1f} | {pct(r['samples_delegated'])} | "
                       f"{pct(r['entities_delegated'])} | {pct(r['kept_precision'])} | "
                       f"{pct(r['oracle_f1'])} |")
        out.append("")
    if "speed" in docs:
        d = docs["speed"]
        c = d["components"]
        out += [
            "### 4. Speed and memory (2-core CPU, shared with other jobs)",
            "",
            f"Command: `{d['command']}` (torch threads: {d['threads']}), "
            f"{d['dev_sentences']} dev tweets, same process.",
            "",
            "| inference | sentences/s |", "|---|---:|",
            f"| bert_crf (batch {d['bert_crf']['batch_size']}, Viterbi + marginals) | "
            f"{d['bert_crf']['sentences_per_s']:.1f} |",
            f"| bert_crf + entropy gate | {d['bert_crf_plus_gate']['sentences_per_s']:.1f} |",
        ]
        for k in sorted(x for x in d if x.startswith("pipeline_batch")):
            out.append(f"| transformers token-classification pipeline ({k[9:]}) | "
                       f"{d[k]['sentences_per_s']:.1f} |")
        out += [""]
        for k in sorted(x for x in d if x.startswith("ratio_vs_")):
            out.append(f"- Ratio bert_crf+gate / pipeline ({k[18:]}): **{d[k]:.2f}x**")
        out += [
            f"- Encoder forward {c['encoder_forward_s']:.2f} s, CRF Viterbi + marginals "
            f"{c['crf_viterbi_marginals_s']:.2f} s, entropy gate {c['entropy_gate_s']:.3f} s: "
            f"**CRF + entropy = {pct(c['crf_plus_entropy_share_of_encoder'])}% of encoder time**.",
            f"- Peak RSS of the speed process: {d['peak_rss_mb']:.0f} MB.",
            "",
        ]
    return "\n".join(out)
