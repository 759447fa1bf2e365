"""Dataset formats are a plugin kind: entry points, lazy import, located errors."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from refineg_core import registry
from refineg_core.config import config_from_dict
from refineg_core.errors import DataError, PluginError
from refineg_core.formats import DatasetFormat, load_dataset
from refineg_core.testing import fake_distribution

#: The formats refineg ships (in plugins/refineg_formats; the core names none).
SHIPPED = ("ccks", "conll", "jsonl", "twitter-gmner")


def test_builtin_formats_are_entry_points_of_refineg():
    found = {p.name: p for p in registry.installed("refineg.formats")}
    assert sorted(n for n, p in found.items() if p.distribution == "refineg") == list(SHIPPED)
    for name in SHIPPED:
        assert issubclass(registry.load_class("format", name), DatasetFormat)


def test_loading_one_format_imports_only_its_module(tmp_path: Path):
    """Its own module (with the CoNLL writer it checks against), plus every installed
    output format (twitter-gmner, ccks...), whose ``unwritable`` the reader asks (what
    is read can be written)."""
    data = tmp_path / "d.conll"
    data.write_text("Obama\tB-PER\n", "utf-8")
    code = textwrap.dedent(f"""
        import sys
        from refineg_core.formats import load_dataset
        ds = load_dataset({str(data)!r}, "conll")
        assert len(ds) == 1
        loaded = sorted(m for m in sys.modules if m.startswith("refineg_formats."))
        print(loaded)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == (
        "['refineg_formats.ccks', 'refineg_formats.conll_read', 'refineg_formats.conll_write', "
        "'refineg_formats.generic', 'refineg_formats.twitter']"
    )


def test_a_third_party_format_needs_no_core_change(tmp_path: Path):
    source = textwrap.dedent("""
        from pathlib import Path
        from refineg_core.formats import Dataset, DatasetFormat
        from refineg_core.interfaces import PluginOptions
        from refineg_core.labels import tokenize
        from refineg_core.types import Sample

        class LinesFormat(DatasetFormat):
            class Options(PluginOptions):
                prefix: str = "line"

            def read(self, path):
                lines = Path(path).read_text().splitlines()
                return Dataset(tuple(
                    Sample(f"{self.options.prefix}{i}", tuple(tokenize(t)), t)
                    for i, t in enumerate(lines)), (), str(path))
    """)
    data = tmp_path / "d.txt"
    data.write_text("one two\nthree\n", "utf-8")
    with fake_distribution(
        tmp_path / "site",
        "lines-format",
        "2.0",
        {"refineg.formats": {"lines": "lines_format:LinesFormat"}},
        {"lines_format": source},
    ):
        ds = load_dataset(data, "lines", options={"prefix": "L"})
        assert [s.id for s in ds] == ["L0", "L1"]
        with pytest.raises(PluginError) as err:
            load_dataset(data, "lines", images_dir=tmp_path)
        assert err.value.where == "data.images_dir"
        with pytest.raises(DataError, match="cannot write"):
            registry.create("format", "lines").write(ds.samples, tmp_path / "o.txt")


def test_config_names_unknown_format_or_bad_option_at_its_key(tmp_path: Path):
    def config(**source):
        return {"labels": {"PER": "a person"}, "data": {"train": {"path": "x", **source}}}

    with pytest.raises(PluginError, match=r"available: .*conll") as err:
        config_from_dict(config(format="conl"))
    assert err.value.where == "data.train.format"
    with pytest.raises(PluginError, match="does not take 'entities'") as err:
        config_from_dict(config(format="twitter-gmner", entities="e.json"))
    assert err.value.where == "data.train.entities"
    with pytest.raises(PluginError) as err:
        config_from_dict(config(format="conll", options={"scheme": "IOB3"}))
    assert err.value.where == "data.train.options.scheme"
    ok = config_from_dict(
        config(format="conll", boxes=False, options={"scheme": "BIOES"}), check_paths=False
    )
    assert ok.data.train.boxes is False
