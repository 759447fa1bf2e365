"""The project's answer reader against the ``json-repair`` library, and reading time.

Quality: every case of tests/test_answers.py (answers whose list is exactly
``[{"name": "Obama", "type": "PER"}]``, answers that need repair, truncated
answers, unusable answers) read by ``parse_answer`` and by
``json_repair.loads`` on the whole answer (a list, or the one list inside an
object). A case passes when the reader returns the expected items; for an
unusable answer, when it returns no item (inventing items out of prose is the
failure that matters: they would replace the tagger's entities).

Speed: seconds to read hostile answers of 8 KB and 100 KB (nested unclosed
brackets and friends), each reader on the same text, medians of 3 runs,
interleaved; a reader that takes over 1 s at 8 KB is not run at 100 KB
(a quadratic reader would take minutes). The old quadratic scanner
(git show 445bc6a:refineg_core/pipeline/answers.py) took 1.2-8 s at 8 KB.

    pip install json-repair        # only for this comparison
    nice -n 10 python benchmarks/bench_answers.py --old 445bc6a
"""

from __future__ import annotations

import contextlib
import runpy
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

try:  # the comparison library is not a dependency: `pip install json-repair`
    import json_repair
except ImportError:  # --help still works; main() says what is missing
    json_repair = None

from harness import ROOT, parser, schedule, start, summary
from refineg_stages.answers import AnswerError, parse_answer

# The answer cases are data kept with the tests; read them from the file, not as a package.
_CASES = runpy.run_path(str(ROOT / "tests" / "test_answers.py"))
FOUND_CASES, OBAMA = _CASES["FOUND_CASES"], _CASES["OBAMA"]
REPAIR_CASES, UNUSABLE_CASES = _CASES["REPAIR_CASES"], _CASES["UNUSABLE_CASES"]

TRUNCATED = [
    (
        'Reasoning.\n```json\n[{"name": "Obama", "type": "PER"}, '
        '{"name": "White House", "type": "LOC"}, {"name": "Cong',
        [OBAMA, {"name": "White House", "type": "LOC"}],
    ),
    (
        '[{"entity": "Obama", "type": "PER", "boxes": [[1, 2, 30, 40]]}, '
        '{"entity": "NBA", "boxes": [[5, 6',
        [{"entity": "Obama", "type": "PER", "boxes": [[1, 2, 30, 40]]}],
    ),
]
MORE = [
    ("There are no named entities in this post.\n[]", []),
    (
        '[{"entity": "Obama", "boxes": []}]\nThe face is near [10, 20, 30, 40].',
        [{"entity": "Obama", "boxes": []}],
    ),
    ('The answer is {"name": "Obama", "type": "PER"}.', [OBAMA]),
    (
        'Draft:\n```json\n[{"name": "Obama", "type": "ORG"}]\n```\n'
        'Corrected:\n```json\n[{"name": "Obama", "type": "PER"}]\n```',
        [OBAMA],
    ),
]


def ours(text: str) -> list[Any]:
    try:
        return list(parse_answer(text, max_bytes=None).items)
    except AnswerError:
        return []


def library(text: str) -> list[Any]:
    value = json_repair.loads(text)
    if isinstance(value, dict):
        lists = [v for v in value.values() if isinstance(v, list)]
        value = lists[0] if len(lists) == 1 else [value]
    return value if isinstance(value, list) else []


def cases() -> list[tuple[str, str, list[Any]]]:
    out = [("found", t, [OBAMA]) for t in FOUND_CASES]
    out += [("repair", t, [OBAMA]) for t in REPAIR_CASES]
    out += [("truncated", t, items) for t, items in TRUNCATED]
    out += [("other", t, items) for t, items in MORE]
    out += [("unusable", t, []) for t, _ in UNUSABLE_CASES]
    return out


HOSTILE: dict[str, Callable[[int], str]] = {
    "nested unclosed [": lambda n: "[" * n,
    "nested closed, invalid inside": lambda n: "[" * (n // 2 - 1) + "x" + "]" * (n // 2),
    "unclosed lists in prose": lambda n: "[a " * (n // 3),
    "open quotes": lambda n: "['" * (n // 2),
    "long valid list": lambda n: (
        "[" + ", ".join(['{"name": "Obama", "type": "PER"}'] * (n // 34)) + "]"
    ),
}


def timed(fn: Callable[[str], Any], text: str) -> float:
    t0 = time.perf_counter()
    with contextlib.suppress(Exception):  # a crash still took this long
        fn(text)
    return time.perf_counter() - t0


def old_reader(rev: str) -> Callable[[str], list[Any]]:
    """``parse_answer`` as it was at ``rev`` (git), for the speed table."""
    import importlib.util
    import subprocess
    import tempfile

    source = subprocess.run(
        ["git", "show", f"{rev}:refineg_core/pipeline/answers.py"],
        cwd=ROOT,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    path = Path(tempfile.mkdtemp()) / "old_answers.py"
    path.write_text(source, encoding="utf-8")
    spec = importlib.util.spec_from_file_location("old_answers", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)

    def read(text: str) -> list[Any]:
        try:
            return list(module.parse_answer(text).items)
        except module.AnswerError:
            return []

    return read


def main() -> None:
    ap = parser(__doc__, out="answers.json", reps=3)
    ap.add_argument("--old", metavar="REV", help="also time parse_answer as of this git revision")
    args = ap.parse_args()
    if json_repair is None:
        raise SystemExit("it compares against json-repair: pip install json-repair")
    session = start(args)
    doc: dict = {"quality": [], "speed": []}
    readers: dict[str, Callable[[str], Any]] = {"parse_answer": ours, "json_repair": library}
    if args.old:
        readers[f"parse_answer@{args.old}"] = old_reader(args.old)
    rows = cases()
    print(f"quality on the {len(rows)} cases of tests/test_answers.py")
    print("| group | cases | parse_answer | json_repair |")
    print("| --- | --- | --- | --- |")
    misses: list[str] = []
    for group in ("found", "repair", "truncated", "other", "unusable"):
        sel = [r for r in rows if r[0] == group]
        a = sum(ours(t) == want for _, t, want in sel)
        b = 0
        for _, t, want in sel:
            try:
                got = library(t)
            except Exception as exc:
                got = f"crash {type(exc).__name__}"
            if got == want:
                b += 1
            else:
                misses.append(f"json_repair on {t[:60]!r}: {str(got)[:80]}")
        print(f"| {group} | {len(sel)} | {a} | {b} |")
        doc["quality"].append(
            {"group": group, "cases": len(sel), "parse_answer": a, "json_repair": b}
        )
    print("\njson_repair misses:")
    for m in misses:
        print("  " + m)
    doc["json_repair_misses"] = misses
    print(f"\nseconds to read a hostile answer (median of {args.reps}, interleaved; min-max)")
    print(f"| answer | size | {' | '.join(readers)} |")
    print("| --- | --- |" + " --- |" * len(readers))
    for name, make in HOSTILE.items():
        slow: set[str] = set()  # a reader over 1 s at 8 KB is not run at 100 KB
        for n in (8192, 100_000):
            text = make(n)
            times: dict[str, list[float]] = {key: [] for key in readers}
            for key in schedule(list(readers), args.reps):
                if key not in slow:
                    times[key].append(timed(readers[key], text))
            stats = {key: summary(v) if v else None for key, v in times.items()}
            cells = [
                f"{st['median']:.3f} ({st['min']:.3f}-{st['max']:.3f})"
                if st
                else "not run (over 1 s at 8 KB)"
                for st in stats.values()
            ]
            slow |= {k for k, st in stats.items() if st and st["median"] > 1.0}
            print(f"| {name} | {n // 1024} KB | {' | '.join(cells)} |")
            doc["speed"].append({"answer": name, "bytes": n, "seconds": stats})
    session.write(doc)


if __name__ == "__main__":
    main()
