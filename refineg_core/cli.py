"""The ``refineg`` command.

Every expected problem (bad config, bad data, unknown plugin) is one readable
line on stderr and exit code 2; ``--debug`` shows the traceback instead.
Plugins add subcommands through the ``refineg_add_commands`` hook.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from refineg_core import __version__, registry
from refineg_core.config import load_config, redacted_dump
from refineg_core.errors import RefinegError
from refineg_core.hooks import get_hooks, hook_plugins


def _say(msg: str) -> None:
    print(msg, file=sys.stderr)


# ------------------------------------------------------------------ plugins
def cmd_plugins(args: argparse.Namespace) -> int:
    rows = [p.as_dict() for p in registry.installed()]
    hooks = [
        {"group": "refineg (hooks)", "name": n, "target": "", "distribution": d, "version": v}
        for n, d, v in hook_plugins()
    ]
    rows += hooks
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    header = ("group", "name", "distribution", "version")
    widths = [max([len(k), *(len(str(r[k])) for r in rows)]) for k in header]
    print("  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)))
    for r in rows:
        print("  ".join(str(r[k]).ljust(w) for k, w in zip(header, widths, strict=True)))
    return 0


# ------------------------------------------------------------------- config
def cmd_config_show(args: argparse.Namespace) -> int:
    config = load_config(args.config, args.set)
    data = redacted_dump(config)
    if args.json:
        print(json.dumps(data, indent=2))
    else:
        _print_toml(data)
    return 0


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {_toml_value(v)}" for k, v in value.items()) + " }"
    return json.dumps(str(value))


def _print_toml(data: dict[str, Any], prefix: str = "") -> None:
    scalars = {k: v for k, v in data.items() if not isinstance(v, dict)}
    tables = {k: v for k, v in data.items() if isinstance(v, dict)}
    if prefix and (scalars or not tables):
        print(f"\n[{prefix}]")
    for k, v in scalars.items():
        print(f"{k} = {_toml_value(v)}")
    for k, v in tables.items():
        _print_toml(v, f"{prefix}.{k}" if prefix else k)


# ----------------------------------------------------------------- pipeline
def _pipeline(args: argparse.Namespace):
    from refineg_core.pipeline.orchestrator import Pipeline

    config = load_config(args.config, args.set)
    if getattr(args, "run_dir", None):
        config.run_dir = Path(args.run_dir)
    return Pipeline(config, debug=args.debug, log=_say)


def _finish(pipeline) -> int:
    pipeline.write_summary()
    print_summary(pipeline.summary)
    _say(f"run directory: {pipeline.run_dir}")
    return 0


def cmd_synth(args: argparse.Namespace) -> int:
    p = _pipeline(args)
    p.synth()
    return _finish(p)


def cmd_train(args: argparse.Namespace) -> int:
    p = _pipeline(args)
    p.train(force=args.force)
    return _finish(p)


def cmd_predict(args: argparse.Namespace) -> int:
    p = _pipeline(args)
    p.finish(p.predict())
    return _finish(p)


def cmd_refine(args: argparse.Namespace) -> int:
    p = _pipeline(args)
    p.finish(p.refine())
    return _finish(p)


def cmd_ground(args: argparse.Namespace) -> int:
    p = _pipeline(args)
    p.finish(p.ground())
    return _finish(p)


def cmd_run(args: argparse.Namespace) -> int:
    p = _pipeline(args)
    p.run(force_train=args.force)
    return _finish(p)


def cmd_plan(args: argparse.Namespace) -> int:
    from refineg_core.plan import format_plan, plan_for_run

    p = _pipeline(args)
    data = plan_for_run(p, p.predict(), args)
    print(json.dumps(data, indent=2) if args.json else format_plan(data))
    return 0


def print_summary(summary: dict[str, Any]) -> None:
    stages = summary.get("stages", {})
    if stages:
        _say("\nstage      seconds  details")
        for name, data in stages.items():
            details = ", ".join(
                f"{k}={v}"
                for k, v in data.items()
                if k not in {"seconds", "report", "stage"} and not isinstance(v, (dict, list))
            )
            _say(f"{name:<10} {data.get('seconds', 0):>7.1f}  {details}")
            backend = data.get("backend")
            if isinstance(backend, dict) and backend:
                _say(f"{'':<19}backend: " + ", ".join(f"{k}={v}" for k, v in backend.items()))
    final = summary.get("final")
    if final:
        _say("final: " + ", ".join(f"{k}={v}" for k, v in final.items()))
    for stage, metrics in summary.get("eval", {}).items():
        _say(
            f"eval after {stage}: "
            + ", ".join(f"{k} F1={v:.2f}" for k, v in metrics.items() if v is not None)
        )


# --------------------------------------------------------------------- main
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="refineg",
        description="Low-resource grounded multimodal NER: tagger + uncertainty gate + MLLM.",
    )
    parser.add_argument("--version", action="version", version=f"refineg {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("plugins", help="list installed plugins")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_plugins)

    cfg = sub.add_parser("config", help="inspect a config")
    cfg_sub = cfg.add_subparsers(dest="config_command", metavar="ACTION", required=True)
    show = cfg_sub.add_parser("show", help="print the resolved config (secrets redacted)")
    _config_args(show)
    show.add_argument("--json", action="store_true")
    show.set_defaults(func=cmd_config_show)

    for name, func, text in (
        ("synth", cmd_synth, "synthesize training data from the gold seeds"),
        ("train", cmd_train, "train the tagger and save it in the run directory"),
        ("predict", cmd_predict, "tag data.predict and apply the uncertainty gate"),
        ("refine", cmd_refine, "send delegated samples to the MLLM"),
        ("ground", cmd_ground, "ground entities in images with in-context examples"),
        ("run", cmd_run, "run every enabled stage (resumes where a run stopped)"),
    ):
        sp = sub.add_parser(name, help=text)
        _config_args(sp)
        sp.add_argument("--run-dir", help="override run_dir")
        if name in ("train", "run"):
            sp.add_argument("--force", action="store_true", help="retrain even if a tagger exists")
        sp.set_defaults(func=func)

    sp = sub.add_parser("plan", help="what the MLLM stages will cost, before any call")
    _config_args(sp)
    sp.add_argument("--run-dir", help="override run_dir")
    from refineg_core.plan import add_plan_arguments

    add_plan_arguments(sp)
    sp.set_defaults(func=cmd_plan)

    from refineg_core.cli_eval import add_eval_command

    add_eval_command(sub)
    get_hooks().add_commands(sub)
    return parser


def _config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", "-c", required=True, type=Path, help="TOML config file")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value, e.g. --set uncertainty.options.threshold=0.3",
    )


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
        if args.quiet:
            os.environ["REFINEG_NO_PROGRESS"] = "1"
        if not getattr(args, "func", None):
            parser.print_help()
            return 2
        return int(args.func(args) or 0)
    except RefinegError as exc:
        if debug:
            traceback.print_exc()
        _say(f"refineg: error: {exc}")
        return 2
    except KeyboardInterrupt:
        _say("refineg: interrupted; run the same command again to resume")
        return 130
    except Exception as exc:
        if debug:
            raise
        _say(f"refineg: unexpected {type(exc).__name__}: {exc} (rerun with --debug for details)")
        return 1


if __name__ == "__main__":
    sys.exit(main())
