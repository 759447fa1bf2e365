"""Engines are plugins of a kind like the rest (``refineg.engines``).

``local`` (the core) and ``ray`` (the ``refineg_ray`` plugin) are registered
through entry points exactly like a third-party engine; a config names one with
``engine.kind``, and an unknown name or a missing extra is refused when the
config is checked, at ``engine.kind``, with what is installed or what to install.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import pytest
import tomllib
from pydantic import Field

from refineg_core import kinds, registry
from refineg_core.config import engine_overrides, load_config, redacted_dump
from refineg_core.errors import ConfigError, PluginError, RefinegError
from refineg_core.interfaces import PluginOptions
from refineg_core.pipeline.engine_contract import Engine, MllmChunk
from refineg_core.pipeline.engines import LocalEngine, build_engine
from refineg_core.pipeline.summary import StageSummary
from refineg_core.testing import _forget_entry_points, run_cli
from refineg_core.types import Sample, SampleResult

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))

BASE = """
run_dir = "runs/x"
[labels]
PER = "a person"
LOC = "a place"
"""


def write(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "c.toml"
    path.write_text(textwrap.dedent(BASE + body), encoding="utf-8")
    return path


class CountingEngine(LocalEngine):
    """A third-party engine: the local one, counting the chunks it was given."""

    def __init__(self, worker, options=None) -> None:
        super().__init__(worker, options)
        self.chunks = 0

    def tag(self, chunks: Iterator[list[Sample]]) -> Iterator[list[SampleResult]]:
        for chunk in chunks:
            self.chunks += 1
            yield self.worker.tag(chunk, each=True)

    def mllm(
        self, stage: str, chunks: Iterator[MllmChunk]
    ) -> Iterator[tuple[list[SampleResult], StageSummary]]:
        yield from super().mllm(stage, chunks)


def test_the_engine_kind_is_a_row_of_the_kinds_table():
    row = kinds.kind("engine")
    assert (row.group, row.base, row.config_key) == ("refineg.engines", Engine, "engine.kind")
    # an engine must write tag and mllm; usage, report and close have defaults
    assert row.required == ("mllm", "tag")
    assert "refineg.engines" in set(kinds.groups())


def test_local_and_ray_are_declared_as_entry_points_like_third_party_engines():
    declared = PYPROJECT["project"]["entry-points"]["refineg.engines"]
    assert declared == {
        "local": "refineg_core.pipeline.engines:LocalEngine",
        "ray": "refineg_ray.engine:RayEngine",
    }
    installed = {p.name: p.target for p in registry.installed("refineg.engines")}
    assert installed["local"] == declared["local"] and installed["ray"] == declared["ray"]
    assert registry.load_class("engine", "local") is LocalEngine


def test_refineg_plugins_lists_the_engines():
    result = run_cli(["plugins"])
    assert result.code == 0, result.stderr
    rows = [line.split() for line in result.stdout.splitlines()]
    assert ["refineg.engines", "local"] in [r[:2] for r in rows]
    assert ["refineg.engines", "ray"] in [r[:2] for r in rows]


def test_an_unknown_engine_is_refused_at_engine_kind_listing_the_installed_ones(tmp_path):
    with pytest.raises(PluginError) as exc:
        load_config(write(tmp_path, '[engine]\nkind = "sparkk"\n'))
    msg = str(exc.value)
    assert "engine.kind" in msg and "'sparkk' is not installed" in msg
    available = msg.split("available:")[1]
    assert "local" in available and "ray" in available


def test_a_missing_extra_names_the_pip_command(tmp_path):
    """A third-party engine whose module needs a package its distribution's extra
    provides: the error at engine.kind says which extra to install."""
    site = tmp_path / "site"
    dist_info = site / "refineg_spark-0.1.dist-info"
    dist_info.mkdir(parents=True)
    (dist_info / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: refineg-spark\nVersion: 0.1\nProvides-Extra: spark\n"
        'Requires-Dist: pyspark-not-here>=3; extra == "spark"\n',
        encoding="utf-8",
    )
    (dist_info / "entry_points.txt").write_text(
        "[refineg.engines]\nspark = spark_engine:SparkEngine\n", encoding="utf-8"
    )
    (site / "spark_engine.py").write_text("import pyspark_not_here\n", encoding="utf-8")
    sys.path.insert(0, str(site))
    _forget_entry_points()
    try:
        with pytest.raises(PluginError) as exc:
            load_config(write(tmp_path, '[engine]\nkind = "spark"\n'))
    finally:
        sys.path.remove(str(site))
        sys.modules.pop("spark_engine", None)
        _forget_entry_points()
    msg = str(exc.value)
    assert "engine.kind" in msg and "refineg-spark 0.1" in msg
    assert msg.endswith("pip install 'refineg-spark[spark]'")


def test_ray_engine_without_ray_names_the_ray_extra(tmp_path):
    """Ray made unimportable in a fresh interpreter (as on an install without the
    extra): `engine.kind = "ray"` is refused when the config loads."""
    config = write(tmp_path, '[engine]\nkind = "ray"\n')
    script = textwrap.dedent(f"""
        import sys
        sys.modules["ray"] = None  # what `import ray` meets without the extra
        from refineg_core.config import load_config
        from refineg_core.errors import PluginError
        try:
            load_config({str(config)!r})
        except PluginError as exc:
            print(exc)
        else:
            print("loaded")
    """)
    path = [str(ROOT), str(ROOT / "plugins"), os.environ.get("PYTHONPATH", "")]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(path)}
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout.strip()
    assert "engine.kind" in out and "'ray'" in out, out
    assert "pip install '" in out and "[ray]'" in out, out


class ShardedEngine(CountingEngine):
    """A third-party engine with options of its own."""

    class Options(PluginOptions):
        shards: int = Field(1, ge=1)


def test_an_engines_options_are_its_own_and_validated_by_it(tmp_path):
    """[engine] options = {...} reach the engine as its validated Options; an option
    it does not have is refused naming the engine and its valid options."""
    pytest.importorskip("refineg_gazetteer", reason="pip install -e examples/refineg-gazetteer")
    from refineg_core.pipeline.worker import Worker

    body = '[tagger]\nplugin = "gazetteer"\n[engine]\nkind = "sharded"\noptions = {shards = 3}\n'
    with registry.registered("engine", "sharded", ShardedEngine):
        config = load_config(write(tmp_path, body), check_paths=False)
        with Worker(config) as worker:
            engine = build_engine(worker)
        assert type(engine) is ShardedEngine and engine.options.shards == 3
        for bad, where, said in [
            ("{shard = 3}", "engine.options.shard", "valid options: shards"),
            ("{shards = 0}", "engine.options.shards", "greater than or equal to 1"),
            ('{shards = "3"}', "engine.options.shards", "valid integer"),  # never coerced
        ]:
            with pytest.raises(RefinegError) as err:
                load_config(write(tmp_path, body.replace("{shards = 3}", bad)), check_paths=False)
            assert err.value.where.endswith(where), err.value
            assert "'sharded'" in str(err.value) and said in str(err.value), err.value
    with pytest.raises(PluginError) as err:  # the local engine has no options at all
        load_config(write(tmp_path, "[engine]\noptions = {workers = 2}\n"), check_paths=False)
    assert err.value.where.endswith("engine.options.workers")
    assert "'local'" in str(err.value) and "valid options: none" in str(err.value), err.value


def test_the_ray_options_moved_into_engine_options(tmp_path):
    """The ray engine's keys are its own options now; the old spelling still loads
    as the same config, with a warning that names the new one."""
    from refineg_ray.engine import RayEngine

    new = load_config(
        write(tmp_path, '[engine]\nkind = "ray"\noptions = {tagger_actors = 3, num_cpus = 0.5}\n'),
        check_paths=False,
    )
    assert new.engine.options == {"tagger_actors": 3, "num_cpus": 0.5}
    options = registry.validate_options("engine", "ray", RayEngine, new.engine.options)
    assert (options.tagger_actors, options.num_cpus, options.mllm_actors) == (3, 0.5, 1)
    old_body = '[engine]\nkind = "ray"\ntagger_actors = 3\nnum_cpus = 0.5\n'
    with pytest.warns(FutureWarning) as caught:
        old = load_config(write(tmp_path, old_body), check_paths=False)
    assert sorted(str(w.message) for w in caught) == [
        f"engine.{key} is deprecated: write it as an engine option, options = {{{key} = ...}}"
        for key in ("num_cpus", "tagger_actors")
    ]
    assert old.engine.model_dump() == new.engine.model_dump()
    assert redacted_dump(old) == redacted_dump(new)  # the run's config.json: the same run
    with pytest.warns(FutureWarning), pytest.raises(RefinegError) as err:
        load_config(write(tmp_path, old_body.replace("= 3", "= 0")), check_paths=False)
    assert err.value.where.endswith("engine.tagger_actors"), err.value  # where it was written
    assert "'ray'" in str(err.value)
    twice = old_body + "options = {num_cpus = 1.0}\n"
    with pytest.warns(FutureWarning), pytest.raises(ConfigError, match="given twice") as err:
        load_config(write(tmp_path, twice), check_paths=False)
    assert err.value.where.endswith("engine.num_cpus")


def test_old_ray_keys_under_another_engine_are_ignored_as_they_always_were(tmp_path):
    """Before they moved, the ray keys sat in [engine] whatever the engine, and only
    Ray read them: a local config with them still loads as the same local run."""
    body = '[engine]\nkind = "local"\nnum_cpus = 0.5\n'
    with pytest.warns(FutureWarning, match=r"'local' engine has no such option: it is ignored"):
        config = load_config(write(tmp_path, body), check_paths=False)
    assert config.engine.options == {} and config.engine.num_cpus is None
    assert redacted_dump(config)["engine"] == {"kind": "local", "chunk_size": 1000, "options": {}}


def test_the_engine_flag_runs_that_engine_with_its_own_options(tmp_path):
    """`--engine KIND` over a config written for another engine drops that engine's
    options (they are not KIND's); the same engine keeps them; --set adds to them."""
    path = write(tmp_path, '[engine]\nkind = "ray"\noptions = {num_cpus = 0.5}\n')
    local = load_config(path, engine_overrides(path, "local", []), check_paths=False)
    assert (local.engine.kind, local.engine.options) == ("local", {})
    ray = load_config(path, engine_overrides(path, "ray", []), check_paths=False)
    assert (ray.engine.kind, ray.engine.options) == ("ray", {"num_cpus": 0.5})
    sets = ['engine.kind="local"', "engine.options.mllm_actors=2"]
    both = load_config(path, engine_overrides(path, "ray", sets), check_paths=False)
    assert (both.engine.kind, both.engine.options) == ("ray", {"num_cpus": 0.5, "mllm_actors": 2})
    plain = write(tmp_path, "")
    onto = load_config(
        plain, engine_overrides(plain, "ray", ["engine.options.num_gpus=1.0"]), check_paths=False
    )
    assert (onto.engine.kind, onto.engine.options) == ("ray", {"num_gpus": 1.0})
    with pytest.raises(PluginError) as err:  # what the flag does not drop is still checked
        load_config(path, engine_overrides(path, "local", ["engine.options.x=1"]))
    assert err.value.where.endswith("engine.options.x")


def test_build_engine_builds_the_configured_engine_from_the_runs_worker(tmp_path):
    pytest.importorskip("refineg_gazetteer", reason="pip install -e examples/refineg-gazetteer")
    from refineg_core.pipeline.worker import Worker

    config = load_config(
        write(tmp_path, '[tagger]\nplugin = "gazetteer"\n[engine]\nkind = "local"\n'),
        check_paths=False,
    )
    worker = Worker(config)
    try:
        with registry.registered("engine", "counting", CountingEngine):
            config.engine.kind = "counting"
            engine = build_engine(worker)
            assert type(engine) is CountingEngine and engine.worker is worker
            assert engine.report("predict") == {"kind": "local"}
            assert engine.usage("predict") == {}
        config.engine.kind = "local"
        assert type(build_engine(worker)) is LocalEngine
    finally:
        worker.close()


class ReportingEngine(CountingEngine):
    """A third-party engine as a run meets it: counts its chunks, says its name."""

    built: ClassVar[list[ReportingEngine]] = []

    def __init__(self, worker, options=None) -> None:
        super().__init__(worker, options)
        ReportingEngine.built.append(self)

    def report(self, stage: str) -> dict[str, Any]:
        return {"kind": "counting", "chunks": self.chunks}


def test_a_run_on_a_third_party_engine_equals_the_local_one(tmp_path):
    """engine.kind names an engine registered by name (not the core's): a run goes
    through it chunk by chunk, and its predictions are the local engine's."""
    pytest.importorskip("refineg_gazetteer", reason="pip install -e examples/refineg-gazetteer")
    from refineg_formats.twitter import read_twitter_gmner, write_twitter_gmner

    from tests.conftest import TWITTER
    from tests.stagedata import gazetteer_config, write_config

    if not TWITTER.exists():
        pytest.skip(f"real data not found at {TWITTER}")
    root = tmp_path / "data"
    (root / "images").mkdir(parents=True)
    train = read_twitter_gmner(TWITTER / "train.txt").samples[:60]
    write_twitter_gmner(train, root / "train" / "train.txt")
    dev = read_twitter_gmner(TWITTER / "dev.txt").samples[:20]
    write_twitter_gmner(dev, root / "dev" / "dev.txt")

    def run(kind: str) -> tuple[list[str], dict[str, Any]]:
        run_dir = tmp_path / kind
        text = gazetteer_config(root, "http://127.0.0.1:9/v1", run_dir, refine=False, ground=False)
        config = write_config(tmp_path, text, f"{kind}.toml")
        sets = ["--set", "engine.chunk_size=7", "--set", f'engine.kind="{kind}"']
        result = run_cli(["run", "-c", str(config), "--quiet", *sets])
        assert result.code == 0, result.stderr
        summary = json.loads((run_dir / "summary.json").read_text(encoding="utf-8"))
        lines = (run_dir / "predict.jsonl").read_text(encoding="utf-8").splitlines()
        return lines, summary

    ReportingEngine.built.clear()
    with registry.registered("engine", "counting", ReportingEngine):
        counted, summary = run("counting")
    local, local_summary = run("local")
    assert len(ReportingEngine.built) == 1
    assert summary["stages"]["predict"]["engine"] == {"kind": "counting", "chunks": 3}
    assert local_summary["stages"]["predict"]["engine"] == {"kind": "local"}
    assert len(counted) == 20 and counted == local
