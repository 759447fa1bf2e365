"""Choose the encoder back-end by measuring it on this machine, once, and remember it.

Why: the fastest back-end depends on the CPU. ONNX Runtime fp32 ran at 2x
torch on one Xeon and slower than torch on another of the same kind (issue
20), so a choice made on one machine and shipped as a default is wrong
elsewhere. ``inference = "auto"`` therefore times the candidates on a few real
batches the first time a tagger runs on a machine and keeps the fastest:

- exact candidates (torch fp32, ONNX Runtime fp32) count only when their
  Viterbi tags equal torch fp32's on every probe sentence, and torch is always
  one of them, so the exact default is never slower than plain torch (up to
  the timing noise of the probe);
- with ``precision = "fast"``, the lower-precision candidates (bf16 autocast,
  torch int8, ONNX int8) join only when their dev MNER F1 was checked within
  :data:`TOLERANCE` points of fp32 for these exact weights.

The choice is cached in ``inference/autotune.json`` beside the tagger, keyed by
the machine (``refineg_bert_crf.machine``: CPU model and flags, library versions,
thread count) and by the weights' SHA-256: new weights or another machine
measure again.
"""

from __future__ import annotations

import json
import logging
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from refineg_bert_crf import inference, machine
from refineg_core.runstore import atomic_write

log = logging.getLogger(__name__)

#: MNER F1 points (x100) a fast path may lose against fp32 on dev.
TOLERANCE = 0.3
CACHE_FILE = "autotune.json"
#: Bump when the measuring recipe changes: every cached choice is measured again.
VERSION = 1
#: Probe size: enough batches to time (a few seconds on one core), few enough to
#: stay a small part of a first load.
PROBE_SENTENCES = 96
ROUNDS = 3
#: Fewer sentences than this (one post through ``pipe``) are not measured on: a
#: choice cached for the machine must not rest on one sentence's timing. Those
#: calls run plain torch and the choice waits for a larger call.
MIN_PROBE = 16
#: Choices kept per cache file (machines x precisions x thread counts).
MAX_CHOICES = 16
EXACT = ("torch", "onnx")
FAST = ("bf16", "int8", "onnx-int8")


def exact_candidates() -> list[str]:
    """The exact back-ends this installation can run (torch first: the reference)."""
    return ["torch", "onnx"] if inference.onnxruntime_available() else ["torch"]


def bf16_capable() -> bool:
    """Whether this CPU runs bf16 matrix products natively (else autocast emulates)."""
    flags = set(machine.describe(0)["flags"])
    return bool(flags & {"avx512_bf16", "amx_bf16"})


def fast_candidates() -> list[str]:
    """The lower-precision CPU back-ends worth trying on this machine."""
    out = ["bf16"] if bf16_capable() else []
    try:
        from torch.ao.quantization import quantize_dynamic  # noqa: F401

        out.append("int8")
    except ImportError:
        pass
    if inference.onnxruntime_available():
        out.append("onnx-int8")
    return out


def probe_sentences(encoded: Sequence, limit: int | None = None) -> list:
    """Up to ``limit`` (default :data:`PROBE_SENTENCES`) non-empty encoded sentences
    spread evenly over ``encoded`` (real lengths, not only the first few posts)."""
    limit = limit or PROBE_SENTENCES
    items = [e for e in encoded if e.n_words]
    if len(items) <= limit:
        return items
    step = len(items) / limit
    return [items[int(k * step)] for k in range(limit)]


def choice_key(precision: str, threads: int) -> tuple[str, dict]:
    """The cache key of a choice on this machine, and the machine it describes."""
    where = machine.describe(threads)
    return f"{precision}:{machine.key(where)}", where


def measure(cases: Mapping[str, Callable[[], object]], rounds: int | None = None) -> dict:
    """Seconds of each case over ``rounds`` (default :data:`ROUNDS`) interleaved rounds
    (A B A B ...) after the caller's warm-up: interleaving spreads a shared
    machine's load over all cases."""
    seconds: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(rounds or ROUNDS):
        for name, fn in cases.items():
            t0 = time.perf_counter()
            fn()
            seconds[name].append(time.perf_counter() - t0)
    return seconds


def fastest(seconds: Mapping[str, list[float]]) -> str:
    """The case with the lowest median; torch wins ties (it needs nothing built)."""
    return min(seconds, key=lambda m: (statistics.median(seconds[m]), m != "torch"))


def judge_fast(fp32_f1: float, f1: float) -> str | None:
    """None when ``f1`` is within :data:`TOLERANCE` points of ``fp32_f1``, else why not."""
    drop = (fp32_f1 - f1) * 100
    if drop <= TOLERANCE + 1e-9:
        return None
    return (
        f"dev MNER F1 {f1 * 100:.2f} is {drop:.2f} points below fp32's "
        f"{fp32_f1 * 100:.2f} (more than {TOLERANCE})"
    )


class TuneCache:
    """``inference/autotune.json``: the measured choices and the fast-path F1 check
    of one weights file. Another weights digest in the file means stale: ignored
    and replaced on the next write. Unreadable: logged and measured again."""

    def __init__(self, folder: Path | None, weights_sha256: str | None):
        self.path = folder / CACHE_FILE if folder is not None else None
        self.weights = weights_sha256
        self.doc = self._read()

    def _empty(self) -> dict:
        return {"version": VERSION, "weights_sha256": self.weights, "choices": {}}

    def _read(self) -> dict:
        if self.path is None or not self.path.is_file():
            return self._empty()
        try:
            doc = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            log.warning("autotune cache %s is unreadable (%s); measuring again", self.path, exc)
            return self._empty()
        if (
            not isinstance(doc, dict)
            or doc.get("version") != VERSION
            or doc.get("weights_sha256") != self.weights
            or not isinstance(doc.get("choices"), dict)
        ):
            return self._empty()  # other weights or recipe: stale
        return doc

    def choice(self, key: str) -> dict | None:
        entry = self.doc["choices"].get(key)
        return entry if isinstance(entry, dict) and isinstance(entry.get("mode"), str) else None

    def put_choice(self, key: str, entry: dict) -> None:
        choices = self.doc["choices"]
        choices.pop(key, None)
        choices[key] = entry
        while len(choices) > MAX_CHOICES:
            choices.pop(next(iter(choices)))
        self._write()

    def fast_check(self) -> dict | None:
        rec = self.doc.get("fast_check")
        return rec if isinstance(rec, dict) and isinstance(rec.get("accepted"), list) else None

    def put_fast_check(self, record: dict) -> None:
        self.doc["fast_check"] = record
        self._write()

    def _write(self) -> None:
        if self.path is None:
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with atomic_write(self.path) as fh:
                json.dump(self.doc, fh, indent=2)
        except OSError as exc:  # a read-only tagger folder: measured again next time
            log.warning("cannot write the autotune cache beside the tagger (%s)", exc)
