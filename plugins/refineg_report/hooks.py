"""``refineg report``: added to the CLI through the ``refineg_add_commands`` hook."""

from __future__ import annotations

import argparse
from pathlib import Path

from refineg_core.hooks import hookimpl


@hookimpl
def refineg_add_commands(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "report",
        help="write a self-contained HTML report of predictions (boxes drawn on images)",
        description="Draw predicted (and gold) boxes on each image, with entity names, "
        "types and which stage decided them, into one HTML file.",
    )
    p.add_argument("--pred", required=True, type=Path, help="a stage's results (native JSONL)")
    p.add_argument("--gold", type=Path, help="gold data in any format refineg reads")
    p.add_argument(
        "--gold-format", default=None, help="format of --gold (guessed from the file when omitted)"
    )
    p.add_argument(
        "--images",
        type=Path,
        default=None,
        help="folder to look for images whose recorded path is missing",
    )
    p.add_argument(
        "--out",
        type=Path,
        default=None,
        help="output HTML file (default: beside --pred, named <pred>.report.html)",
    )
    p.add_argument("--limit", type=int, default=None, help="show at most N samples")
    p.set_defaults(func=run_report)


def default_out(pred: Path) -> Path:
    """``runs/x/ground.jsonl`` -> ``runs/x/ground.report.html`` (never the current folder)."""
    pred = Path(pred)
    return pred.with_name(f"{pred.stem}.report.html")


def run_guarantee(pred: Path) -> dict | None:
    """The precision target of the run that wrote ``pred`` (its ``summary.json``
    beside it, ``calibration.guarantee``), to mark on the curve; None without one."""
    import json

    summary = pred.with_name("summary.json")
    try:
        data = json.loads(summary.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    guarantee = (data.get("calibration") or {}).get("guarantee") if isinstance(data, dict) else None
    return (
        guarantee
        if isinstance(guarantee, dict) and guarantee.get("threshold") is not None
        else None
    )


def run_report(args: argparse.Namespace) -> int:
    """Build the report; errors in the inputs surface as RefinegError (one line, exit 2)."""
    from refineg_core.formats import load_dataset
    from refineg_core.formats.native import read_results
    from refineg_report.report import write_report

    results = read_results(args.pred)
    gold = None
    if args.gold is not None:
        gold = load_dataset(args.gold, args.gold_format).by_id()
    out = write_report(
        results,
        args.out or default_out(args.pred),
        gold,
        images_dir=args.images,
        limit=args.limit,
        title=f"refineg report: {Path(args.pred).name}",
        guarantee=run_guarantee(Path(args.pred)),
    )
    shown = len(results) if args.limit is None else min(args.limit, len(results))
    print(f"wrote {out} ({shown} of {len(results)} samples)")
    return 0
