"""What machine a speed number (or a speed-based choice) came from.

Why: which encoder back-end is fastest depends on the CPU (an ONNX Runtime
path twice torch's speed on one Xeon was slower than torch on another), so a
measured choice is only valid on the machine that measured it, and a
benchmark number means nothing without the CPU, its instruction sets, the
thread count and the library versions. One description serves both: the
tagger's autotune cache is keyed by it and every benchmark result records it.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
from functools import cache
from importlib import metadata

#: Instruction-set flags that change which kernels the libraries pick.
SPEED_FLAGS = (
    "avx2",
    "fma",
    "avx512f",
    "avx512bw",
    "avx512_vnni",
    "avx512_bf16",
    "avx512_fp16",
    "avx_vnni",
    "amx_bf16",
    "amx_int8",
    "amx_tile",
)
#: Libraries whose versions change the kernels (or the export) a back-end runs.
LIBRARIES = ("torch", "onnxruntime", "onnx", "transformers", "numpy")


@cache
def _cpuinfo() -> tuple[str, tuple[str, ...]]:
    """(CPU model name, every flag) from /proc/cpuinfo; the platform's words elsewhere."""
    model, flags = "", ()
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                key, _, value = line.partition(":")
                key = key.strip()
                if key == "model name" and not model:
                    model = value.strip()
                elif key in ("flags", "Features") and not flags:
                    flags = tuple(sorted(value.split()))
                if model and flags:
                    break
    except OSError:
        pass
    return model or platform.processor() or platform.machine(), flags


def versions() -> dict[str, str | None]:
    """Installed versions of the libraries in :data:`LIBRARIES` (None: not installed)."""
    out: dict[str, str | None] = {}
    for name in LIBRARIES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def describe(threads: int | None = None) -> dict:
    """The CPU model, its speed-relevant flags (and a digest of all flags), the core
    count, the thread count in use, the Python and library versions.

    ``threads``: the thread count the measurement ran with (default: torch's, when
    torch is imported, else None).
    """
    model, flags = _cpuinfo()
    if threads is None:
        torch = __import__("sys").modules.get("torch")
        threads = torch.get_num_threads() if torch is not None else None
    return {
        "cpu": model,
        "arch": platform.machine(),
        "flags": [f for f in SPEED_FLAGS if f in flags],
        "flags_sha256": hashlib.sha256(" ".join(flags).encode()).hexdigest()[:16],
        "cores": os.cpu_count(),
        "threads": threads,
        "python": platform.python_version(),
        "versions": versions(),
    }


def key(doc: dict) -> str:
    """A short stable digest of a :func:`describe` document (a cache key)."""
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:20]
