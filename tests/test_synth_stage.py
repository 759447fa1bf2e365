"""Synthesis is a stage plugin: ``[synth] plugin`` picks it from ``refineg.stages``.

The run is the real CLI with the real ``llm`` synthesizer and ``openai`` backend
over HTTP to the loopback fake server; the seeds are a two-line JSONL file
written here. A misspelt or wrong-kind plugin must stop ``refineg synth`` with
exit 2 before any request or file; a registered variant must be what runs.
"""

from __future__ import annotations

import json
import textwrap

from refineg_openai.testing import FakeOpenAIServer, ok
from refineg_stages.synth import SynthesisStage

from refineg_core.testing import register_plugin, run_cli

SEEDS = [
    {"id": "s1", "tokens": ["Obama", "visits", "Paris"], "text": "Obama visits Paris",
     "entities": [{"start": 0, "end": 1, "type": "PER", "text": "Obama"}]},
    {"id": "s2", "tokens": ["Merkel", "in", "Rome"], "text": "Merkel in Rome",
     "entities": [{"start": 2, "end": 3, "type": "LOC", "text": "Rome"}]},
]  # fmt: skip
REPLY = json.dumps([{"text": "Macron met Biden .", "entity": [{"name": "Biden", "type": "PER"}]}])


def _config(tmp_path, url: str, plugin: str | None) -> str:
    seeds = tmp_path / "seeds.jsonl"
    seeds.write_text("".join(json.dumps(s) + "\n" for s in SEEDS), encoding="utf-8")
    synth = f'[synth]\nplugin = "{plugin}"\n' if plugin else ""
    cfg = tmp_path / "c.toml"
    cfg.write_text(
        textwrap.dedent(f"""
        run_dir = "{tmp_path / "run"}"
        [labels]
        PER = "a person"
        LOC = "a place"
        [data.train]
        path = "{seeds}"
        format = "jsonl"
        [synthesizer]
        plugin = "llm"
        [synth_backend]
        plugin = "openai"
        [synth_backend.options]
        base_url = "{url}"
        model = "fake-model"
        """)
        + synth,
        encoding="utf-8",
    )
    return str(cfg)


def test_a_misspelt_synth_plugin_stops_before_any_request(tmp_path):
    with FakeOpenAIServer() as server:
        server.default = ok(REPLY)
        result = run_cli(["synth", "-c", _config(tmp_path, server.base_url, "synht")])
        calls = len(server.chat_requests)
    assert result.code == 2, result.stderr
    assert "synth.plugin" in result.stderr and "'synht' is not installed" in result.stderr
    assert calls == 0 and not (tmp_path / "run" / "synth").exists()


def test_an_mllm_stage_is_refused_as_the_synth_stage(tmp_path):
    with FakeOpenAIServer() as server:
        result = run_cli(["synth", "-c", _config(tmp_path, server.base_url, "refine")])
        calls = len(server.chat_requests)
    assert result.code == 2, result.stderr
    assert "synth.plugin" in result.stderr and "is not a SynthStage" in result.stderr
    assert calls == 0


class MarkedSynthesis(SynthesisStage):
    """The built-in synthesis, with a mark in its report."""

    def run(self, *args, **kwargs):
        return {**super().run(*args, **kwargs), "variant": "marked"}


def test_the_configured_synth_stage_is_what_runs(tmp_path):
    with FakeOpenAIServer() as server:
        server.default = ok(REPLY)
        default = run_cli(["synth", "-c", _config(tmp_path, server.base_url, None)])
        assert default.code == 0, default.stderr
        summary = json.loads((tmp_path / "run" / "summary.json").read_text())
        assert (
            summary["stages"]["synth"]["kept"] == 1 and "variant" not in summary["stages"]["synth"]
        )
        with register_plugin("stage", "marked", MarkedSynthesis):
            marked = run_cli(["synth", "-c", _config(tmp_path, server.base_url, "marked")])
    assert marked.code == 0, marked.stderr
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["stages"]["synth"]["variant"] == "marked"
    assert summary["stages"]["synth"]["resumed"] == 2  # the same folder: seeds are done
