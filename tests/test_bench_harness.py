"""The benchmark harness (benchmarks/harness.py) and the gold-answering fake MLLM.

The harness is what makes a benchmark number readable: interleaved order,
median and min-max, and a result file that says which command, code and
machine produced it. The gold responder is checked against real requests built
by the refine and ground stages, sent over HTTP by the real openai backend.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from refineg_openai.testing import FakeOpenAIServer, backend_for, gold_items, gold_responder
from refineg_stages.ground import GroundSettings, run_ground
from refineg_stages.refine import RefineSettings, run_refine
from refineg_stages.testing import prediction, with_image

from refineg_core.labels import LabelSet
from refineg_core.types import Box, Entity, Sample

REPO = Path(__file__).resolve().parents[1]
LABELS = LabelSet({"PER": "person", "LOC": "location", "ORG": "organisation"})


@pytest.fixture(scope="module")
def harness():
    """benchmarks/harness.py as a module (benchmarks/ is not a package)."""
    spec = importlib.util.spec_from_file_location("harness", REPO / "benchmarks" / "harness.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class FakeClock:
    """A clock each case advances by a known duration, so timings are exact."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


# -- timing ------------------------------------------------------------------------


def test_schedule_interleaves_every_case_once_per_round(harness):
    assert harness.schedule(["A", "B"], 3) == ["A", "B", "A", "B", "A", "B"]
    assert harness.schedule(["A", "B", "C"], 1) == ["A", "B", "C"]
    with pytest.raises(ValueError, match="reps"):
        harness.schedule(["A"], 0)


def test_interleaved_warms_up_then_runs_a_b_a_b_and_times_each_run(harness):
    clock = FakeClock()
    order: list[str] = []
    durations = {"A": iter([9.0, 1.0, 3.0, 2.0]), "B": iter([9.0, 10.0, 30.0, 20.0])}

    def case(name: str):
        def run() -> str:
            order.append(name)
            clock.now += next(durations[name])
            return name.lower()

        return run

    seen: list[tuple[str, float, object]] = []
    timings = harness.interleaved(
        {"A": case("A"), "B": case("B")},
        reps=3,
        clock=clock,
        on_run=lambda *row: seen.append(row),
    )
    # one untimed warm-up round (9 s each, not counted), then A B A B A B
    assert order == ["A", "B", "A", "B", "A", "B", "A", "B"]
    assert timings["A"].seconds == (1.0, 3.0, 2.0)
    assert timings["B"].seconds == (10.0, 30.0, 20.0)
    assert [(n, s) for n, s, _ in seen] == [
        ("A", 1.0),
        ("B", 10.0),
        ("A", 3.0),
        ("B", 30.0),
        ("A", 2.0),
        ("B", 20.0),
    ]
    assert {r for _, _, r in seen} == {"a", "b"}
    assert (timings["A"].median, timings["A"].low, timings["A"].high) == (2.0, 1.0, 3.0)
    assert harness.ratio(timings["A"], timings["B"]) == pytest.approx(10.0)


def test_interleaved_without_warmup_runs_only_the_timed_rounds(harness):
    calls: list[str] = []
    harness.interleaved({"A": lambda: calls.append("A")}, reps=2, warmup=False)
    assert calls == ["A", "A"]


def test_median_and_min_max_math(harness):
    t = harness.Timing("x", (4.0, 1.0, 3.0, 2.0))
    assert t.median == 2.5  # even count: the mean of the middle two
    assert (t.low, t.high) == (1.0, 4.0)
    # items per second: the slowest run is the minimum rate
    assert t.rate(8) == {"median": 3.2, "min": 2.0, "max": 8.0}
    d = t.as_dict()
    assert d["median_s"] == 2.5 and d["runs_s"] == [4.0, 1.0, 3.0, 2.0]
    assert harness.summary([5, 1, 3]) == {"median": 3, "min": 1, "max": 5, "n": 3}
    with pytest.raises(ValueError):
        harness.summary([])
    with pytest.raises(ValueError, match="no timing"):
        harness.Timing("empty", ())


# -- threads and the writer -----------------------------------------------------------


def test_fix_threads_pins_the_pools_and_torch(harness, monkeypatch):
    torch = pytest.importorskip("torch")
    before = torch.get_num_threads()
    for var in harness.THREAD_VARS:
        monkeypatch.setenv(var, "7")
    try:
        assert harness.fix_threads(1) == 1
        assert torch.get_num_threads() == 1
        assert all(os.environ[v] == "1" for v in harness.THREAD_VARS)
        with pytest.raises(SystemExit, match="at least 1"):
            harness.fix_threads(0)
    finally:
        torch.set_num_threads(before)


def test_the_writer_records_command_git_machine_threads_and_load(harness, tmp_path, capsys):
    ap = harness.parser("A test bench.\n\nMore words.", out="x.json", threads=1)
    args = ap.parse_args(["--out", str(tmp_path / "r" / "x.json"), "--reps", "2"])
    assert args.reps == 2 and args.threads == 1 and args.seed == 0
    assert Path(args.data) == harness.DATA
    session = harness.Session(
        args,
        threads=1,
        load_before=[0.5, 0.4, 0.3],
        started=0.0,
        argv=[str(REPO / "benchmarks" / "bench_x.py"), "--reps", "2"],
    )
    path = session.write({"rows": [{"case": "a", "median_s": 1.0}], "where": tmp_path})
    doc = json.loads(path.read_text(encoding="utf-8"))
    assert doc["rows"] == [{"case": "a", "median_s": 1.0}]
    assert doc["where"] == str(tmp_path)  # paths are written as strings
    prov = doc["provenance"]
    # the script path relative to the repository, not this machine's absolute path
    assert prov["command"] == "python benchmarks/bench_x.py --reps 2"
    head = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout.strip()
    assert prov["git"]["revision"] == head
    assert isinstance(prov["git"]["dirty"], bool)
    machine = prov["machine"]
    assert machine["cpu"] and machine["cores"] == os.cpu_count()
    assert machine["threads"] == prov["threads"] == 1
    assert isinstance(machine["flags"], list) and "torch" in machine["versions"]
    assert prov["load_before"] == [0.5, 0.4, 0.3]
    assert len(prov["load_after"]) == 3
    assert "wrote" in capsys.readouterr().out
    with pytest.raises(ValueError, match="provenance"):
        session.write({"provenance": 1})


def test_out_dash_prints_and_writes_nothing(harness, tmp_path, capsys):
    args = harness.parser(None, out=None).parse_args([])
    assert args.out == "-"
    session = harness.Session(args, threads=2, load_before=None, started=0.0, argv=["b.py"])
    assert session.write({"n": 3}) is None
    printed = json.loads(capsys.readouterr().out)
    assert printed["n"] == 3 and printed["provenance"]["threads"] == 2
    assert list(tmp_path.iterdir()) == []


def test_help_of_a_script_shows_the_shared_flags():
    run = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "bench_mllm_stages.py"), "--help"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr
    for flag in ("--threads", "--reps", "--data", "--out", "--seed"):
        assert flag in run.stdout


#: Scripts other helpers own today; they adopt the harness (and lose any machine path) later.
OWNED_ELSEWHERE = {
    "bench_tagger_speed.py",
    "bench_ground_select.py",
    "bench_labeling.py",
    "bench_gate_guarantee.py",
}


def test_no_absolute_machine_paths_in_benchmarks():
    # result files (.json) are records of what ran, paths included; scripts and pages are not
    for path in sorted((REPO / "benchmarks").rglob("*")):
        if path.suffix not in {".py", ".md", ".toml"} or path.name in OWNED_ELSEWHERE:
            continue
        text = path.read_text(encoding="utf-8")
        for needle in ("/work/", "/tmp/", ".venv/bin"):
            assert needle not in text, f"{path.relative_to(REPO)} names {needle!r}"


def _anchor(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    seen: dict[str, int] = {}
    out = set()
    in_code = False
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("```"):
            in_code = not in_code
        m = None if in_code else re.match(r"^#{1,6} (.*)$", line)
        if m:
            a = _anchor(m.group(1))
            n = seen.get(a, 0)
            out.add(a if n == 0 else f"{a}-{n}")
            seen[a] = n + 1
    return out


LINK = re.compile(r"\]\(([^)\s]+)\)")


def test_every_link_of_the_results_pages_and_the_docs_into_them_resolves():
    docs = [
        *sorted((REPO / "benchmarks").glob("*.md")),
        *sorted((REPO / "benchmarks" / "pages").glob("*.md")),
        REPO / "README.md",
        REPO / "CONTRIBUTING.md",
    ]
    checked = 0
    for doc in docs:
        for target in LINK.findall(doc.read_text(encoding="utf-8")):
            if "://" in target or target.startswith(("#", "mailto:")):
                continue
            file, _, anchor = target.partition("#")
            path = (doc.parent / file).resolve()
            if doc.name in {"README.md", "CONTRIBUTING.md"} and "benchmarks" not in str(path):
                continue  # the docs' own tests own their other links
            assert path.exists(), f"{doc.relative_to(REPO)}: {target} does not exist"
            if anchor:
                assert anchor in _anchors(path), f"{doc.relative_to(REPO)}: no #{anchor} in {file}"
            checked += 1
    assert checked > 50  # the pages link their history and result files


def test_the_index_lists_every_page_and_each_page_opens_with_its_current_numbers():
    index = (REPO / "benchmarks" / "RESULTS.md").read_text(encoding="utf-8")
    pages = sorted((REPO / "benchmarks" / "pages").glob("*.md"))
    assert len(pages) >= 8
    for page in pages:
        assert f"(pages/{page.name})" in index, page.name
        text = page.read_text(encoding="utf-8")
        # the page opens with its table of current numbers, which names the commands
        header = next(line for line in text.splitlines() if line.startswith("|"))
        assert "command" in header, page.name
        assert text.index(header) < text.find("\n## ") or "\n## " not in text, page.name


# -- the gold responder ------------------------------------------------------------


def samples(folder: Path) -> list[Sample]:
    """Two posts with gold entities and boxes, and painted images at their sizes."""
    a = Sample(
        "a",
        ("Obama", "visits", "Paris"),
        "Obama visits Paris",
        None,
        (
            Entity(0, 1, "PER", "Obama", boxes=(Box(10, 20, 110, 220),)),
            Entity(2, 3, "LOC", "Paris", boxes=()),
        ),
    )
    b = Sample(
        "b",
        ("NASA", "and", "Lee"),
        "NASA and Lee",
        None,
        (
            Entity(0, 1, "ORG", "NASA", boxes=(Box(300, 40, 470, 300), Box(5, 5, 50, 50))),
            Entity(2, 3, "PER", "Lee", boxes=(Box(60, 70, 160, 170),)),
        ),
    )
    return [with_image(s, folder, i) for i, s in enumerate([a, b])]


def test_gold_responder_answers_real_refine_requests_with_gold(tmp_path):
    posts = samples(tmp_path / "img")
    inputs = [prediction(s, uncertainty=[0.9] * len(s.entities)) for s in posts]
    # the tagger "missed" Lee: a perfect model adds it back
    inputs[1] = prediction(posts[1], uncertainty=[0.9, 0.9])
    with FakeOpenAIServer(gold_responder(posts, prose=True)) as server:
        backend = backend_for(server)
        results, summary = run_refine(
            inputs, backend, LABELS, RefineSettings(), tmp_path / "refine.jsonl"
        )
        backend.close()
        assert len(server.chat_requests) == 2
    assert summary.failed == 0
    for post, result in zip(posts, results, strict=True):
        assert {e.key for e in result.entities} == {e.key for e in post.entities}


def test_gold_responder_answers_real_ground_requests_in_the_backend_frame(tmp_path):
    posts = samples(tmp_path / "img")
    inputs = [prediction(s, uncertainty=[0.9] * len(s.entities)) for s in posts]
    with FakeOpenAIServer() as server:
        backend = backend_for(server, box_frame="qwen2.5-vl")
        server.responder = gold_responder(posts, codec=backend.box_codec)
        results, summary = run_ground(
            inputs, [], None, backend, LABELS, GroundSettings(k=0), tmp_path / "ground.jsonl"
        )
        backend.close()
        sent = server.chat_requests
    assert summary.failed == 0 and len(sent) == 2
    for post, result in zip(posts, results, strict=True):
        got = {e.key: e.boxes for e in result.entities}
        for gold in post.entities:
            boxes = got[gold.key]
            assert boxes is not None and len(boxes) == len(gold.boxes)
            # decoded back from the model's frame to original pixels (rounding only)
            for want in gold.boxes:
                assert max(b.iou(want) for b in boxes) > 0.95, (gold, boxes)
    # the answer really was in the model's frame, not in original pixels (the two
    # requests run concurrently: either may have been sent first)
    answers = [item for req in sent for item in json.loads(req.reply.text)]
    obama = next(a for a in answers if a["entity"] == "Obama")
    assert obama["boxes"][0] != [10, 20, 110, 220]


def test_gold_responder_answers_only_what_is_asked_and_unknown_posts_with_nothing(tmp_path):
    posts = samples(tmp_path / "img")
    lee = posts[1].entities[1]
    asked = [{"entity": "Lee", "type": "PER"}, {"entity": "Mars", "type": "LOC"}]
    assert gold_items(posts[1], "ground", asked=asked) == [
        {"entity": "Lee", "type": "PER", "boxes": [[round(v) for v in lee.boxes[0].as_list()]]},
        {"entity": "Mars", "type": "LOC", "boxes": []},
    ]
    assert gold_items(posts[0], "refine") == [
        {"name": "Obama", "type": "PER"},
        {"name": "Paris", "type": "LOC"},
    ]
    with pytest.raises(ValueError, match="stage"):
        gold_items(posts[0], "predict")
    unknown = attrs_evolve_text(posts[0], "a post nobody has seen")
    with FakeOpenAIServer(gold_responder(posts)) as server:
        backend = backend_for(server)
        results, _ = run_refine(
            [prediction(unknown, uncertainty=[0.9, 0.9])],
            backend,
            LABELS,
            RefineSettings(),
            tmp_path / "r.jsonl",
        )
        backend.close()
        assert server.chat_requests[0].reply.text == "[]"
    assert results[0].entities == ()  # a perfect model of an unknown post finds nothing


def attrs_evolve_text(sample: Sample, text: str) -> Sample:
    import attrs

    return attrs.evolve(sample, id="unknown", text=text)
