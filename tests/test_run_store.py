"""The run store owns the run directory: one writer at a time, whole files only.

Two real ``refineg`` processes on one run directory (the second is refused at
once, naming the holder), a holder killed with SIGKILL (its lock dies with
it), an empty predict file (an empty run, every later command works), ``plan``
on an untrained config (it trains) and a failed ``plan`` (the directory stays
as it was), and the one atomic-write helper (a writer that raises leaves the
old file and no temp file). The real gazetteer tagger, entropy gate and
``openai`` backend over HTTP to a loopback server run on real tweets.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from refineg_openai.testing import FakeOpenAIServer, ok

from refineg_core.errors import RefinegError
from refineg_core.formats.native import read_results, write_jsonl
from refineg_core.testing import run_cli
from tests.stagedata import gazetteer_config, gazetteer_data_dir, write_config

pytest.importorskip("refineg_gazetteer", reason="pip install -e examples/refineg-gazetteer")

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return gazetteer_data_dir(tmp_path_factory)


def slow_config(root: Path, base_url: str, run_dir: Path) -> str:
    """A run whose MLLM stages wait for the server: one call at a time, and a timeout
    longer than the server holds an answer (so a loaded machine changes nothing)."""
    text = gazetteer_config(root, base_url, run_dir)
    text = text.replace("concurrency = 4", "concurrency = 1")
    return text.replace("timeout = 10", "timeout = 150")


def refineg(*args: str, raw: bool = False, **env: str) -> subprocess.Popen:
    """A real ``refineg`` process on this checkout (``raw``: output as bytes, its
    carriage returns kept)."""
    path = os.pathsep.join(
        [
            str(ROOT),
            str(ROOT / "plugins"),
            str(ROOT / "examples" / "refineg-gazetteer" / "src"),
            os.environ.get("PYTHONPATH", ""),  # a plugin being developed (entry points)
        ]
    )
    return subprocess.Popen(
        [sys.executable, "-m", "refineg_core.cli", *args],
        cwd=str(ROOT),
        env={**os.environ, "PYTHONPATH": path, "REFINEG_NO_PROGRESS": "1", **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=not raw,
    )


def wait_for(condition, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting")
        time.sleep(0.05)


def listing(run: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(run)): p.read_bytes()
        for p in sorted(run.rglob("*"))
        if p.is_file() and p.name != "refineg.lock"
    }


def held_until(gate: threading.Event):
    """A server whose answers wait for ``gate``: the run asking it holds the directory."""

    def respond(request):
        gate.wait(120)
        return ok("[]")

    return respond


def test_second_run_is_refused_at_once_naming_the_holder_and_the_first_finishes(data, tmp_path):
    gate = threading.Event()
    with FakeOpenAIServer(held_until(gate)) as server:
        run = tmp_path / "run"
        cfg = write_config(tmp_path, slow_config(data, server.base_url, run))
        first = refineg("run", "-c", str(cfg))
        try:
            wait_for(lambda: len(server.chat_requests) >= 1 or first.poll() is not None)
            assert first.poll() is None, first.communicate()
            # status only reads: it neither blocks nor fails while the run works
            status = run_cli(["status", "-c", str(cfg)])
            assert status.code == 0, status.stderr
            assert f"running (pid {first.pid})" in status.stdout, status.stdout
            as_json = json.loads(run_cli(["status", "-c", str(cfg), "--json"]).stdout)
            assert as_json["ground"]["state"] == "running"

            started = time.monotonic()
            second = refineg("run", "-c", str(cfg))
            _, err = second.communicate(timeout=120)
            refused_after = time.monotonic() - started
            calls_while_refused = len(server.chat_requests)
        finally:
            gate.set()
            _, err1 = first.communicate(timeout=300)
        assert second.returncode == 2, err
        errors = [ln for ln in err.splitlines() if ln.startswith("refineg: error")]
        assert len(errors) == 1, err
        assert f"pid {first.pid}" in errors[0] and "refineg run -c" in errors[0]
        assert str(run) in errors[0]
        assert "train:" not in err and "predict" not in err  # refused before any work
        assert refused_after < 60  # the time a cold interpreter takes, not the first run's
        assert first.returncode == 0, err1
        calls = len(server.chat_requests)
        assert calls >= calls_while_refused
        # every sample once per stage file, and the run is whole
        for stage in ("predict", "refine", "ground", "final"):
            ids = [r.id for r in read_results(run / f"{stage}.jsonl")]
            assert len(ids) == len(set(ids)) == 30, stage

        status = run_cli(["status", "-c", str(cfg)])
        assert status.code == 0 and status.stdout.count("fresh") == 4, status.stdout
        third = run_cli(["run", "-c", str(cfg)])
        assert third.code == 0, third.stderr
        assert len(server.chat_requests) == calls  # nothing asked twice
        for stage in ("train", "predict", "refine", "ground"):
            assert f"{stage}: reusing" in third.stderr, third.stderr


def test_a_holder_killed_with_sigkill_does_not_block_the_next_run(data, tmp_path):
    gate = threading.Event()
    with FakeOpenAIServer(held_until(gate)) as server:
        run = tmp_path / "run"
        cfg = write_config(tmp_path, slow_config(data, server.base_url, run))
        victim = refineg("run", "-c", str(cfg))
        wait_for(lambda: len(server.chat_requests) >= 1 or victim.poll() is not None)
        assert victim.poll() is None, victim.communicate()
        os.kill(victim.pid, signal.SIGKILL)
        victim.communicate(timeout=60)
        gate.set()
        assert (run / "refineg.lock").exists()  # the file stays; its lock died with the process

        status = run_cli(["status", "-c", str(cfg)])
        assert status.code == 0 and "running" not in status.stdout, status.stdout
        rerun = run_cli(["run", "-c", str(cfg)])
        assert rerun.code == 0, rerun.stderr
        ids = [r.id for r in read_results(run / "final.jsonl")]
        assert len(ids) == len(set(ids)) == 30
        status = run_cli(["status", "-c", str(cfg)])
        assert status.stdout.count("fresh") == 4, status.stdout


HOLD_AND_FORK = """
import os, sys, time
from refineg_core.runstore import RunStore
store = RunStore(sys.argv[1]).open()
child = os.fork()
if child == 0:  # a data-loader-like worker that outlives its parent
    time.sleep(120)
    os._exit(0)
print(child, flush=True)
time.sleep(120)
"""


def test_a_forked_child_of_a_killed_holder_does_not_keep_the_lock(tmp_path):
    from refineg_core.runstore import RunStore

    run = tmp_path / "run"
    path = os.pathsep.join([str(ROOT), str(ROOT / "plugins")])
    parent = subprocess.Popen(
        [sys.executable, "-c", HOLD_AND_FORK, str(run)],
        env={**os.environ, "PYTHONPATH": path},
        stdout=subprocess.PIPE,
        text=True,
    )
    child = int(parent.stdout.readline())
    try:
        assert RunStore(run).holder().pid == parent.pid
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait(timeout=60)
        os.kill(child, 0)  # the child still runs, with its copy of the descriptor
        assert RunStore(run).holder() is None
        store = RunStore(run).open()
        assert store.locked
        store.close()
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(child, signal.SIGKILL)


def test_the_lock_is_one_small_platform_function_and_its_posix_path_works(tmp_path):
    """The core takes its lock through ``_try_lock`` alone, whose platform module
    (fcntl here, msvcrt on Windows) is imported under a platform check, so the core
    imports on Windows; on POSIX an exclusive lock refuses a second one and a probe,
    and is free again when its descriptor closes."""
    import ast

    from refineg_core import runstore

    for path in (ROOT / "refineg_core").rglob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        guarded = {
            id(node)
            for branch in ast.walk(tree)
            if isinstance(branch, ast.If) and "sys.platform" in ast.unparse(branch.test)
            for node in ast.walk(branch)
        }
        for node in ast.walk(tree):
            names = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else [node.module]
                if isinstance(node, ast.ImportFrom)
                else []
            )
            for name in names:
                if name in ("fcntl", "msvcrt", "termios", "pwd", "grp", "resource"):
                    assert id(node) in guarded, f"{path}:{node.lineno}: import {name} unguarded"
    lock = tmp_path / "refineg.lock"
    lock.write_text("", encoding="utf-8")
    first = os.open(lock, os.O_RDWR)
    second = os.open(lock, os.O_RDWR)
    try:
        assert runstore._try_lock(first)
        assert not runstore._try_lock(second)
        assert not runstore._try_lock(second, probe=True)
        os.close(first)
        first = None
        assert runstore._try_lock(second, probe=True)  # free: a probe's shared lock
        os.close(second)
        second = os.open(lock, os.O_RDWR)
        assert runstore._try_lock(second)
    finally:
        for fd in (first, second):
            if fd is not None:
                os.close(fd)


def test_a_writing_pipeline_of_the_python_api_takes_the_lock(data, tmp_path):
    from refineg_core.config import load_config
    from refineg_core.pipeline.orchestrator import Pipeline

    cfg = write_config(tmp_path, gazetteer_config(data, "http://127.0.0.1:9/v1", tmp_path / "run"))
    holder = Pipeline(load_config(cfg))
    other = Pipeline(load_config(cfg))
    with holder, other:
        holder.lock_run_dir()
        with pytest.raises(RefinegError) as refused:
            other.train()  # the API's writers lock at their first write
        assert refused.value.exit_code == 2
        assert f"pid {os.getpid()}" in str(refused.value)
        assert not (tmp_path / "run" / "tagger").exists()
    # closed: the lock is released and the next writer proceeds
    with Pipeline(load_config(cfg)) as again:
        again.train()
    assert (tmp_path / "run" / "tagger" / "refineg-trained.json").exists()


def test_a_lock_file_that_cannot_be_opened_is_one_located_error(data, tmp_path):
    run = tmp_path / "run"
    (run / "refineg.lock").mkdir(parents=True)  # a folder where the lock file goes
    cfg = write_config(tmp_path, gazetteer_config(data, "http://127.0.0.1:9/v1", run))
    result = run_cli(["run", "-c", str(cfg)])
    assert result.code == 2, result.stderr
    errors = [ln for ln in result.stderr.splitlines() if ln.startswith("refineg: error")]
    assert len(errors) == 1 and str(run / "refineg.lock") in errors[0], result.stderr
    assert "train:" not in result.stderr  # before any work


@pytest.mark.parametrize("content", ["", "\n   \n\n\t\n"], ids=["empty", "blank-only"])
def test_an_empty_predict_file_is_an_empty_run_and_every_later_command_works(
    data, tmp_path, content
):
    empty = tmp_path / "empty.txt"
    empty.write_text(content, encoding="utf-8")
    run = tmp_path / "run"
    text = gazetteer_config(data, "http://127.0.0.1:9/v1", run).replace(
        f'path = "{data}/dev/dev.txt"', f'path = "{empty}"\n        format = "twitter-gmner"'
    )
    cfg = write_config(tmp_path, text)
    first = run_cli(["run", "-c", str(cfg)])
    assert first.code == 0, first.stderr
    assert "holds no samples" in first.stderr  # said, not silent
    for stage in ("predict", "refine", "ground", "final"):
        assert (run / f"{stage}.jsonl").read_text(encoding="utf-8") == "", stage
    assert json.loads((run / "summary.json").read_text())["final"]["samples"] == 0
    status = run_cli(["status", "-c", str(cfg)])
    assert status.code == 0 and status.stdout.count("fresh") == 4, status.stdout
    again = run_cli(["run", "-c", str(cfg)])
    assert again.code == 0, again.stderr
    assert "predict: reusing" in again.stderr
    for command in ("predict", "refine", "ground"):
        result = run_cli([command, "-c", str(cfg)])
        assert result.code == 0, (command, result.stderr)


def test_a_status_of_a_deleted_stage_file_is_not_fresh(data, tmp_path):
    run = tmp_path / "run"
    with FakeOpenAIServer() as server:
        cfg = write_config(tmp_path, gazetteer_config(data, server.base_url, run))
        assert run_cli(["run", "-c", str(cfg)]).code == 0
        status = run_cli(["status", "-c", str(cfg)])
        assert status.stdout.count("fresh") == 4, status.stdout
        (run / "refine.jsonl").unlink()
        status = json.loads(run_cli(["status", "-c", str(cfg), "--json"]).stdout)
        assert status["predict"]["state"] == "fresh"
        assert status["refine"]["state"] == "stale"
        assert "refine.jsonl is missing" in status["refine"]["reasons"][0]
        assert status["ground"]["state"] == "stale"
        rerun = run_cli(["run", "-c", str(cfg)])
        assert rerun.code == 0, rerun.stderr
        status = run_cli(["status", "-c", str(cfg)])
        assert status.stdout.count("fresh") == 4, status.stdout


def test_plan_trains_an_untrained_tagger(data, tmp_path):
    run = tmp_path / "run"
    with FakeOpenAIServer() as server:
        cfg = write_config(tmp_path, gazetteer_config(data, server.base_url, run))
        result = run_cli(["plan", "-c", str(cfg), "--json"])
        assert result.code == 0, result.stderr
        assert server.chat_requests == []  # a plan asks nothing
    plan = json.loads(result.stdout)
    assert plan["samples"] == 30
    assert (run / "tagger" / "refineg-trained.json").exists()
    assert not (run / "refineg.lock").read_text().strip()  # released: no holder recorded


def test_a_failed_plan_leaves_the_run_directory_as_it_was(data, tmp_path):
    run = tmp_path / "run"
    no_backend = gazetteer_config(data, "http://127.0.0.1:9/v1", run).split("[backend]")[0]
    no_backend = no_backend.replace('refine = "auto"', "refine = false").replace(
        'ground = "auto"', "ground = false"
    )
    cfg = write_config(tmp_path, no_backend)
    # progress bars on: the error still starts its own line
    failed = refineg("plan", "-c", str(cfg), raw=True, REFINEG_NO_PROGRESS="0")
    err = failed.communicate(timeout=300)[1].decode("utf-8")
    assert failed.returncode == 2, err
    assert any(ln.startswith("refineg: error") and "backend" in ln for ln in err.split("\n")), repr(
        err
    )
    assert not run.exists()  # nothing left behind in a directory the plan created

    assert run_cli(["train", "-c", str(cfg)]).code == 0
    before = listing(run)
    again = run_cli(["plan", "-c", str(cfg)])
    assert again.code == 2, again.stderr
    assert listing(run) == before  # no stages/predict.json, no config.json rewritten


def test_an_error_after_a_progress_bar_starts_its_own_line(data, tmp_path):
    from refineg_openai.testing import FakeOpenAIServer, error

    run = tmp_path / "run"
    # the server lists its models (preflight passes) and fails every call: the
    # required stage fails after predict drew its bar
    with FakeOpenAIServer(lambda request: error(500)) as server:
        text = gazetteer_config(data, server.base_url, run, refine=True)
        cfg = write_config(tmp_path, text)
        failed = refineg("run", "-c", str(cfg), raw=True, REFINEG_NO_PROGRESS="0")
        err = failed.communicate(timeout=300)[1].decode("utf-8")
    assert failed.returncode == 3, err
    assert "\rpredict:" in err  # the bar was drawn (bars on, stderr a pipe)
    errors = [ln for ln in err.split("\n") if "refineg: error" in ln]
    assert len(errors) == 1 and errors[0].startswith("refineg: error"), repr(err)


def test_atomic_write_leaves_the_old_file_and_no_temp_file_when_the_writer_raises(tmp_path):
    from refineg_core.runstore import atomic_write

    target = tmp_path / "out.json"
    target.write_text("old", encoding="utf-8")
    with pytest.raises(RuntimeError), atomic_write(target) as fh:
        fh.write("half of the new")
        raise RuntimeError("killed mid-way")
    assert target.read_text(encoding="utf-8") == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.json"]

    fresh = tmp_path / "new.bin"
    with pytest.raises(RuntimeError), atomic_write(fresh, binary=True) as fh:
        fh.write(b"x")
        raise RuntimeError("killed")
    assert not fresh.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["out.json"]

    with atomic_write(target) as fh:
        fh.write("new")
    assert target.read_text(encoding="utf-8") == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.json"]
    assert oct(target.stat().st_mode & 0o777) == oct(0o666 & ~_umask())


def test_stage_files_written_whole_keep_the_old_file_when_the_input_raises(tmp_path):
    from refineg_core.types import Sample

    path = tmp_path / "predict.jsonl"
    write_jsonl([Sample("a", ("x",), "x")], path)
    before = path.read_bytes()

    def broken():
        yield Sample("b", ("y",), "y")
        raise RuntimeError("reader died")

    with pytest.raises(RuntimeError):
        write_jsonl(broken(), path)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["predict.jsonl"]


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask
