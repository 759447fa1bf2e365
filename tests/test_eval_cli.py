"""``refineg eval`` on the real Twitter-GMNER dev split: gold regions, subsets, JSON output.

Issue 9 item 2: gold without its xml/ folder used to score every gold entity as
"not groundable" (a wrong GMNER F1, no word said). Issue 11 item 4: scoring a
subset, ``--json -`` and a closed stdout.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import attrs
import pytest

from refineg_core.errors import DataError
from refineg_core.formats import load_dataset, write_jsonl
from refineg_core.hooks import get_hooks
from refineg_core.testing import run_cli
from refineg_core.types import Sample


@pytest.fixture(autouse=True)
def core_hooks_only(monkeypatch):
    monkeypatch.setenv("REFINEG_HOOK_PLUGINS", "")
    get_hooks.cache_clear()
    yield
    get_hooks.cache_clear()


def _boxless(samples: list[Sample]) -> list[Sample]:
    """Predictions equal to gold except that every entity is judged not groundable."""
    return [
        attrs.evolve(s, entities=tuple(attrs.evolve(e, boxes=()) for e in s.entities))
        for s in samples
    ]


@pytest.fixture
def split(twitter_dir: Path, tmp_path: Path):
    """dev.txt copied to a folder without xml/, and box-less predictions of it."""
    gold = list(load_dataset(twitter_dir / "dev.txt", "twitter-gmner").samples)
    lonely = tmp_path / "copy" / "dev.txt"
    lonely.parent.mkdir()
    shutil.copy(twitter_dir / "dev.txt", lonely)
    pred = tmp_path / "pred.jsonl"
    write_jsonl(_boxless(gold), pred)
    return gold, lonely, pred


def _json(args: list[str]) -> dict:
    res = run_cli(["eval", *args, "--json", "-"])
    assert res.code == 0, res.stderr
    return json.loads(res.stdout)


def test_gold_without_xml_folder_is_an_error_not_a_wrong_f1(split, twitter_dir: Path):
    gold, lonely, pred = split
    real = _json(["--gold", str(twitter_dir / "dev.txt"), "--pred", str(pred)])
    grounded = sum(1 for s in gold for e in s.entities if e.boxes)
    assert grounded > 100
    # Every groundable gold entity is a GMNER miss; MNER is perfect.
    assert real["gmner"]["fn"] == grounded and real["mner"]["f1"] == 100.0
    res = run_cli(["eval", "--gold", str(lonely), "--pred", str(pred)])
    assert res.code == 2
    assert "no box annotation" in res.stderr and "--gold-option xml_dir=" in res.stderr
    assert "--no-boxes" in res.stderr and str(lonely) in res.stderr
    assert len(res.stderr.strip().splitlines()) <= 2  # the data warning line + the error
    # --gold-option xml_dir=..., and its old spelling --xml-dir, give the same numbers
    # as the file in its own folder.
    xml = str(twitter_dir / "xml")
    for flags in (["--gold-option", f"xml_dir={xml}"], ["--xml-dir", xml]):
        again = _json(["--gold", str(lonely), "--pred", str(pred), *flags])
        assert again["gmner"] == real["gmner"] and again["eeg"] == real["eeg"]
    # a key the gold format does not take, or no KEY=VALUE: one located error line
    bad = run_cli(["eval", "--gold", str(lonely), "--pred", str(pred), "--gold-option", "xmldir=x"])
    assert bad.code == 2 and "xmldir" in bad.stderr and "gold.options" in bad.stderr
    bad = run_cli(["eval", "--gold", str(lonely), "--pred", str(pred), "--gold-option", "xml_dir"])
    assert bad.code == 2 and "--gold-option: expected KEY=VALUE" in bad.stderr
    both = ["--gold-option", f"xml_dir={xml}", "--xml-dir", xml]
    bad = run_cli(["eval", "--gold", str(lonely), "--pred", str(pred), *both])
    assert bad.code == 2 and "given twice" in bad.stderr
    # --no-boxes: the user says the gold has no boxes; then box-less predictions are right.
    none = _json(["--gold", str(lonely), "--pred", str(pred), "--no-boxes"])
    assert none["gmner"]["f1"] == 100.0


def test_missing_xml_dir_of_a_data_source_is_an_error(twitter_dir: Path, tmp_path: Path):
    with pytest.raises(DataError, match="xml_dir does not exist") as err:
        load_dataset(
            twitter_dir / "dev.txt", "twitter-gmner", options={"xml_dir": tmp_path / "nope"}
        )
    assert err.value.where == str(tmp_path / "nope")
    lonely = tmp_path / "dev.txt"
    shutil.copy(twitter_dir / "dev.txt", lonely)
    with pytest.raises(DataError, match="boxes = true, but the regions of"):
        load_dataset(lonely, "twitter-gmner", boxes=True)
    ds = load_dataset(lonely, "twitter-gmner")
    assert all(e.boxes is None for s in ds for e in s.entities)
    assert any("no xml/ folder" in w for w in ds.warnings)
    ds = load_dataset(lonely, "twitter-gmner", boxes=False)
    assert all(e.boxes == () for s in ds for e in s.entities)


def test_predictions_never_grounded_are_counted(split, twitter_dir: Path, tmp_path: Path):
    gold, _, _ = split
    never = [
        attrs.evolve(s, entities=tuple(attrs.evolve(e, boxes=None) for e in s.entities))
        for s in gold
    ]
    pred = tmp_path / "never.jsonl"
    write_jsonl(never, pred)
    res = run_cli(["eval", "--gold", str(twitter_dir / "dev.txt"), "--pred", str(pred)])
    assert res.code == 0, res.stderr
    n = sum(len(s.entities) for s in gold)
    assert f"{n} predicted entities were never grounded" in res.stdout


def test_ids_from_pred_scores_only_the_predicted_subset(split, twitter_dir: Path, tmp_path: Path):
    gold, _, _ = split
    pred = tmp_path / "first30.jsonl"
    write_jsonl(gold[:30], pred)
    dev = str(twitter_dir / "dev.txt")
    whole = _json(["--gold", dev, "--pred", str(pred)])
    assert whole["samples"]["gold"] == len(gold) and whole["gmner"]["f1"] < 10
    subset = _json(["--gold", dev, "--pred", str(pred), "--ids-from-pred"])
    assert subset["samples"] == {
        "gold": 30,
        "predicted": 30,
        "missing_predictions": [],
        "failed": 0,
    }
    assert subset["gmner"]["f1"] == subset["mner"]["f1"] == 100.0
    assert subset["per_type"]  # the per-type table is kept
    res = run_cli(["eval", "--gold", dev, "--pred", str(pred), "--ids-from-pred", "--json", "-"])
    assert "GMNER" in res.stderr and "type" in res.stderr  # the table went to stderr
    assert not (Path.cwd() / "-").exists()


def test_plugins_json_into_a_closed_pipe_prints_no_traceback():
    refineg = Path(sys.executable).with_name("refineg")
    proc = subprocess.Popen(
        [str(refineg), "plugins", "--json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    proc.stdout.close()  # like `| head` that has already exited
    err = proc.stderr.read().decode()
    code = proc.wait(timeout=60)
    proc.stderr.close()
    assert "BrokenPipeError" not in err and "Traceback" not in err and "Exception" not in err
    assert code == 141
