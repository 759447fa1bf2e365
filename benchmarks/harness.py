"""The benchmark harness: shared flags, a fixed thread count, interleaved timing,
and one result writer.

Why one harness: a number is only worth something with the command that made
it, the code it ran (git revision, and whether the tree was dirty), the machine
(CPU model and flags, cores, threads, library versions) and how busy that
machine was (load average before and after). Each script used to record a
different subset by hand; now every result file goes through
:meth:`Session.write`, and comparisons run interleaved (:func:`interleaved`,
or :func:`schedule` for a script that times inside its runs: A B A B, so a
burst of load from another job hits both sides alike), reported as median and
min-max (:class:`Timing`, :func:`summary`), never as a single run.

A script::

    from harness import interleaved, parser, start

    ap = parser(__doc__, out="my_bench.json")
    ap.add_argument("--n", type=int, default=100)
    args = ap.parse_args()
    session = start(args)             # fixes and prints the thread count
    timings = interleaved({"old": old, "new": new}, reps=args.reps)
    session.write({"rows": [t.as_dict() for t in timings.values()]})

Benchmarks run as scripts (``python benchmarks/bench_x.py``), so this folder is
on ``sys.path`` and ``import harness`` works. ``--out -`` prints the result
instead of writing it (a smoke run that must not overwrite a committed result).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shlex
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs
from refineg_bert_crf import machine as _machine

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = HERE / "results"
#: The shared data folder (``REFINEG_DATA`` overrides), found from the repository.
DATA = Path(os.environ.get("REFINEG_DATA", ROOT.parent / "shared" / "data")).resolve()
#: Environment variables that size the thread pools of torch, ONNX Runtime and BLAS.
THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


# --------------------------------------------------------------------------- flags
def parser(
    doc: str | None,
    *,
    out: str | None,
    threads: int = 1,
    reps: int = 3,
    seed: int = 0,
) -> argparse.ArgumentParser:
    """An argument parser with the shared flags.

    ``--threads`` (fixed and printed by :func:`start`), ``--reps`` (interleaved
    repetitions), ``--data`` (the shared data folder), ``--out`` (the result
    file; ``out`` is its default name under ``benchmarks/results``, ``-``
    prints instead of writing) and ``--seed``. The first line of ``doc`` is the
    description, the rest the epilog.
    """
    first, _, rest = (doc or "").strip().partition("\n")
    ap = argparse.ArgumentParser(
        description=first,
        epilog=rest.strip() or None,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    shared = ap.add_argument_group("shared benchmark flags")
    shared.add_argument(
        "--threads", type=int, default=threads, help=f"compute threads (default {threads})"
    )
    shared.add_argument(
        "--reps", type=int, default=reps, help=f"interleaved repetitions (default {reps})"
    )
    shared.add_argument(
        "--data",
        type=Path,
        default=DATA,
        help="shared data folder (default: $REFINEG_DATA or ../shared/data beside the repository)",
    )
    shared.add_argument(
        "--out",
        default=str(RESULTS / out) if out else "-",
        help="result JSON ('-': print it, write nothing; default "
        + (f"benchmarks/results/{out})" if out else "-)"),
    )
    shared.add_argument("--seed", type=int, default=seed, help=f"random seed (default {seed})")
    return ap


# --------------------------------------------------------------------------- threads
def fix_threads(threads: int) -> int:
    """Pin every compute pool to ``threads`` and return what torch reports.

    The variables reach child processes and libraries imported later; torch,
    when it is already imported, is set directly. Returns ``threads`` when
    torch is not imported (the script does not use it).
    """
    if threads < 1:
        raise SystemExit(f"--threads must be at least 1, got {threads}")
    for var in THREAD_VARS:
        os.environ[var] = str(threads)
    torch = sys.modules.get("torch")
    if torch is None:
        return threads
    torch.set_num_threads(threads)
    return int(torch.get_num_threads())


# --------------------------------------------------------------------------- timing
@attrs.frozen
class Timing:
    """The repeated wall times of one case, in the order they ran."""

    name: str
    seconds: tuple[float, ...]

    def __attrs_post_init__(self) -> None:
        if not self.seconds:
            raise ValueError(f"case {self.name!r}: no timing")

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)

    @property
    def low(self) -> float:
        return min(self.seconds)

    @property
    def high(self) -> float:
        return max(self.seconds)

    def rate(self, items: float) -> dict[str, float]:
        """Items per second: median and min-max (the slowest run gives the minimum)."""
        return {
            "median": items / self.median,
            "min": items / self.high,
            "max": items / self.low,
        }

    def as_dict(self) -> dict[str, Any]:
        return {
            "case": self.name,
            "median_s": self.median,
            "min_s": self.low,
            "max_s": self.high,
            "runs_s": list(self.seconds),
        }


def summary(values: Iterable[float]) -> dict[str, float | int]:
    """Median, min, max and count of repeated measurements."""
    xs = list(values)
    if not xs:
        raise ValueError("no values to summarise")
    return {"median": statistics.median(xs), "min": min(xs), "max": max(xs), "n": len(xs)}


def schedule(names: Sequence[str], reps: int) -> list[str]:
    """The interleaved order: every case once per round, ``reps`` rounds (A B A B)."""
    if reps < 1:
        raise ValueError(f"reps must be at least 1, got {reps}")
    return [name for _ in range(reps) for name in names]


def interleaved(
    cases: Mapping[str, Callable[[], object]],
    reps: int,
    *,
    warmup: bool = True,
    clock: Callable[[], float] = time.perf_counter,
    on_run: Callable[[str, float, object], None] | None = None,
) -> dict[str, Timing]:
    """Time each case ``reps`` times, interleaved (A B A B), after one untimed
    warm-up round (first-call work such as a lazy load is not billed to one side).

    ``on_run(name, seconds, result)`` sees every timed run (to print progress or
    keep results). Returns the timings by case name, in the cases' order.
    """
    names = list(cases)
    if warmup:
        for name in names:
            cases[name]()
    times: dict[str, list[float]] = {name: [] for name in names}
    for name in schedule(names, reps):
        started = clock()
        result = cases[name]()
        seconds = clock() - started
        times[name].append(seconds)
        if on_run is not None:
            on_run(name, seconds, result)
    return {name: Timing(name, tuple(times[name])) for name in names}


def ratio(a: Timing, b: Timing) -> float:
    """How many times faster ``a`` ran than ``b`` (median over median)."""
    return b.median / a.median


# --------------------------------------------------------------------------- provenance
def git_revision(root: Path = ROOT) -> dict[str, Any]:
    """The commit the code came from and whether the tree had uncommitted changes."""

    def git(*args: str) -> str | None:
        try:
            out = subprocess.run(
                ["git", *args], cwd=root, capture_output=True, text=True, timeout=20
            )
        except (OSError, subprocess.TimeoutExpired):
            return None
        return out.stdout.strip() if out.returncode == 0 else None

    rev = git("rev-parse", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=no")
    return {"revision": rev, "dirty": None if status is None else bool(status)}


def loadavg() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def command_line(argv: Sequence[str] | None = None) -> str:
    """The command as typed from the repository root (the script path relative to it)."""
    args = list(sys.argv if argv is None else argv)
    if args:
        script = Path(args[0])
        if script.is_absolute():
            with contextlib.suppress(ValueError):
                args[0] = str(script.relative_to(ROOT))
    return shlex.join(["python", *args])


@attrs.define
class Session:
    """One benchmark process: its flags, thread count and the load when it began."""

    args: argparse.Namespace
    threads: int
    load_before: list[float] | None
    started: float
    argv: list[str] = attrs.field(factory=lambda: list(sys.argv))

    def provenance(self) -> dict[str, Any]:
        """Where and how the numbers were made."""
        return {
            "command": command_line(self.argv),
            "git": git_revision(),
            "machine": _machine.describe(self.threads),
            "threads": self.threads,
            "load_before": self.load_before,
            "load_after": loadavg(),
            "wall_s": round(time.perf_counter() - self.started, 2),
            "written_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }

    def write(self, doc: Mapping[str, Any], out: str | Path | None = None) -> Path | None:
        """Write ``doc`` with its provenance (under ``"provenance"``) to ``out``
        (default ``--out``); ``-`` prints it instead. Returns the path written."""
        if "provenance" in doc:
            raise ValueError("a result may not carry its own 'provenance' key")
        full = {"provenance": self.provenance(), **doc}
        target = str(out if out is not None else getattr(self.args, "out", "-"))
        text = json.dumps(full, indent=2, ensure_ascii=False, default=_jsonable)
        if target == "-":
            print(text)
            return None
        path = Path(target)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(text + "\n", encoding="utf-8")
        tmp.replace(path)
        print(f"wrote {path}", flush=True)
        return path


def _jsonable(value: object) -> object:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    raise TypeError(f"not JSON-serialisable: {type(value).__name__}")


def start(args: argparse.Namespace, *, threads: int | None = None) -> Session:
    """Fix the thread count (``--threads``), print it, note the load average."""
    wanted = threads if threads is not None else getattr(args, "threads", 1)
    actual = fix_threads(wanted)
    load = loadavg()
    print(f"threads: {actual} (--threads {wanted}); load average: {load}", flush=True)
    return Session(args, actual, load, time.perf_counter())


def record(args: argparse.Namespace) -> Session:
    """A session that only records (for a runner that leaves threads to its configs,
    such as ``run_variants.py``): the thread count written is torch's at the end."""
    torch = sys.modules.get("torch")
    threads = int(torch.get_num_threads()) if torch is not None else 0
    return Session(args, threads, loadavg(), time.perf_counter())
