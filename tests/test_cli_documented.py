"""Every documented command runs: each subcommand's ``--help``, every flag combination
of ``config show``/``status``/``plugins`` that README's "Command line" block lists,
and ``--debug``/``--quiet`` before or after any subcommand, as real subprocesses
(the way a user meets them: a fresh interpreter, real argv, real exit codes)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "twitter-gmner.toml"
SUBCOMMANDS = (
    "plugins",
    "config",
    "synth",
    "train",
    "predict",
    "refine",
    "ground",
    "run",
    "status",
    "plan",
    "eval",
    "report",
)


def refineg(*args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    """``refineg ARGS`` in a fresh interpreter that imports this checkout."""
    path = os.pathsep.join([str(ROOT), str(ROOT / "plugins"), os.environ.get("PYTHONPATH", "")])
    env = {**os.environ, "REFINEG_NO_PROGRESS": "1", "PYTHONPATH": path}
    return subprocess.run(
        [sys.executable, "-m", "refineg_core.cli", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=str(ROOT),
        timeout=timeout,
    )


@pytest.fixture
def twitter_config(twitter_dir) -> Path:
    """The shipped config (its data paths point at the shared real data)."""
    return CONFIG


def test_every_subcommand_lists_itself_in_the_top_level_help():
    proc = refineg("--help")
    assert proc.returncode == 0, proc.stderr
    for name in SUBCOMMANDS:
        assert f"    {name}" in proc.stdout, name


@pytest.mark.parametrize("command", [*SUBCOMMANDS, "config show"])
def test_every_subcommand_has_help_with_the_global_flags(command):
    proc = refineg(*command.split(), "--help")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("usage: refineg " + command), proc.stdout[:200]
    if command != "config":  # a group: its actions carry the flags
        assert "--debug" in proc.stdout and "--quiet" in proc.stdout, command


def test_plugins_table_and_json():
    table = refineg("plugins")
    assert table.returncode == 0, table.stderr
    assert table.stdout.splitlines()[0].split() == ["group", "name", "distribution", "version"]
    assert "bert_crf" in table.stdout
    as_json = refineg("plugins", "--json")
    assert as_json.returncode == 0, as_json.stderr
    rows = json.loads(as_json.stdout)
    assert {"group", "name", "distribution", "version"} <= set(rows[0])
    assert any(r["name"] == "openai" for r in rows)


def test_config_show_toml_and_json(twitter_config):
    toml_text = refineg("config", "show", "-c", str(twitter_config))
    assert toml_text.returncode == 0, toml_text.stderr
    parsed = tomllib.loads(toml_text.stdout)  # what it prints is TOML
    assert parsed["uncertainty"]["plugin"] == "span"
    as_json = refineg("config", "show", "-c", str(twitter_config), "--json")
    assert as_json.returncode == 0, as_json.stderr
    data = json.loads(as_json.stdout)
    assert data["tagger"]["plugin"] == "bert_crf" and data["labels"]["PER"]


def test_config_show_defaults_lists_every_option(twitter_config):
    proc = refineg("config", "show", "-c", str(twitter_config), "--defaults")
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr and "unexpected" not in proc.stderr
    parsed = tomllib.loads(proc.stdout)
    # the selected plugins' own options, with their defaults filled in
    assert parsed["backend"]["options"]["retries"] == 3  # not in the file: a default
    assert parsed["tagger"]["options"]["epochs"] == 2
    assert "# " in proc.stdout  # descriptions as comments
    as_json = refineg("config", "show", "-c", str(twitter_config), "--defaults", "--json")
    assert as_json.returncode == 0, as_json.stderr
    data = json.loads(as_json.stdout)
    assert data["backend"]["options"]["retries"] == 3
    assert data["uncertainty"]["options"]["threshold"] == 0.4


def test_config_show_defaults_lists_the_engines_own_options(twitter_config):
    """[engine] options are the engine plugin's, shown with its defaults like a slot's;
    an old key appears there, moved, and no longer in [engine] itself."""
    sets = ["--set", 'engine.kind="ray"', "--set", "engine.num_cpus=0.5"]
    proc = refineg("config", "show", "-c", str(twitter_config), "--defaults", *sets)
    assert proc.returncode == 0, proc.stderr
    assert "engine.num_cpus is deprecated" in proc.stderr
    engine = tomllib.loads(proc.stdout)["engine"]
    assert engine["options"] == {
        "tagger_actors": 1,
        "mllm_actors": 1,
        "num_cpus": 0.5,
        "num_gpus": 0.0,
    }
    assert set(engine) == {"kind", "chunk_size", "options"}


def test_config_show_displays_the_wording_the_prompts_use(twitter_config):
    """The stages' prompts take their wording from [prompts]: show that, not a default."""
    for args in ((), ("--json",), ("--defaults", "--json")):
        proc = refineg("config", "show", "-c", str(twitter_config), *args)
        assert proc.returncode == 0, proc.stderr
        data = json.loads(proc.stdout) if args else tomllib.loads(proc.stdout)
        for stage in ("refine", "ground"):
            assert data[stage]["wording"]["domain"] == "social media posts (tweets)", args


@pytest.mark.parametrize("flags", [(), ("--json",)])
def test_status_prints_each_stage(twitter_config, tmp_path, flags):
    run_dir = tmp_path / "run"
    proc = refineg("status", "-c", str(twitter_config), "--run-dir", str(run_dir), *flags)
    assert proc.returncode == 0, proc.stderr
    if flags:
        states = json.loads(proc.stdout)
        assert set(states) >= {"train", "predict", "refine", "ground"}
        assert states["train"]["state"] == "missing"
    else:
        assert proc.stdout.splitlines()[0].split() == ["stage", "state", "why"]
        assert "missing" in proc.stdout
    assert not run_dir.exists()  # looking writes nothing


@pytest.mark.parametrize("where", ["before", "after"])
def test_debug_is_accepted_before_or_after_eval(tmp_path, where):
    bad = tmp_path / "bad.conll"
    bad.write_text("Paris B-LOC\n", encoding="utf-8")
    args = ["eval", "--gold", str(bad), "--pred", str(bad), "--format", "conll"]
    proc = refineg(*(["--debug", *args] if where == "before" else [*args, "--debug"]))
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" in proc.stderr and "found no tab" in proc.stderr


@pytest.mark.parametrize("command", ["eval", "report", "plan"])
def test_quiet_and_debug_after_any_subcommand_are_not_usage_errors(tmp_path, command):
    missing = str(tmp_path / "nope.jsonl")
    args = {
        "eval": ["--gold", missing, "--pred", missing],
        "report": ["--pred", missing],
        "plan": ["-c", str(tmp_path / "nope.toml")],
    }[command]
    proc = refineg(command, *args, "--quiet", "--debug")
    assert "unrecognized arguments" not in proc.stderr, proc.stderr
    assert proc.returncode == 2 and "Traceback" in proc.stderr


def test_a_stage_wording_that_differs_from_prompts_is_refused(tmp_path):
    """The stages use [prompts]; a [refine.wording] that says otherwise would be
    silently ignored, so it is an error naming the key."""
    from refineg_core.testing import run_cli

    cfg = tmp_path / "c.toml"
    base = '[labels]\nPER = "person"\n[prompts]\ndomain = "tweets"\n'
    cfg.write_text(base + '[refine.wording]\ndomain = "news"\n', encoding="utf-8")
    result = run_cli(["config", "show", "-c", str(cfg)])
    assert result.code == 2 and "refine.wording" in result.stderr and "[prompts]" in result.stderr
    cfg.write_text(base + '[ground.wording]\ndomain = "tweets"\n', encoding="utf-8")
    same = run_cli(["config", "show", "-c", str(cfg), "--json"])
    assert same.code == 0, same.stderr
    assert json.loads(same.stdout)["ground"]["wording"]["domain"] == "tweets"
