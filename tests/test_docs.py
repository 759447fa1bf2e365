"""Every code block of README.md and CONTRIBUTING.md runs (or is checked) here.

A documented command or example cannot break unseen. Each fenced block is
handled by its language, unless an HTML comment on the line before says how:

* ``python``: run in order, one namespace per document, in a temporary
  working directory that is also on ``sys.path``; a block whose first line is
  ``# name.py`` is also written there as that module (so an entry point can name
  it); every ``test_*`` function a block defines is called (``tmp_path`` given).
* ``bash``: each command must be a ``refineg`` command; it is run in-process
  from the repository root and must exit 0 (skipped when it reads the shared
  data and that is absent). Anything else must be marked.
* ``toml``: parsed, then validated: a config (``run_dir``/``labels``/``data``)
  as a config, entry points against the table of plugin kinds, anything else as
  a fragment merged into ``configs/twitter-gmner.toml``.
* ``json``: parsed; a native record (``id`` + ``tokens``) is read as one.

Markers (``<!-- docs-test: ... -->`` on the line before the block):

* ``skip (why)``: not run here; the reason is required (e.g. the main job,
  which CI's README check runs);
* ``covered-by tests/test_x.py::test_y [...]``: run by those tests, which must
  exist;
* ``synopsis``: every ``refineg ...`` line is a real subcommand and its flags
  are real options;
* ``layout``: every file and folder name in the tree exists in the repository.

An unmarked block that cannot run fails with its file and line.
"""

from __future__ import annotations

import ast
import inspect
import json
import re
import shlex
import sys
from pathlib import Path

import attrs
import pytest
import tomllib

from refineg_core import kinds
from refineg_core.config import config_from_dict
from refineg_core.formats.native import result_from_dict
from refineg_core.testing import run_cli

ROOT = Path(__file__).resolve().parent.parent
DOCS = ("README.md", "CONTRIBUTING.md")
SHARED = ROOT.parent / "shared" / "data"
MARKER = re.compile(r"^<!--\s*docs-test:\s*(?P<kind>[\w-]+)\s*(?P<rest>.*?)\s*-->$")
FENCE = re.compile(r"^(?P<indent> *)```(?P<lang>[\w+-]*)\s*$")


@attrs.frozen
class Block:
    doc: str
    line: int  # of the opening fence, 1-based
    lang: str
    text: str
    marker: str | None  # the marker's kind
    marker_arg: str

    @property
    def where(self) -> str:
        return f"{self.doc}:{self.line}"


def blocks(doc: str) -> list[Block]:
    lines = (ROOT / doc).read_text(encoding="utf-8").splitlines()
    found: list[Block] = []
    i = 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        start, indent = i, len(m["indent"])
        i += 1
        body = []
        while i < len(lines) and lines[i].strip() != "```":
            body.append(lines[i][indent:])
            i += 1
        if i == len(lines):
            raise AssertionError(f"{doc}:{start + 1}: unclosed code block")
        prev = next((ln.strip() for ln in reversed(lines[:start]) if ln.strip()), "")
        mm = MARKER.match(prev)
        found.append(
            Block(
                doc,
                start + 1,
                m["lang"],
                "\n".join(body) + "\n",
                mm["kind"] if mm else None,
                mm["rest"] if mm else "",
            )
        )
        i += 1
    return found


ALL = [b for doc in DOCS for b in blocks(doc)]


def test_the_extractor_sees_the_documents_blocks():
    langs = {b.lang for b in ALL}
    assert {"python", "bash", "toml"} <= langs
    assert len([b for b in ALL if b.doc == "CONTRIBUTING.md" and b.lang == "python"]) >= 7


# ------------------------------------------------------------------ markers
def _test_exists(ref: str) -> bool:
    path, _, name = ref.partition("::")
    file = ROOT / path
    if not (file.is_file() and name):
        return False
    tree = ast.parse(file.read_text(encoding="utf-8"))
    return any(
        isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef) and n.name == name.split("[")[0]
        for n in ast.walk(tree)
    )


MARKED = [b for b in ALL if b.marker is not None]


@pytest.mark.parametrize("block", MARKED, ids=lambda b: b.where)
def test_marked_block(block: Block):
    if block.marker == "skip":
        assert re.fullmatch(r"\(.+\)", block.marker_arg), (
            f"{block.where}: a skipped block says why: <!-- docs-test: skip (why) -->"
        )
    elif block.marker == "covered-by":
        refs = block.marker_arg.split()
        assert refs, f"{block.where}: covered-by names no test"
        missing = [r for r in refs if not _test_exists(r)]
        assert not missing, f"{block.where}: covered-by names missing tests {missing}"
    elif block.marker == "synopsis":
        check_synopsis(block)
    elif block.marker == "layout":
        check_layout(block)
    else:
        raise AssertionError(f"{block.where}: unknown docs-test marker {block.marker!r}")


def check_synopsis(block: Block) -> None:
    from refineg_core.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    commands = sub.choices
    checked = 0
    for line in block.text.splitlines():
        words = line.split("#", 1)[0].split()
        if not words or words[0] != "refineg":
            continue
        name = words[1]
        assert name in commands, f"{block.where}: `refineg {name}` is not a command"
        target = commands[name]
        if name == "config":
            target = next(a for a in target._actions if a.dest == "config_command").choices[
                words[2]
            ]
        flags = set(re.findall(r"(--?[a-z][\w-]*)", " ".join(words[2:])))
        known = {opt for a in target._actions for opt in a.option_strings}
        unknown = sorted(flags - known)
        assert not unknown, f"{block.where}: `refineg {name}` has no option {unknown}"
        checked += 1
    assert checked, f"{block.where}: a synopsis without a refineg line"


def check_layout(block: Block) -> None:
    names = set()
    for line in block.text.splitlines():
        first = line.strip().split("  ")[0]
        for name in re.split(r",\s*", first):
            if re.fullmatch(r"[\w.-]+(/|\.py|\.md|\.toml|\.sh)", name):
                names.add(name.rstrip("/"))
    assert names, f"{block.where}: a layout without a file name"
    tracked = {p.name for p in ROOT.rglob("*") if ".git" not in p.parts}
    missing = sorted(names - tracked)
    assert not missing, f"{block.where}: the layout names files that do not exist: {missing}"


# -------------------------------------------------------------------- python
def _python(doc: str) -> list[Block]:
    return [b for b in blocks(doc) if b.lang == "python" and b.marker is None]


@pytest.mark.parametrize("doc", [d for d in DOCS if _python(d)])
def test_python_blocks_run(doc: str, tmp_path, monkeypatch):
    """The python blocks of ``doc``, in order, as a reader would paste them."""
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    monkeypatch.syspath_prepend(str(work))
    before = set(sys.modules)
    namespace: dict[str, object] = {"__name__": f"docs_{Path(doc).stem.lower()}"}
    called: list[str] = []
    try:
        for i, block in enumerate(_python(doc)):
            first = block.text.splitlines()[0] if block.text.strip() else ""
            module = re.fullmatch(r"#\s*([\w]+)\.py\s*", first)
            if module:
                (work / f"{module[1]}.py").write_text(block.text, encoding="utf-8")
            defined_before = set(namespace)
            try:
                exec(compile(block.text, block.where, "exec"), namespace)
                for name in sorted(set(namespace) - defined_before):
                    func = namespace[name]
                    if name.startswith("test_") and callable(func):
                        params = inspect.signature(func).parameters
                        kwargs = {}
                        if "tmp_path" in params:
                            kwargs["tmp_path"] = tmp_path / f"block{i}-{name}"
                            kwargs["tmp_path"].mkdir()
                        func(**kwargs)
                        called.append(name)
            except Exception as exc:
                raise AssertionError(
                    f"{block.where}: the python block fails: {type(exc).__name__}: {exc}"
                ) from exc
        defines = [b for b in _python(doc) if re.search(r"^def test_", b.text, re.M)]
        assert bool(called) == bool(defines), f"{doc}: test functions defined but not run"
    finally:
        for name in set(sys.modules) - before:
            mod = sys.modules.get(name)
            if mod is not None and str(getattr(mod, "__file__", "") or "").startswith(str(work)):
                del sys.modules[name]


# ---------------------------------------------------------------------- bash
SHELL = [b for b in ALL if b.lang in ("bash", "sh", "shell", "console") and b.marker is None]


def _commands(text: str) -> list[list[str]]:
    joined = re.sub(r"\\\n", " ", text)
    return [words for ln in joined.splitlines() if (words := shlex.split(ln, comments=True))]


@pytest.mark.parametrize("block", SHELL, ids=lambda b: b.where)
def test_shell_block_runs(block: Block, monkeypatch):
    commands = _commands(block.text)
    assert commands, f"{block.where}: an empty shell block"
    for words in commands:
        assert Path(words[0]).name == "refineg", (
            f"{block.where}: `{' '.join(words)}` is not a refineg command, so the suite "
            "cannot run it: mark the block (<!-- docs-test: skip (why) --> or covered-by)"
        )
    reads_data = any("shared/data" in w or w.startswith("configs/") for c in commands for w in c)
    if reads_data and not SHARED.is_dir():
        pytest.skip(f"{block.where} reads the shared data, absent at {SHARED}")
    monkeypatch.chdir(ROOT)
    for words in commands:
        res = run_cli(words[1:])
        assert res.code == 0, f"{block.where}: `{' '.join(words)}` exit {res.code}: {res.stderr}"
        assert res.stdout.strip(), f"{block.where}: `{' '.join(words)}` printed nothing"


# ---------------------------------------------------------------- toml, json
TOML = [b for b in ALL if b.lang == "toml" and b.marker is None]


def _merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for k, v in extra.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


@pytest.mark.parametrize("block", TOML, ids=lambda b: b.where)
def test_toml_block_is_valid(block: Block):
    try:
        raw = tomllib.loads(block.text)
    except tomllib.TOMLDecodeError as exc:
        raise AssertionError(f"{block.where}: not TOML: {exc}") from None
    eps = raw.get("project", {}).get("entry-points")
    if eps is not None:
        groups = set(kinds.groups()) | {"refineg"}
        assert set(eps) <= groups, f"{block.where}: unknown entry-point groups {set(eps) - groups}"
        for group, entries in eps.items():
            for name, target in entries.items():
                assert re.fullmatch(r"[\w.]+(:[\w.]+)?", target), f"{block.where}: {name}"
                if group != "refineg":
                    assert ":" in target, f"{block.where}: {name} names no class"
        return
    if {"run_dir", "labels", "data"} & set(raw):
        config_from_dict(raw, check_paths=False)
        return
    base = tomllib.loads((ROOT / "configs" / "twitter-gmner.toml").read_text(encoding="utf-8"))
    config_from_dict(_merge(base, raw), check_paths=False)


JSON = [b for b in ALL if b.lang == "json" and b.marker is None]


@pytest.mark.parametrize("block", JSON, ids=lambda b: b.where)
def test_json_block_is_valid(block: Block):
    data = json.loads(block.text)
    if isinstance(data, dict) and {"id", "tokens"} <= set(data):
        result = result_from_dict(data)
        assert result.id == data["id"]


# ------------------------------------------------------------ strictness
RUNNABLE = {"python", "bash", "sh", "shell", "console", "toml", "json"}


@pytest.mark.parametrize("block", ALL, ids=lambda b: b.where)
def test_every_block_is_run_or_marked(block: Block):
    assert block.marker is not None or block.lang in RUNNABLE, (
        f"{block.where}: a ```{block.lang or '(no language)'} block the suite cannot run: "
        "give it a language it runs or a <!-- docs-test: ... --> marker"
    )


def test_the_extractor_refuses_an_unmarked_block_it_cannot_run(tmp_path, monkeypatch):
    doc = tmp_path / "DOC.md"
    doc.write_text("text\n\n```\nsome words\n```\n", encoding="utf-8")
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    [block] = blocks("DOC.md")
    assert (block.line, block.lang, block.marker) == (3, "", None)
    with pytest.raises(AssertionError, match=r"DOC.md:3: a ```\(no language\) block"):
        test_every_block_is_run_or_marked(block)
    with pytest.raises(AssertionError, match="not a refineg command"):
        test_shell_block_runs(attrs.evolve(block, lang="bash", text="rm -rf /\n"), monkeypatch)


def test_the_docs_name_the_table_of_kinds():
    """CONTRIBUTING's table of plugin kinds is the code's table, row for row."""
    text = (ROOT / "CONTRIBUTING.md").read_text(encoding="utf-8")
    for k in kinds.KINDS:
        row = next((ln for ln in text.splitlines() if ln.startswith(f"| `{k.name}` |")), None)
        assert row is not None, f"CONTRIBUTING.md has no table row for the kind {k.name}"
        assert f"`{k.group}`" in row and f"`{k.base.__name__}`" in row, row
        for method in k.required:
            assert f"`{method}`" in row, f"the {k.name} row does not name `{method}`"


def test_the_runner_reports_a_failing_example_with_its_line(tmp_path, monkeypatch):
    doc = tmp_path / "DOC.md"
    doc.write_text(
        "```python\n# mod_ok.py\nVALUE = 2\n```\n\n"
        "```python\nfrom mod_ok import VALUE\n\n\ndef test_value():\n    assert VALUE == 3\n```\n",
        encoding="utf-8",
    )
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    (tmp_path / "t").mkdir()
    with pytest.raises(AssertionError, match=r"DOC.md:6: the python block fails: AssertionError"):
        test_python_blocks_run("DOC.md", tmp_path / "t", monkeypatch)


def test_the_synopsis_check_refuses_an_unknown_command_or_option():
    block = Block("DOC.md", 1, "", "refineg plugins --kinds\n", "synopsis", "")
    check_synopsis(block)
    with pytest.raises(AssertionError, match="has no option"):
        check_synopsis(attrs.evolve(block, text="refineg plugins --colour\n"))
    with pytest.raises(AssertionError, match="is not a command"):
        check_synopsis(attrs.evolve(block, text="refineg frobnicate\n"))
