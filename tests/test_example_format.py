"""The example package's CSV format, selected by name in a config: no core change needed.

Skips (with the install command) when the example package is not installed.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from refineg_core import registry
from refineg_core.errors import DataError, PluginError
from refineg_core.formats import format_plugin, load_dataset
from refineg_core.formats.native import read_results
from refineg_core.hooks import get_hooks
from refineg_core.testing import run_cli

pytest.importorskip(
    "refineg_gazetteer.csvformat",
    reason="example plugin not installed: pip install -e examples/refineg-gazetteer",
)

TRAIN = """id,text,entities
t1,Obama visits Paris today,PER:Obama; LOC:Paris
t2,The United Nations met in Geneva,ORG:United Nations; LOC:Geneva
t3,Merkel and Obama spoke,PER:Merkel; PER:Obama
t4,"Rain again, in Paris",LOC:Paris
t5,Nothing here,
"""
PREDICT = """id,text,entities
p1,Merkel flew to Geneva,PER:Merkel; LOC:Geneva
p2,Obama left the United Nations,PER:Obama; ORG:United Nations
p3,Paris is calm,LOC:Paris
p4,Someone new arrived,
"""


def _config(tmp_path: Path, extra: str = "") -> Path:
    (tmp_path / "train.csv").write_text(TRAIN, encoding="utf-8")
    (tmp_path / "predict.csv").write_text(PREDICT, encoding="utf-8")
    config = tmp_path / "csv.toml"
    config.write_text(
        f"""
run_dir = "run"
[labels]
PER = "a person"
LOC = "a place"
ORG = "an organisation"
[data.train]
path = "train.csv"
format = "csv"
[data.predict]
path = "predict.csv"
format = "csv"
{extra}
[stages]
train = true
predict = true
refine = false
ground = false
[tagger]
plugin = "gazetteer"
[uncertainty]
plugin = "rules"
""",
        encoding="utf-8",
    )
    return config


@pytest.fixture
def no_hook_plugins(monkeypatch):
    monkeypatch.setenv("REFINEG_HOOK_PLUGINS", "")
    get_hooks.cache_clear()
    yield
    get_hooks.cache_clear()


def test_csv_is_listed_as_a_format_of_the_example_package():
    [csv] = [p for p in registry.installed("refineg.formats") if p.name == "csv"]
    assert csv.distribution == "refineg-gazetteer"


def test_train_and_predict_on_csv_selected_in_a_config(tmp_path: Path, no_hook_plugins):
    config = _config(tmp_path, "boxes = false")
    res = run_cli(["run", "--config", str(config)])
    assert res.code == 0, res.stderr
    results = {r.id: r for r in read_results(tmp_path / "run" / "predict.jsonl")}
    assert list(results) == ["p1", "p2", "p3", "p4"]
    found = {sid: [(e.text, e.type) for e in r.entities] for sid, r in results.items()}
    # Every name was seen in train.csv, so the gazetteer finds each one with its type.
    assert found == {
        "p1": [("Merkel", "PER"), ("Geneva", "LOC")],
        "p2": [("Obama", "PER"), ("United Nations", "ORG")],
        "p3": [("Paris", "LOC")],
        "p4": [],
    }
    report = json.loads((tmp_path / "run" / "eval.json").read_text())["predict"]
    assert report["mner"]["f1"] == 100.0
    # boxes = false: gold regions are None; predictions were never grounded (None).
    assert report["gmner"]["f1"] == 100.0
    assert report["regions"] == {"gold_unknown": 0, "pred_grounding_not_attempted": 5}


def test_csv_gold_without_boxes_flag_is_not_scored_for_gmner(tmp_path: Path, no_hook_plugins):
    res = run_cli(["run", "--config", str(_config(tmp_path))])
    assert res.code == 0, res.stderr
    report = json.loads((tmp_path / "run" / "eval.json").read_text())["predict"]
    assert report["gmner"] is None and report["eeg"] is None
    assert report["mner"]["f1"] == 100.0
    assert report["regions"]["gold_unknown"] == 5


def test_csv_options_and_unknown_format_fail_at_config_load(tmp_path: Path, no_hook_plugins):
    config = str(_config(tmp_path))
    bad = run_cli(["run", "--config", config, "--set", "data.train.options.delimitr=';'"])
    assert bad.code == 2 and "data.train.options.delimitr" in bad.stderr
    assert "delimiter" in bad.stderr  # the valid options are listed
    bad = run_cli(["run", "--config", config, "--set", "data.train.xml_dir='x'"])
    assert bad.code == 2 and "data.train.xml_dir" in bad.stderr
    assert "does not take 'xml_dir'" in bad.stderr
    bad = run_cli(["run", "--config", config, "--set", "data.train.format='csvv'"])
    assert bad.code == 2 and "data.train.format" in bad.stderr
    assert "csv" in bad.stderr.split("available:")[1]
    assert not (tmp_path / "run").exists()  # nothing ran


def test_csv_round_trip_and_located_errors(tmp_path: Path):
    src = tmp_path / "train.csv"
    src.write_text(TRAIN, encoding="utf-8")
    ds = load_dataset(src, "csv")
    assert [len(s.entities) for s in ds] == [2, 2, 2, 1, 0]
    assert all(e.boxes is None for s in ds for e in s.entities)  # CSV says nothing of regions
    out = tmp_path / "out.csv"
    format_plugin("csv").write(ds.samples, out)
    again = load_dataset(out, "csv")
    assert [[e.key for e in s.entities] for s in again] == [[e.key for e in s.entities] for s in ds]
    bad = tmp_path / "bad.csv"
    bad.write_text(TRAIN + "t6,Nobody here,PER:Obama\n", encoding="utf-8")
    with pytest.raises(DataError, match="not in the text") as err:
        load_dataset(bad, "csv")
    assert err.value.where == f"{bad}:7"
    with pytest.raises(PluginError, match="delimiter"):
        load_dataset(src, "csv", options={"delimiter": ";;"})
