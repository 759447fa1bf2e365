"""Tagger speed that stays true on a shared machine: every comparison in one process.

Rules (benchmarks/RESULTS.md section 4): the sides being compared run
interleaved (A B C A B C ...), after one excluded warm-up pass each; the
report gives the median and min-max of the repetitions; torch's thread count
is fixed and printed for every number (the ONNX Runtime sessions get the same
count).

Parts:

- ``inference``: bert_crf + entropy gate with each encoder back-end (torch
  fp32 SDPA, torch fp32 eager attention, torch int8, ONNX Runtime fp32 and
  int8, optionally torch.compile) against transformers' token-classification
  pipeline on the same MiniLM encoder and texts at batch 32 and 1, at 1 and 2
  threads; plus each back-end's MNER F1 on all of dev and its model size.
- ``train``: training optimizer steps per second at 1 vs 2 threads (the
  tagger's own ``fit``, one epoch over a fixed slice per repetition).
- ``stage``: the main job's predict stage (``refineg predict`` with
  configs/twitter-gmner.toml on 1,500 dev tweets) with today's code (a git
  revision, exported to a temporary folder) against this tree, alternating
  fresh processes.

Results: ``benchmarks/results/tagger_speed_<part>.json``.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from _common import DATA, ROOT, machine
from refineg_bert_crf import inference
from refineg_bert_crf.tagger import BertCrfTagger
from refineg_bert_crf.training import span_f1
from refineg_entropy.gate import EntropyGate

from refineg_core.formats import load_dataset
from refineg_core.labels import LabelSet, tags_to_spans

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
MODES = ("torch", "bf16", "int8", "onnx", "onnx-int8")
TWITTER_TYPES = LabelSet(
    {"PER": "person", "LOC": "location", "ORG": "organisation", "OTHER": "other named entity"}
)


# --------------------------------------------------------------------------- harness
def interleave(cases: dict[str, Callable[[], object]], reps: int) -> dict[str, dict]:
    """Run each case once (warm-up, not counted), then ``reps`` rounds of A B C ...

    Returns seconds per case: median, min, max and every repetition.
    """
    for fn in cases.values():
        fn()
    seconds: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(reps):
        for name, fn in cases.items():
            t0 = time.perf_counter()
            fn()
            seconds[name].append(time.perf_counter() - t0)
    return {
        name: {"median_s": statistics.median(v), "min_s": min(v), "max_s": max(v), "runs_s": v}
        for name, v in seconds.items()
    }


def rate(timing: dict, items: int) -> dict:
    """Items per second at the median, and the range (fastest run = max rate)."""
    return {
        "median": items / timing["median_s"],
        "min": items / timing["max_s"],
        "max": items / timing["min_s"],
    }


def write(part: str, doc: dict, tag: str = "") -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    doc["command"] = "nice -n 5 python benchmarks/bench_tagger_speed.py " + " ".join(sys.argv[1:])
    doc["cpu_count"] = os.cpu_count()
    doc["load_average_at_end"] = os.getloadavg()
    doc["machine"] = machine()
    path = RESULTS / f"tagger_speed_{part}{tag}.json"
    path.write_text(json.dumps(doc, indent=2), encoding="utf-8")
    print(f"wrote {path}", flush=True)


def mner_f1(samples, predictions) -> float:
    gold = [{e.key for e in s.entities} for s in samples]
    pred = [set(tags_to_spans(p.tags).spans) for p in predictions]
    return span_f1(gold, pred)["f1"]


def model_bytes(tagger: BertCrfTagger, directory: Path) -> int:
    """Bytes of what the back-end runs: the .onnx file, or the encoder's state dict."""
    mode = tagger.inference_mode
    if mode in inference.ONNX_MODES:
        return sum(p.stat().st_size for p in (directory / inference.CACHE_DIR).glob(f"{mode}.*"))
    encoder = tagger.torch_encoder()
    encoder = encoder if mode == "torch" else inference.quantize_int8(encoder)
    buf = io.BytesIO()
    torch.save(encoder.state_dict(), buf)
    return buf.tell()


# --------------------------------------------------------------------------- parts
def part_quality(args) -> None:
    """Dev MNER F1 and model size of each back-end, on all of dev (not timed)."""
    directory = Path(args.tagger)
    dev = list(load_dataset(DATA / "twitter-gmner" / "dev.txt").samples)
    torch.set_num_threads(max(args.threads))
    quality = {}
    for mode in [m for m in MODES if m not in args.skip.split(",")]:
        tagger = BertCrfTagger.load(directory, {"inference": mode})
        started = time.perf_counter()
        preds = tagger.predict(dev)
        quality[mode] = {
            "dev_mner_f1": mner_f1(dev, preds),
            "model_bytes": model_bytes(tagger, directory),
            "full_dev_seconds_once": time.perf_counter() - started,
        }
        print(mode, quality[mode], flush=True)
    write(
        "quality",
        {"tagger": str(directory), "dev_sentences": len(dev), "quality": quality},
        args.tag,
    )


def part_inference(args) -> None:
    from refineg_bert_crf.model import quiet_transformers
    from transformers import AutoModelForTokenClassification, AutoTokenizer, pipeline

    directory = Path(args.tagger)
    dev_all = list(load_dataset(DATA / "twitter-gmner" / "dev.txt").samples)
    dev = dev_all[: args.dev_limit] if args.dev_limit else dev_all
    texts = [" ".join(s.tokens) for s in dev]
    doc: dict = {
        "tagger": str(directory),
        "dev_sentences": len(dev),
        "reps": args.reps,
        "by_threads": {},
    }
    modes = [m for m in MODES if m not in args.skip.split(",")]

    gate = EntropyGate(None, TWITTER_TYPES)

    def ours(t: BertCrfTagger) -> Callable[[], object]:
        return lambda: gate.decide(dev, t.predict(dev))

    for threads in args.threads:
        torch.set_num_threads(threads)  # before loading: ONNX sessions copy the count
        taggers = {m: BertCrfTagger.load(directory, {"inference": m}) for m in modes}
        cases = {f"bert_crf+gate [{m}]": ours(t) for m, t in taggers.items()}
        for precision in args.auto:  # autotuned (measured in the warm-up pass, or cached)
            auto = BertCrfTagger.load(directory, {"inference": "auto", "precision": precision})
            if auto.wants_dev_check():
                auto.check_precision(dev_all)
            cases[f"bert_crf+gate [auto, {precision}]"] = ours(auto)
        if args.run:  # the tagger and its gate as a user calls them (MLLM stages off)
            import refineg

            api = refineg.load(args.run, overrides=["stages.refine=false", "stages.ground=false"])
            cases["refineg.load(run).pipe"] = lambda a=api: list(a.pipe(texts))
            quality = doc.setdefault("api_quality", {})
            if "dev_mner_f1" not in quality:  # the F1 check of what the API returns
                quality.update(api_f1(api, dev_all, directory))
        if args.eager:
            eager = BertCrfTagger.load(directory, {"inference": "torch"})
            eager.runner = inference.torch_runner(inference.eager_copy(eager.torch_encoder()))
            cases["bert_crf+gate [torch, eager attention]"] = ours(eager)
        if args.compile:
            compiled = BertCrfTagger.load(directory, {"inference": "torch"})
            t0 = time.perf_counter()
            compiled.runner = inference.torch_runner(
                torch.compile(compiled.torch_encoder(), dynamic=True)
            )
            compiled.predict(dev)  # compiles for the shapes it meets
            doc.setdefault("compile_seconds", {})[threads] = time.perf_counter() - t0
            cases["bert_crf+gate [torch.compile]"] = ours(compiled)
        with quiet_transformers():
            hf = AutoModelForTokenClassification.from_pretrained(
                inference_encoder_path(), num_labels=2 * len(TWITTER_TYPES.types) + 1
            ).eval()
        tok = AutoTokenizer.from_pretrained(inference_encoder_path())
        for bs in args.pipeline_batches:
            pipe = pipeline(
                "token-classification", model=hf, tokenizer=tok, device=-1, batch_size=bs
            )
            cases[f"pipeline batch {bs}"] = (lambda p: lambda: p(texts))(pipe)
        print(
            f"threads={threads} (torch.get_num_threads()={torch.get_num_threads()}), "
            f"{len(cases)} cases x {args.reps} reps",
            flush=True,
        )
        timing = interleave(cases, args.reps)
        for name, t in timing.items():
            t["sentences_per_s"] = rate(t, len(dev))
            print(
                f"  {name:40s} {t['sentences_per_s']['median']:8.1f} sent/s "
                f"({t['sentences_per_s']['min']:.1f}-{t['sentences_per_s']['max']:.1f})",
                flush=True,
            )
        ratios = {}
        for name in cases:
            if name.startswith(("bert_crf", "refineg")):
                for bs in args.pipeline_batches:
                    ratios[f"{name} / pipeline batch {bs}"] = (
                        timing[f"pipeline batch {bs}"]["median_s"] / timing[name]["median_s"]
                    )
        doc["by_threads"][str(threads)] = {
            "threads": torch.get_num_threads(),
            "timing": timing,
            "ratios": ratios,
        }
    write("inference", doc, args.tag)


def api_f1(api, dev, directory: Path) -> dict:
    """MNER F1 of ``api.pipe`` on ``dev`` (gold from the data file) beside the tagger's
    own fp32 torch F1 on the same tweets: the fast path's loss, if any, as users see it."""
    import attrs

    # The data file's tokens (as Samples without their entities): the API's own
    # tokenizer splits some joined tweets differently, which would not be comparable.
    results = list(api.pipe([attrs.evolve(s, entities=()) for s in dev]))
    gold = [{e.key for e in s.entities} for s in dev]
    api_f1 = span_f1(gold, [{e.key for e in r.entities} for r in results])["f1"]
    fp32 = BertCrfTagger.load(directory, {"inference": "torch"})
    fp32_f1 = mner_f1(dev, fp32.predict(dev))
    tagger = api.worker.load_tagger()
    return {
        "dev_mner_f1": api_f1,
        "fp32_torch_dev_mner_f1": fp32_f1,
        "difference_points": round((api_f1 - fp32_f1) * 100, 3),
        "dev_sentences": len(dev),
        "api_inference": tagger.inference_report(),
    }


def inference_encoder_path() -> str:
    from refineg_bert_crf.tagger import default_encoder_path

    return default_encoder_path()


def plain_transformers_epoch(chunk, batch_size: int, num_labels: int) -> Callable[[], object]:
    """The issue's baseline: transformers' token-classification model, fp32, AdamW,
    one epoch over ``chunk`` in arrival order (first sub-word labelled), batch size
    as the tagger's."""
    from refineg_bert_crf.model import quiet_transformers
    from transformers import AutoModelForTokenClassification, AutoTokenizer

    path = inference_encoder_path()
    tok = AutoTokenizer.from_pretrained(path)
    with quiet_transformers():
        model = AutoModelForTokenClassification.from_pretrained(path, num_labels=num_labels)
    labels = {t: i for i, t in enumerate(sorted({e.type for s in chunk for e in s.entities}))}
    batches = []
    for k in range(0, len(chunk), batch_size):
        part = chunk[k : k + batch_size]
        enc = tok(
            [list(s.tokens) for s in part],
            is_split_into_words=True,
            truncation=True,
            max_length=128,
            padding=True,
            return_tensors="pt",
        )
        target = torch.full(enc["input_ids"].shape, -100)
        for b, s in enumerate(part):
            tags = [0] * len(s.tokens)
            for e in s.entities:
                for w in range(e.start, e.end):
                    tags[w] = 1 + labels.get(e.type, 0) % (num_labels - 1)
            seen = set()
            for j, w in enumerate(enc.word_ids(b)):
                if w is not None and w not in seen:
                    seen.add(w)
                    target[b, j] = tags[w]
        batches.append((enc, target))
    optimizer = torch.optim.AdamW(model.parameters(), lr=5e-5)

    def run():
        model.train()
        for enc, target in batches:
            loss = model(**enc, labels=target).loss
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

    return run


def part_train(args) -> None:
    """Training sentences/s: the tagger's ``fit`` (fp32 and bf16 autocast) against a
    plain fp32 transformers loop (the issue's baseline), one epoch over the same
    slice per repetition, interleaved in this process at each thread count."""
    train = list(load_dataset(DATA / "twitter-gmner" / "train.txt").samples)
    chunk = train[: args.train_items]
    taggers = {
        p: BertCrfTagger(
            BertCrfTagger.Options(
                epochs=1,
                batch_size=32,
                device="cpu",
                patience=None,
                inference="torch",
                train_precision=p,
            ),
            TWITTER_TYPES,
        )
        for p in args.train_precisions
    }
    doc: dict = {
        "train_items": len(chunk),
        "batch_size": 32,
        "reps": args.reps,
        "by_threads": {},
    }
    for threads in args.threads:
        torch.set_num_threads(threads)
        cases: dict[str, Callable[[], object]] = {
            f"bert_crf fit [{p}]": (lambda t=t: t.fit(chunk)) for p, t in taggers.items()
        }
        cases["plain transformers fp32 loop"] = plain_transformers_epoch(chunk, 32, 9)
        print(f"threads={torch.get_num_threads()}, {len(cases)} cases x {args.reps}", flush=True)
        timing = interleave(cases, args.reps)
        for name, t in timing.items():
            t["sentences_per_s"] = rate(t, len(chunk))
            print(
                f"  {name:34s} {t['sentences_per_s']['median']:7.1f} sent/s "
                f"({t['sentences_per_s']['min']:.1f}-{t['sentences_per_s']['max']:.1f})",
                flush=True,
            )
        base = timing["plain transformers fp32 loop"]["median_s"]
        doc["by_threads"][str(threads)] = {
            "threads": torch.get_num_threads(),
            "timing": timing,
            "ratios_vs_plain": {n: base / t["median_s"] for n, t in timing.items()},
        }
    write("train", doc, args.tag)


def part_stage(args) -> None:
    from refineg_core.formats.native import read_results

    dev = {s.id: s for s in load_dataset(DATA / "twitter-gmner" / "dev.txt").samples}
    with tempfile.TemporaryDirectory(prefix="refineg-today-") as old_tree:
        archive = subprocess.run(
            ["git", "-C", str(ROOT), "archive", args.baseline], check=True, capture_output=True
        ).stdout
        subprocess.run(["tar", "-x", "-C", old_tree], input=archive, check=True)
        trees = {f"today ({args.baseline})": Path(old_tree), "this tree": ROOT}
        env = {
            **os.environ,
            "OMP_NUM_THREADS": str(args.stage_threads),
            "REFINEG_NO_PROGRESS": "1",
            # only this project's hooks: other packages in a shared venv may be broken
            "REFINEG_HOOK_PLUGINS": os.environ.get("REFINEG_HOOK_PLUGINS", "report"),
        }
        outputs: dict[str, Path] = {}
        created: list[Path] = []
        stage_runs: dict[str, list[float]] = {}

        def run_in(name: str, tree: Path) -> Callable[[], object]:
            def run():
                run_dir = Path(tempfile.mkdtemp(prefix="stage-", dir=args.scratch))
                created.append(run_dir)
                pythonpath = os.pathsep.join([str(tree), str(tree / "plugins")])
                subprocess.run(
                    [
                        sys.executable,
                        "-m",
                        "refineg_core.cli",
                        "--quiet",
                        "predict",
                        "-c",
                        str(tree / "configs" / "twitter-gmner.toml"),  # each tree's own
                        "--run-dir",
                        str(run_dir),
                        "--set",
                        f"tagger.load_from={Path(args.tagger).resolve()}",
                        *(
                            ["--set", f"data.predict.limit={args.predict_limit}"]
                            if args.predict_limit
                            else []
                        ),
                    ],
                    check=True,
                    env={**env, "PYTHONPATH": pythonpath},
                    cwd=str(tree),
                )
                outputs[name] = run_dir
                summary = json.loads((run_dir / "summary.json").read_text())
                stage_runs.setdefault(name, []).append(summary["stages"]["predict"]["seconds"])

            return run

        timing = interleave({n: run_in(n, t) for n, t in trees.items()}, args.reps)
    for run_dir in created:
        if run_dir not in outputs.values():
            shutil.rmtree(run_dir, ignore_errors=True)
    doc: dict = {
        "threads": args.stage_threads,
        "reps": args.reps,
        "baseline": args.baseline,
        "timing": timing,
        "stage_seconds": {},
        "dev_mner_f1": {},
    }
    for name, run_dir in outputs.items():
        runs = stage_runs[name][1:]  # the first is the excluded warm-up
        doc["stage_seconds"][name] = {
            "median_s": statistics.median(runs),
            "min_s": min(runs),
            "max_s": max(runs),
            "runs_s": runs,
        }
        results = read_results(run_dir / "predict.jsonl")
        gold = [{e.key for e in dev[r.sample.id].entities} for r in results]
        pred = [{e.key for e in r.entities} for r in results]
        doc["dev_mner_f1"][name] = span_f1(gold, pred)["f1"]
        doc["samples"] = len(results)
    for run_dir in outputs.values():
        shutil.rmtree(run_dir, ignore_errors=True)
    names = list(trees)
    doc["speedup_wall"] = timing[names[0]]["median_s"] / timing[names[1]]["median_s"]
    doc["speedup_stage"] = (
        doc["stage_seconds"][names[0]]["median_s"] / doc["stage_seconds"][names[1]]["median_s"]
    )
    write("stage", doc, args.tag)
    print(json.dumps({k: v for k, v in doc.items() if k != "timing"}, indent=2))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("part", choices=["quality", "inference", "train", "stage"])
    ap.add_argument("--tagger", help="a saved bert_crf tagger directory (not for train)")
    ap.add_argument("--threads", default="1,2", type=lambda s: [int(x) for x in s.split(",")])
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--dev-limit", type=int, default=500, help="inference: timed dev tweets")
    ap.add_argument(
        "--pipeline-batches", default="32,1", type=lambda s: [int(x) for x in s.split(",")]
    )
    ap.add_argument("--skip", default="", help="inference: back-ends to leave out (comma list)")
    ap.add_argument("--eager", action="store_true", help="inference: also eager attention")
    ap.add_argument("--compile", action="store_true", help="inference: also torch.compile")
    ap.add_argument(
        "--auto",
        default="exact,fast",
        type=lambda s: [x for x in s.split(",") if x],
        help="inference: also inference='auto' at these precisions (comma list; '' for none)",
    )
    ap.add_argument(
        "--train-precisions",
        default="fp32,bf16",
        type=lambda s: [x for x in s.split(",") if x],
        help="train: the tagger's train_precision values to time",
    )
    ap.add_argument(
        "--tag", default="", help="suffix of the result file: tagger_speed_<part><tag>.json"
    )
    ap.add_argument("--run", default=None, help="inference: a run dir for the API case (pipe)")
    ap.add_argument("--train-items", type=int, default=128, help="train: tweets per repetition")
    ap.add_argument("--baseline", default="445bc6a", help="stage: git revision of 'today'")
    ap.add_argument("--stage-threads", type=int, default=2)
    ap.add_argument("--predict-limit", type=int, default=None, help="stage: first N tweets")
    ap.add_argument("--scratch", default=None, help="stage: where run folders go")
    args = ap.parse_args()
    os.environ.setdefault("REFINEG_NO_PROGRESS", "1")
    parts = {
        "quality": part_quality,
        "inference": part_inference,
        "train": part_train,
        "stage": part_stage,
    }
    parts[args.part](args)


if __name__ == "__main__":
    main()
