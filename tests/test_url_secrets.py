"""Secrets by value everywhere, also inside a ``base_url``: userinfo, query-string
keys and the Basic credential a client builds from them, in every file and stream
a run writes; and a ``base_url`` with a query string (Azure's ``?api-version=``)
gets its path joined before the query."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest
from refineg_openai.backend import OpenAIBackend
from refineg_openai.endpoints import join_url
from refineg_openai.testing import FakeOpenAIServer, error, ok

from refineg_core import secrets
from refineg_core.chat import ChatMessage, ChatRequest
from refineg_core.errors import BackendError
from refineg_core.testing import run_cli
from tests.stagedata import TWITTER_LABELS_TOML, gazetteer_config, oracle

USER, PASSWORD, QKEY = "alice-user", "pw-Secret-93817", "qk-Secret-11223"
BASIC = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
LEAKS = (PASSWORD, QKEY, BASIC, f"{USER}:{PASSWORD}")


@pytest.fixture(autouse=True)
def _forget():
    yield
    secrets.forget_all()


def url_with_secrets(server: FakeOpenAIServer) -> str:
    return (
        f"http://{USER}:{PASSWORD}@127.0.0.1:{server.port}/v1?api-version=2024-06-01&api_key={QKEY}"
    )


def assert_clean(text: str, where: str) -> None:
    for leak in LEAKS:
        assert leak not in text, f"{leak!r} in {where}"


# ------------------------------------------------------------------ secrets
def test_redact_masks_credentials_inside_url_strings():
    url = f"https://{USER}:{PASSWORD}@gw.example/v1?api-version=2024-06-01&api_key={QKEY}"
    shown = secrets.redact({"base_url": url, "list": [url], "model": "m"})
    assert_clean(json.dumps(shown), "redact")
    assert shown["base_url"].startswith("https://***:***@gw.example/v1?")
    assert "api-version=2024-06-01" in shown["base_url"]  # not a secret: kept readable
    assert shown["model"] == "m"


def test_registering_a_url_hides_its_basic_credential_in_both_forms():
    url = f"http://{USER}:{PASSWORD}@h.example/v1?token={QKEY}"
    secrets.register(secrets.url_secrets(url))
    echoed = f"Authorization: Basic {BASIC} / decoded {USER}:{PASSWORD} / {QKEY}"
    assert_clean(secrets.scrub(echoed), "scrub")


def test_basic_header_values_hide_the_decoded_credential():
    secrets.register(secrets.secret_values({"headers": {"Authorization": f"Basic {BASIC}"}}))
    assert_clean(secrets.scrub(f"got {BASIC} for {USER}:{PASSWORD}"), "scrub")


def test_join_url_keeps_the_query_after_the_path():
    base = "https://x.example/openai/deployments/d?api-version=2024-06-01"
    assert join_url(base, "chat/completions") == (
        "https://x.example/openai/deployments/d/chat/completions?api-version=2024-06-01"
    )
    assert join_url("http://h:1/v1/", "/models") == "http://h:1/v1/models"


# ------------------------------------------------------------------ config
def test_config_show_and_config_json_hide_url_credentials(tmp_path):
    url = f"http://{USER}:{PASSWORD}@127.0.0.1:9/v1?api_key={QKEY}"
    cfg = tmp_path / "c.toml"
    cfg.write_text(
        f'run_dir = "{tmp_path / "run"}"\n{TWITTER_LABELS_TOML}\n[backend]\nplugin = "openai"\n'
        f'[backend.options]\nbase_url = "{url}"\nmodel = "m"\n',
        encoding="utf-8",
    )
    for flags in ([], ["--json"], ["--defaults"], ["--defaults", "--json"]):
        result = run_cli(["config", "show", "-c", str(cfg), *flags])
        assert result.code == 0, result.stderr
        assert "127.0.0.1:9" in result.stdout
        assert_clean(result.stdout + result.stderr, f"config show {flags}")

    from refineg_core.config import load_config
    from refineg_core.pipeline.orchestrator import Pipeline

    with Pipeline(load_config(cfg)) as pipe:
        pipe.prepare_run_dir()
    assert_clean((tmp_path / "run" / "config.json").read_text(encoding="utf-8"), "config.json")


# ------------------------------------------------------------------ backend
def test_backend_reaches_an_azure_style_url_and_scrubs_what_the_server_echoes():
    def echo(req):
        if "api-version=2024-06-01" not in req.path:
            return error(404, "Resource not found")
        return ok(f"you sent {req.headers.get('authorization')} and {req.path}")

    with FakeOpenAIServer(echo) as server:
        backend = OpenAIBackend(
            OpenAIBackend.Options(base_url=url_with_secrets(server), model="fake-model")
        )
        request = ChatRequest((ChatMessage.text("user", "hi"),))
        answer = backend.complete(request)
        (sent,) = server.chat_requests
        assert sent.path.startswith("/v1/chat/completions?")  # the path before the query
        assert sent.headers["authorization"] == f"Basic {BASIC}"  # the credential was used
        assert_clean(answer.text, "answer")
        assert "you sent ***" in answer.text
        assert backend.check_available() is None  # GET .../models?api-version=... too
        assert_clean(json.dumps(backend.report()), "report")
        assert_clean(backend.describe(), "describe")

        server.script(error(401, f"bad credential Basic {BASIC} ({USER}:{PASSWORD})"))
        with pytest.raises(BackendError) as failed:
            backend.complete(ChatRequest((ChatMessage.text("user", "again"),)))
        assert_clean(str(failed.value), "error")
        backend.close()


# ------------------------------------------------------------------ a whole run
@pytest.fixture(scope="module")
def data(tmp_path_factory):
    pytest.importorskip("refineg_gazetteer", reason="pip install -e examples/refineg-gazetteer")
    from tests.conftest import TWITTER
    from tests.stagedata import write_gazetteer_data

    if not TWITTER.exists():
        pytest.skip(f"real data not found at {TWITTER}")
    root = tmp_path_factory.mktemp("tw")
    return root, write_gazetteer_data(root, TWITTER, n_train=200, n_dev=8)


def test_a_run_writes_no_url_credential_anywhere(data, tmp_path):
    root, gold = data
    answer = oracle(gold)

    def echoing(req):
        if "api-version=2024-06-01" not in req.path:
            return error(404, "Resource not found")
        if "Obama" in req.text or len(server.chat_requests) % 3 == 0:
            # a failing gateway that repeats the credential it was sent
            return error(400, f"rejected {req.headers.get('authorization')} {USER}:{PASSWORD}")
        reply = answer(req)
        text = reply.text if hasattr(reply, "text") else reply
        return ok(f"{text}\n(auth {req.headers.get('authorization')})")

    with FakeOpenAIServer(echoing) as server:
        text = gazetteer_config(root, url_with_secrets(server), tmp_path / "run", refine=True)
        cfg = tmp_path / "c.toml"
        cfg.write_text(text, encoding="utf-8")
        result = run_cli(["run", "-c", str(cfg)])
        assert server.chat_requests, result.stderr
        assert all("?api-version=2024-06-01" in r.path for r in server.chat_requests)
    assert_clean(result.stdout + result.stderr, "stdout/stderr")
    run = tmp_path / "run"
    files = [p for p in run.rglob("*") if p.is_file()]
    assert any(p.name == "config.json" for p in files)
    for path in files:
        assert_clean(path.read_bytes().decode("utf-8", "replace"), str(path.relative_to(run)))
    assert "***" in (run / "config.json").read_text(encoding="utf-8")


def test_part_file_of_an_interrupted_stage_is_clean_too(data, tmp_path):
    """``refine.part.jsonl`` is what a killed run leaves: written line by line, scrubbed."""
    from refineg_stages.refine import RefineSettings, run_refine

    from tests.stagedata import LABELS, prediction

    _root, gold = data
    samples = list(gold.values())[:3]

    def echoing(req):
        return error(400, f"rejected {req.headers.get('authorization')}")

    with FakeOpenAIServer(echoing) as server:
        backend = OpenAIBackend(
            OpenAIBackend.Options(base_url=url_with_secrets(server), model="fake-model", retries=0)
        )
        part = Path(tmp_path / "refine.part.jsonl")
        preds = [prediction(s, uncertainty=[0.9] * len(s.entities)) for s in samples]
        run_refine(preds, backend, LABELS, RefineSettings(), part)
        backend.close()
    written = part.read_text(encoding="utf-8")
    assert "rejected ***" in written
    assert_clean(written, "refine.part.jsonl")
