"""What a user sees on stderr: lines written by ``refineg run`` on 30 tweets.

The issue this answers: 275 stderr lines for 30 tweets, one nested progress
bar per sample (the selector embedding each query inside the ground stage),
and ``--quiet`` leaving transformers' bars. A real run (bert_crf tagger on 40
real train tweets, entropy gate, ``openai`` backend against the loopback fake
server answering with gold, ``clip_similarity`` selector with MiniLM) goes
through the CLI twice, without and with ``--quiet``; the script counts stderr
lines and names the progress bars that appeared.

    nice -n 10 .venv/bin/python benchmarks/bench_progress.py
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

from _common import DATA
from refineg_formats.twitter import read_twitter_gmner, write_twitter_gmner
from refineg_openai.testing import FakeOpenAIServer, ok

from refineg_core.testing.stages import paint_image, query_text

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


def oracle(gold_by_text):
    def respond(request):
        gold = gold_by_text.get(query_text(request.text))
        if gold is None:
            return ok("[]")
        if "Candidate entities" in request.text:
            return ok(json.dumps([{"name": e.text, "type": e.type} for e in gold.entities]))
        return ok(
            json.dumps(
                [
                    {
                        "entity": e.text,
                        "type": e.type,
                        "boxes": [[round(v) for v in b.as_list()] for b in e.box_list],
                    }
                    for e in gold.entities
                ]
            )
        )

    return respond


def bars(stderr: str) -> list[str]:
    """The descriptions of the tqdm bars drawn ("desc:  40%|####  | 12/30 [...]")."""
    lines = stderr.replace("\r", "\n").split("\n")
    return sorted({m.group(1) for x in lines if (m := BAR.match(x))})


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=30, help="tweets to run (dev, with entities)")
    ap.add_argument("--train", type=int, default=40)
    args = ap.parse_args()
    # The tweets, painted images and two run folders: ~180 MB, removed at the end.
    with tempfile.TemporaryDirectory(prefix="bench-progress-") as tmp:
        measure(args, Path(tmp))


def measure(args: argparse.Namespace, root: Path) -> None:
    tw = DATA / "twitter-gmner"
    train = read_twitter_gmner(tw / "train.txt").samples[: args.train]
    dev = [s for s in read_twitter_gmner(tw / "dev.txt").samples if s.entities][: args.n]
    write_twitter_gmner(train, root / "train.txt")
    write_twitter_gmner(dev, root / "dev.txt")
    for i, s in enumerate([*train, *dev]):
        paint_image(root / "images" / f"{s.image.image_id}.jpg", s.image.size or (400, 300), i)
    env = {k: v for k, v in os.environ.items() if k != "REFINEG_NO_PROGRESS"}
    with FakeOpenAIServer() as server:
        server.responder = oracle({s.text: s for s in dev})
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
            print(
                json.dumps(
                    {
                        "flags": flags,
                        "exit": run.returncode,
                        "tweets": len(dev),
                        "stderr_lines": run.stderr.count("\n"),
                        "bars": bars(run.stderr),
                    }
                ),
                flush=True,
            )


if __name__ == "__main__":
    main()
