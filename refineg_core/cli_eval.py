"""``refineg eval``: score a prediction file against gold and print the table. Gold
without box annotations is an error (every entity would count as "not groundable")
unless ``--no-boxes`` says the data has none."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from refineg_core.errors import ConfigError, DataError
from refineg_core.evaluation import EvaluationReport, evaluate
from refineg_core.formats import load_dataset, recognised_format
from refineg_core.formats.native import read_results
from refineg_core.formats.writers import NATIVE
from refineg_core.types import Sample, SampleResult


def add_eval_command(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "eval",
        help="GMNER/MNER/EEG precision, recall and F1 of predictions against gold",
        description="Score predictions against gold: GMNER (span, type, region), MNER "
        "(span, type) and EEG (span, region), micro P/R/F1 plus a per-type table. "
        "Samples are aligned by id; a gold sample without prediction counts as all-missed "
        "(use --ids-from-pred to score a subset).",
    )
    p.add_argument("--gold", required=True, type=Path, help="gold data file")
    p.add_argument("--pred", required=True, type=Path, help="predictions (any data format)")
    p.add_argument(
        "--format",
        help="format plugin of both files (default: the installed format that recognises each)",
    )
    p.add_argument("--gold-format", help="format plugin of the gold file")
    p.add_argument("--pred-format", help="format plugin of the prediction file")
    for side in ("gold", "pred"):
        p.add_argument(
            f"--{side}-option",
            action="append",
            default=[],
            metavar="KEY=VALUE",
            dest=f"{side}_options",
            help=f"an option of the {side} file's format plugin, e.g. xml_dir=DIR "
            "(Twitter-GMNER) or entities=FILE (CCKS); repeatable",
        )
    # the flags of earlier versions, kept as spellings of the options above
    alias = "same as --{}-option {}=PATH"
    p.add_argument("--xml-dir", type=Path, help=alias.format("gold", "xml_dir"))
    p.add_argument("--gold-entities", type=Path, help=alias.format("gold", "entities"))
    p.add_argument("--pred-entities", type=Path, help=alias.format("pred", "entities"))
    p.add_argument(
        "--no-boxes",
        action="store_true",
        help="the gold data has no box annotations: every gold region is None",
    )
    p.add_argument(
        "--ids-from-pred",
        action="store_true",
        help="score only the gold samples whose id is in the predictions",
    )
    p.add_argument(
        "--json",
        metavar="OUT",
        help="also write the report as JSON ('-': to stdout, and the table to stderr)",
    )
    p.add_argument("--iou", type=float, default=0.5, help="IoU a box must exceed (default 0.5)")
    p.add_argument(
        "--by-name",
        action="store_true",
        help="identify entities by normalised name + type instead of token span (CCKS gold)",
    )
    p.set_defaults(func=run_eval)
    return p


def _warn(path: Path, warnings: tuple[str, ...]) -> None:
    if warnings:
        print(f"{path}: {len(warnings)} warning(s), e.g. {warnings[0]}", file=sys.stderr)


def _options(pairs: list[str], flag: str, aliases: dict[str, Path | None]) -> dict[str, str]:
    """``KEY=VALUE`` pairs, and the old flags' values, as a format's options."""
    options: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"expected KEY=VALUE, got {pair!r}", where=flag)
        if key.strip() in options:
            raise ConfigError(f"{key.strip()!r} is given twice", where=flag)
        options[key.strip()] = value
    for key, value in aliases.items():
        if value is None:
            continue
        if key in options:
            raise ConfigError(f"{key!r} is given twice (and by its old flag)", where=flag)
        options[key] = str(value)
    return options


def _load_gold(args: argparse.Namespace) -> list[Sample]:
    aliases = {"xml_dir": args.xml_dir, "entities": args.gold_entities}
    ds = load_dataset(
        args.gold,
        args.gold_format or args.format,
        boxes=False if args.no_boxes else None,
        options=_options(args.gold_options, "--gold-option", aliases),
        config_key="gold",
    )
    _warn(args.gold, ds.warnings)
    return list(ds.samples)


def _load_pred(args: argparse.Namespace) -> list[Sample | SampleResult]:
    path, fmt = args.pred, args.pred_format or args.format
    options = _options(args.pred_options, "--pred-option", {"entities": args.pred_entities})
    if path.is_file():
        fmt = fmt or recognised_format(path, config_key="pred")
        if fmt == NATIVE and not options:
            return list(read_results(path))  # results keep their recorded failures
    ds = load_dataset(path, fmt, options=options, config_key="pred")
    _warn(path, ds.warnings)
    return list(ds.samples)


def _check_regions(report: EvaluationReport, gold: Path) -> None:
    if report.gold_regions_unknown:
        raise DataError(
            f"{report.gold_regions_unknown} gold entities have no box annotation (region "
            "unknown), so GMNER and EEG cannot be scored; give the gold format the option "
            "that locates its boxes (e.g. --gold-option xml_dir=DIR for Twitter-GMNER), "
            "or pass --no-boxes if the gold data has none",
            where=str(gold),
        )


def run_eval(args: argparse.Namespace) -> int:
    gold = _load_gold(args)
    pred = _load_pred(args)
    if args.ids_from_pred:
        ids = {p.id for p in pred}
        gold = [g for g in gold if g.id in ids]
    report: EvaluationReport = evaluate(gold, pred, iou_threshold=args.iou, by_name=args.by_name)
    _check_regions(report, args.gold)
    to_stdout = args.json == "-"
    print(report.format_table(), file=sys.stderr if to_stdout else sys.stdout)
    if args.json:
        text = json.dumps(report.to_dict(), indent=2) + "\n"
        if to_stdout:
            sys.stdout.write(text)
        else:
            out = Path(args.json)
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(text, encoding="utf-8")
            print(f"report written to {out}", file=sys.stderr)
    return 0
