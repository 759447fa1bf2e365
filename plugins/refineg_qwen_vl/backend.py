"""Qwen2-VL / Qwen2.5-VL / Qwen3-VL run locally through transformers.

Weights come only from a local folder (``model_path``); nothing is fetched
from a hub. The processor's own image resizing decides the box frame, so the
codec is built from the processor's pixel bounds and patch grid, and the model
type picks the coordinate convention (Qwen2.5-VL: pixels of the resized grid;
Qwen2-VL and Qwen3-VL: a 0-1000 grid).

Calls from many threads are gathered into batches of up to ``batch_size`` by
one worker thread that owns the model (generation is not thread-safe, and a
batch uses the accelerator better than one request at a time).
"""

from __future__ import annotations

import json
import queue
import threading
from concurrent.futures import Future
from pathlib import Path
from typing import Any, Literal

import pydantic
from PIL import Image

from refineg_core.chat import ChatMessage, ChatRequest, ChatResponse, ImagePart, TextPart, Usage
from refineg_core.errors import BackendError, BackendUnavailable, SampleImageError
from refineg_core.interfaces import BoxCodec, MLLMBackend, PluginOptions
from refineg_core.registry import create_box_frame

#: config.json ``model_type`` -> the box frame (a ``refineg.box_frames`` plugin) it answers in.
MODEL_TYPES: dict[str, str] = {
    "qwen2_vl": "qwen2-vl",
    "qwen2_5_vl": "qwen2.5-vl",
    "qwen3_vl": "qwen3-vl",
    "qwen3_vl_moe": "qwen3-vl",
}

#: Used only when the model folder ships no chat template (the Qwen2-VL format).
FALLBACK_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'text' %}{{ content['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


class QwenVLOptions(PluginOptions):
    #: A local folder with config.json, weights and the processor files.
    model_path: str | None = None
    device: str = "auto"
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    batch_size: int = pydantic.Field(1, ge=1, le=256)
    #: The most tokens one answer may have; a stage's ``max_tokens`` applies only when lower.
    max_new_tokens: int = pydantic.Field(1024, ge=1)
    temperature: float = pydantic.Field(0.0, ge=0)
    #: None: sample exactly when temperature > 0.
    do_sample: bool | None = None
    seed: int = 0
    #: Override the processor's pixel bounds (and so the box frame).
    min_pixels: int | None = pydantic.Field(None, ge=1)
    max_pixels: int | None = pydantic.Field(None, ge=1)
    attn_implementation: str | None = None
    #: How long the batching worker waits for more requests before running a batch.
    batch_wait_s: float = pydantic.Field(0.02, ge=0)

    @pydantic.model_validator(mode="after")
    def _bounds(self) -> QwenVLOptions:
        if self.min_pixels and self.max_pixels and self.min_pixels > self.max_pixels:
            raise ValueError(f"min_pixels {self.min_pixels} > max_pixels {self.max_pixels}")
        return self


class QwenVLBackend(MLLMBackend):
    """A local Qwen-VL model; ``max_concurrency`` = ``batch_size`` so stages fill batches."""

    Options = QwenVLOptions
    options: QwenVLOptions

    def __init__(self, options: QwenVLOptions | None = None, labels: Any = None) -> None:
        super().__init__(options, labels)
        self._load_lock = threading.Lock()
        self._model: Any = None
        self._processor: Any = None
        self._device: str | None = None
        self._codec: BoxCodec | None = None
        self._queue: queue.Queue[tuple[ChatRequest, Future] | None] = queue.Queue()
        self._worker: threading.Thread | None = None
        self._stats_lock = threading.Lock()
        self.stats: dict[str, int] = {"requests": 0, "batches": 0, "failures": 0}

    # -- contract ----------------------------------------------------------
    @property
    def max_concurrency(self) -> int:
        return self.options.batch_size

    def describe(self) -> str:
        return f"qwen_vl (transformers) from {self.options.model_path or '<no model_path>'}"

    def cache_identity(self) -> dict:
        o = self.options
        return {
            "backend": "qwen_vl",
            "model": str(Path(o.model_path).resolve()) if o.model_path else None,
            "weights": self._weights_fingerprint(),
            "dtype": o.dtype,
            "max_new_tokens": o.max_new_tokens,
            "token_limit": "min(request, max_new_tokens)",  # was: the request's alone
            "temperature": o.temperature,
            "do_sample": self._sampling(o.temperature),
            "seed": o.seed,
            "min_pixels": o.min_pixels,
            "max_pixels": o.max_pixels,
        }

    def check_available(self) -> str | None:
        path = self.options.model_path
        if not path:
            return "qwen_vl needs model_path: a local folder with Qwen-VL weights"
        folder = Path(path)
        if not (folder / "config.json").is_file():
            return f"no Qwen-VL model at {folder} (config.json missing)"
        model_type = self._model_type()
        if model_type not in MODEL_TYPES:
            return (
                f"{folder} holds a {model_type!r} model; qwen_vl runs "
                f"{', '.join(sorted(MODEL_TYPES))}"
            )
        try:
            import transformers  # noqa: F401
        except ImportError as exc:
            return f"transformers is not importable: {exc}"
        try:
            self.processor  # noqa: B018 - loading it is the check (cached for the calls)
        except ImportError as exc:
            # transformers' Qwen2-VL processors need torchvision (the video processor).
            why = " ".join(str(exc).split()) or repr(exc)
            return f"cannot load the Qwen-VL processor: {why}; pip install 'refineg[vision]'"
        return None

    @property
    def box_codec(self) -> BoxCodec:
        if self._codec is None:
            reason = self.check_available()
            if reason:
                raise BackendUnavailable(reason)
            self._codec = self._codec_from_processor(self.processor)
        return self._codec

    def complete(self, request: ChatRequest) -> ChatResponse:
        if self._model is None:  # once loaded, the model needs neither folder nor check
            reason = self.check_available()
            if reason:
                raise BackendUnavailable(reason)
            self._load()
        self._ensure_worker()
        fut: Future = Future()
        self._queue.put((request, fut))
        with self._stats_lock:
            self.stats["requests"] += 1
        return fut.result()

    def close(self) -> None:
        if self._worker is not None:
            self._queue.put(None)
            self._worker.join(timeout=30)
            self._worker = None

    # -- loading -------------------------------------------------------------
    def _model_type(self) -> str | None:
        try:
            cfg = json.loads((Path(self.options.model_path or "") / "config.json").read_text())
        except (OSError, ValueError):
            return None
        return cfg.get("model_type")

    def _weights_fingerprint(self) -> str | None:
        """Size and mtime of the weight files: a retrained folder is a new model for the cache."""
        if not self.options.model_path:
            return None
        folder = Path(self.options.model_path)
        if not folder.is_dir():
            return None
        files = sorted(folder.glob("*.safetensors")) + sorted(folder.glob("*.bin"))
        return ";".join(f"{f.name}:{f.stat().st_size}:{f.stat().st_mtime_ns}" for f in files)

    @property
    def processor(self) -> Any:
        with self._load_lock:
            if self._processor is None:
                from transformers import AutoProcessor

                proc = AutoProcessor.from_pretrained(self.options.model_path, local_files_only=True)
                if getattr(proc, "chat_template", None) is None:
                    proc.chat_template = FALLBACK_CHAT_TEMPLATE
                proc.tokenizer.padding_side = "left"  # generation continues on the right
                self._processor = proc
            return self._processor

    def _pixel_bounds(self, processor: Any) -> tuple[int, int]:
        ip = processor.image_processor
        size = getattr(ip, "size", None) or {}
        get = size.get if isinstance(size, dict) else lambda k: getattr(size, k, None)
        lo = self.options.min_pixels or get("shortest_edge") or getattr(ip, "min_pixels", None)
        hi = self.options.max_pixels or get("longest_edge") or getattr(ip, "max_pixels", None)
        if not lo or not hi:
            raise BackendError(f"cannot read the pixel bounds of {type(ip).__name__}")
        return int(lo), int(hi)

    def _codec_from_processor(self, processor: Any) -> BoxCodec:
        ip = processor.image_processor
        factor = int(getattr(ip, "patch_size", 14)) * int(getattr(ip, "merge_size", 2))
        lo, hi = self._pixel_bounds(processor)
        frame = MODEL_TYPES[self._model_type() or ""]
        return create_box_frame(
            frame,
            {"min_pixels": lo, "max_pixels": hi, "factor": factor},
            config_key="backend.options",
        )

    def _load(self) -> None:
        with self._load_lock:
            if self._model is not None:
                return
            import torch
            from transformers import AutoModelForImageTextToText

            o = self.options
            device = o.device
            if device == "auto":
                device = "cuda" if torch.cuda.is_available() else "cpu"
            dtype: Any = "auto" if o.dtype == "auto" else getattr(torch, o.dtype)
            if dtype == "auto" and device == "cpu":
                dtype = torch.float32  # half precision on CPU is slow or unsupported
            kwargs: dict[str, Any] = {"local_files_only": True, "dtype": dtype}
            if o.attn_implementation:
                kwargs["attn_implementation"] = o.attn_implementation
            try:
                model = AutoModelForImageTextToText.from_pretrained(o.model_path, **kwargs)
            except (OSError, ValueError) as exc:
                raise BackendUnavailable(f"cannot load {o.model_path}: {exc}") from exc
            self._model = model.to(device).eval()
            self._device = device

    def _ensure_worker(self) -> None:
        with self._load_lock:
            if self._worker is None or not self._worker.is_alive():
                self._worker = threading.Thread(
                    target=self._serve, name="qwen-vl-batcher", daemon=True
                )
                self._worker.start()

    # -- batching worker -----------------------------------------------------
    def _serve(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            batch = [item]
            while len(batch) < self.options.batch_size:
                try:
                    nxt = self._queue.get(timeout=self.options.batch_wait_s)
                except queue.Empty:
                    break
                if nxt is None:
                    self._queue.put(None)
                    break
                batch.append(nxt)
            try:
                self._run_batch(batch)
            except Exception as exc:  # never leave a caller waiting on a dead worker
                for _, fut in batch:
                    if not fut.done():
                        self._fail(fut, BackendError(f"{type(exc).__name__}: {exc}"))

    def _run_batch(self, batch: list[tuple[ChatRequest, Future]]) -> None:
        prepared: list[tuple[str, list[Image.Image], ChatRequest, Future]] = []
        for request, fut in batch:
            try:
                text, images = self._prepare(request)
            except BackendError as exc:
                self._fail(fut, exc)
                continue
            except Exception as exc:  # a template or processor error: this request only
                self._fail(
                    fut,
                    BackendError(
                        f"cannot build the prompt: {type(exc).__name__}: {exc}", retryable=False
                    ),
                )
                continue
            prepared.append((text, images, request, fut))
        if not prepared:
            return
        # one generate call per temperature: sampling settings are per batch
        groups: dict[float, list] = {}
        for item in prepared:
            groups.setdefault(self._temperature(item[2]), []).append(item)
        for temperature, group in groups.items():
            try:
                answers = self._generate(group, temperature)
            except Exception as exc:  # one bad batch fails its requests, never the worker
                for *_, fut in group:
                    self._fail(fut, BackendError(f"generation failed: {type(exc).__name__}: {exc}"))
                continue
            with self._stats_lock:
                self.stats["batches"] += 1
            for (*_, fut), response in zip(group, answers, strict=True):
                fut.set_result(response)

    def _temperature(self, request: ChatRequest) -> float:
        return self.options.temperature if request.temperature is None else request.temperature

    def _fail(self, fut: Future, exc: BaseException) -> None:
        with self._stats_lock:
            self.stats["failures"] += 1
        fut.set_exception(exc)

    def _prepare(self, request: ChatRequest) -> tuple[str, list[Image.Image]]:
        """Chat template text with one image placeholder per image, plus the images."""
        messages: list[dict[str, Any]] = []
        images: list[Image.Image] = []
        for message in request.messages:
            messages.append({"role": message.role, "content": self._content(message, images)})
        text = self.processor.apply_chat_template(
            messages, add_generation_prompt=True, tokenize=False
        )
        return text, images

    def _content(self, message: ChatMessage, images: list[Image.Image]) -> list[dict[str, Any]]:
        content: list[dict[str, Any]] = []
        for part in message.parts:
            if isinstance(part, TextPart):
                content.append({"type": "text", "text": part.text})
            elif isinstance(part, ImagePart):
                images.append(_load_image(part))
                content.append({"type": "image"})
        return content

    def _sampling(self, temperature: float) -> bool:
        if self.options.do_sample is not None:
            return self.options.do_sample
        return temperature > 0

    def _generate(
        self, prepared: list[tuple[str, list[Image.Image], ChatRequest, Future]], temperature: float
    ) -> list[ChatResponse]:
        import torch

        proc = self.processor
        lo, hi = self._pixel_bounds(proc)
        texts = [p[0] for p in prepared]
        images = [img for p in prepared for img in p[1]]
        inputs = proc(
            text=texts,
            images=images or None,
            return_tensors="pt",
            padding=True,
            size={"shortest_edge": lo, "longest_edge": hi},
        ).to(self._device)
        cap = self.options.max_new_tokens
        max_new = max(p[2].token_limit(cap) for p in prepared)
        sample = self._sampling(temperature)
        gen_kwargs: dict[str, Any] = {"max_new_tokens": max_new, "do_sample": sample}
        if sample:
            gen_kwargs["temperature"] = temperature
            torch.manual_seed(self.options.seed)
        tok = proc.tokenizer
        pad_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        gen_kwargs["pad_token_id"] = pad_id
        with torch.inference_mode():
            out = self._model.generate(**inputs, **gen_kwargs)
        prompt_len = inputs["input_ids"].shape[1]
        new_tokens = out[:, prompt_len:]
        responses: list[ChatResponse] = []
        eos = {i for i in _as_list(self._model.generation_config.eos_token_id)} | {pad_id}
        for row, mask, (*_, request, _fut) in zip(
            new_tokens, inputs["attention_mask"], prepared, strict=True
        ):
            ids = row.tolist()
            limit = request.token_limit(cap)
            n = next((i for i, t in enumerate(ids) if t in eos), len(ids))
            n = min(n, limit)
            text = tok.decode(ids[:n], skip_special_tokens=True)
            responses.append(
                ChatResponse(
                    text=text,
                    usage=Usage(int(mask.sum().item()), n),
                    model=str(self.options.model_path),
                )
            )
        return responses


def _as_list(value: Any) -> list[int]:
    if value is None:
        return []
    return list(value) if isinstance(value, (list, tuple)) else [int(value)]


def _load_image(part: ImagePart) -> Image.Image:
    """RGB pixels at the declared size (the frame boxes were encoded in)."""
    try:
        with Image.open(part.path) as img:
            rgb = img.convert("RGB")
    except Exception as exc:  # a truncated or corrupt file: the sample's own fault
        raise SampleImageError(
            f"cannot read image {part.path}: {type(exc).__name__}: {exc}"
        ) from exc
    if part.size is not None and rgb.size != tuple(part.size):
        rgb = rgb.resize(tuple(part.size), Image.Resampling.BICUBIC)
    return rgb
