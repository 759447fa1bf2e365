"""The Python API as a demanding library user meets it.

What the caller typed wrong (a text that is not a ``str``, a ``str`` where an
iterable of texts belongs, an image path that does not exist, a folder, a URL)
is an exception at call time that names the argument; what a file *contains*
(an existing file that is no image) is a per-sample image failure recorded in
the result, and the text is still annotated. A library call prints nothing
unless asked (``progress=True``), says in ``doc.meta["stages"]`` which stages
ran or were skipped and why, and gives character offsets into the text as it
was passed.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
import tomllib
from refineg_openai.testing import FakeOpenAIServer, ok

import refineg
from refineg_core.testing import run_cli
from refineg_core.types import Entity
from tests.stagedata import TWITTER_LABELS_TOML, paint_image

pytest.importorskip("refineg_gazetteer", reason="pip install -e examples/refineg-gazetteer")

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """A run directory whose gazetteer tagger `refineg train` trained on real tweets; its
    backend points at a port where nothing answers."""
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
    return root / "run"


@pytest.fixture(scope="module")
def pipe(run_dir):
    with refineg.load(run_dir) as p:
        yield p


@pytest.mark.parametrize("bad", [None, b"Obama visits Paris", 3, ["Obama"]])
def test_a_text_that_is_not_a_str_is_a_clear_type_error(pipe, bad):
    with pytest.raises(TypeError) as err:
        pipe(bad)
    message = str(err.value)
    assert "text" in message and type(bad).__name__ in message
    assert "expected string or bytes-like object" not in message  # not the regex's own words


def test_pipe_refuses_a_single_str(pipe):
    with pytest.raises(TypeError, match="a single str"):
        list(pipe.pipe("one text"))
    with pytest.raises(TypeError, match=r"texts\[1\]"):
        list(pipe.pipe(["fine", None]))


def test_image_arguments_the_caller_got_wrong_are_errors_at_call_time(pipe, tmp_path):
    with pytest.raises(FileNotFoundError, match="image"):
        pipe("Obama visits Paris", image=tmp_path / "missing.jpg")
    with pytest.raises(IsADirectoryError, match="image"):
        pipe("Obama visits Paris", image=tmp_path)
    with pytest.raises(ValueError, match="URL"):
        pipe("Obama visits Paris", image="https://example.com/photo.jpg")
    with pytest.raises(TypeError, match="image"):
        pipe("Obama visits Paris", image=42)
    with pytest.raises(FileNotFoundError, match=r"images\[1\]"):
        list(pipe.pipe(["a", "b"], images=[None, tmp_path / "missing.jpg"]))


def test_a_file_that_is_no_image_is_a_recorded_image_failure(pipe, tmp_path):
    not_image = tmp_path / "passwd"
    not_image.write_text("root:x:0:0:root:/root:/bin/bash\n", encoding="utf-8")
    doc = pipe("Obama visits Paris", image=not_image)
    (failure,) = [f for f in doc.failures if f.kind == "image"]
    assert str(not_image) in failure.message and failure.stage == "input"
    assert doc.sample.image is None or doc.sample.image.path is None  # never sent anywhere
    assert {e.text for e in doc.entities} >= {"Obama", "Paris"}  # the text still counts
    assert not any(f.kind == "backend_error" for f in doc.failures)


def test_an_unreachable_backend_is_explained_in_meta(pipe, tmp_path):
    image = paint_image(tmp_path / "photo.jpg", (64, 48))
    doc = pipe("Obama visits Paris", image=image)
    stages = doc.meta["stages"]
    assert stages["predict"]["status"] == "ran"
    for stage in ("refine", "ground"):
        assert stages[stage]["status"] == "skipped"
        assert "nothing answers at http://127.0.0.1:9/v1" in stages[stage]["reason"]
    assert doc.entities and all(e.boxes is None for e in doc.entities)
    without_image = pipe("Obama visits Paris").meta["stages"]["ground"]
    assert without_image["status"] == "ran" and "no image" in without_image["reason"]


def test_character_offsets_point_into_the_text_as_passed(pipe):
    text = "  Obama   visits Paris!  with\tJustin Bieber"
    doc = pipe(text)
    assert doc.entities
    for e in doc.entities:
        assert text[e.char_start : e.char_end] == e.text.replace(" ", " ") or (
            " ".join(text[e.char_start : e.char_end].split()) == e.text
        )
    paris = next(e for e in doc.entities if e.text == "Paris")
    assert (paris.char_start, paris.char_end) == (17, 22)


def test_a_library_call_is_quiet_unless_asked(run_dir, tmp_path, capfd, monkeypatch):
    monkeypatch.delenv("REFINEG_NO_PROGRESS", raising=False)
    image = paint_image(tmp_path / "photo.jpg", (64, 48))
    with FakeOpenAIServer(default=ok('[{"name": "Obama", "type": "PER"}]')) as server:
        overrides = [f'backend.options.base_url="{server.base_url}"']
        with refineg.load(run_dir, overrides=overrides) as p:
            capfd.readouterr()
            doc = p("Obama visits Paris", image=image)
            quiet = capfd.readouterr()
            loud_docs = list(p.pipe(["Obama visits Rome"] * 3, progress=True))
            loud = capfd.readouterr()
        assert server.chat_requests  # the stages really ran
    assert doc.meta["stages"]["refine"]["status"] == "ran"
    assert quiet.out == "" and quiet.err == ""
    assert len(loud_docs) == 3 and "refine" in loud.err


def test_entity_source_has_no_misleading_default():
    e = Entity(0, 1, "PER", "Obama")
    assert e.source is None  # not "gold": whoever builds an entity says who decided it


def test_the_packages_declare_their_type_hints():
    for package in ("refineg", "refineg_core"):
        assert (ROOT / package / "py.typed").is_file(), package
    data = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    patterns = data["tool"]["setuptools"]["package-data"]
    assert any("py.typed" in p for ps in patterns.values() for p in ps)
