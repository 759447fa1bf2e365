"""The `refineg` command as a user meets it: listings, config, errors, eval."""

import json
import subprocess
import sys
import textwrap

from refineg_core.testing import fake_distribution, run_cli

LABELS = '[labels]\nPER = "person"\nLOC = "place"\nORG = "org"\nOTHER = "other"\n'


def test_plugins_lists_every_builtin_with_version():
    result = run_cli(["plugins", "--json"])
    assert result.code == 0
    rows = {(r["group"], r["name"]): r for r in json.loads(result.stdout)}
    assert rows[("refineg.taggers", "bert_crf")]["distribution"] == "refineg"
    assert rows[("refineg.mllm_backends", "openai")]["version"]
    assert ("refineg (hooks)", "report") in rows
    table = run_cli(["plugins"]).stdout
    assert "clip_similarity" in table and "distribution" in table.splitlines()[0]


def test_plugins_shows_a_newly_installed_package(tmp_path):
    with fake_distribution(
        tmp_path, "refineg-thirdparty", "2.0.1", {"refineg.synthesizers": {"copycat": "x:Y"}}
    ):
        out = run_cli(["plugins"]).stdout
    assert "copycat" in out and "refineg-thirdparty" in out and "2.0.1" in out


def test_unknown_plugin_exits_nonzero_listing_names(tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text(LABELS + '[backend]\nplugin = "openia"\n', encoding="utf-8")
    result = run_cli(["config", "show", "-c", str(cfg)])
    assert result.code == 2
    line = result.stderr.strip().splitlines()[-1]
    assert line.startswith("refineg: error:") and "backend.plugin" in line
    assert "local_text, openai, qwen_vl" in line
    assert "Traceback" not in result.stderr


def test_config_show_prints_resolved_values_and_hides_secrets(tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-very-secret")
    cfg = tmp_path / "c.toml"
    cfg.write_text(
        LABELS + '[backend]\nplugin = "openai"\n[backend.options]\n'
        'base_url = "http://127.0.0.1:9/v1"\nmodel = "m"\napi_key_env = "OPENAI_API_KEY"\n',
        encoding="utf-8",
    )
    result = run_cli(["config", "show", "-c", str(cfg), "--json", "--set", "ground.k=5"])
    assert result.code == 0, result.stderr
    data = json.loads(result.stdout)
    assert (
        data["ground"]["k"] == 5 and data["backend"]["options"]["api_key_env"] == "OPENAI_API_KEY"
    )
    assert "sk-very-secret" not in result.stdout
    toml_out = run_cli(["config", "show", "-c", str(cfg)]).stdout
    assert "[backend.options]" in toml_out and 'plugin = "entropy"' in toml_out


def test_bad_data_is_one_readable_line_and_debug_shows_traceback(tmp_path):
    bad = tmp_path / "bad.conll"
    bad.write_text("Paris B-LOC\n", encoding="utf-8")
    result = run_cli(["eval", "--gold", str(bad), "--pred", str(bad), "--format", "conll"])
    assert result.code == 2
    assert result.stderr.strip() == (
        f"refineg: error: {bad}:1: expected 'token<TAB>tag', found no tab in 'Paris B-LOC'"
    )
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "refineg_core.cli",
            "--debug",
            "eval",
            "--gold",
            str(bad),
            "--pred",
            str(bad),
        ],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2 and "Traceback" in proc.stderr


def test_eval_of_twitter_dev_against_itself_is_perfect(twitter_dir, tmp_path):
    dev = twitter_dir / "dev.txt"
    result = run_cli(
        ["eval", "--gold", str(dev), "--pred", str(dev), "--json", str(tmp_path / "e.json")]
    )
    assert result.code == 0, result.stderr
    report = json.loads((tmp_path / "e.json").read_text())
    flat = json.dumps(report)
    for task in ("gmner", "mner", "eeg"):
        assert task in flat.lower()
    assert "100.0" in result.stdout


def test_missing_config_file_is_clear(tmp_path):
    result = run_cli(["run", "-c", str(tmp_path / "nope.toml")])
    assert result.code == 2 and "config file not found" in result.stderr


def test_report_command_comes_from_a_hook_plugin():
    result = run_cli(["--help"])
    assert result.code == 0
    assert "report" in result.stdout and "eval" in result.stdout


def test_config_with_invalid_option_type(tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text(
        LABELS
        + textwrap.dedent("""
        [uncertainty]
        plugin = "entropy"
        [uncertainty.options]
        threshold = "high"
    """),
        encoding="utf-8",
    )
    result = run_cli(["config", "show", "-c", str(cfg)])
    assert result.code == 2 and "uncertainty.options.threshold" in result.stderr
