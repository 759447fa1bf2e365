"""The run split by job: data (``inputs``), fingerprints (``planner``), the engines'
dependency on the ``Worker`` alone, and the one place that says the stage order.

Real Twitter-GMNER tweets (copied into a temporary folder), the real example
gazetteer tagger and entropy gate; no plugin is faked.
"""

from __future__ import annotations

import json

import pytest
from refineg_formats.twitter import read_twitter_gmner, write_twitter_gmner

from refineg_core.config import load_config
from refineg_core.errors import ConfigError
from refineg_core.pipeline import order
from refineg_core.pipeline.orchestrator import Pipeline
from refineg_core.pipeline.worker import Worker
from tests.stagedata import gazetteer_config, write_config
from tests.test_import_graph import MODULES, imports_of

pytest.importorskip("refineg_gazetteer", reason="pip install -e examples/refineg-gazetteer")


@pytest.fixture(scope="module")
def tweets(tmp_path_factory):
    """60 real train tweets and 20 real dev tweets (Twitter-GMNER files, no images)."""
    from tests.conftest import TWITTER

    if not TWITTER.exists():
        pytest.skip(f"real data not found at {TWITTER}")
    root = tmp_path_factory.mktemp("split")
    (root / "images").mkdir()  # the tweets run without their images
    write_twitter_gmner(
        read_twitter_gmner(TWITTER / "train.txt").samples[:60], root / "train" / "train.txt"
    )
    write_twitter_gmner(
        read_twitter_gmner(TWITTER / "dev.txt").samples[:20], root / "dev" / "dev.txt"
    )
    return root


def _pipeline(root, tmp_path, *extra: str) -> Pipeline:
    text = gazetteer_config(root, "http://127.0.0.1:9/v1", tmp_path / "run")
    return Pipeline(load_config(write_config(tmp_path, text), list(extra)))


def test_engines_reach_the_worker_but_never_the_pipeline():
    """Both engines (and everything they import) depend on the Worker, not on the run."""
    run_side = {
        f"refineg_core.pipeline.{m}"
        for m in ("orchestrator", "planner", "training", "predicting", "finishing", "inmemory")
    }
    for start in ("refineg_core.pipeline.engines", "refineg_ray.engine"):
        seen, todo = set(), [start]
        while todo:
            module = todo.pop()
            if module in seen:
                continue
            seen.add(module)
            todo.extend(imports_of(module, MODULES[module])[0])
        assert "refineg_core.pipeline.worker" in seen, start
        assert not seen & run_side, f"{start} reaches {sorted(seen & run_side)}"


def test_a_ray_actor_builds_a_worker_from_the_runs_config(tweets, tmp_path):
    pytest.importorskip("ray", reason="pip install 'refineg[ray]'")
    from refineg_ray.engine import ChunkWorker, worker_config

    with _pipeline(tweets, tmp_path) as pipe:
        actor = ChunkWorker(worker_config(pipe.config), "predict")
    try:
        assert type(actor.worker) is Worker
        # every path absolute: an actor's working directory is not the driver's
        assert actor.worker.config.data.train.path.is_absolute()
        assert actor.worker.config.data.train.path == pipe.config.data.train.path.resolve()
    finally:
        actor.worker.close()


def test_inputs_load_each_split_once_and_name_a_missing_one(tweets, tmp_path):
    with _pipeline(tweets, tmp_path) as pipe:
        # no pool configured: the pool is the train split, the same object read once
        assert pipe.inputs.dataset("pool") is pipe.inputs.dataset("train")
        assert pipe.worker.dataset("train") is pipe.dataset("train")
        digest, count = pipe.inputs.source_stats("predict")
        assert count == 20 and len(digest) == 64
        assert [s.id for s in pipe.inputs.iter_samples("predict")] == [
            s.id for s in pipe.inputs.require("predict").samples
        ]
        with pytest.raises(ConfigError) as missing:
            pipe.inputs.require("dev")
        assert missing.value.where == "data.dev"


def test_data_warnings_reach_the_log_file_once_the_run_directory_exists(tweets, tmp_path):
    said: list[str] = []
    text = gazetteer_config(tweets, "http://127.0.0.1:9/v1", tmp_path / "run")
    with Pipeline(load_config(write_config(tmp_path, text)), log=said.append) as pipe:
        pipe.inputs.source_stats("predict")
        # the copied tweets come without their images: each is a warning, not an error
        assert any("image missing" in w for w in pipe.inputs.warnings)
        log = tmp_path / "run" / "data-warnings.log"
        assert not log.exists()  # nothing is written before the run directory is prepared
        pipe.prepare_run_dir()
        assert log.read_text(encoding="utf-8").splitlines() == pipe.inputs.warnings
        assert any("data warnings" in line and "dev.txt" in line for line in said)


def test_each_stage_is_fingerprinted_by_its_own_planner_method(tweets, tmp_path):
    with _pipeline(tweets, tmp_path) as pipe:
        planner = pipe.planner
        for stage in order.STAGES:
            assert pipe.fingerprint(stage) is planner.fingerprint(stage)  # cached once
        assert planner.fingerprint("train").parts == dict(sorted(planner.train().items()))
        assert planner.fingerprint("predict").parts == dict(sorted(planner.predict().items()))
        assert "upstream.refine" in planner.ground()  # refine is on: ground reads it
        with pytest.raises(KeyError):
            planner.fingerprint("synth")  # not a fingerprinted stage


def test_a_gate_option_changes_predict_and_not_train(tweets, tmp_path):
    def digests(*extra: str) -> dict[str, str]:
        with _pipeline(tweets, tmp_path, *extra) as pipe:
            return {s: pipe.fingerprint(s).digest for s in ("train", "predict")}

    low, high = digests(), digests("uncertainty.options.threshold=0.9")
    assert low["train"] == high["train"]
    assert low["predict"] != high["predict"]
    assert digests() == low  # the same inputs, the same digests


def test_status_says_missing_then_fresh_after_training(tweets, tmp_path):
    with _pipeline(tweets, tmp_path) as pipe:
        assert {s: f.state for s, f in pipe.status().items()} == dict.fromkeys(
            order.STAGES, "missing"
        )
        pipe.train()
        assert pipe.summary["stages"]["train"]["train_samples"] == 60
    with _pipeline(tweets, tmp_path) as again:
        states = again.status()
        assert states["train"].state == "fresh", states["train"]
        assert states["predict"].state == "missing"
        marker = json.loads((tmp_path / "run" / "tagger" / order.TRAINED_MARKER).read_text())
        assert marker["digest"] == again.fingerprint("train").digest


def test_the_pipeline_is_the_run_the_stage_drivers_need(tweets, tmp_path):
    """Every attribute and method the drivers' ``StageRun`` names is the Pipeline's."""
    from refineg_core.pipeline.stagerun import StageRun

    needed = set(StageRun.__annotations__) | {
        name
        for name, value in vars(StageRun).items()
        if not name.startswith("_") and (callable(value) or isinstance(value, property))
    }
    assert {"reuse", "record", "finish_stage", "chunk_size", "planner"} <= needed
    with _pipeline(tweets, tmp_path) as pipe:
        assert sorted(n for n in needed if not hasattr(pipe, n)) == []
    # what a recomputed stage invalidates follows the one stage order
    assert order.downstream("train") == ("predict", "refine", "ground")
    assert order.downstream("ground") == ()
