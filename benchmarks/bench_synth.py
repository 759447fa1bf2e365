"""Synthesizer yield with the real local SmolLM2-135M on CCKS gold seeds.

Runs the whole Stage-1 synthesis path (``llm`` synthesizer -> ``local_text``
backend -> ``run_synthesis`` validation, de-duplication, tagging, writing) on
the first N gold seeds that have at least one entity, and prints the yield
report: requests, generated, kept, drop reasons, seconds per seed. A 135M model
writes poor data; the point is that the path runs on a real model and that the
validation accounts for every candidate.

    nice -n 10 python benchmarks/bench_synth.py --fresh   # 20 seeds, 5+5 asked, 256 tokens
    nice -n 10 python benchmarks/bench_synth.py --seeds 500 --all-seeds  # the full gold set
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import torch
from harness import ROOT, parser, start
from refineg_llm_synth.synthesizer import LLMSynthesizer
from refineg_stages.synth import SynthSettings, run_synthesis

from refineg_core.formats import load_dataset, read_jsonl
from refineg_core.labels import LabelSet
from refineg_core.registry import create

os.environ.setdefault("REFINEG_NO_PROGRESS", "1")

CCKS_LABELS = LabelSet(
    {
        "vehicle": "a specific land vehicle model or class (e.g. PUMA, Leopard 2, M1 Abrams)",
        "aircraft": "a specific aircraft model or class (e.g. Boeing E-3, Tornado, F-35)",
        "vessel": "a specific ship, submarine or ship class (e.g. USS Nimitz, Type 45)",
        "weapon": "a specific weapon model or system (e.g. AK-47, Patriot, MG3)",
        "location": "a specific named place (e.g. Baltic Sea, Ramstein Air Base)",
        "other": "another specific named military entity: a unit, organisation or exercise",
    }
)


def main() -> None:
    ap = parser(
        __doc__ + "\n--threads: torch threads (2 threads on a busy 2-core machine ran 5x slower).",
        out="synth.json",
        threads=1,
        reps=1,
    )
    ap.add_argument("--seeds", type=int, default=20)
    ap.add_argument("--all-seeds", action="store_true", help="also seeds without entities")
    ap.add_argument("--n-rewrites", type=int, default=5)
    ap.add_argument("--n-new", type=int, default=5)
    ap.add_argument("--max-tokens", type=int, default=256)
    ap.add_argument("--retries", type=int, default=0, help="extra attempts per failed seed")
    ap.add_argument("--backend-options", default="{}", help="JSON options of local_text")
    ap.add_argument(
        "--work",
        type=Path,
        default=ROOT / "runs" / "bench-synth",
        help="the synthesis output folder (resumed unless --fresh; default runs/bench-synth)",
    )
    ap.add_argument("--fresh", action="store_true", help="delete --work first (else resume)")
    args = ap.parse_args()
    session = start(args)
    torch.set_num_threads(session.threads)
    if args.fresh and args.work.exists():
        shutil.rmtree(args.work)

    gold = load_dataset(args.data / "ccks-aug" / "gold-500.conll").samples
    seeds = [s for s in gold if args.all_seeds or s.entities][: args.seeds]
    t0 = time.perf_counter()
    backend = create("backend", "local_text", json.loads(args.backend_options))
    if reason := backend.check_available():
        raise SystemExit(f"local_text backend unavailable: {reason}")
    synth = LLMSynthesizer(
        LLMSynthesizer.Options(
            n_rewrites=args.n_rewrites, n_new=args.n_new, max_tokens=args.max_tokens
        ),
        CCKS_LABELS,
    )
    load_s = time.perf_counter() - t0
    report = run_synthesis(
        seeds, synth, backend, CCKS_LABELS, SynthSettings(retries=args.retries), args.work
    )
    out = {"backend": backend.describe(), "backend_setup_s": round(load_s, 1), **report.as_dict()}
    kept = read_jsonl(args.work / "synthetic.jsonl").samples
    for s in kept[:5]:
        print("kept:", s.text, [(e.text, e.type) for e in s.entities])
    out["kept_examples"] = [
        {"text": s.text, "entities": [[e.text, e.type] for e in s.entities]} for s in kept[:5]
    ]
    session.write(out)


if __name__ == "__main__":
    main()
