"""A run never hands back a wrong result that looks right.

Each test is a case that the first review reproduced on the old main: stale
stages reused after a setting changed, outages written as "not groundable",
failures replayed from the cache forever, late validation, plugins built per
stage, resumed summaries that lied. The real gazetteer tagger (example plugin),
the real entropy gate and the real OpenAI backend over HTTP to a loopback
server run on real tweets.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from refineg_openai.backend import OpenAIBackend
from refineg_openai.testing import FakeOpenAIServer, drop, error, ok

from refineg_core.formats.native import read_results
from refineg_core.pipeline.retry import needs_retry
from refineg_core.registry import registered
from refineg_core.testing import run_cli
from tests.stagedata import gazetteer_config as config
from tests.stagedata import oracle, query_text, write_config, write_gazetteer_data

pytest.importorskip("refineg_gazetteer", reason="pip install -e examples/refineg-gazetteer")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from tests.conftest import TWITTER

    if not TWITTER.exists():
        pytest.skip(f"real data not found at {TWITTER}")
    root = tmp_path_factory.mktemp("tw")
    gold = write_gazetteer_data(root, TWITTER)
    return root, gold


def entities(run: Path) -> list:
    return [(r.id, e.key, e.boxes) for r in read_results(run / "final.jsonl") for e in r.entities]


def test_changed_gate_setting_recomputes_downstream_reuses_tagger_and_says_why(data, tmp_path):
    root, gold = data
    with FakeOpenAIServer(oracle(gold)) as server:
        cfg = write_config(tmp_path, config(root, server.base_url, tmp_path / "run"))
        first = run_cli(["run", "-c", str(cfg)])
        assert first.code == 0, first.stderr
        calls = len(server.chat_requests)
        assert calls > 0

        run = tmp_path / "run"
        retry = [
            r.id
            for stage in ("refine", "ground")
            for r in read_results(run / f"{stage}.jsonl")
            if needs_retry(r, stage)
        ]
        same = run_cli(["run", "-c", str(cfg)])
        assert same.code == 0, same.stderr
        # an unchanged rerun asks again only what had no usable answer (none here)
        assert retry == [] and len(server.chat_requests) == calls
        for stage in ("train", "predict", "refine", "ground"):
            assert f"{stage}: reusing" in same.stderr, same.stderr
        status = run_cli(["status", "-c", str(cfg)])
        assert status.code == 0 and status.stdout.count("fresh") == 4, status.stdout

        changed = [
            "--set",
            "uncertainty.options.threshold=0.99",
            "--set",
            "uncertainty.options.missed_entities=false",
        ]
        stale = run_cli(["status", "-c", str(cfg), *changed])
        assert "uncertainty.options.threshold changed 0.4 -> 0.99" in " ".join(stale.stdout.split())
        second = run_cli(["run", "-c", str(cfg), *changed])
        assert second.code == 0, second.stderr
        assert "train: reusing" in second.stderr  # a gate change never retrains
        assert "predict: recomputing: uncertainty.options.missed_entities changed" in second.stderr
        assert "refine: recomputing" in second.stderr and "ground: recomputing" in second.stderr

        # The result equals a fresh run directory with the new settings.
        fresh_cfg = write_config(
            tmp_path, config(root, server.base_url, tmp_path / "fresh"), "fresh.toml"
        )
        fresh = run_cli(["run", "-c", str(fresh_cfg), *changed])
        assert fresh.code == 0, fresh.stderr
        assert entities(tmp_path / "run") == entities(tmp_path / "fresh")

        retrain = run_cli(
            ["run", "-c", str(cfg), *changed, "--set", "tagger.options.case_sensitive=false"]
        )
        assert retrain.code == 0, retrain.stderr
        assert "train: retraining: tagger.options.case_sensitive changed true -> false" in (
            retrain.stderr
        )


def test_resumed_predict_summary_counts_the_gate(data, tmp_path):
    root, gold = data
    with FakeOpenAIServer(oracle(gold)) as server:
        cfg = write_config(tmp_path, config(root, server.base_url, tmp_path / "run"))
        assert run_cli(["run", "-c", str(cfg)]).code == 0
        first = json.loads((tmp_path / "run" / "summary.json").read_text())["stages"]["predict"]
        assert run_cli(["run", "-c", str(cfg)]).code == 0
        again = json.loads((tmp_path / "run" / "summary.json").read_text())["stages"]["predict"]
    assert again["resumed"] and first["entities_delegated"] > 0
    for key in ("entities_delegated", "samples_delegated", "entities"):
        assert again[key] == first[key]


def test_required_stage_without_server_fails_in_one_line(data, tmp_path):
    root, _ = data
    cfg = write_config(
        tmp_path, config(root, "http://127.0.0.1:9/v1", tmp_path / "run", ground=True)
    )
    result = run_cli(["run", "-c", str(cfg)])
    assert result.code == 3
    error_lines = [ln for ln in result.stderr.splitlines() if ln.startswith("refineg: error")]
    assert len(error_lines) == 1 and "127.0.0.1:9" in error_lines[0]


def test_auto_stage_without_server_exits_0_and_nothing_claims_a_judgement(data, tmp_path):
    root, _ = data
    cfg = write_config(tmp_path, config(root, "http://127.0.0.1:9/v1", tmp_path / "run"))
    result = run_cli(["run", "-c", str(cfg)])
    assert result.code == 0, result.stderr
    final = read_results(tmp_path / "run" / "final.jsonl")
    assert final and all(e.boxes is None for r in final for e in r.entities)
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["final"]["grounding_not_attempted"] == summary["final"]["entities"] > 0
    assert summary["final"]["judged_not_groundable"] == 0
    ccks = json.loads((tmp_path / "run" / "final.ccks.json").read_text())
    assert sum(len(v) for v in ccks.values()) == summary["final"]["entities"]


@pytest.mark.parametrize("base", ["wrong-model", "no-v1"])
def test_misconfigured_backend_is_an_error_when_required(data, tmp_path, base):
    root, gold = data
    answer = oracle(gold)

    def like_vllm(request):  # vLLM serves the API under /v1 only
        return answer(request) if request.path.startswith("/v1/") else error(404, "Not Found")

    with FakeOpenAIServer(like_vllm) as server:
        url = server.base_url.removesuffix("/v1") if base == "no-v1" else server.base_url
        text = config(root, url, tmp_path / "run", refine=True)
        if base == "wrong-model":
            text = text.replace('model = "fake-model"', 'model = "not-served"')
        result = run_cli(["run", "-c", str(write_config(tmp_path, text))])
        assert result.code == 3, result.stderr
        # a breaker stops a backend that fails every call: no thousand failed requests
        assert len(server.chat_requests) <= 8


def test_server_killed_mid_run_then_restarted_redoes_exactly_what_failed(data, tmp_path):
    root, gold = data
    answer = oracle(gold)
    seen: dict[tuple[bool, str], int] = {}

    def flaky(request):
        key = ("box" in request.text.lower(), query_text(request.text))
        seen[key] = seen.get(key, 0) + 1
        # the first 8 distinct queries of each stage answer, then the server "dies"
        if sum(k[0] == key[0] for k in seen) > 8 and seen[key] == 1:
            return drop()
        return answer(request)

    with FakeOpenAIServer(flaky) as server:
        text = config(root, server.base_url, tmp_path / "run").replace(
            "threshold = 0.4", "threshold = 0.0"
        )  # delegate every sample with an entity
        cfg = write_config(tmp_path, text)
        first = run_cli(["run", "-c", str(cfg)])
        assert first.code == 0, first.stderr
        failed = [
            r
            for r in read_results(tmp_path / "run" / "refine.jsonl")
            if any(f.stage == "refine" for f in r.failures)
        ]
        failed_ground = [
            r
            for r in read_results(tmp_path / "run" / "ground.jsonl")
            if any(f.stage == "ground" for f in r.failures)
        ]
        assert failed and failed_ground
        before = len(server.chat_requests)

        server.responder = answer  # "restarted", healthy
        second = run_cli(["run", "-c", str(cfg)])
        assert second.code == 0, second.stderr
        refine_calls = [r for r in server.chat_requests[before:] if "box" not in r.text.lower()]
        assert len(refine_calls) == len(failed)  # only what had no usable answer
    final = read_results(tmp_path / "run" / "final.jsonl")
    ids = [r.id for r in final]
    assert len(ids) == len(set(ids)) == len(gold)  # nothing lost, nothing twice
    assert not any(r.failures for r in final)
    for stage in ("refine", "ground"):
        lines = [r.id for r in read_results(tmp_path / "run" / f"{stage}.jsonl")]
        assert len(lines) == len(set(lines))


def test_unusable_answers_are_not_cached_and_are_asked_again(data, tmp_path):
    root, gold = data
    with FakeOpenAIServer(default=ok("I am sorry, I cannot help with that.")) as server:
        cfg = write_config(tmp_path, config(root, server.base_url, tmp_path / "run", ground=False))
        assert run_cli(["run", "-c", str(cfg)]).code == 0
        first = len(server.chat_requests)
        refine = read_results(tmp_path / "run" / "refine.jsonl")
        assert first > 0 and all(
            any(f.stage == "refine" for f in r.failures) for r in refine if r.gate.delegate_sample
        )
        server.default = ok("[]")
        server.responder = oracle(gold)
        assert run_cli(["run", "-c", str(cfg)]).code == 0
        assert len(server.chat_requests) == 2 * first  # every unusable answer asked again
    assert not any(r.failures for r in read_results(tmp_path / "run" / "final.jsonl"))


def test_one_backend_per_run_and_every_plugin_closed(data, tmp_path):
    root, gold = data
    built, closed = [], []

    class CountingBackend(OpenAIBackend):
        def __init__(self, *a, **kw):
            super().__init__(*a, **kw)
            built.append(self)

        def close(self):
            closed.append(self)
            super().close()

    with (
        FakeOpenAIServer(oracle(gold)) as server,
        registered("backend", "counting", CountingBackend),
    ):
        text = config(root, server.base_url, tmp_path / "run").replace(
            'plugin = "openai"', 'plugin = "counting"'
        )
        result = run_cli(["run", "-c", str(write_config(tmp_path, text))])
        assert result.code == 0, result.stderr
    assert len(built) == 1 and closed == built


def test_failed_command_leaves_no_run_directory_and_flags_go_anywhere(data, tmp_path):
    root, _ = data
    text = config(root, "http://127.0.0.1:9/v1", tmp_path / "run").replace(
        'path = "' + str(root) + '/train/train.txt"',
        'path = "' + str(root) + '/train/train.txt"\nformat = "jsonl"',
    )  # a CoNLL file read as JSONL: fails at data load
    result = run_cli(["run", "-c", str(write_config(tmp_path, text)), "--debug", "--quiet"])
    assert result.code != 0
    assert not (tmp_path / "run").exists()


def run_variants(tmp_path: Path, cfg: Path, variants: Path, *extra: str):
    import subprocess
    import sys

    repo = Path(__file__).resolve().parents[1]
    proc = subprocess.run(
        [
            sys.executable,
            str(repo / "benchmarks" / "run_variants.py"),
            "--config",
            str(cfg),
            "--variants",
            str(variants),
            "--out",
            str(tmp_path / "out"),
            *extra,
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr
    return proc, json.loads((tmp_path / "out" / "comparison.json").read_text())


def test_variants_harness_trains_one_tagger_for_gate_only_variants(data, tmp_path):
    root, _ = data
    cfg = write_config(tmp_path, config(root, "http://127.0.0.1:9/v1", tmp_path / "unused"))
    variants = Path(__file__).resolve().parents[1] / "benchmarks/variants/gate-thresholds.toml"
    proc, result = run_variants(tmp_path, cfg, variants, "--full")
    assert "tagger trainings: 1 for 3 runs (2 saved)" in proc.stderr
    rows = result["runs"]
    assert [r["tagger"] for r in rows] == ["trained here", "shared (tau-0.1)", "shared (tau-0.1)"]
    delegated = [r["delegated_entities"] for r in rows]
    assert delegated == sorted(delegated, reverse=True) and delegated[0] > delegated[-1]
    # the compact table: one row per variant, the paper's columns, no raw counters
    table = (tmp_path / "out" / "comparison.md").read_text().splitlines()
    head = "| variant | tagger MNER | refine MNER | ground GMNER | ground EEG | requests | cached"
    assert table[0] == head + " | tokens |", table[0]
    assert [line.split(" | ")[0] for line in table[2:]] == ["| tau-0.1", "| tau-0.4", "| tau-0.8"]
    assert "delegated_entities" in (tmp_path / "out" / "comparison-full.md").read_text()


def test_variants_share_one_response_cache_so_a_prompt_is_asked_once(data, tmp_path):
    """Two variants that send the same ground prompts (ground k=0 does not depend on
    the gate threshold for samples both keep) pay for each prompt once."""
    root, gold = data
    variants = tmp_path / "v.toml"
    variants.write_text(
        '[[variant]]\nname = "a"\nset = ["uncertainty.options.threshold=0.4"]\n'
        '[[variant]]\nname = "b"\nset = ["uncertainty.options.threshold=0.5"]\n',
        encoding="utf-8",
    )
    with FakeOpenAIServer(oracle(gold)) as server:
        cfg = write_config(tmp_path, config(root, server.base_url, tmp_path / "unused"))
        _, result = run_variants(tmp_path, cfg, variants)
        sent = [r.text for r in server.chat_requests]
    a, b = result["runs"]
    assert a["requests"] > 0 and a["cached_requests"] == 0
    # the second variant found the first's answers in the shared cache
    assert b["cached_requests"] > 0, b
    # every prompt reached the server exactly once, over both variants
    assert len(sent) == len(set(sent)) == a["requests"] + b["requests"]
    assert (tmp_path / "out" / "cache").is_dir()
    assert not (tmp_path / "out" / "a" / "cache").exists()


def test_variants_table_reports_mean_and_spread_over_seeds():
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "run_variants.py"
    spec = importlib.util.spec_from_file_location("run_variants", path)
    rv = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(rv)
    summaries = [
        {"eval": {"predict": {"mner": f1}}, "stages": {"ground": {"backend": {"calls": c}}}}
        for f1, c in ((0.70, 10), (0.74, 12), (0.72, 11))
    ]
    rows = [{**rv.summary_row(s), "variant": "x", "seed": i} for i, s in enumerate(summaries)]
    (entry,) = rv.compare(rows)
    f1 = entry["tagger MNER"]
    assert f1["values"] == [70.0, 74.0, 72.0] and (f1["min"], f1["max"]) == (70.0, 74.0)
    assert abs(f1["mean"] - 72.0) < 1e-9 and abs(f1["sd"] - 2.0) < 1e-9
    table = rv.to_markdown([entry]).splitlines()
    assert table[0] == "| variant | seeds | tagger MNER | requests | cached | tokens |"
    assert table[2] == "| x | 3 | 72.0 ± 2.0 | 11 ± 1 | 0 ± 0 | 0 ± 0 |", table[2]


def test_data_limit_is_applied_while_reading_and_the_warning_log_is_per_run(data, tmp_path):
    root, _ = data
    text = config(root, "http://127.0.0.1:9/v1", tmp_path / "run").replace(
        f'path = "{root}/train/train.txt"',
        f'path = "{root}/train/train.txt"\nimages_dir = "{root}/images"\nlimit = 5',
    )
    cfg = write_config(tmp_path, text)
    for _ in range(2):
        assert run_cli(["run", "-c", str(cfg)]).code == 0
        log = (tmp_path / "run" / "data-warnings.log").read_text().splitlines()
        # only the 5 training tweets read are checked for an image (none is there)
        assert 0 < len(log) <= 5, log


def test_two_replicas_one_killed_mid_run_the_summary_counts_each(data, tmp_path):
    root, gold = data
    answer = oracle(gold)
    with FakeOpenAIServer(answer) as a, FakeOpenAIServer(answer) as b:
        calls = {"n": 0}

        def dies_after_five(request):
            calls["n"] += 1
            if calls["n"] == 5:
                a.stop()  # the replica goes away mid-run
            return answer(request)

        a.responder = dies_after_five
        text = (
            config(root, a.base_url, tmp_path / "run")
            .replace(f'base_url = "{a.base_url}"', f'base_url = ["{a.base_url}", "{b.base_url}"]')
            .replace("threshold = 0.4", "threshold = 0.0")
        )
        result = run_cli(["run", "-c", str(write_config(tmp_path, text))])
        assert result.code == 0, result.stderr
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    endpoints = summary["stages"]["refine"]["backend"]["endpoints"]
    assert len(endpoints) == 2 and all(e["requests"] > 0 for e in endpoints.values())
    final = read_results(tmp_path / "run" / "final.jsonl")
    assert len(final) == len(gold) and not any(r.failures for r in final)


def test_a_gate_that_fits_on_dev_is_calibrated_by_the_run(data, tmp_path):
    root, _ = data
    text = (
        config(root, "http://127.0.0.1:9/v1", tmp_path / "run")
        .replace(
            "[uncertainty.options]",
            '[uncertainty]\nplugin = "temperature_entropy"\n[uncertainty.options]',
        )
        .replace("[data.predict]", f'[data.dev]\npath = "{root}/dev/dev.txt"\n[data.predict]')
    )
    cfg = write_config(tmp_path, text)
    result = run_cli(["run", "-c", str(cfg)])
    assert result.code == 0, result.stderr
    calibration = json.loads((tmp_path / "run" / "summary.json").read_text())["calibration"]
    assert calibration["temperature"] > 0
    status = run_cli(["status", "-c", str(cfg), "--json"])
    assert json.loads(status.stdout)["predict"]["state"] == "fresh"
