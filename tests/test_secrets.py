"""The one scrubber every writer uses: what counts as a secret, and where it is hidden."""

from __future__ import annotations

import logging

import pytest

from refineg_core import secrets


@pytest.fixture(autouse=True)
def _forget():
    yield
    secrets.forget_all()


def test_secret_keys_and_the_token_words_that_are_not():
    for key in ("api_key", "X-Api-Key", "Authorization", "hf_token", "access_token", "password"):
        assert secrets.is_secret_key(key), key
    for key in (
        "api_key_env",
        "max_tokens",
        "eos_token",
        "stop_token",
        "skip_special_tokens",
        "top_k",
        "model",
    ):
        assert not secrets.is_secret_key(key), key


def test_redact_masks_strings_under_secret_keys_and_keeps_numbers():
    tree = {
        "api_key": "sk-1",
        "max_tokens": 1024,
        "headers": {"Authorization": "Bearer x"},
        "auth": {"user": "u", "pass": "p"},
        "eos_token": "<|im_end|>",
        "temperature": 0.1,
    }
    assert secrets.redact(tree) == {
        "api_key": "***",
        "max_tokens": 1024,
        "headers": {"Authorization": "***"},
        "auth": {"user": "***", "pass": "***"},
        "eos_token": "<|im_end|>",
        "temperature": 0.1,
    }
    assert sorted(secrets.secret_values(tree)) == ["Bearer x", "p", "sk-1", "u"]


def test_scrubber_hides_every_form_of_a_secret():
    secrets.register(['s3cr3t/with"quote'])
    text = 'a s3cr3t/with"quote b s3cr3t/with\\"quote c s3cr3t%2Fwith%22quote'
    assert secrets.scrub(text) == "a *** b *** c ***"
    assert secrets.scrub_data({"k": ['x s3cr3t/with"quote']}) == {"k": ["x ***"]}
    secrets.register(["abc"])  # too short to be a key: ordinary text is left alone
    assert secrets.scrub("abcdef") == "abcdef"


def test_bearer_header_value_hides_the_bare_token_too():
    secrets.register(["Bearer tok-abcdef123456"])
    assert secrets.scrub("got tok-abcdef123456") == "got ***"


def test_log_records_are_scrubbed(caplog):
    root = logging.getLogger()
    handler = logging.StreamHandler()
    root.addHandler(handler)
    try:
        secrets.register(["sk-logged-998877"])
        assert any(isinstance(f, secrets.ScrubFilter) for f in handler.filters)
        record = logging.LogRecord(
            "x", logging.ERROR, __file__, 1, "key was %s", ("sk-logged-998877",), None
        )
        assert handler.filter(record)
        assert record.getMessage() == "key was ***"
    finally:
        root.removeHandler(handler)


def test_config_dump_redacts_headers_of_a_backend(tmp_path):
    from refineg_core.config import load_config, redacted_dump

    path = tmp_path / "c.toml"
    path.write_text(
        '[labels]\nPER = "a person"\n[backend]\nplugin = "openai"\n[backend.options]\n'
        'headers = {Authorization = "Bearer gw-123456789"}\nmax_tokens = 512\n'
        'extra_body = {api_key = "body-987654321", top_k = 5}\n',
        encoding="utf-8",
    )
    dumped = redacted_dump(load_config(path, check_plugins=False))
    opts = dumped["backend"]["options"]
    assert opts["headers"] == {"Authorization": "***"} and opts["max_tokens"] == 512
    assert opts["extra_body"] == {"api_key": "***", "top_k": 5}


def test_credentials_in_a_base_url_are_secrets():
    from refineg_openai.backend import OpenAIBackend

    backend = OpenAIBackend(
        OpenAIBackend.Options(
            base_url=[
                "https://me:url-pass-4321@gw.example/v1",
                "https://gw2.example/v1?api_key=q-key-8765",
            ]
        )
    )
    described = backend.describe()  # goes into summaries as it is
    assert "url-pass-4321" not in described and "q-key-8765" not in described
    assert "gw.example" in described


def test_stage_jsonl_is_scrubbed_whatever_the_backend(tmp_path):
    """A backend that is not the openai one (no scrubbing of its own) leaks a key
    into an exception: the stage's JSONL line still never holds it."""
    from refineg_stages.refine import RefineSettings, run_refine

    from refineg_core.types import SOURCE_TAGGER, Entity, GateVerdict, Sample, SampleResult
    from tests.stagedata import LABELS, ScriptedBackend

    secrets.register(["local-secret-55aa66bb"])

    def leak(request):
        raise RuntimeError("auth failed with key local-secret-55aa66bb")

    sample = Sample("x", ("Obama",), "Obama")
    pred = SampleResult(
        sample,
        (Entity(0, 1, "PER", "Obama", source=SOURCE_TAGGER),),
        gate=GateVerdict(True, 0.0, frozenset({(0, 1, "PER")})),
    )
    out = tmp_path / "refine.jsonl"
    [res], _ = run_refine([pred], ScriptedBackend(leak), LABELS, RefineSettings(), out)
    assert res.failures and res.entities == pred.entities
    written = out.read_text(encoding="utf-8")
    assert "local-secret-55aa66bb" not in written and "key ***" in written
