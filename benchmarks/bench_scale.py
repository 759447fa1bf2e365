"""Corpus scale: wall time and peak memory of ``refineg`` on 10k-200k posts (issue 10).

Synthetic corpora repeat the Twitter-GMNER dev split with new unique ids (the
same texts plus the id as a last ``#p0000042`` token, the same gold entities
and boxes), written once as native JSONL into a cache folder outside git.
Every post points at one of ``--images`` painted images (used in turn), so the
ground stage has pixels to send and, with the unique token, no request is
answered from the run's response cache. Each measured row is one fresh
``refineg`` subprocess (the CLI as a user runs it, so the script measures
whatever engine the installed code has); a poller sums the RSS of the process
and all its descendants every 50 ms and keeps the peak of that sum (pages
shared between processes, such as Ray's object store, count once per process
that maps them, so a multi-process engine's sum is an upper bound).

Rows (each for engine ``local``, and ``ray`` when the CLI lists ``--engine``):

- ``gazetteer``: ``refineg predict`` with the example gazetteer tagger (no
  weights: what it measures is the pipeline's own memory) at 10k/50k/200k;
- ``bert_crf``: ``refineg predict`` with a small saved ``bert_crf`` tagger
  (500 train tweets, 1 epoch: quality is irrelevant here) at 10k/50k;
- ``ground``: ``refineg run`` (gazetteer predict, then ground with ``k = 0``)
  against the fake OpenAI server on loopback, hosted by this script, at 10k/50k.

Both taggers are trained once and used through ``tagger.load_from``, so the
timed runs only predict. A size whose peak RSS, extrapolated linearly from
the two sizes below it, would pass ``--max-rss-gb`` is skipped and recorded
as skipped. Goal: peak RSS(200k) / peak RSS(10k) within 1.2 per engine/tagger.

    nice -n 5 python benchmarks/bench_scale.py              # 10k/50k/200k
    nice -n 5 python benchmarks/bench_scale.py --quick      # 2k/5k smoke run

Results: ``--out`` (default ``benchmarks/results/scale.json``) and a table on stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs
import psutil
import tomllib
from harness import ROOT, parser, start
from refineg_openai.testing import FakeOpenAIServer, ok
from refineg_stages.testing import paint_image, query_text

from refineg_core.formats import load_dataset
from refineg_core.formats.native import write_jsonl
from refineg_core.types import ImageRef, Sample

#: The Twitter-GMNER folder (set from ``--data`` in main).
TWITTER = Path("twitter-gmner")
REFINEG = Path(sys.executable).with_name("refineg")
#: Bump when the corpus layout changes, so a stale cache is never reused.
CORPUS_VERSION = 2
SKIP_RAY = "ray: skipped, engine not available in this build"


# --------------------------------------------------------------------------- corpora
def paint_images(folder: Path, dev: list[Sample], count: int) -> list[ImageRef]:
    """``count`` painted JPEGs at the most common declared image sizes of dev."""
    sizes = Counter(s.image.size for s in dev if s.image and s.image.size)
    common = [size for size, _ in sizes.most_common(count)] or [(480, 360)]
    refs = []
    for i in range(count):
        w, h = common[i % len(common)]
        path = folder / f"img{i:03d}.jpg"
        if not path.is_file():
            paint_image(path, (w, h), seed=i)
        # relative to the corpus file's folder: the jsonl reader resolves it there
        refs.append(ImageRef(f"img{i:03d}", Path(folder.name) / path.name, w, h))
    return refs


def repeated(dev: list[Sample], n: int, images: list[ImageRef]) -> Iterator[Sample]:
    """``n`` posts: dev over and over, each with a new id, one of ``images`` and its id
    as a last hashtag token, so no two posts send the same MLLM request (a repeated
    request would be answered by the run's response cache, which real posts never are)."""
    for i in range(n):
        s = dev[i % len(dev)]
        sid = f"p{i:07d}"
        yield attrs.evolve(
            s,
            id=sid,
            tokens=(*s.tokens, f"#{sid}"),
            text=f"{s.text} #{sid}",
            image=images[i % len(images)],
            meta={},
        )


def corpus(work: Path, n: int, n_images: int) -> Path:
    """The cached corpus of ``n`` posts (written once, atomically)."""
    folder = work / "corpora"
    path = folder / f"twitter-dev-x{n}-img{n_images}-v{CORPUS_VERSION}.jsonl"
    if not path.is_file():
        folder.mkdir(parents=True, exist_ok=True)
        dev = list(load_dataset(TWITTER / "dev.txt", "twitter-gmner").samples)
        images = paint_images(folder / "images", dev, n_images)
        started = time.perf_counter()
        write_jsonl(repeated(dev, n, images), path)
        mb = path.stat().st_size / 1e6
        print(f"wrote {path} ({mb:.0f} MB, {time.perf_counter() - started:.1f} s)", flush=True)
    return path


# --------------------------------------------------------------------------- configs
def _toml(value: object) -> str:
    """A TOML value: JSON strings, numbers and booleans are valid TOML."""
    return json.dumps(str(value) if isinstance(value, Path) else value)


def config_text(
    *,
    tagger: str,
    predict: Path | None,
    load_from: Path | None = None,
    tagger_options: dict | None = None,
    train_limit: int | None = None,
    base_url: str | None = None,
    concurrency: int = 16,
) -> str:
    """A config for one row: the shipped Twitter-GMNER labels, absolute paths."""
    shipped = tomllib.loads((ROOT / "configs" / "twitter-gmner.toml").read_text("utf-8"))
    lines = ['run_dir = "runs"', "[labels]"]
    lines += [f"{k} = {_toml(v)}" for k, v in shipped["labels"].items()]
    lines += ["[prompts]"] + [f"{k} = {_toml(v)}" for k, v in shipped["prompts"].items()]
    lines += ["[data.train]", f"path = {_toml(TWITTER / 'train.txt')}", 'format = "twitter-gmner"']
    if train_limit:
        lines.append(f"limit = {train_limit}")
    lines += ["[data.dev]", f"path = {_toml(TWITTER / 'dev.txt')}", 'format = "twitter-gmner"']
    if tagger == "bert_crf":
        lines.append("limit = 200")  # early stopping on 200 dev tweets: training stays short
    if predict is not None:
        lines += ["[data.predict]", f"path = {_toml(predict)}", 'format = "jsonl"']
    ground = base_url is not None
    lines += [
        "[stages]",
        f"train = {_toml(load_from is None)}",
        "refine = false",
        f"ground = {_toml(ground)}",
        "[tagger]",
        f'plugin = "{tagger}"',
    ]
    if load_from is not None:
        lines.append(f"load_from = {_toml(load_from)}")
    if tagger_options:
        lines += ["[tagger.options]"] + [f"{k} = {_toml(v)}" for k, v in tagger_options.items()]
    lines += ["[uncertainty]", 'plugin = "entropy"']
    if ground:
        lines += [
            "[backend]",
            'plugin = "openai"',
            "[backend.options]",
            f"base_url = {_toml(base_url)}",
            'model = "fake-model"',
            'box_frame = "qwen2.5-vl"',
            f"concurrency = {concurrency}",
            "timeout = 30",
            "[ground]",
            "k = 0",
        ]
    return "\n".join(lines) + "\n"


def write_config(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


# --------------------------------------------------------------------------- measuring
class PeakRss:
    """Polls a process and all its descendants; ``peak`` is the max of the summed RSS."""

    def __init__(self, pid: int, interval: float = 0.05) -> None:
        self.root = psutil.Process(pid)
        self.interval = interval
        self.peak = 0
        self.peak_main = 0
        self.peak_procs = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _poll(self) -> None:
        while not self._stop.is_set():
            try:
                procs = [self.root, *self.root.children(recursive=True)]
            except psutil.NoSuchProcess:
                return
            total = 0
            for proc in procs:
                try:
                    rss = proc.memory_info().rss
                except psutil.Error:  # gone between listing and reading
                    continue
                total += rss
                if proc is self.root:
                    self.peak_main = max(self.peak_main, rss)
            self.peak = max(self.peak, total)
            self.peak_procs = max(self.peak_procs, len(procs))
            self._stop.wait(self.interval)


def child_env(threads: int) -> dict[str, str]:
    env = dict(os.environ)
    for key in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        env[key] = str(threads)
    env["REFINEG_NO_PROGRESS"] = "1"
    return env


def torch_threads(env: dict[str, str]) -> int:
    """What torch.get_num_threads() says in a child started like the measured ones."""
    out = subprocess.run(
        [sys.executable, "-c", "import torch; print(torch.get_num_threads())"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    return int(out.stdout.strip())


def engines_offered(command: str) -> bool:
    """Whether ``refineg COMMAND --help`` lists ``--engine`` (the Ray Data engine)."""
    out = subprocess.run([str(REFINEG), command, "--help"], capture_output=True, text=True)
    return "--engine" in out.stdout


def run_cli(args: list[str], run_dir: Path, env: dict[str, str]) -> dict:
    """One fresh ``refineg`` process: wall seconds, peak RSS of its tree, its summary."""
    if run_dir.exists():
        shutil.rmtree(run_dir)
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    log = run_dir.with_suffix(".log")
    cmd = [str(REFINEG), "--quiet", *args, "--run-dir", str(run_dir)]
    load_start = os.getloadavg()
    started = time.perf_counter()
    with log.open("w", encoding="utf-8") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env)
        with PeakRss(proc.pid) as rss:
            code = proc.wait()
    wall = time.perf_counter() - started
    row = {
        "command": " ".join(["refineg", *cmd[1:]]),
        "exit_code": code,
        "wall_s": round(wall, 2),
        "peak_rss_mb": round(rss.peak / 2**20, 1),
        "peak_rss_main_mb": round(rss.peak_main / 2**20, 1),
        "max_processes": rss.peak_procs,
        "load_start": [round(x, 2) for x in load_start],
        "load_end": [round(x, 2) for x in os.getloadavg()],
        "log": str(log),
    }
    summary = run_dir / "summary.json"
    if code != 0 or not summary.is_file():
        tail = log.read_text(encoding="utf-8", errors="replace")[-2000:]
        row["error"] = tail
        print(f"FAILED (exit {code}): {' '.join(cmd)}\n{tail}", flush=True)
        return row
    doc = json.loads(summary.read_text(encoding="utf-8"))
    stages = doc.get("stages", {})
    row["stage_s"] = {k: v.get("seconds") for k, v in stages.items() if isinstance(v, dict)}
    row["summary_s"] = doc.get("seconds")
    if "predict" in stages:
        row["samples"] = stages["predict"].get("samples")
    if "ground" in stages:
        ground = stages["ground"]
        row["ground"] = {
            k: ground.get(k) for k in ("samples", "calls", "failed", "skipped") if k in ground
        }
        row["ground"]["backend_calls"] = (ground.get("backend") or {}).get("calls")
    if "final" in doc:
        row["final"] = {k: doc["final"].get(k) for k in ("samples", "entities", "with_boxes")}
    return row


# --------------------------------------------------------------------------- taggers
#: The options each tagger is trained with; the rows that load it give the same ones
#: (a saved tagger trained with other options than the config's is refused).
TAGGER_OPTIONS: dict[str, dict[str, Any]] = {
    "gazetteer": {},
    "bert_crf": {"epochs": 1, "batch_size": 32},
}


def train_taggers(work: Path, env: dict[str, str], args) -> dict[str, Path]:
    """The taggers the parts use (gazetteer always, bert_crf for its part), trained once
    into ``work/taggers`` (reused when already there)."""
    out = {}
    needed = {"gazetteer"} | ({"bert_crf"} if "bert_crf" in args.parts else set())
    for name, options in TAGGER_OPTIONS.items():
        if name not in needed:
            continue
        run_dir = work / "taggers" / name
        tagger_dir = run_dir / "tagger"
        if not (tagger_dir / "refineg-trained.json").is_file():
            limit = args.bert_train if name == "bert_crf" else None
            cfg = write_config(
                work / "configs" / f"train-{name}.toml",
                config_text(tagger=name, predict=None, tagger_options=options, train_limit=limit),
            )
            print(f"training {name} ...", flush=True)
            row = run_cli(["train", "-c", str(cfg)], run_dir, env)
            if row["exit_code"] != 0:
                raise SystemExit(f"training {name} failed; see {row['log']}")
            print(f"  trained {name} in {row['wall_s']} s", flush=True)
        out[name] = tagger_dir
    return out


# --------------------------------------------------------------------------- the fake server
def responder_for(dev: list[Sample]):
    """Answers a grounding query with one fixed box per gold entity of the dev text it
    repeats. Not ``gold_responder``: a post here carries one of the painted images, of
    another size than the one its gold boxes were drawn on, so gold boxes could fall
    outside it; a fixed small box is valid on every image."""
    by_text = {s.text: s for s in dev}

    def respond(req):
        s = by_text.get(query_text(req.text).rsplit(" #p", 1)[0])
        items = [
            {"entity": e.text, "type": e.type, "boxes": [[10, 10, 60, 60]]}
            for e in (s.entities if s else ())
        ]
        return ok(json.dumps(items))

    return respond


# --------------------------------------------------------------------------- rows
@attrs.frozen
class Row:
    kind: str  # gazetteer | bert_crf | ground
    size: int
    engine: str

    @property
    def name(self) -> str:
        return f"{self.kind}-{self.size}-{self.engine}"


def plan_rows(args, ray: dict[str, bool]) -> list[Row]:
    sizes = {"gazetteer": args.sizes, "bert_crf": args.bert_sizes, "ground": args.ground_sizes}
    rows = []
    for kind in args.parts:
        engines = ["local"] + (["ray"] if ray[command_of(kind)] else [])
        rows += [Row(kind, n, e) for e in engines for n in sorted(sizes[kind])]
    return rows


def command_of(kind: str) -> str:
    """The CLI command a row kind runs: ground needs the whole ``run``."""
    return "run" if kind == "ground" else "predict"


def row_args(row: Row, cfg: Path) -> list[str]:
    args = [command_of(row.kind), "-c", str(cfg)]
    if row.engine != "local":
        args += ["--engine", row.engine]
    return args


def projected_too_big(row: Row, done: dict[str, list[dict]], limit_mb: float) -> float | None:
    """The peak RSS at ``row.size`` extrapolated from the two largest smaller sizes of the
    same kind and engine, when it passes ``limit_mb`` (else None)."""
    peaks: dict[int, float] = {}  # size -> the highest peak of its repetitions
    for r in done.get(f"{row.kind}-{row.engine}", []):
        if r.get("exit_code") == 0 and r["size"] < row.size:
            peaks[r["size"]] = max(peaks.get(r["size"], 0.0), r["peak_rss_mb"])
    points = sorted(peaks.items())
    if len(points) < 2:  # one point cannot tell fixed cost (a Ray runtime) from growth
        return None
    (n0, m0), (n1, m1) = points[-2], points[-1]
    slope = max(0.0, (m1 - m0) / (n1 - n0))
    guess = m1 + slope * (row.size - n1)
    return guess if guess > limit_mb else None


def measure(args) -> dict:
    work = Path(args.work_dir)
    env = child_env(args.threads)
    threads = torch_threads(env)
    print(
        f"OMP_NUM_THREADS={args.threads}: torch.get_num_threads()={threads} in the children",
        flush=True,
    )
    ray = {cmd: engines_offered(cmd) for cmd in ("predict", "run")}
    for command, offered in ray.items():
        if not offered:
            print(f"refineg {command}: {SKIP_RAY}", flush=True)
    taggers = train_taggers(work, env, args)
    dev = list(load_dataset(TWITTER / "dev.txt", "twitter-gmner").samples)
    rows = plan_rows(args, ray)
    doc: dict = {
        "threads": args.threads,
        "torch_threads": threads,
        "memory_total_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "ray": {cmd: "available" if offered else SKIP_RAY for cmd, offered in ray.items()},
        "repeats": args.reps,
        "fake_server": {"latency_s": args.latency, "concurrency": args.concurrency, "k": 0},
        "images": args.images,
        "bert_train_tweets": args.bert_train,
        "rows": [],
    }
    with FakeOpenAIServer(responder_for(dev), latency=args.latency) as server:
        configs = {}
        for row in rows:
            tagger = "bert_crf" if row.kind == "bert_crf" else "gazetteer"
            predict = corpus(work, row.size, args.images)
            text = config_text(
                tagger=tagger,
                predict=predict,
                load_from=taggers[tagger],
                tagger_options=TAGGER_OPTIONS[tagger],
                base_url=server.base_url if row.kind == "ground" else None,
                concurrency=args.concurrency,
            )
            configs[row] = write_config(work / "configs" / f"{row.name}.toml", text)
        # warm-up (excluded): one small run per kind, so a tagger's first-use work
        # (e.g. an ONNX export into its folder) is not billed to the first size
        warm = corpus(work, args.warmup, args.images)
        for kind in dict.fromkeys(r.kind for r in rows):
            tagger = "bert_crf" if kind == "bert_crf" else "gazetteer"
            text = config_text(
                tagger=tagger,
                predict=warm,
                load_from=taggers[tagger],
                tagger_options=TAGGER_OPTIONS[tagger],
                base_url=server.base_url if kind == "ground" else None,
                concurrency=args.concurrency,
            )
            cfg = write_config(work / "configs" / f"warmup-{kind}.toml", text)
            res = run_cli(row_args(Row(kind, args.warmup, "local"), cfg), work / "runs" / "w", env)
            print(f"warm-up {kind}: {res['wall_s']} s, exit {res['exit_code']}", flush=True)

        done: dict[str, list[dict]] = {}
        reps: dict[Row, list[dict]] = {row: [] for row in rows}
        skipped: dict[Row, str] = {}
        limit_mb = args.max_rss_gb * 1024
        for rep in range(args.reps):  # interleaved: every row once per round
            for row in rows:
                if row in skipped:
                    continue
                # a size measured in an earlier round is measured again, never skipped
                guess = None if reps[row] else projected_too_big(row, done, limit_mb)
                if guess is not None:
                    skipped[row] = (
                        f"skipped: peak RSS projected at {guess / 1024:.1f} GB from the "
                        f"smaller sizes, above --max-rss-gb {args.max_rss_gb}"
                    )
                    print(f"{row.name}: {skipped[row]}", flush=True)
                    continue
                server.reset()
                res = run_cli(row_args(row, configs[row]), work / "runs" / row.name, env)
                res["size"] = row.size
                if row.kind == "ground":
                    res["server_chat_requests"] = len(server.chat_requests)
                    res["server_max_in_flight"] = server.max_in_flight
                reps[row].append(res)
                done.setdefault(f"{row.kind}-{row.engine}", []).append(res)
                print(
                    f"[rep {rep + 1}] {row.name}: {res['wall_s']} s, peak RSS "
                    f"{res['peak_rss_mb']:.0f} MB, stages {res.get('stage_s')}, "
                    f"load {res['load_start'][0]}->{res['load_end'][0]}",
                    flush=True,
                )
    for row in rows:
        entry = {"kind": row.kind, "size": row.size, "engine": row.engine}
        if row in skipped and not reps[row]:
            entry["skipped"] = skipped[row]
        ok_runs = [r for r in reps[row] if r.get("exit_code") == 0]
        if ok_runs:
            walls = [r["wall_s"] for r in ok_runs]
            peaks = [r["peak_rss_mb"] for r in ok_runs]
            entry.update(
                wall_s_median=round(statistics.median(walls), 2),
                wall_s_range=[min(walls), max(walls)],
                peak_rss_mb_median=round(statistics.median(peaks), 1),
                peak_rss_mb_range=[min(peaks), max(peaks)],
            )
        entry["runs"] = reps[row]
        doc["rows"].append(entry)
    for kind in args.parts:
        if not ray[command_of(kind)]:
            doc["rows"].append({"kind": kind, "engine": "ray", "skipped": SKIP_RAY})
    doc["rss_ratios"] = rss_ratios(doc["rows"])
    doc["load_at_end"] = [round(x, 2) for x in os.getloadavg()]
    return doc


def rss_ratios(rows: list[dict]) -> dict[str, dict]:
    """Peak RSS at the largest measured size over the smallest, per kind and engine."""
    out = {}
    for key in dict.fromkeys((r["kind"], r["engine"]) for r in rows):
        measured = sorted(
            (r["size"], r["peak_rss_mb_median"])
            for r in rows
            if (r["kind"], r["engine"]) == key and "peak_rss_mb_median" in r
        )
        if len(measured) >= 2:
            (n0, m0), (n1, m1) = measured[0], measured[-1]
            out[f"{key[0]}/{key[1]}"] = {
                "sizes": [n0, n1],
                "peak_rss_ratio": round(m1 / m0, 2),
                "flat_within_20pct": m1 / m0 <= 1.2,
            }
    return out


def print_table(doc: dict) -> None:
    print(
        f"\n{'kind':10s} {'engine':6s} {'posts':>7s} {'wall s':>8s} {'stage s':>24s} "
        f"{'peak RSS MB':>12s} {'load start->end':>16s}"
    )
    for r in doc["rows"]:
        if "wall_s_median" not in r:
            why = r.get("skipped", "failed")
            print(f"{r['kind']:10s} {r['engine']:6s} {r.get('size', ''):>7} {why}")
            continue
        last = r["runs"][-1]
        stages = ", ".join(f"{k} {v:.1f}" for k, v in (last.get("stage_s") or {}).items() if v)
        print(
            f"{r['kind']:10s} {r['engine']:6s} {r['size']:>7d} {r['wall_s_median']:>8.1f} "
            f"{stages:>24s} {r['peak_rss_mb_median']:>12.0f} "
            f"{last['load_start'][0]:>7.2f}->{last['load_end'][0]:<7.2f}"
        )
    for key, ratio in doc["rss_ratios"].items():
        print(
            f"peak RSS {key}: {ratio['sizes'][1]} / {ratio['sizes'][0]} posts = "
            f"{ratio['peak_rss_ratio']} (flat within 20%: {ratio['flat_within_20pct']})"
        )


def _sizes(text: str) -> list[int]:
    return [int(float(x.replace("k", "e3"))) for x in text.split(",") if x]


def main() -> None:
    ap = parser(__doc__, out="scale.json", threads=1, reps=1)
    ap.add_argument("--sizes", type=_sizes, default=_sizes("10k,50k,200k"), help="gazetteer")
    ap.add_argument("--bert-sizes", type=_sizes, default=_sizes("10k,50k"))
    ap.add_argument("--ground-sizes", type=_sizes, default=_sizes("10k,50k"))
    ap.add_argument("--quick", action="store_true", help="smoke run: 2k and 5k posts everywhere")
    ap.add_argument(
        "--parts",
        type=lambda t: t.split(","),
        default=["gazetteer", "bert_crf", "ground"],
        help="comma list of gazetteer,bert_crf,ground",
    )
    ap.add_argument(
        "--work-dir",
        default=None,
        help="corpora, taggers, runs (kept; default: a temporary folder removed at the end, "
        "as the corpora and runs reach GBs)",
    )
    # --reps: interleaved rounds over all rows; --threads: OMP_NUM_THREADS of the children
    ap.add_argument("--repeats", dest="reps", type=int, default=argparse.SUPPRESS, help="= --reps")
    ap.add_argument(
        "--images",
        type=int,
        default=300,
        help="distinct painted images, used in turn (more than the openai backend's "
        "256-entry encoded-image cache, so every request encodes its image as with real posts)",
    )
    ap.add_argument("--bert-train", type=int, default=500, help="train tweets for bert_crf")
    ap.add_argument("--latency", type=float, default=0.05, help="fake server latency (s)")
    ap.add_argument("--concurrency", type=int, default=16, help="backend concurrency")
    ap.add_argument("--warmup", type=int, default=300, help="posts of the excluded warm-up run")
    ap.add_argument("--max-rss-gb", type=float, default=8.0, help="skip sizes projected above")
    args = ap.parse_args()
    session = start(args)
    global TWITTER
    TWITTER = args.data / "twitter-gmner"
    if args.quick:
        args.sizes = args.bert_sizes = args.ground_sizes = [2000, 5000]
    unknown = set(args.parts) - {"gazetteer", "bert_crf", "ground"}
    if unknown:
        ap.error(f"unknown parts {sorted(unknown)}")
    if not (TWITTER / "dev.txt").is_file():
        raise SystemExit(f"needs the Twitter-GMNER data at {TWITTER} (REFINEG_DATA overrides)")
    temporary = args.work_dir is None
    if temporary:
        args.work_dir = tempfile.mkdtemp(prefix="refineg-scale-")
    try:
        doc = measure(args)
    finally:
        if temporary:
            shutil.rmtree(args.work_dir, ignore_errors=True)
    print_table(doc)
    session.write(doc)


if __name__ == "__main__":
    main()
