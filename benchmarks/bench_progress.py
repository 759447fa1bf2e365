"""What a user sees on stderr: lines written by ``refineg run`` on 30 tweets.

The issue this answers: 275 stderr lines for 30 tweets, one nested progress
bar per sample (the selector embedding each query inside the ground stage),
and ``--quiet`` leaving transformers' bars. A real run (bert_crf tagger on 40
real train tweets, entropy gate, ``openai`` backend against the loopback fake
server answering with gold, ``clip_similarity`` selector with MiniLM) goes
through the CLI twice, without and with ``--quiet``; the script counts stderr
lines and names the progress bars that appeared.

    nice -n 10 python benchmarks/bench_progress.py
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

from harness import Session, parser, start
from refineg_formats.twitter import read_twitter_gmner, write_twitter_gmner
from refineg_openai.testing import FakeOpenAIServer, gold_responder
from refineg_stages.testing import paint_image

BAR = re.compile(r"^\s*(.+?):\s+\d+%\|")


def config_text(root: Path, base_url: str) -> str:
    return textwrap.dedent(f'''
        run_dir = "{root}/run"
        [labels]
        PER = "person"
        LOC = "location"
        ORG = "organisation"
        OTHER = "other named entity"
        [data.train]
        path = "{root}/train.txt"
        images_dir = "{root}/images"
        [data.predict]
        path = "{root}/dev.txt"
        images_dir = "{root}/images"
        [tagger.options]
        epochs = 1
        batch_size = 16
        max_length = 64
        [uncertainty.options]
        threshold = 0.0
        [backend]
        plugin = "openai"
        [backend.options]
        base_url = "{base_url}"
        model = "fake-model"
        retries = 0
        [selector]
        plugin = "clip_similarity"
        [selector.options]
        image_weight = 0.0
        [ground]
        k = 2
    ''')


def bars(stderr: str) -> list[str]:
    """The descriptions of the tqdm bars drawn ("desc:  40%|####  | 12/30 [...]")."""
    lines = stderr.replace("\r", "\n").split("\n")
    return sorted({m.group(1) for x in lines if (m := BAR.match(x))})


def main() -> None:
    ap = parser(__doc__, out="progress.json", reps=1)
    ap.add_argument("--n", type=int, default=30, help="tweets to run (dev, with entities)")
    ap.add_argument("--train", type=int, default=40)
    args = ap.parse_args()
    session = start(args)
    # The tweets, painted images and two run folders: ~180 MB, removed at the end.
    with tempfile.TemporaryDirectory(prefix="bench-progress-") as tmp:
        measure(args, Path(tmp), session)


def measure(args: argparse.Namespace, root: Path, session: Session) -> None:
    tw = args.data / "twitter-gmner"
    train = read_twitter_gmner(tw / "train.txt").samples[: args.train]
    dev = [s for s in read_twitter_gmner(tw / "dev.txt").samples if s.entities][: args.n]
    write_twitter_gmner(train, root / "train.txt")
    write_twitter_gmner(dev, root / "dev.txt")
    for i, s in enumerate([*train, *dev]):
        paint_image(root / "images" / f"{s.image.image_id}.jpg", s.image.size or (400, 300), i)
    env = {k: v for k, v in os.environ.items() if k != "REFINEG_NO_PROGRESS"}
    rows = []
    with FakeOpenAIServer(gold_responder(dev)) as server:
        cfg = root / "bench.toml"
        cfg.write_text(config_text(root, server.base_url), encoding="utf-8")
        for flags in ([], ["--quiet"]):
            cmd = [
                sys.executable,
                "-m",
                "refineg_core.cli",
                *flags,
                "run",
                "-c",
                str(cfg),
                "--run-dir",
                str(root / f"run{'-quiet' if flags else ''}"),
            ]
            run = subprocess.run(cmd, capture_output=True, text=True, env=env)
            row = {
                "flags": flags,
                "exit": run.returncode,
                "tweets": len(dev),
                "stderr_lines": run.stderr.count("\n"),
                "bars": bars(run.stderr),
            }
            print(row, flush=True)
            rows.append(row)
    session.write({"train_tweets": len(train), "rows": rows})


if __name__ == "__main__":
    main()
