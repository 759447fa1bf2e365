"""The Ray engine leaves nothing behind and keeps quiet: after a kill -9 of the driver
no process of its local Ray survives (the dashboard and runtime-env agents
included); ``--quiet`` hides Ray's INFO lines and deprecation warnings; the
printed summary says which engine ran."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

pytest.importorskip("ray", reason="pip install 'refineg[ray]'")
psutil = pytest.importorskip("psutil")
pytest.importorskip("refineg_gazetteer", reason="pip install -e examples/refineg-gazetteer")


def _config(tmp_path: Path, twitter: Path, predict: int) -> Path:
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
        limit = {predict}
        [stages]
        refine = false
        ground = false
        [tagger]
        plugin = "gazetteer"
        [engine]
        kind = "ray"
        chunk_size = 20
        options = {{num_cpus = 0.25}}
        '''),
        encoding="utf-8",
    )
    return cfg


def _env() -> dict[str, str]:
    path = [str(ROOT), str(ROOT / "plugins"), os.environ.get("PYTHONPATH", "")]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(path), "REFINEG_NO_PROGRESS": ""}


def test_quiet_ray_run_prints_no_ray_chatter_and_names_the_engine(twitter_dir, tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "refineg_core.cli",
            "run",
            "--quiet",
            "-c",
            str(_config(tmp_path, twitter_dir, 40)),
        ],
        capture_output=True,
        text=True,
        env=_env(),
        cwd=str(ROOT),
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stderr.splitlines()
    chatter = [ln for ln in lines if " INFO " in ln or "deprecated" in ln.lower()]
    assert not chatter, chatter
    assert not [ln for ln in lines if "Token authentication" in ln or "Progress bars" in ln]
    # Ray's C++ core: "has constructor arguments in the object store and max_restarts > 0"
    assert not [ln for ln in lines if "max_restarts" in ln or "core_worker" in ln], lines
    assert "engine: ray" in proc.stderr


def test_local_engine_summary_names_it_too(twitter_dir, tmp_path):
    cfg = _config(tmp_path, twitter_dir, 10)
    proc = subprocess.run(
        [sys.executable, "-m", "refineg_core.cli", "run", "--engine", "local", "-c", str(cfg)],
        capture_output=True,
        text=True,
        env=_env(),
        cwd=str(ROOT),
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "engine: local" in proc.stderr


def _tree(pid: int) -> list:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.Error:
        return []


def test_kill_9_of_the_driver_leaves_no_ray_process(twitter_dir, tmp_path):
    cfg = _config(tmp_path, twitter_dir, 2000)
    driver = subprocess.Popen(
        [sys.executable, "-m", "refineg_core.cli", "run", "--quiet", "-c", str(cfg)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=_env(),
        cwd=str(ROOT),
    )
    seen: dict[int, object] = {}
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            assert driver.poll() is None, "the run ended before Ray was up"
            for proc in _tree(driver.pid):
                seen.setdefault(proc.pid, proc)
            names = set()
            for proc in seen.values():
                try:
                    names.add(proc.name())
                except psutil.Error:
                    continue
            if {"ray::DashboardAgent", "ray::RuntimeEnvAgent"} <= names and any(
                n.startswith("ray::MapWorker") or n == "ray::IDLE" for n in names
            ):
                break
            time.sleep(0.5)
        else:
            pytest.fail(f"Ray's agents never showed up: {sorted(names)}")
        time.sleep(1.0)
        for proc in _tree(driver.pid):
            seen.setdefault(proc.pid, proc)
        driver.send_signal(signal.SIGKILL)
        driver.wait(timeout=30)
        survivors: list[str] = []
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            survivors = []
            for proc in seen.values():
                try:
                    if proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE:
                        survivors.append(f"{proc.pid} {proc.name()}")
                except psutil.Error:
                    continue
            if not survivors:
                break
            time.sleep(1.0)
        assert not survivors, survivors
    finally:
        if driver.poll() is None:
            driver.kill()
        for proc in seen.values():
            with contextlib.suppress(psutil.Error):
                proc.kill()


def test_the_reaper_ends_the_session_and_spares_other_children(tmp_path):
    """No Ray needed: a driver with one child of its 'session' (named by the session
    directory) and one unrelated child; after kill -9 only the first is ended."""
    session = str(tmp_path / "session_test")
    script = textwrap.dedent(f"""
        import subprocess, sys, time
        from refineg_ray import reaper
        sleeper = [sys.executable, "-c", "import time; time.sleep(300)"]
        ours = subprocess.Popen([*sleeper, "--session-dir={session}"])
        theirs = subprocess.Popen(sleeper)
        reaper.start({session!r})
        print(ours.pid, theirs.pid, flush=True)
        time.sleep(300)
    """)
    driver = subprocess.Popen(
        [sys.executable, "-c", script], stdout=subprocess.PIPE, env=_env(), cwd=str(ROOT)
    )
    ours, theirs = (psutil.Process(int(p)) for p in driver.stdout.readline().split())
    try:
        time.sleep(2.0)  # the reaper takes a first look
        driver.send_signal(signal.SIGKILL)
        driver.wait(timeout=30)
        ours.wait(timeout=30)  # ended by the reaper
        time.sleep(1.0)
        assert theirs.is_running() and theirs.status() != psutil.STATUS_ZOMBIE
    finally:
        for proc in (ours, theirs):
            with contextlib.suppress(psutil.Error):
                proc.kill()
