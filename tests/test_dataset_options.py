"""Dataset knowledge lives in the format plugins, not the core (issue 18, part 5).

A run writes ``final.jsonl`` plus the formats ``[outputs] formats`` names; a
data source without ``format`` is read by the one format that recognises it;
``xml_dir``/``entities`` are format options resolved against the config file;
a config holding a lone surrogate or bad bytes is an error at its place.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from refineg_core.config import config_from_dict, load_config
from refineg_core.errors import ConfigError, DataError
from refineg_core.formats import load_source, recognised_format
from refineg_core.formats.native import read_results
from refineg_core.testing import register_plugin, run_cli
from tests.stagedata import gazetteer_config, gazetteer_data_dir, write_config

LABELS = {"PER": "a person"}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return gazetteer_data_dir(tmp_path_factory)


def test_a_config_without_outputs_writes_only_the_native_jsonl(data, tmp_path):
    text = gazetteer_config(data, "http://127.0.0.1:9/v1", tmp_path / "run")
    text = re.sub(r"\[outputs\]\s*formats = \[[^\]]*\]\s*", "", text)
    assert "[outputs]" not in text
    result = run_cli(["run", "-c", str(write_config(tmp_path, text))])
    assert result.code == 0, result.stderr
    run = tmp_path / "run"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["final"]["outputs"] == {"jsonl": str(run / "final.jsonl")}
    assert not (run / "final.ccks.json").exists() and not (run / "twitter").exists()
    assert len(read_results(run / "final.jsonl")) == 30


def test_the_named_output_formats_are_written_where_they_declare(data, tmp_path):
    cfg = write_config(tmp_path, gazetteer_config(data, "http://127.0.0.1:9/v1", tmp_path / "r"))
    result = run_cli(["run", "-c", str(cfg)])
    assert result.code == 0, result.stderr
    run = tmp_path / "r"
    outputs = json.loads((run / "summary.json").read_text())["final"]["outputs"]
    assert outputs == {
        "jsonl": str(run / "final.jsonl"),
        "twitter-gmner": str(run / "twitter" / "predictions.txt"),
        "ccks": str(run / "final.ccks.json"),
    }
    assert len(json.loads((run / "final.ccks.json").read_text())) == 30


@pytest.mark.parametrize(
    ("formats", "where", "message"),
    [
        (["ccks", "twiter-gmner"], "outputs.formats[1]", "not installed"),
        (["conll"], "outputs.formats[0]", "declares no output_file"),
    ],
)
def test_a_bad_output_format_fails_at_config_load(tmp_path, formats, where, message):
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[labels]\nPER = "p"\n[outputs]\nformats = {json.dumps(formats)}\n')
    with pytest.raises(ConfigError, match=message) as err:
        load_config(cfg)
    assert err.value.where == f"{cfg}: {where}"


def test_path_options_resolve_against_the_config_file(twitter_dir: Path, tmp_path: Path):
    """``options = {xml_dir = "xml"}`` means the folder beside the config, as the
    source's own paths do; a missing one is refused at its key; the old key
    still works, with a deprecation warning."""
    folder = tmp_path / "cfg"
    folder.mkdir()
    shutil.copy(twitter_dir / "dev.txt", folder / "dev.txt")
    (folder / "boxes").symlink_to(twitter_dir / "xml")
    source = '[data.predict]\npath = "dev.txt"\nformat = "twitter-gmner"\n'
    cfg = folder / "c.toml"
    cfg.write_text(f'[labels]\nPER = "p"\n{source}options = {{xml_dir = "boxes"}}\n')
    config = load_config(cfg)
    assert config.data.predict.options["xml_dir"] == str(folder / "boxes")
    ds = load_source(config.data.predict, config_key="data.predict")
    assert sum(1 for s in ds for e in s.entities if e.boxes) > 100  # the boxes were found
    cfg.write_text(f'[labels]\nPER = "p"\n{source}options = {{xml_dir = "nope"}}\n')
    with pytest.raises(ConfigError, match="does not exist") as err:
        load_config(cfg)
    assert err.value.where == f"{cfg}: data.predict.options.xml_dir"
    cfg.write_text(f'[labels]\nPER = "p"\n{source}xml_dir = "boxes"\n')
    with pytest.warns(FutureWarning, match=r"data.predict.xml_dir is deprecated.*options"):
        old = load_config(cfg)
    assert load_source(old.data.predict).samples == ds.samples
    cfg.write_text(
        f'[labels]\nPER = "p"\n{source}xml_dir = "boxes"\noptions = {{xml_dir = "boxes"}}\n'
    )
    with pytest.warns(FutureWarning), pytest.raises(Exception, match="given twice") as err:
        load_config(cfg)
    assert err.value.where.endswith("data.predict.xml_dir")


def test_the_format_that_recognises_a_file_reads_it(twitter_dir: Path, tmp_path: Path):
    assert recognised_format(twitter_dir / "dev.txt") == "twitter-gmner"
    for name, text, expected in [
        ("a.jsonl", '{"id": "1", "tokens": ["a"]}\n', "jsonl"),
        ("a.json", "{}", "ccks"),
        ("a.conll", "Obama\tB-PER\n", "conll"),
        ("a.data", "-DOCSTART- -X- O O\n", "conll"),  # a tag in the last column
    ]:
        (tmp_path / name).write_text(text, encoding="utf-8")
        assert recognised_format(tmp_path / name) == expected, name
    odd = tmp_path / "notes.md"
    odd.write_text("# not data\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"no installed format recognises.*ccks, conll") as err:
        recognised_format(odd, config_key="data.train")
    assert err.value.where == str(odd) and "data.train.format" in str(err.value)


def test_two_formats_recognising_one_file_is_an_error_naming_both(tmp_path: Path):
    from refineg.plugin import DatasetFormat

    class OtherJson(DatasetFormat):
        @classmethod
        def recognises(cls, path: Path) -> bool:
            return path.suffix == ".json"

        def read(self, path, limit=None):
            raise AssertionError("never read: the file is ambiguous")

    data = tmp_path / "t.json"
    data.write_text("{}", encoding="utf-8")
    config = config_from_dict({"labels": LABELS, "data": {"train": {"path": str(data)}}})
    expected = pytest.raises(DataError, match="ccks, other-json all recognise")
    with register_plugin("format", "other-json", OtherJson), expected as err:
        load_source(config.data.train, config_key="data.train")
    assert err.value.where == str(data)


def test_a_lone_surrogate_or_bad_bytes_in_a_config_is_located(tmp_path: Path):
    """Not pydantic's "Invalid JSON ... at line 1 column 42" of a JSON nobody wrote."""
    with pytest.raises(ConfigError, match="lone surrogate") as err:
        config_from_dict({"labels": {"PER": "a\ud800"}})
    assert err.value.where == "labels.PER"
    cfg = tmp_path / "c.toml"
    cfg.write_text('[labels]\nPER = "p"\n', encoding="utf-8")
    bad = run_cli(["config", "show", "-c", str(cfg), "--set", "labels.ORG=\udced\udca0\udc80"])
    assert bad.code == 2 and f"{cfg}: labels.ORG" in bad.stderr
    assert "lone surrogate" in bad.stderr and "Invalid JSON" not in bad.stderr
    cfg.write_bytes(b'[labels]\nPER = "p"\nORG = "a\xed\xa0\x80b"\n')  # a surrogate, UTF-8 encoded
    with pytest.raises(ConfigError, match=r"not valid UTF-8.*line 3, column 9") as err:
        load_config(cfg)
    assert err.value.where == f"{cfg}:3"


@pytest.mark.parametrize(
    ("name", "formats"), [("twitter-gmner", ["twitter-gmner", "ccks"]), ("ccks", ["ccks"])]
)
def test_the_shipped_configs_name_their_output_formats(name, formats):
    from refineg_core.formats.writers import output_formats

    root = Path(__file__).resolve().parents[1]
    config = load_config(root / "configs" / f"{name}.toml", check_plugins=False, check_paths=False)
    assert config.outputs.formats == formats
    files = {n: cls.output_file for n, cls in output_formats(config.outputs.formats).items()}
    assert "final.ccks.json" in files.values()
