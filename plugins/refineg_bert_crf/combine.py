"""One ensemble from ``bert_crf`` taggers trained apart.

Deep-ensemble members are independent runs, so they can be trained on several
machines (or at different times) and joined afterwards: every member of every
input tagger becomes a member of the result, in order. The inputs must agree on
everything the shared parts depend on: labels and scheme, the encoder's
architecture and tokenizer, and the options that shape the head or cut the
sentences. Anything else (seed, epochs, learning rates) may differ. A member
given twice (identical weights) is refused: a copy adds nothing.

    python -m refineg_bert_crf.combine --out runs/ens3 runs/seed1 runs/seed2 runs/seed3

Then use it with ``--set tagger.load_from=runs/ens3``.
"""

from __future__ import annotations

import argparse
import copy
import sys
from collections.abc import Sequence
from pathlib import Path

import torch

from refineg_bert_crf.tagger import BertCrfTagger
from refineg_core.errors import RefinegError, TaggerError

#: Options every member must share: they shape the head or how sentences are cut.
SHARED_OPTIONS = (
    "scheme",
    "max_length",
    "use_shape_features",
    "shape_dim",
    "constrain_transitions",
)
#: Encoder config keys that fix the architecture (dropout and names may differ).
SHARED_ENCODER = (
    "model_type",
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "intermediate_size",
    "vocab_size",
    "max_position_embeddings",
)


def _signature(tagger: BertCrfTagger) -> dict:
    config = tagger.encoder_config
    return {
        "labels": tagger.label_names,
        **{f"options.{k}": getattr(tagger.options, k) for k in SHARED_OPTIONS},
        **{f"encoder.{k}": getattr(config, k, None) for k in SHARED_ENCODER},
        "tokenizer": tagger.tokenizer.backend_tokenizer.to_str(),
    }


def combine(taggers: Sequence[BertCrfTagger], *, names: Sequence[str] | None = None):
    """An ensemble of all members of ``taggers`` (trained, compatible), in order.

    ``names`` label the inputs in errors (default: their positions)."""
    taggers = list(taggers)
    names = list(names) if names is not None else [f"tagger {i}" for i in range(len(taggers))]
    if len(taggers) < 2:
        raise TaggerError(
            f"combine needs at least two taggers, got {len(taggers)}", where="combine"
        )
    for tagger, name in zip(taggers, names, strict=True):
        if tagger.model is None:
            raise TaggerError("the tagger is not trained", where=name)
        tagger._attach_encoders()  # a head-only load: every member needs its own encoder
        tagger._transformers_parts()
    first = _signature(taggers[0])
    for tagger, name in zip(taggers[1:], names[1:], strict=True):
        other = _signature(tagger)
        differ = [k for k in first if first[k] != other[k]]
        if differ:
            shown = ", ".join(
                k if k == "tokenizer" else f"{k} ({first[k]!r} vs {other[k]!r})" for k in differ
            )
            raise TaggerError(f"cannot join it with {names[0]}: they differ in {shown}", where=name)
    device = next(taggers[0].model.parameters()).device
    members = [m.to(device) for t in taggers for m in t.members]
    owner = [name for t, name in zip(taggers, names, strict=True) for _ in t.members]
    for j, later in enumerate(members):
        for i in range(j):
            if torch.equal(members[i].emission.weight, later.emission.weight):
                raise TaggerError(
                    f"its member is the same model as a member of {owner[i]} (identical "
                    "weights): a copy adds nothing to an ensemble",
                    where=owner[j],
                )
    origin = []
    for tagger, name in zip(taggers, names, strict=True):
        own = tagger.member_origin or [{} for _ in tagger.members]
        origin.extend({**o, "from": name} for o in own)
    joined = copy.copy(taggers[0])
    joined.options = taggers[0].options.model_copy(
        update={"ensemble_size": len(members), "ensemble_mode": "seeds"}
    )
    joined.members = members
    joined.model = members[0]
    joined.member_origin = origin
    joined._forget_runner()
    joined._saved = None
    joined._deferred = None
    return joined


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m refineg_bert_crf.combine",
        description="Join saved bert_crf taggers (independent runs) into one ensemble.",
    )
    ap.add_argument("taggers", nargs="+", type=Path, help="saved tagger directories")
    ap.add_argument("--out", required=True, type=Path, help="where to save the ensemble")
    args = ap.parse_args(argv)
    if args.out.exists() and any(args.out.iterdir()):
        print(f"error: {args.out} exists and is not empty", file=sys.stderr)
        return 2
    try:
        loaded = [BertCrfTagger.load(d) for d in args.taggers]
        joined = combine(loaded, names=[str(d) for d in args.taggers])
        joined.save(args.out)
    except RefinegError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"saved an ensemble of {len(joined.members)} members to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
