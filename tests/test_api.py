"""The Python API is the CLI's own Pipeline: ``refineg.load(run_dir)(text)``."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
from refineg_openai.testing import FakeOpenAIServer, ok

import refineg
from refineg_core.testing import run_cli
from tests.stagedata import TWITTER_LABELS_TOML, paint_image

pytest.importorskip("refineg_gazetteer", reason="pip install -e examples/refineg-gazetteer")


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory) -> tuple[Path, Path]:
    """A run directory whose tagger was trained by `refineg train` on real tweets."""
    from tests.conftest import TWITTER

    if not TWITTER.exists():
        pytest.skip(f"real data not found at {TWITTER}")
    root = tmp_path_factory.mktemp("api")
    cfg = root / "c.toml"
    cfg.write_text(
        textwrap.dedent(f'''
        run_dir = "{root / "run"}"
        {TWITTER_LABELS_TOML}
        [data.train]
        path = "{TWITTER / "train.txt"}"
        limit = 2000
        [tagger]
        plugin = "gazetteer"
        [uncertainty.options]
        threshold = 0.0
        [backend]
        plugin = "openai"
        [backend.options]
        base_url = "http://127.0.0.1:9/v1"
        model = "fake-model"
        retries = 0
    '''),
        encoding="utf-8",
    )
    result = run_cli(["train", "-c", str(cfg)])
    assert result.code == 0, result.stderr
    return root / "run", cfg


def test_readme_five_lines_on_a_trained_tagger(trained_run):
    run_dir, _ = trained_run
    pipe = refineg.load(run_dir)
    doc = pipe("Obama visits Paris with Justin Bieber")
    found = {(e.text, e.type) for e in doc.entities}
    assert ("Obama", "PER") in found and ("Paris", "LOC") in found
    for e in doc.entities:  # no server answers: grounding was not attempted, and says so
        assert e.source == "tagger" and e.boxes is None and e.uncertainty is not None
    assert isinstance(pipe, refineg.Pipeline) and doc.text.startswith("Obama")


def _load_against(run_dir, server):
    """The trained run, its backend pointed at the fake server (box frame: pixels)."""
    base_url = f'backend.options.base_url="{server.base_url}"'
    return refineg.load(run_dir, overrides=[base_url, 'backend.options.box_frame="pixels"'])


def _obama_in_paris(request):
    """The fake MLLM's answers: Obama and Paris for refine, a box for Obama in ground."""
    if "box" in request.text.lower():
        return ok('[{"entity": "Obama", "type": "PER", "boxes": [[10, 10, 200, 300]]}]')
    return ok('[{"name": "Obama", "type": "PER"}, {"name": "Paris", "type": "LOC"}]')


def test_pipe_streams_many_in_order_and_uses_the_mllm_when_it_answers(trained_run, tmp_path):
    run_dir, _ = trained_run
    image = paint_image(tmp_path / "photo.jpg", (640, 480))
    texts = ["Obama visits Paris", "nothing to see here", "Madrid beat Barcelona"]
    with FakeOpenAIServer() as server:
        server.responder = _obama_in_paris
        with _load_against(run_dir, server) as pipe:
            docs = list(pipe.pipe(texts, images=[image, None, None], batch_size=2))
        assert [d.text for d in docs] == texts
        obama = next(e for e in docs[0].entities if e.text == "Obama")
        assert obama.source == "mllm" and obama.boxes and obama.grounded_by == "mllm"
        assert server.chat_requests, "the answering backend was used"
    # nothing but the MLLM cache is written into the run directory by the API
    assert not (run_dir / "refine.jsonl").exists() and not (run_dir / "ground.jsonl").exists()


def test_the_mllm_stages_run_in_memory_without_any_temp_file(trained_run, tmp_path, monkeypatch):
    """pipe() walks the run's stages in memory with the run's worker: with no usable
    temp folder at all (tempfile's folder is a file) refine and ground still answer,
    in the run's stage order, and the run directory gains nothing but the cache."""
    import tempfile

    from refineg_core.pipeline.order import MLLM_STAGES

    run_dir, _ = trained_run
    image = paint_image(tmp_path / "photo.jpg", (640, 480))
    before = {p for p in run_dir.rglob("*") if "cache" not in p.relative_to(run_dir).parts}
    with FakeOpenAIServer() as server:
        server.responder = _obama_in_paris
        blocked = tmp_path / "not-a-folder"
        blocked.write_text("tempfile cannot create anything under a file", encoding="utf-8")
        monkeypatch.setattr(tempfile, "tempdir", str(blocked))
        with _load_against(run_dir, server) as pipe:
            doc = pipe("Obama visits Paris", image=image)
        monkeypatch.undo()
    assert list(doc.meta["stages"]) == ["predict", *MLLM_STAGES]
    assert all(v["status"] == "ran" for v in doc.meta["stages"].values()), doc.meta["stages"]
    obama = next(e for e in doc.entities if e.text == "Obama")
    assert obama.source == "mllm" and obama.boxes
    after = {p for p in run_dir.rglob("*") if "cache" not in p.relative_to(run_dir).parts}
    assert after == before


def test_a_chunk_computes_its_stage_settings_once(trained_run, tmp_path, monkeypatch):
    """Each MLLM stage's settings (a copy with the config's wording) are made once
    per chunk, not once for the stage and again to ask whether it is enabled."""
    from refineg_core.pipeline import worker

    made: list[str] = []
    real = worker.stage_settings

    def counted(config, stage):
        made.append(stage)
        return real(config, stage)

    monkeypatch.setattr(worker, "stage_settings", counted)
    run_dir, _ = trained_run
    image = paint_image(tmp_path / "photo.jpg", (640, 480))
    with FakeOpenAIServer() as server:
        server.responder = _obama_in_paris
        with _load_against(run_dir, server) as pipe:
            docs = list(pipe.pipe(["Obama visits Paris"] * 3, images=[image] * 3, batch_size=2))
    assert all(d.meta["stages"]["ground"]["status"] == "ran" for d in docs), docs[0].meta
    assert made == ["refine", "ground"] * 2  # two chunks (2 + 1 posts), once per stage each


def test_the_stage_plugin_class_is_looked_up_once_per_loaded_run(
    trained_run, tmp_path, monkeypatch
):
    """Finding a stage's class scans entry points: a loaded run does it once per
    stage, not once per chunk (``pipe`` runs chunks for every call)."""
    from refineg_core.pipeline import worker

    looked_up: list[str] = []
    real = worker.stage_class

    def counted(config, stage):
        looked_up.append(stage)
        return real(config, stage)

    monkeypatch.setattr(worker, "stage_class", counted)
    run_dir, _ = trained_run
    image = paint_image(tmp_path / "photo.jpg", (640, 480))
    with FakeOpenAIServer() as server:
        server.responder = _obama_in_paris
        with _load_against(run_dir, server) as pipe:
            for _ in range(2):  # two calls, two chunks each
                docs = list(pipe.pipe(["Obama visits Paris"] * 3, images=[image] * 3, batch_size=2))
                assert all(d.meta["stages"]["ground"]["status"] == "ran" for d in docs)
    assert sorted(looked_up) == ["ground", "refine"]
