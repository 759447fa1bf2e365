"""One plugin surface: one public module, one table of kinds, declared capabilities."""

from __future__ import annotations

import ast
import json
from pathlib import Path
from typing import ClassVar

import pytest
import tomllib

import refineg.plugin as plugin_api
from refineg_core import errors, kinds, registry, types
from refineg_core.formats import load_dataset
from refineg_core.formats.base import Dataset, DatasetFormat
from refineg_core.interfaces import MLLMBackend, Plugin, UncertaintyEstimator
from refineg_core.testing import register_plugin, run_cli

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "refineg-gazetteer"


def _string_constants(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return {
        n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)
    }


def test_the_table_has_the_nine_kinds_each_with_a_contract():
    assert [k.name for k in kinds.KINDS] == [
        "synthesizer",
        "tagger",
        "uncertainty",
        "backend",
        "selector",
        "stage",
        "format",
        "box_frame",
        "engine",
    ]
    for k in kinds.KINDS:
        # an engine is built from the run's worker and a stage from the run's
        # StageSetup, not from (options, labels)
        assert issubclass(k.base, Plugin) != (k.name in ("engine", "stage")), k.name
        assert k.required, f"{k.name} requires no method: the contract is empty"
        for attr in k.declares:
            assert hasattr(k.base, attr), f"{k.base.__name__} has no default for {attr}"
    assert kinds.kind("tagger").required == ("fit", "load", "predict", "save")
    with pytest.raises(errors.PluginError, match="unknown plugin kind 'taggers'"):
        kinds.kind("taggers")


def test_every_entry_point_group_of_the_project_is_a_kind():
    """pyproject's groups are the table's (plus pluggy's ``refineg`` hook group), both
    ways: a group without a built-in, or a built-in outside the table, is a drift."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    declared = set(project["project"]["entry-points"])
    example = tomllib.loads((EXAMPLE / "pyproject.toml").read_text(encoding="utf-8"))
    assert declared - {"refineg"} == set(kinds.groups())
    assert set(example["project"]["entry-points"]) <= set(kinds.groups())


def test_group_names_are_written_once_in_the_code():
    """The registry, the CLI and everything else read the table; only kinds.py names a
    group (so renaming one cannot leave a stale copy behind)."""
    groups = set(kinds.groups())
    offenders = {
        str(p.relative_to(ROOT)): sorted(groups & _string_constants(p))
        for base in ("refineg_core", "refineg")
        for p in (ROOT / base).rglob("*.py")
        if p.name != "kinds.py"
    }
    assert not {p: g for p, g in offenders.items() if g}


def test_the_public_module_exports_every_contract_value_and_error():
    for k in kinds.KINDS:
        assert getattr(plugin_api, k.base.__name__) is k.base
    assert tuple(k.base for k in kinds.KINDS) == plugin_api.CONTRACTS
    value_types = [
        name
        for name, obj in vars(types).items()
        if isinstance(obj, type) and obj.__module__ == types.__name__
    ]
    error_types = [
        name
        for name, obj in vars(errors).items()
        if isinstance(obj, type)
        and issubclass(obj, Exception)
        and obj.__module__ == errors.__name__
    ]
    missing = [n for n in [*value_types, *error_types] if not hasattr(plugin_api, n)]
    missing = [n for n in missing if n not in ("StageUnavailable",)]  # the core's own signal
    assert not missing
    for name in ("register_plugin", "fake_distribution", "run_cli", "PluginOptions", "LabelSet"):
        assert name in plugin_api.__all__
    assert sorted(plugin_api.__all__) == sorted(set(plugin_api.__all__))
    assert all(hasattr(plugin_api, n) for n in plugin_api.__all__)


def test_the_example_package_imports_only_the_public_module():
    imported: dict[str, set[str]] = {}
    for path in (EXAMPLE / "src").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module:
                imported.setdefault(node.module, set()).add(path.name)
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    imported.setdefault(alias.name, set()).add(path.name)
    ours = {m for m in imported if m.split(".")[0] in ("refineg", "refineg_core")}
    assert ours == {"refineg.plugin"}, imported


def test_plugins_kinds_prints_the_table():
    res = run_cli(["plugins", "--kinds", "--json"])
    assert res.code == 0
    rows = json.loads(res.stdout)
    assert [r["kind"] for r in rows] == [k.name for k in kinds.KINDS]
    assert rows[2]["declares"] == ["calibrates", "needs_extras"]
    assert "supplied_extras" in rows[1]["declares"]
    text = run_cli(["plugins", "--kinds"]).stdout
    assert "box_frame: group refineg.box_frames, base refineg.plugin.BoxCodec" in text


# --------------------------------------------------------------- capabilities
class _FitsQuietly(UncertaintyEstimator):
    """Overrides calibrate but forgets to declare it."""

    def decide(self, samples, predictions):
        return []

    def calibrate(self, samples, predictions):
        return {"fitted": True}


class _FitsDeclared(_FitsQuietly):
    calibrates = True


def test_a_gate_that_calibrates_without_saying_so_is_refused_at_load():
    with register_plugin("uncertainty", "quiet-fit", _FitsQuietly):
        with pytest.raises(errors.PluginError, match="calibrates = True") as exc:
            registry.load_class("uncertainty", "quiet-fit")
        assert exc.value.where == "uncertainty.plugin"
    with register_plugin("uncertainty", "declared-fit", _FitsDeclared):
        assert registry.load_class("uncertainty", "declared-fit") is _FitsDeclared


def test_built_in_capabilities_are_declared():
    from refineg_formats.ccks import CcksFormat
    from refineg_formats.generic import ConllFormat, JsonlFormat
    from refineg_formats.twitter import TwitterGmnerFormat
    from refineg_gates.margin import MarginGate
    from refineg_gates.temperature import TemperatureEntropyGate

    # an instance says it (a gate's options may decide it: a precision target)
    assert TemperatureEntropyGate().calibrates and not MarginGate().calibrates
    assert MarginGate(MarginGate.Options(target_precision=0.9, risk=0.1)).calibrates
    assert all(f.reads_limit for f in (CcksFormat, ConllFormat, JsonlFormat, TwitterGmnerFormat))
    assert not DatasetFormat.reads_limit


class _Lines(DatasetFormat):
    """One sample per line; records how ``read`` was called."""

    calls: ClassVar[list] = []

    def read(self, path, *args, **kwargs):
        type(self).calls.append((args, kwargs))
        lines = Path(path).read_text(encoding="utf-8").splitlines()
        samples = tuple(
            types.Sample(f"s{i}", tuple(line.split()), line) for i, line in enumerate(lines)
        )
        return Dataset(samples, (), str(path))


class _LinesWithLimit(_Lines):
    reads_limit = True

    calls: ClassVar[list] = []


@pytest.mark.parametrize(("cls", "passed"), [(_Lines, ({}, {})), (_LinesWithLimit, {"limit": 2})])
def test_limit_is_passed_only_to_a_reader_that_declares_it(tmp_path, cls, passed):
    """A reader whose signature would accept ``limit`` (``**kwargs``) still gets it only
    when it declares ``reads_limit``; either way the first two samples come back."""
    path = tmp_path / "posts.txt"
    path.write_text("a b\nc d\ne f\n", encoding="utf-8")
    cls.calls.clear()
    with register_plugin("format", "lines-test", cls):
        ds = load_dataset(path, "lines-test", limit=2)
    assert [s.text for s in ds.samples] == ["a b", "c d"]
    assert cls.calls == [((), {})] if cls is _Lines else cls.calls == [((), passed)]


# ---------------------------------------------------------------- box frames
def test_a_box_frame_is_a_plugin_built_like_the_others():
    from refineg_frames.generic import NormalizedCodec

    frame = registry.create("box_frame", "normalized", {"scale": 100})
    assert isinstance(frame, Plugin) and isinstance(frame, NormalizedCodec)
    assert frame.options.scale == 100 and frame.labels is None
    # the frames' users keep building them from code with keywords
    assert NormalizedCodec(scale=100).options == frame.options


class _NoFrame(MLLMBackend):
    def complete(self, request):  # pragma: no cover - never called
        raise AssertionError


def test_the_core_resolves_a_backend_without_a_frame_to_pixels():
    backend = _NoFrame()
    assert backend.box_codec is None  # the contract: None means "the default frame"
    frame = registry.backend_frame(backend)
    assert frame.name == "pixels"
    assert registry.backend_frame(_NoFrame()) is frame  # built once, not per sample
