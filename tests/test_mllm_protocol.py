"""The MLLM-stage protocol: one frame, stages that supply only their own parts.

Real tweets, the real ``openai`` backend over HTTP to the loopback fake
server, the real stage classes. A dry run (``refineg plan``'s entry point)
must build exactly the requests the stages then send; stage events must fire
once per stage however many chunks the engine (local or Ray) cuts the input
into; the config must not depend on the stages; and ``refineg_plan`` must
reach the stages through public names only.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from refineg_openai.testing import FakeOpenAIServer
from refineg_stages.ground import GroundStage, run_ground
from refineg_stages.refine import RefineStage, run_refine

from refineg_core.chat import ChatRequest, ImagePart, TextPart
from refineg_core.hooks import get_hooks, hookimpl
from refineg_core.pipeline.stage_contract import dry_run
from refineg_core.stage_settings import GroundSettings, RefineSettings
from refineg_core.testing import run_cli
from tests.stagedata import (
    LABELS,
    WORDING,
    OverlapSelector,
    backend_for,
    gazetteer_config,
    oracle,
    prediction,
    real_samples,
    with_image,
    write_config,
    write_gazetteer_data,
)

ROOT = Path(__file__).resolve().parents[1]


def _shape(request: ChatRequest) -> tuple[str, int]:
    """What the fake server records of a request: its text parts joined, its images."""
    parts = [p for m in request.messages for p in m.parts]
    text = "\n".join(p.text for p in parts if isinstance(p, TextPart))
    return text, sum(isinstance(p, ImagePart) for p in parts)


def _sent(server: FakeOpenAIServer, since: int = 0) -> list[tuple[str, int]]:
    return sorted((r.text, len(r.image_urls)) for r in server.chat_requests[since:])


def test_dry_run_builds_exactly_the_requests_the_stages_send(twitter_dir, tmp_path, server):
    samples = [
        with_image(s, tmp_path / "img", i) for i, s in enumerate(real_samples(twitter_dir, 12))
    ]
    # every other sample has one uncertain entity (delegated); the rest stay with the tagger
    preds = [
        prediction(s, uncertainty=[0.9 if i % 2 else 0.1] + [0.1] * (len(s.entities) - 1))
        for i, s in enumerate(samples)
    ]
    server.responder = oracle({s.text: s for s in samples})
    backend = backend_for(server)
    settings = RefineSettings(wording=WORDING)  # the shipped Twitter wording
    planned = sorted(_shape(r) for _, r in dry_run(RefineStage(backend, LABELS, settings), preds))
    assert server.chat_requests == []  # a dry run makes no call
    run_refine(preds, backend, LABELS, settings, tmp_path / "refine.jsonl")
    assert planned == _sent(server)
    assert len(planned) == sum(1 for p in preds if p.gate.delegate_sample) == 6
    assert all(WORDING.domain in text for text, _ in planned)  # the config's wording travels

    pool = [
        with_image(s, tmp_path / "pool", 50 + i)
        for i, s in enumerate(real_samples(twitter_dir, 8, skip=40))
    ]
    selector = OverlapSelector()
    selector.index(pool)
    ground = GroundSettings(k=2, wording=WORDING)
    stage = GroundStage(backend, LABELS, ground, selector=selector, pool_size=len(pool))
    planned = sorted(_shape(r) for _, r in dry_run(stage, preds))
    since = len(server.chat_requests)
    run_ground(preds, pool, selector, backend, LABELS, ground, tmp_path / "ground.jsonl")
    assert planned == _sent(server, since)
    assert len(planned) == len(preds)
    assert all(images == 3 for _, images in planned)  # two demonstrations and the query
    assert all(WORDING.domain in text for text, _ in planned)


class _EventLog:
    """A hook plugin recording every stage event."""

    def __init__(self) -> None:
        self.events: list[tuple[str, str, object]] = []

    @hookimpl
    def refineg_stage_started(self, stage, total):
        self.events.append(("start", stage, total))

    @hookimpl
    def refineg_stage_finished(self, stage, summary):
        self.events.append(("end", stage, summary.get("processed")))


@pytest.mark.parametrize("engine", ["local", "ray"])
def test_stage_events_fire_once_per_stage_on_both_engines(engine, twitter_dir, tmp_path):
    pytest.importorskip("refineg_gazetteer", reason="pip install -e examples/refineg-gazetteer")
    if engine == "ray":
        pytest.importorskip("ray", reason="pip install 'refineg[ray]'")
    gold = write_gazetteer_data(tmp_path / "data", twitter_dir)
    log = _EventLog()
    hooks = get_hooks()
    hooks.register(log)
    try:
        with FakeOpenAIServer(oracle(gold)) as server:
            text = gazetteer_config(tmp_path / "data", server.base_url, tmp_path / "run")
            cfg = write_config(tmp_path, text)
            args = ["run", "-c", str(cfg), "--set", "engine.chunk_size=8"]
            if engine == "ray":
                args += ["--engine", "ray", "--set", "engine.options.num_cpus=0.25"]
            result = run_cli(args)
            calls = len(server.chat_requests)
    finally:
        hooks.unregister(log)
    assert result.code == 0, result.stderr
    assert calls > 0  # the MLLM stages really ran, in 4 chunks of 8 tweets
    counts = Counter((kind, stage) for kind, stage, _ in log.events)
    for stage in ("predict", "refine", "ground"):
        assert counts[("start", stage)] == 1, (stage, log.events)
        assert counts[("end", stage)] == 1, (stage, log.events)
    mllm = [(kind, stage, n) for kind, stage, n in log.events if stage in ("refine", "ground")]
    # the start counts the whole input; the end carries the whole stage's summary
    assert mllm == [
        ("start", "refine", 30),
        ("end", "refine", 30),
        ("start", "ground", 30),
        ("end", "ground", 30),
    ]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["stages"]["ground"]["engine"]["kind"] == engine


def test_the_config_imports_no_stage_module():
    probe = (
        "import sys, refineg_core.config; "
        "print([m for m in sys.modules if m.startswith('refineg_core.pipeline')])"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, cwd=ROOT
    )
    assert out.stdout.strip() == "[]"


def test_plan_plugin_uses_public_names_only():
    private = []
    for path in sorted((ROOT / "plugins" / "refineg_plan").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module != "__future__":
                parts = (node.module or "").split(".")
                names = [a.name for a in node.names]
                bad = [n for n in [*parts, *names] if n.startswith("_")]
                private += [f"{path.name}:{node.lineno} {n}" for n in bad]
    assert private == []
