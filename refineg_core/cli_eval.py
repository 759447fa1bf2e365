"""``refineg eval``: score a prediction file against gold and print the table.

The lead's CLI registers it with ``add_eval_command(subparsers)``; the command
returns an exit code and raises ``RefinegError`` (one readable line) on bad input.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from refineg_core.evaluation import EvaluationReport, evaluate
from refineg_core.formats import FORMATS, load_dataset
from refineg_core.formats.loader import guess_format
from refineg_core.formats.native import read_results
from refineg_core.types import Sample, SampleResult


def add_eval_command(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "eval",
        help="GMNER/MNER/EEG precision, recall and F1 of predictions against gold",
        description="Score predictions against gold: GMNER (span, type, region), MNER "
        "(span, type) and EEG (span, region), micro P/R/F1 plus a per-type table. "
        "Samples are aligned by id; a gold sample without prediction counts as all-missed.",
    )
    p.add_argument("--gold", required=True, type=Path, help="gold data file")
    p.add_argument("--pred", required=True, type=Path, help="predictions (any data format)")
    p.add_argument("--format", choices=FORMATS, help="format of both files (default: guessed)")
    p.add_argument("--gold-format", choices=FORMATS, help="format of the gold file")
    p.add_argument("--pred-format", choices=FORMATS, help="format of the prediction file")
    p.add_argument("--gold-entities", type=Path, help="CCKS entities JSON of the gold texts")
    p.add_argument("--pred-entities", type=Path, help="CCKS entities JSON of the predictions")
    p.add_argument("--json", type=Path, metavar="OUT", help="also write the report as JSON")
    p.add_argument("--iou", type=float, default=0.5, help="IoU a box must exceed (default 0.5)")
    p.add_argument(
        "--by-name", action="store_true",
        help="identify entities by normalised name + type instead of token span (CCKS gold)",
    )
    p.set_defaults(func=run_eval)
    return p


def _load(path: Path, fmt: str | None, entities: Path | None) -> list[Sample]:
    ds = load_dataset(path, fmt, entities=entities)
    if ds.warnings:
        print(f"{path}: {len(ds.warnings)} warning(s), e.g. {ds.warnings[0]}", file=sys.stderr)
    return list(ds.samples)


def _load_pred(path: Path, fmt: str | None, entities: Path | None) -> list[Sample | SampleResult]:
    if path.exists() and (fmt or guess_format(path)) == "jsonl":
        return list(read_results(path))  # results keep their recorded failures
    return list(_load(path, fmt, entities))


def run_eval(args: argparse.Namespace) -> int:
    gold = _load(args.gold, args.gold_format or args.format, args.gold_entities)
    pred = _load_pred(args.pred, args.pred_format or args.format, args.pred_entities)
    report: EvaluationReport = evaluate(gold, pred, iou_threshold=args.iou, by_name=args.by_name)
    print(report.format_table())
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report.to_dict(), indent=2) + "\n", encoding="utf-8")
        print(f"report written to {args.json}", file=sys.stderr)
    return 0
