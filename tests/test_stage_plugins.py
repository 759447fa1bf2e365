"""MLLM stages are plugins: listed, chosen by the config, refused loudly, really run.

Refine and ground come from the built-in ``refineg_stages`` package through the
``refineg.stages`` entry points, exactly like a third-party stage. These tests
run the real pipeline (the example gazetteer tagger, the real ``openai``
backend over HTTP to the loopback fake server, real tweets): a variant
installed as a distribution must be what the driver runs, and change the
stage's fingerprint; a misspelt or misnamed stage plugin must stop the run
before any work with exit 2.
"""

from __future__ import annotations

import json
import textwrap

import pytest
from refineg_openai.testing import FakeOpenAIServer

from refineg_core.testing import fake_distribution, register_plugin, run_cli
from tests.stagedata import gazetteer_config, oracle, write_config, write_gazetteer_data

pytest.importorskip("refineg_gazetteer", reason="pip install -e examples/refineg-gazetteer")

#: A refine variant: the built-in stage, with a mark in every asked sample's meta.
VARIANT = textwrap.dedent('''
    import attrs
    from refineg_stages.refine import RefineStage

    class MarkedRefine(RefineStage):
        """The built-in refine, marking each sample it asks about."""

        def request(self, result):
            call = super().request(result)
            if hasattr(call, "info"):
                call = attrs.evolve(call, info={**call.info, "variant": "marked"})
            return call
''')


def test_refineg_plugins_lists_the_stage_kind_and_the_built_in_stages():
    listed = run_cli(["plugins", "--json"])
    assert listed.code == 0, listed.stderr
    stages = {p["name"]: p for p in json.loads(listed.stdout) if p["group"] == "refineg.stages"}
    assert set(stages) >= {"refine", "ground", "synth"}
    assert stages["refine"]["target"] == "refineg_stages.refine:RefineStage"
    assert stages["synth"]["target"] == "refineg_stages.synth:SynthesisStage"
    kinds = run_cli(["plugins", "--kinds", "--json"])
    [stage] = [k for k in json.loads(kinds.stdout) if k["kind"] == "stage"]
    assert stage["group"] == "refineg.stages" and stage["base"] == "Stage"
    assert stage["required"] == ["name"]


def _config(tmp_path, url, extra: str = "") -> str:
    text = gazetteer_config(tmp_path / "data", url, tmp_path / "run", refine=True, ground=False)
    return write_config(tmp_path, text + extra)


@pytest.fixture
def gold(twitter_dir, tmp_path):
    return write_gazetteer_data(tmp_path / "data", twitter_dir, n_train=200, n_dev=12)


def test_an_unknown_stage_plugin_stops_the_run_before_any_work(gold, tmp_path):
    with FakeOpenAIServer(oracle(gold)) as server:
        cfg = _config(tmp_path, server.base_url, '[refine]\nplugin = "refine_v2"\n')
        result = run_cli(["run", "-c", str(cfg)])
        calls = len(server.chat_requests)
    assert result.code == 2, result.stderr
    assert "refine.plugin" in result.stderr and "'refine_v2' is not installed" in result.stderr
    assert "ground, refine" in result.stderr  # what is installed
    assert calls == 0 and not (tmp_path / "run" / "predict.jsonl").exists()


def test_a_stage_plugin_must_run_under_its_stages_name(gold, tmp_path):
    source = VARIANT + "\nMarkedRefine.name = 'refine_marked'\n"
    with (
        fake_distribution(tmp_path / "dist", "x", "1", {}, {"misnamed": source}),
        FakeOpenAIServer(oracle(gold)) as server,
    ):
        from misnamed import MarkedRefine

        with register_plugin("stage", "marked", MarkedRefine):
            cfg = _config(tmp_path, server.base_url, '[refine]\nplugin = "marked"\n')
            result = run_cli(["run", "-c", str(cfg)])
    assert result.code == 2, result.stderr
    assert "refine.plugin" in result.stderr and "'refine_marked'" in result.stderr


def test_an_installed_stage_variant_is_what_the_driver_runs(gold, tmp_path):
    entry_points = {"refineg.stages": {"marked": "marked_stage:MarkedRefine"}}
    with FakeOpenAIServer(oracle(gold)) as server:
        builtin = _config(tmp_path, server.base_url)
        assert run_cli(["run", "-c", str(builtin)]).code == 0
        record = json.loads((tmp_path / "run" / "stages" / "refine.json").read_text())
        with fake_distribution(
            tmp_path / "dist", "refineg-marked", "1.0", entry_points, {"marked_stage": VARIANT}
        ):
            cfg = _config(tmp_path, server.base_url, '[refine]\nplugin = "marked"\n')
            status = run_cli(["status", "-c", str(cfg), "--json"])
            result = run_cli(["run", "-c", str(cfg)])
    assert result.code == 0, result.stderr
    assert "refine.plugin" not in json.dumps(record)  # the built-in adds no part
    # the variant changes the fingerprint: the built-in's output is not reused
    refine_status = json.loads(status.stdout)["refine"]
    assert refine_status["state"] == "stale", refine_status
    assert any("refine.plugin" in why for why in refine_status["reasons"]), refine_status
    rows = [json.loads(line) for line in (tmp_path / "run" / "refine.jsonl").open()]
    asked = [r for r in rows if "delegated" in r.get("meta", {}).get("refine", {})]
    assert asked and all(r["meta"]["refine"]["variant"] == "marked" for r in asked)


#: A refine variant whose every request carries one more user turn.
WORDIER = textwrap.dedent('''
    import attrs
    from refineg_core.chat import ChatMessage
    from refineg_stages.refine import RefineStage

    class WordierRefine(RefineStage):
        """The built-in refine, asking one more thing in every request."""

        def request(self, result):
            call = super().request(result)
            if not hasattr(call, "request"):
                return call
            more = ChatMessage.text("user", "Think about every candidate twice. " * 10)
            request = attrs.evolve(call.request, messages=(*call.request.messages, more))
            return attrs.evolve(call, request=request)
''')


def test_refineg_plan_costs_the_configured_stage_plugin(gold, tmp_path):
    entry_points = {"refineg.stages": {"wordier": "wordier_stage:WordierRefine"}}
    costs = {}
    with (
        FakeOpenAIServer(oracle(gold)) as server,
        fake_distribution(
            tmp_path / "dist", "refineg-wordier", "1.0", entry_points, {"wordier_stage": WORDIER}
        ),
    ):
        for name in ("refine", "wordier"):
            cfg = _config(tmp_path, server.base_url, f'[refine]\nplugin = "{name}"\n')
            result = run_cli(["plan", "-c", str(cfg), "--json", "--targets", ""])
            assert result.code == 0, result.stderr
            costs[name] = json.loads(result.stdout)["configured"]["refine"]
        assert server.chat_requests == []  # a plan sends nothing
    assert costs["wordier"]["requests"] == costs["refine"]["requests"] > 0
    assert costs["wordier"]["prompt_text_tokens"] > costs["refine"]["prompt_text_tokens"]
