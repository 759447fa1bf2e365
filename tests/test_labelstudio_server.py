"""The labeling loop against a real Label Studio server: select, label, import, retrain.

Label Studio lives in its own venv (``scripts/bootstrap.sh`` makes
``.venv-labelstudio``; ``REFINEG_LABEL_STUDIO`` names another ``label-studio``
executable). The server runs on 127.0.0.1 at a free port with SQLite in a temp
folder, images served through its local-files serving; the annotator is
``tests/labelstudio_client.py`` (``label-studio-sdk``, run by that venv's Python).
The first start of a fresh data folder runs Label Studio's migrations: about
3.5 minutes on 2 busy shared cores (measured), so the wait is bounded at 10.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import textwrap
import time
from pathlib import Path

import httpx
import pytest
from refineg_labeling.labelstudio import to_task
from refineg_stages.testing import with_image

from refineg_core.formats import load_dataset
from refineg_core.formats.native import read_results, write_jsonl
from refineg_core.testing import run_cli
from refineg_core.types import SampleResult

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
START_TIMEOUT_S = 600
STOP_TIMEOUT_S = 30


def label_studio_executable() -> Path:
    env = os.environ.get("REFINEG_LABEL_STUDIO")
    exe = Path(env) if env else ROOT / ".venv-labelstudio" / "bin" / "label-studio"
    if not exe.is_file():
        pytest.skip(
            f"Label Studio not found at {exe} (run scripts/bootstrap.sh, which makes "
            ".venv-labelstudio, or set REFINEG_LABEL_STUDIO to a label-studio executable)"
        )
    return exe


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def label_studio(tmp_path):
    """A started Label Studio: (base URL, API token, local-files root, its Python)."""
    exe = label_studio_executable()
    port, token = free_port(), secrets.token_hex(20)
    files_root = tmp_path / "ls-files"
    files_root.mkdir()
    env = {
        **os.environ,
        "LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED": "true",
        "LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT": str(files_root),
        "LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN": "true",  # the --user-token below
        "LABEL_STUDIO_DISABLE_SIGNUP_WITHOUT_LINK": "true",
        "DJANGO_DB": "sqlite",
    }
    env.pop("PYTHONPATH", None)  # its venv, not ours
    log = (tmp_path / "label-studio.log").open("w")
    started = time.monotonic()
    proc = subprocess.Popen(
        [
            str(exe),
            "start",
            "--no-browser",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--data-dir",
            str(tmp_path / "ls-data"),
            "--username",
            "annotator@example.com",
            "--password",
            secrets.token_hex(8),
            "--user-token",
            token,
        ],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,  # its own process group: teardown ends all of it
    )
    base = f"http://127.0.0.1:{port}"
    try:
        while True:
            if proc.poll() is not None:
                pytest.fail(f"label-studio exited with {proc.returncode}; see {log.name}")
            try:
                if httpx.get(f"{base}/health", timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() - started > START_TIMEOUT_S:
                pytest.fail(f"label-studio not healthy after {START_TIMEOUT_S} s; see {log.name}")
            time.sleep(2)
        print(f"label-studio healthy after {time.monotonic() - started:.0f} s")
        yield base, token, files_root, exe.parent / "python"
    finally:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=STOP_TIMEOUT_S)
        except ProcessLookupError:
            pass
        log.close()


def config(tmp_path: Path, train: Path, extra: Path | None = None) -> Path:
    extra_block = f'[[data.extra_train]]\npath = "{extra}"\nformat = "jsonl"\n' if extra else ""
    cfg = tmp_path / ("c2.toml" if extra else "c.toml")
    cfg.write_text(
        textwrap.dedent(f"""\
            run_dir = "{tmp_path / "run"}"
            [labels]
            PER = "person"
            LOC = "location"
            ORG = "organisation"
            OTHER = "other"
            [data.train]
            path = "{train}"
            format = "jsonl"
            [stages]
            refine = false
            ground = false
            [tagger.options]
            epochs = 1
            batch_size = 8
            max_length = 64
            device = "cpu"
            [uncertainty]
            plugin = "span"
        """)
        + extra_block,
        encoding="utf-8",
    )
    return cfg


SPAN = {
    "from_name": "entity",
    "to_name": "text",
    "type": "labels",
    "value": {"start": 0, "end": 2, "text": "RT", "labels": ["PERSON"]},
}


def test_select_label_in_label_studio_import_and_retrain(
    label_studio, few_tweets, twitter_dir, tmp_path
):
    base, token, files_root, ls_python = label_studio
    train_tweets, _ = few_tweets
    pool_gold = load_dataset(twitter_dir / "train.txt", limit=120).samples[80:120]
    images = files_root / "images"  # Label Studio serves a storage under the root, not the root
    pool_gold = [with_image(s, images, i) for i, s in enumerate(pool_gold)]
    gold_by_id = {s.id: s for s in pool_gold}
    train_file, pool_file = tmp_path / "train.jsonl", tmp_path / "pool.jsonl"
    write_jsonl(train_tweets, train_file)
    write_jsonl(pool_gold + list(train_tweets[:5]), pool_file)  # 5 already labeled
    cfg = config(tmp_path, train_file)
    assert run_cli(["train", "-c", str(cfg)]).code == 0

    # 1. select: the 6 most uncertain unlabeled posts
    out_dir = tmp_path / "batches"
    picked = run_cli(
        ["select", "-c", str(cfg), "--pool", str(pool_file), "--n", "6", "--out", str(out_dir)]
    )
    assert picked.code == 0, picked.stderr
    batch = read_results(out_dir / "batch-001.jsonl")
    assert len(batch) == 6 and not {r.id for r in batch} & {s.id for s in train_tweets}
    ranks = [r.sample.meta["selection"]["uncertainty"] for r in batch]
    assert ranks == sorted(ranks, reverse=True)

    # 2. export as Label Studio tasks, images through local-files serving
    tasks = tmp_path / "tasks.json"
    exported = run_cli(
        [
            *("labelstudio", "export", str(out_dir / "batch-001.jsonl"), "-o", str(tasks)),
            *("--local-files-root", str(files_root)),
        ]
    )
    assert exported.code == 0, exported.stderr
    xml = tmp_path / "config.xml"
    assert run_cli(["labelstudio", "config", "-c", str(cfg), "--out", str(xml)]).code == 0

    # 3. the annotator labels each post with its gold answer; one draws a box and
    #    forgets to link it to its entity
    answers = {}
    for r in batch:
        gold = gold_by_id[r.id]
        answers[r.id] = to_task(SampleResult(gold, gold.entities))["predictions"][0]["result"]
    boxed = [r.id for r in batch if any(e.boxes for e in gold_by_id[r.id].entities)]
    sloppy = boxed[0] if boxed else batch[0].id
    if boxed:  # a box without its relation
        answers[sloppy] = [x for x in answers[sloppy] if x["type"] != "relation"]
        expected = "not linked to any entity"
    else:  # no post with a box was chosen: a type the config does not know
        answers[sloppy] = [{**SPAN, "id": "typo"}]
        expected = "unknown label 'PERSON'"
    answers_file, export = tmp_path / "answers.json", tmp_path / "export.json"
    answers_file.write_text(json.dumps(answers), encoding="utf-8")
    client = subprocess.run(
        [
            *(str(ls_python), str(ROOT / "tests" / "labelstudio_client.py"), base, token),
            *(str(xml), str(tasks), str(answers_file), str(export), str(images)),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"},
    )
    assert client.returncode == 0, client.stderr[-3000:]
    told = json.loads(client.stdout.strip().splitlines()[-1])
    assert told["imported"] == 6 and told["annotated"] == 6
    # the pre-annotations went in as predictions, with the tagger's scores
    assert len(told["predictions"]) == 6
    scores = {r.id: r.entities for r in batch}
    for pred in told["predictions"]:
        assert pred["model_version"] == "refineg-tagger" and pred["score"] is not None
        assert 0.0 <= pred["score"] <= 1.0
    assert sum(p["regions"] for p in told["predictions"]) >= sum(map(len, scores.values()))
    raw = json.loads(export.read_text(encoding="utf-8"))
    assert len(raw) == 6
    for task in raw:
        assert task["data"]["image"].startswith("/data/local-files/?d=")
    served = httpx.get(
        base + raw[0]["data"]["image"], headers={"Authorization": f"Token {token}"}, timeout=30
    )
    assert served.status_code == 200 and served.content[:2] == b"\xff\xd8"  # a JPEG

    # 4. import: the sloppy post is named and left out, the other five are gold
    labeled = tmp_path / "labeled.jsonl"
    imported = run_cli(["labelstudio", "import", "-c", str(cfg), str(export), "-o", str(labeled)])
    assert imported.code == 2
    assert f"post {sloppy}" in imported.stderr
    assert expected in imported.stderr
    got = load_dataset(labeled, "jsonl").samples
    assert sorted(s.id for s in got) == sorted(r.id for r in batch if r.id != sloppy)
    for s in got:
        gold = gold_by_id[s.id]
        assert [e.key for e in s.entities] == [e.key for e in gold.entities]
        for a, b in zip(gold.entities, s.entities, strict=True):
            assert (a.boxes == ()) == (b.boxes == ())
            assert [x.as_list() for x in b.box_list] == [
                pytest.approx(x.as_list(), abs=0.01) for x in a.box_list
            ]

    # 5. retrain with the imported labels beside the training data
    cfg2 = config(tmp_path, train_file, labeled)
    trained = run_cli(["train", "-c", str(cfg2), "--force"])
    assert trained.code == 0, trained.stderr
    summary = json.loads((tmp_path / "run" / "summary.json").read_text(encoding="utf-8"))
    assert summary["stages"]["train"]["train_samples"] == len(train_tweets) + len(got)

    # 6. the next round never picks a post already labeled or already exported
    again = run_cli(
        ["select", "-c", str(cfg2), "--pool", str(pool_file), "--n", "6", "--out", str(out_dir)]
    )
    assert again.code == 0, again.stderr
    second = read_results(out_dir / "batch-002.jsonl")
    assert not {r.id for r in second} & ({r.id for r in batch} | {s.id for s in train_tweets})
