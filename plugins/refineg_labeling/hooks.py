"""``refineg select`` and ``refineg labelstudio``: added through ``refineg_add_commands``.

The loop: ``select`` picks the posts to label (``batch-NNN.jsonl``), ``labelstudio
export`` turns them into tasks with the tagger's pre-annotations, annotators label
them in Label Studio, ``labelstudio import`` reads its JSON export back into native
JSONL, which ``data.extra_train`` adds to the next ``refineg train``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from refineg_core.hooks import hookimpl


@hookimpl
def refineg_add_commands(subparsers: argparse._SubParsersAction) -> None:
    from refineg_core.cli import config_args
    from refineg_labeling.selection import SCORES, STRATEGIES

    p = subparsers.add_parser(
        "select",
        help="choose the posts to label next (uncertainty, diversity or random)",
        description="Tag an unlabeled pool with the run's trained tagger and gate, rank "
        "the posts by a sample uncertainty (--score) and write the N chosen ones (with the "
        "tagger's entities) to OUT/batch-NNN.jsonl. Posts in data.train, "
        "data.extra_train and earlier OUT/batch-*.jsonl are never chosen.",
    )
    config_args(p)
    p.add_argument("--run-dir", help="override run_dir")
    p.add_argument("--pool", required=True, type=Path, help="unlabeled posts, any format")
    p.add_argument("--pool-format", default=None, help="format of --pool (default: guessed)")
    p.add_argument("--pool-images", type=Path, default=None, help="images folder of the pool")
    p.add_argument("--n", type=int, default=200, help="how many posts to choose")
    p.add_argument("--strategy", choices=STRATEGIES, default="uncertainty")
    p.add_argument(
        "--score",
        choices=SCORES,
        default="lc",
        help="sample uncertainty of the uncertainty strategies: lc (default; least "
        "confidence: minus the decoded path's log-probability, not divided by length; in "
        "the labeling benchmark it reached random's 1,600-label F1 with 600-800 labels), "
        "mnlp (Shen et al. 2018: the same per token, lowest first), tte (total token "
        "entropy: the sum of the tokens' tag entropies) or max (the gate's: worst entity "
        "or missed-entity score, within the seed spread of random there)",
    )
    p.add_argument("--seed", type=int, default=0, help="seeds ties and the random strategy")
    p.add_argument(
        "--out", type=Path, default=None, help="batch folder (default: RUN_DIR/labeling)"
    )
    p.set_defaults(func=run_select)

    ls = subparsers.add_parser("labelstudio", help="Label Studio tasks out, its export back in")
    sub = ls.add_subparsers(dest="ls_command", metavar="ACTION", required=True)

    c = sub.add_parser("config", help="print the labeling config XML for the run's entity types")
    config_args(c)
    c.add_argument("--out", type=Path, default=None, help="write it here instead of stdout")
    c.set_defaults(func=run_ls_config)

    e = sub.add_parser(
        "export",
        help="write a batch as Label Studio tasks (JSON) with pre-annotations",
        description="Each post becomes a task: the text (entity spans), the image (boxes, "
        "each linked to its entity by a relation), and the tagger's entities as a "
        "prediction with scores; --predictions adds more (e.g. the MLLM's run output).",
    )
    e.add_argument("batch", type=Path, help="a batch from `refineg select` (native JSONL)")
    e.add_argument("--out", "-o", type=Path, required=True, help="tasks JSON file")
    e.add_argument(
        "--local-files-root",
        type=Path,
        default=None,
        help="LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT: images are served from under it",
    )
    e.add_argument("--image-url-prefix", default=None, help="a web folder holding the images")
    e.add_argument(
        "--predictions",
        action="append",
        default=[],
        metavar="NAME=FILE",
        help="another model's results for the same posts (native JSONL), e.g. mllm=final.jsonl",
    )
    e.set_defaults(func=run_ls_export)

    i = sub.add_parser(
        "import",
        help="read Label Studio's JSON export into native JSONL (for data.extra_train)",
        description="Every annotation that cannot be read is named (task, region) on "
        "stderr and its post left out; the others are written. Exit 2 when any was left out.",
    )
    config_args(i)
    i.add_argument("export", type=Path, help="Label Studio's JSON export")
    i.add_argument("--out", "-o", type=Path, required=True, help="native JSONL to write")
    i.set_defaults(func=run_ls_import)


# ------------------------------------------------------------------------ select
def already_labeled(pipeline, out_dir: Path) -> set[str]:
    """Ids of data.train, data.extra_train and every earlier batch in ``out_dir``."""
    from refineg_core.formats.loader import load_source
    from refineg_core.formats.native import iter_jsonl

    data = pipeline.config.data
    ids: set[str] = set()
    for i, source in enumerate([data.train, *data.extra_train]):
        if source is not None:
            key = "data.train" if i == 0 else f"data.extra_train.{i - 1}"
            ids |= {s.id for s in load_source(source, config_key=key).samples}
    for batch in sorted(out_dir.glob("batch-*.jsonl")):
        ids |= {str(rec["id"]) for _, rec in iter_jsonl(batch)}
    return ids


def next_batch_path(out_dir: Path) -> Path:
    taken = [
        int(p.stem.split("-")[1]) for p in out_dir.glob("batch-*.jsonl") if p.stem[6:].isdigit()
    ]
    return out_dir / f"batch-{max(taken, default=0) + 1:03d}.jsonl"


def pool_vectors(pipeline, samples) -> object:
    """Text embeddings of the pool from the selector's text encoder (its text_model)."""
    from refineg_clip_selector.encoders import TextEncoder, default_text_model
    from refineg_clip_selector.selector import normalize_text

    selector = pipeline.config.selector
    folder = (selector.options.get("text_model") if selector else None) or default_text_model()
    return TextEncoder(Path(folder)).encode([normalize_text(s.text) for s in samples])


def pool_scores(pipeline, candidates, score: str) -> tuple[list[float], list]:
    """Sample scores of ``candidates`` (higher = label sooner) and, for ``max``, the
    gate's results of every candidate (``mnlp``, ``lc`` and ``tte`` read the tagger's
    predictions only, so only the chosen posts are tagged afterwards, for their
    pre-annotations)."""
    from refineg_labeling.selection import TAGGER_SCORE, sample_uncertainty_of

    chunk = pipeline.chunk_size
    scores: list[float] = []
    results: list = []
    of = TAGGER_SCORE.get(score)
    tagger = pipeline.load_tagger() if of is not None else None
    for lo in range(0, len(candidates), chunk):
        part = candidates[lo : lo + chunk]
        if of is not None:
            scores += [of(p) for p in tagger.predict(part)]
        else:
            tagged = pipeline.tag(part, each=True)
            results += tagged
            scores += [sample_uncertainty_of(r.gate.missed_uncertainty, r.entities) for r in tagged]
    return scores, results


def run_select(args: argparse.Namespace) -> int:
    import attrs

    from refineg_core.cli import pipeline_from_args
    from refineg_core.formats import load_dataset
    from refineg_core.formats.native import write_jsonl
    from refineg_labeling.selection import choose

    pipeline = pipeline_from_args(args)
    with pipeline:
        out_dir = Path(args.out or pipeline.run_dir / "labeling")
        pool = load_dataset(
            args.pool, args.pool_format, images_dir=args.pool_images, config_key="--pool"
        ).samples
        exclude = already_labeled(pipeline, out_dir)
        candidates = [s for s in pool if s.id not in exclude]
        print(
            f"select: pool {len(pool)} posts, {len(pool) - len(candidates)} already labeled",
            file=sys.stderr,
        )
        ids = [s.id for s in candidates]
        results, scores, vectors = [], None, None
        if args.strategy != "random" and candidates:
            scores, results = pool_scores(pipeline, candidates, args.score)
            if args.strategy == "uncertainty+diversity":
                vectors = pool_vectors(pipeline, candidates)
        chosen = choose(args.strategy, ids, args.n, scores=scores, vectors=vectors, seed=args.seed)
        by_id = {r.id: r for r in results}
        score_of = dict(zip(ids, scores, strict=True)) if scores is not None else {}
        untagged = [sid for sid in chosen if sid not in by_id]
        if untagged:  # random or a tagger score: tag only the chosen posts (their pre-annotations)
            sample_of = {s.id: s for s in candidates}
            by_id |= {
                r.id: r for r in pipeline.tag([sample_of[sid] for sid in untagged], each=True)
            }
        how = {"strategy": args.strategy}
        if args.strategy != "random":
            how["score"] = args.score
        batch = [
            attrs.evolve(
                by_id[sid],
                meta={
                    **by_id[sid].meta,
                    "selection": {**how, "rank": k, "uncertainty": score_of.get(sid)},
                },
            )
            for k, sid in enumerate(chosen)
        ]
        if not batch:
            print("select: no unlabeled post left in the pool", file=sys.stderr)
            return 0
        out_dir.mkdir(parents=True, exist_ok=True)
        path = next_batch_path(out_dir)
        write_jsonl(batch, path)
    print(f"wrote {path} ({len(batch)} posts, strategy {args.strategy})")
    return 0


# ------------------------------------------------------------------- labelstudio
def run_ls_config(args: argparse.Namespace) -> int:
    from refineg_core.config import load_config
    from refineg_labeling.labelstudio import labeling_config

    xml = labeling_config(load_config(args.config, args.set, check_paths=False).label_set)
    if args.out:
        args.out.write_text(xml, encoding="utf-8")
        print(f"wrote {args.out}")
    else:
        print(xml, end="")
    return 0


def run_ls_export(args: argparse.Namespace) -> int:
    from refineg_core.errors import ConfigError
    from refineg_core.formats.native import read_results
    from refineg_labeling.labelstudio import to_task, write_tasks

    batch = read_results(args.batch)
    extra: dict[str, dict] = {}
    for spec in args.predictions:
        name, sep, file = spec.partition("=")
        if not sep or not name or not file:
            raise ConfigError(f"--predictions {spec!r} must look like NAME=FILE")
        extra[name] = {r.id: r.entities for r in read_results(Path(file))}
    tasks = [
        to_task(
            r,
            predictions={n: by_id[r.id] for n, by_id in extra.items() if r.id in by_id},
            local_root=args.local_files_root,
            url_prefix=args.image_url_prefix,
        )
        for r in batch
    ]
    write_tasks(tasks, args.out)
    no_image = sum(1 for t in tasks if not t["data"]["image"])
    note = f"; {no_image} without an image URL" if no_image else ""
    print(f"wrote {args.out} ({len(tasks)} tasks{note})")
    return 0


def run_ls_import(args: argparse.Namespace) -> int:
    import json

    from refineg_core.config import load_config
    from refineg_core.formats.native import write_jsonl
    from refineg_labeling.labelstudio import read_export

    labels = load_config(args.config, args.set, check_paths=False).label_set
    report = read_export(args.export, labels)
    for problem in report.problems:
        print(f"refineg: error: {args.export}: {problem}", file=sys.stderr)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_jsonl(report.samples, args.out)
    summary = {k: v for k, v in report.as_dict().items() if k != "problems"}
    print(json.dumps({"wrote": str(args.out), **summary, "left_out": len(report.problems)}))
    return 2 if report.problems else 0
