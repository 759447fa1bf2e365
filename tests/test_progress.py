"""Progress output: one bar per stage, and ``--quiet`` silences the libraries too."""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path

import pytest

from refineg_core import progress
from refineg_core.pipeline.runner import run_stage
from refineg_core.types import Sample, SampleResult


@pytest.fixture
def bars_on(monkeypatch):
    monkeypatch.delenv("REFINEG_NO_PROGRESS", raising=False)


def test_a_bar_opened_inside_another_stays_hidden(bars_on):
    outer = progress.bar(desc="stage", total=2)
    assert not outer.disable
    inner = progress.bar(range(3), desc="per sample")
    assert inner.disable
    from_thread: list[bool] = []
    t = threading.Thread(target=lambda: from_thread.append(progress.bar(desc="t").disable))
    t.start()
    t.join()
    assert from_thread == [True]
    assert list(inner) == [0, 1, 2]  # hidden bars still iterate
    outer.close()
    outer.close()  # closing twice gives the screen back once
    after = progress.bar(desc="next stage")
    assert not after.disable
    after.close()
    assert not progress.bar(desc="again").disable


def test_a_stage_shows_one_bar_not_one_per_sample(bars_on, tmp_path: Path, capsys):
    items = [SampleResult(Sample(f"s{i}", ("a",), "a"), ()) for i in range(30)]

    def process(item: SampleResult) -> SampleResult:
        # what a plugin does per sample (e.g. embedding one query)
        for _ in progress.bar(range(2), desc="embed one query", unit="text"):
            pass
        return item

    run_stage("ground", items, process, tmp_path / "out.jsonl", workers=3)
    err = capsys.readouterr().err
    assert "ground" in err
    assert "embed one query" not in err


def test_quiet_env_hides_every_bar(monkeypatch):
    monkeypatch.setenv("REFINEG_NO_PROGRESS", "1")
    assert progress.bar(desc="x").disable


NOISE = """
import sys
if sys.argv[1] == "first":
    import transformers  # already imported when --quiet is handled
from refineg_core.cli import main
main([*sys.argv[2:], "plugins"])
from transformers.utils import logging
logging.get_logger("transformers.modeling_utils").warning("NOISE-WARNING")
for _ in logging.tqdm(range(3), desc="NOISE-BAR"):
    pass
from refineg_core.progress import bar
for _ in bar(range(3), desc="OUR-BAR"):
    pass
"""


@pytest.mark.parametrize("order", ["first", "later"])
def test_quiet_flag_silences_transformers_bars_and_logging(order, monkeypatch):
    monkeypatch.delenv("REFINEG_NO_PROGRESS", raising=False)
    for var in ("HF_HUB_DISABLE_PROGRESS_BARS", "TRANSFORMERS_VERBOSITY"):
        monkeypatch.delenv(var, raising=False)

    def stderr(*flags: str) -> str:
        run = subprocess.run(
            [sys.executable, "-c", NOISE, order, *flags],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert run.returncode == 0, run.stderr
        return run.stderr

    loud = stderr()
    assert "NOISE-WARNING" in loud and "NOISE-BAR" in loud and "OUR-BAR" in loud
    assert stderr("--quiet") == ""
