"""What the benchmarks share, built on the installed ``refineg`` package only.

The harness (flags, timing, the result writer) is ``harness.py``; this module
keeps the data helpers and ``machine()``, which older scripts still call.

Benchmarks run as scripts (``python benchmarks/bench_x.py``), so this folder is
on ``sys.path`` and ``import _common`` works; nothing puts the repository or
``tests`` on the path. Generic helpers (the fake OpenAI server, painted images,
tagger-like predictions) come from ``refineg_core.testing``.
"""

from __future__ import annotations

import os
from pathlib import Path

from harness import DATA, ROOT  # noqa: F401  (re-exported: scripts import them from here)
from refineg_bert_crf import machine as _machine
from refineg_stages.testing import first_samples

from refineg_core.config import load_config
from refineg_core.labels import LabelSet
from refineg_core.types import Sample


def twitter_labels() -> LabelSet:
    """The label set (with descriptions) of the shipped Twitter-GMNER config."""
    return load_config(ROOT / "configs" / "twitter-gmner.toml", check_plugins=False).label_set


def real_samples(
    twitter_dir: Path, n: int, *, min_entities: int = 1, skip: int = 0
) -> list[Sample]:
    """The first ``n`` dev tweets with at least ``min_entities`` entities (after ``skip``)."""
    return first_samples(twitter_dir / "dev.txt", n, min_entities=min_entities, skip=skip)


def machine(threads: int | None = None) -> dict:
    """Where a result came from: CPU model and speed flags, cores, the thread count
    the numbers ran at, library versions, and the load average when it was taken
    (the machine is shared: a number is read with the load beside it). Every
    benchmark writes this into its result file; numbers from different CPUs are
    not compared with each other."""
    doc = _machine.describe(threads)
    try:
        doc["loadavg_1_5_15"] = list(os.getloadavg())
    except OSError:
        doc["loadavg_1_5_15"] = None
    return doc
