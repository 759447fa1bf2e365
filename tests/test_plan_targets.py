"""``refineg plan`` costs each precision target, and a run with that target agrees.

Real tweets, the real gazetteer tagger trained on real train tweets, the real
entropy gate; the plan's "posts delegated" for a target must equal what
``refineg predict`` with ``target_precision`` set to it then delegates.
"""

from __future__ import annotations

import json
import textwrap

import pytest
from refineg_formats.twitter import read_twitter_gmner, write_twitter_gmner
from refineg_openai.testing import FakeOpenAIServer
from refineg_plan.targets import format_targets, parse_targets

from refineg_core.testing import run_cli

pytest.importorskip("refineg_gazetteer", reason="pip install -e examples/refineg-gazetteer")

TARGETS = "0.5,0.7,0.9"


@pytest.fixture
def cfg(tmp_path, twitter_dir):
    root = tmp_path / "tw"
    train = read_twitter_gmner(twitter_dir / "train.txt").samples[:2000]
    dev = read_twitter_gmner(twitter_dir / "dev.txt").samples
    write_twitter_gmner(train, root / "train.txt")
    write_twitter_gmner(dev[:400], root / "dev.txt")
    write_twitter_gmner(dev[400:460], root / "predict.txt")
    path = tmp_path / "c.toml"

    def write(base_url):
        path.write_text(
            textwrap.dedent(f'''
                run_dir = "{tmp_path / "run"}"
                [labels]
                PER = "person"
                LOC = "location"
                ORG = "organisation"
                OTHER = "other named entity"
                [data.train]
                path = "{root}/train.txt"
                [data.dev]
                path = "{root}/dev.txt"
                [data.predict]
                path = "{root}/predict.txt"
                [tagger]
                plugin = "gazetteer"
                [tagger.options]
                case_sensitive = false
                outside_evidence = true
                [uncertainty.options]
                threshold = 0.4
                [backend]
                plugin = "openai"
                [backend.options]
                base_url = "{base_url}"
                model = "fake-model"
                box_frame = "qwen2.5-vl"
                retries = 0
                [stages]
                ground = false
            '''),
            encoding="utf-8",
        )
        return str(path)

    return write


def test_plan_rows_equal_what_a_run_with_that_target_delegates(cfg, tmp_path):
    with FakeOpenAIServer() as server:
        path = cfg(server.base_url)
        assert run_cli(["train", "-c", path]).code == 0
        planned = run_cli(["plan", "-c", path, "--json", "--targets", TARGETS, "--risk", "0.1"])
        assert planned.code == 0, planned.stderr
        assert server.chat_requests == []
        table = json.loads(planned.stdout)["targets"]
        assert [r["target"] for r in table["rows"]] == [0.5, 0.7, 0.9]
        assert table["calibration_samples"] == 400 and table["samples"] == 60
        chosen = [r for r in table["rows"] if r["threshold"] is not None]
        assert chosen, table  # the gazetteer supports at least the lowest target
        # a higher target never delegates fewer posts
        delegated = [r["samples_delegated"] for r in chosen]
        assert delegated == sorted(delegated)
        for row in chosen:
            assert row["refine_requests"] == row["samples_delegated"]
            assert row["calibration_precision"] >= row["target"]
        row = chosen[-1]
        ran = run_cli(
            [
                "predict",
                "-c",
                path,
                "--set",
                f"uncertainty.options.target_precision={row['target']}",
            ]
        )
        assert ran.code == 0, ran.stderr
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["stages"]["predict"]["samples_delegated"] == row["samples_delegated"]
    assert summary["calibration"]["guarantee"]["threshold"] == row["threshold"]
    lines = format_targets(table)
    assert any(line.strip().startswith(f"{row['target']:.2f}") for line in lines)


def test_targets_are_checked_and_can_be_switched_off():
    assert parse_targets("0.85, 0.9,") == (0.85, 0.9)
    assert parse_targets("") == ()
    with pytest.raises(ValueError, match="strictly between"):
        parse_targets("0.9,1.0")
    assert format_targets({"skipped": "no data.dev to calibrate on"}) == [
        "targets: no data.dev to calibrate on"
    ]
