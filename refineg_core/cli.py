"""The ``refineg`` command (plugins add subcommands through ``refineg_add_commands``).

Exit codes: 0 success; 1 a bug (rerun with ``--debug``); 2 an expected problem, one
readable line; 3 a required stage's backend unusable; 4 another distribution's
plugin crashed (named); 130 interrupted (rerun to resume).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import textwrap
import traceback
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from refineg_core import __version__, interrupts, progress, registry, secrets
from refineg_core.blame import Blame, blame
from refineg_core.config import engine_overrides, load_config, redacted_dump
from refineg_core.errors import RefinegError
from refineg_core.hooks import get_hooks, hook_plugins

#: Exit code of a crash inside a plugin another distribution shipped.
PLUGIN_CRASHED = 4


def _say(msg: str) -> None:
    progress.fresh_line(sys.stderr)  # never on the line a progress bar left
    print(msg, file=sys.stderr)


# ------------------------------------------------------------------ plugins
def cmd_plugins(args: argparse.Namespace) -> int:
    if args.kinds:
        return _print_kinds(args.json)
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


def _print_kinds(as_json: bool) -> int:
    """The table of plugin kinds: what a plugin package registers, and where."""
    from refineg_core.kinds import KINDS

    rows = [k.as_dict() for k in KINDS]
    if as_json:
        print(json.dumps(rows, indent=2))
        return 0
    for k in rows:
        print(f"{k['kind']}: group {k['group']}, base refineg.plugin.{k['base']}, ", end="")
        print(f"named by {k['config_key']}; writes {', '.join(k['required'])}", end="")
        print(f"; may declare {', '.join(k['declares'])}" if k["declares"] else "")
    return 0


# ------------------------------------------------------------------- config
def cmd_config_show(args: argparse.Namespace) -> int:
    config = load_config(args.config, args.set)
    if args.defaults:
        from refineg_core.config_doc import full_config_data, render_full_config

        if args.json:
            print(json.dumps(full_config_data(config), indent=2))
        else:
            print(render_full_config(config), end="")
        return 0
    data = redacted_dump(config)
    if args.json:
        print(json.dumps(data, indent=2))
    else:
        _print_toml(data)
    return 0


def _print_toml(data: dict[str, Any], prefix: str = "") -> None:
    from refineg_core.config_doc import toml_value

    scalars = {k: v for k, v in data.items() if not isinstance(v, dict)}
    tables = {k: v for k, v in data.items() if isinstance(v, dict)}
    if prefix and (scalars or not tables):
        print(f"\n[{prefix}]")
    for k, v in scalars.items():
        print(f"{k} = {toml_value(v)}")
    for k, v in tables.items():
        _print_toml(v, f"{prefix}.{k}" if prefix else k)


# ----------------------------------------------------------------- pipeline
def pipeline_from_args(args: argparse.Namespace):
    """The Pipeline a command's ``--config``/``--set``/``--run-dir`` describe."""
    from refineg_core.pipeline.orchestrator import Pipeline

    overrides = list(args.set)
    if getattr(args, "engine", None):
        overrides = engine_overrides(args.config, args.engine, overrides)
    config = load_config(args.config, overrides)
    if getattr(args, "run_dir", None):
        config.run_dir = Path(args.run_dir)
    return Pipeline(config, debug=args.debug, log=_say)


@contextlib.contextmanager
def writing_pipeline(args: argparse.Namespace) -> Iterator[Any]:
    """The run's pipeline holding its run directory's lock for the whole command (a
    second process is refused at once); a failure leaves no half-made run directory."""
    p = pipeline_from_args(args)
    with p:
        try:
            p.lock_run_dir()
            yield p
        except BaseException:
            p.discard_if_unused()
            raise


def _with_pipeline(args: argparse.Namespace, work: Callable[[Any], object]) -> int:
    """Run ``work`` on the run's locked pipeline and show its summary."""
    with writing_pipeline(args) as p:
        work(p)
        p.write_summary()
    print_summary(p.summary)
    _say(f"run directory: {p.run_dir}")
    return 0


def cmd_synth(args: argparse.Namespace) -> int:
    return _with_pipeline(args, lambda p: p.synth())


def cmd_train(args: argparse.Namespace) -> int:
    return _with_pipeline(args, lambda p: p.train(force=args.force))


def cmd_predict(args: argparse.Namespace) -> int:
    return _with_pipeline(args, lambda p: p.finish(p.predict()))


def cmd_refine(args: argparse.Namespace) -> int:
    return _with_pipeline(args, lambda p: p.finish(p.refine()))


def cmd_ground(args: argparse.Namespace) -> int:
    return _with_pipeline(args, lambda p: p.finish(p.ground()))


def cmd_run(args: argparse.Namespace) -> int:
    return _with_pipeline(args, lambda p: p.run(force_train=args.force))


def cmd_status(args: argparse.Namespace) -> int:
    from refineg_core.pipeline.fingerprint import Freshness

    p = pipeline_from_args(args)
    with p:  # reads only: never takes the lock, so it answers while a run works
        states = p.status()
        holder = p.store.holder()
    if holder is not None:  # what is not fresh yet is what that run is working on
        running = f"running (pid {holder.pid})"
        states = {
            stage: f if f.state == "fresh" else Freshness("running", (running, *f.reasons))
            for stage, f in states.items()
        }
        if not args.json:
            print(f"running: {holder.describe()} is writing {p.run_dir}")
    if args.json:
        print(
            json.dumps(
                {k: {"state": v.state, "reasons": list(v.reasons)} for k, v in states.items()},
                indent=2,
            )
        )
        return 0
    rows = [(stage, f.state, "; ".join(f.reasons)) for stage, f in states.items()]
    print_table(("stage", "state", "why"), rows, out=sys.stdout)
    return 0


def print_table(header: Sequence[str], rows: Sequence[Sequence[Any]], *, out=None) -> None:
    """A plain aligned text table (stderr unless ``out`` says otherwise)."""
    out = out or sys.stderr
    cells = [[str(c) for c in header]]
    for row in rows:  # a long last cell wraps onto continuation lines
        *head, last = (str(c) for c in row)
        wrapped = textwrap.wrap(last, 90) or [""]
        cells.append([*head, wrapped[0]])
        cells += [[""] * len(head) + [more] for more in wrapped[1:]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    for i, row in enumerate(cells):
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip(), file=out)
        if i == 0:
            print("  ".join("-" * w for w in widths), file=out)


#: Summary keys shown as table columns, in order; the rest go to "details".
_STAGE_COLUMNS = ("samples", "total", "processed", "resumed", "failed")


def _engine_line(stages: dict[str, Any]) -> str | None:
    """Which engine processed the stages (``engine: ray, 3 worker processes``)."""
    reports = [d["engine"] for d in stages.values() if isinstance(d.get("engine"), dict)]
    kinds = sorted({str(r.get("kind")) for r in reports if r.get("kind")})
    if not kinds:
        return None
    workers = max((r.get("worker_processes") or 0 for r in reports), default=0)
    return f"engine: {', '.join(kinds)}" + (f", {workers} worker processes" if workers else "")


def print_summary(summary: dict[str, Any]) -> None:
    stages = summary.get("stages", {})
    engine = _engine_line(stages)
    if engine:
        _say("")
        _say(engine)
    if stages:
        rows = []
        for name, data in stages.items():
            details = ", ".join(
                f"{k}={v}"
                for k, v in data.items()
                if k not in {"seconds", "report", "stage", *_STAGE_COLUMNS}
                and not isinstance(v, (dict, list))
            )
            backend = data.get("backend")
            if isinstance(backend, dict) and (backend.get("calls") or backend.get("cached_calls")):
                details += (
                    f"; backend: calls={backend['calls']}, "
                    f"from cache={backend.get('cached_calls', 0)}, "
                    f"failed={backend.get('failed_calls', 0)}"
                )
            count = data.get("samples", data.get("total", ""))
            rows.append(
                (name, f"{data.get('seconds', 0):.1f}", count, data.get("failed", ""), details)
            )
        _say("")
        print_table(("stage", "seconds", "samples", "failed", "details"), rows)
    final = summary.get("final")
    if final:
        _say("")
        print_table(
            ("final", "count"), [(k, v) for k, v in final.items() if not isinstance(v, dict)]
        )
    evals = summary.get("eval", {})
    if evals:
        kinds = sorted({k for m in evals.values() for k in m})
        _say("")
        print_table(
            ("F1 after", *kinds),
            [
                (stage, *(f"{m[k]:.2f}" if m.get(k) is not None else "" for k in kinds))
                for stage, m in evals.items()
            ],
        )


# --------------------------------------------------------------------- main
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="refineg",
        description="Low-resource grounded multimodal NER: tagger + uncertainty gate + MLLM.",
    )
    parser.add_argument("--version", action="version", version=f"refineg {__version__}")
    _global_flags(parser)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("plugins", help="list installed plugins")
    p.add_argument("--json", action="store_true")
    p.add_argument(
        "--kinds", action="store_true", help="list the plugin kinds (groups, contracts) instead"
    )
    p.set_defaults(func=cmd_plugins)

    cfg = sub.add_parser("config", help="inspect a config")
    cfg_sub = cfg.add_subparsers(dest="config_command", metavar="ACTION", required=True)
    show = cfg_sub.add_parser("show", help="print the resolved config (secrets redacted)")
    config_args(show)
    show.add_argument("--json", action="store_true")
    show.add_argument(
        "--defaults",
        action="store_true",
        help="every option of every selected plugin and stage, with defaults and descriptions",
    )
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
        config_args(sp)
        sp.add_argument("--run-dir", help="override run_dir")
        if name in ("predict", "refine", "ground", "run"):
            sp.add_argument(
                "--engine",
                help="where the stages run (overrides engine.kind): local (this process), "
                "ray, or another installed engine",
            )
        if name in ("train", "run"):
            sp.add_argument("--force", action="store_true", help="retrain even if a tagger exists")
        sp.set_defaults(func=func)

    st = sub.add_parser("status", help="each stage as fresh / stale (and why) / missing")
    config_args(st)
    st.add_argument("--run-dir", help="override run_dir")
    st.add_argument("--json", action="store_true")
    st.set_defaults(func=cmd_status)

    from refineg_core.cli_eval import add_eval_command

    add_eval_command(sub)
    get_hooks().add_commands(sub)
    _flags_everywhere(sub)
    return parser


def _flags_everywhere(sub: argparse._SubParsersAction) -> None:
    """``--debug``/``--quiet`` on every subcommand, also those a plugin adds."""
    for parser in sub.choices.values():
        nested = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        for group in nested:
            _flags_everywhere(group)
        if not nested and "--debug" not in parser._option_string_actions:
            _global_flags(parser, suppress=True)


def _global_flags(p: argparse.ArgumentParser, *, suppress: bool = False) -> None:
    """--debug/--quiet, before or after the subcommand (a copy never resets a value)."""
    default = argparse.SUPPRESS if suppress else False
    p.add_argument("--debug", action="store_true", default=default, help="show tracebacks")
    p.add_argument("--quiet", action="store_true", default=default, help="no progress bars")


def config_args(p: argparse.ArgumentParser) -> None:
    """``--config``/``--set`` (and the global flags) on a subcommand parser."""
    _global_flags(p, suppress=True)
    p.add_argument("--config", "-c", required=True, type=Path, help="TOML config file")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value, e.g. --set uncertainty.options.threshold=0.3",
    )


def _stdout_closed() -> int:
    """The reader went away (``... | head``): stop quietly like cat, exit 141 (SIGPIPE),
    stdout pointed at /dev/null so the exit flush cannot raise."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):  # stdout without a file descriptor (captured in tests)
        pass
    return 141


def _plugin_crashed(exc: Exception, culprit: Blame, debug: bool) -> int:
    """One line naming the plugin that raised, its distribution and the place; exit 4
    when another distribution shipped it, 1 for refineg's own."""
    if debug:
        traceback.print_exc()
    whom = culprit.distribution if culprit.third_party else "refineg"
    _say(
        secrets.scrub(
            f"refineg: error: {culprit.describe()}: {type(exc).__name__}: {exc} "
            f"(a bug in {whom}: report it there"
            + ("" if debug else ", with the traceback of --debug")
            + ")"
        )
    )
    return PLUGIN_CRASHED if culprit.third_party else 1


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    interrupts.install_handler()
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
        if args.quiet:
            progress.quiet()
        if not getattr(args, "func", None):
            parser.print_help()
            return 2
        code = int(args.func(args) or 0)
        sys.stdout.flush()  # a closed pipe shows up here, not at interpreter exit
        return code
    except BrokenPipeError:
        return _stdout_closed()
    except RefinegError as exc:
        if debug:
            traceback.print_exc()
        _say(secrets.scrub(f"refineg: error: {exc}"))
        return exc.exit_code
    except KeyboardInterrupt:
        _say("refineg: interrupted; run the same command again to resume")
        interrupts.leave_if_threads_linger()
        return interrupts.EXIT_INTERRUPTED
    except Exception as exc:
        culprit = blame(exc)
        if culprit is None:
            if debug:
                raise
            _say(
                secrets.scrub(
                    f"refineg: unexpected {type(exc).__name__}: {exc} (rerun with --debug)"
                )
            )
            return 1
        return _plugin_crashed(exc, culprit, debug)


if __name__ == "__main__":
    sys.exit(main())
