"""Encoder back-ends for prediction: PyTorch fp32, PyTorch int8, ONNX Runtime fp32 / int8.

Why a separate seam: the encoder forward is ~98% of the tagger's inference
time (CRF + entropy are the rest), so only the encoder is swapped. Word
pooling, shape features, emissions and the CRF stay in PyTorch and are the
same code in every mode. A runner maps ``(input_ids, attention_mask)`` to the
encoder's last hidden state as a float32 CPU/GPU tensor.

Modes (``tagger.options.inference``):

- ``torch``: the fine-tuned encoder as is (SDPA attention; on CUDA under
  bf16/fp16 autocast).
- ``int8``: ``torch.ao.quantization.quantize_dynamic`` of the linear layers,
  rebuilt at load (it takes well under a second from the fp32 weights).
- ``onnx`` / ``onnx-int8``: the encoder exported to ONNX (int8: weights
  quantised by ONNX Runtime's dynamic quantiser) and run by ONNX Runtime.
  The ``.onnx`` file is saved beside the tagger under ``inference/``, named
  by a key of the saved weights' SHA-256, so a retrained tagger never runs a
  stale export: a missing, stale or unreadable file is rebuilt. The PyTorch
  encoder is asked for (built) only to export: a tagger loaded beside a valid
  export never builds it.
- ``bf16``: the PyTorch encoder under bf16 autocast on CPU (fast on CPUs
  with AVX512_BF16 or AMX; slow emulation elsewhere) -- not exact.
- ``auto``: ``torch`` on CUDA and for a tagger never saved; otherwise the
  tagger measures the candidates on this machine (``autotune.py``): the exact
  ones (torch, onnx) and, with ``precision = "fast"``, the lower-precision
  ones whose dev F1 passed. Which back-end is fastest depends on the CPU: ONNX
  Runtime fp32 was 2x torch on one Xeon and slower than torch on another.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import hashlib
import logging
import os
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from refineg_core.errors import TaggerError

log = logging.getLogger(__name__)

MODES = ("auto", "torch", "bf16", "int8", "onnx", "onnx-int8")
ONNX_MODES = ("onnx", "onnx-int8")
#: Bump when the export recipe changes: every cached file is then rebuilt.
EXPORT_VERSION = 1
CACHE_DIR = "inference"

#: ``runner(input_ids, attention_mask) -> last hidden state [W, S, H] (float32)``.
EncoderRunner = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def onnxruntime_available() -> bool:
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


@functools.cache
def _warn_no_onnxruntime() -> None:
    """Once per process (a load resolves the mode more than once)."""
    log.warning(
        "onnxruntime is not installed: the tagger predicts with plain PyTorch "
        "(pip install onnxruntime for the faster CPU path)"
    )


def resolve_mode(mode: str, device: torch.device, *, saved: bool = True) -> str:
    """The concrete mode for ``mode`` on ``device`` (``auto`` picks; others are checked).

    ``saved=False`` (a tagger fit in memory, never saved): ``auto`` stays with
    torch, since a one-off export costs more than it saves on a dev set.
    On CPU, ``auto`` for a saved tagger stays ``auto``: the tagger measures the
    candidates (``autotune.py``); without onnxruntime the exact candidate left
    is torch (the low-precision ones remain for ``precision = "fast"``).
    """
    if mode not in MODES:
        raise TaggerError(
            f"unknown inference mode {mode!r}; choose one of {', '.join(MODES)}",
            where="tagger.options.inference",
        )
    if mode == "auto":
        if device.type != "cpu" or not saved:
            return "torch"
        if not onnxruntime_available():
            _warn_no_onnxruntime()
        return "auto"
    if mode not in ("torch", "bf16") and device.type != "cpu":
        raise TaggerError(
            f"inference mode {mode!r} runs on CPU only, but device is {device}; "
            "use inference = 'torch' (or 'auto') on a GPU",
            where="tagger.options.inference",
        )
    if mode in ONNX_MODES and not onnxruntime_available():
        raise TaggerError(
            f"inference mode {mode!r} needs onnxruntime: pip install onnxruntime, "
            "or set inference = 'torch'",
            where="tagger.options.inference",
        )
    return mode


def autocast_dtype(device: torch.device) -> torch.dtype | None:
    """bf16 where the GPU supports it, else fp16; None (plain fp32) on CPU."""
    if device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def torch_runner(encoder: nn.Module, autocast: torch.dtype | None = None) -> EncoderRunner:
    """Run the PyTorch encoder (optionally under autocast); hidden states come back fp32."""

    def run(input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        ctx = (
            torch.autocast(input_ids.device.type, dtype=autocast)
            if autocast is not None
            else contextlib.nullcontext()
        )
        with ctx:
            hidden = encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return hidden.float()

    return run


def quantize_int8(encoder: nn.Module) -> nn.Module:
    """A dynamically int8-quantised copy of ``encoder`` (linear layers), for CPU."""
    try:
        from torch.ao.quantization import quantize_dynamic
    except ImportError as exc:  # announced for removal in torch's quantisation roadmap
        raise TaggerError(
            f"this torch has no dynamic quantisation ({exc}); use inference = "
            "'onnx-int8' or 'torch'",
            where="tagger.options.inference",
        ) from None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao deprecation notices, once per load
        return quantize_dynamic(copy.deepcopy(encoder).cpu().eval(), {nn.Linear}, dtype=torch.qint8)


@contextlib.contextmanager
def torch_threads(n: int):
    """Run the block with ``n`` torch threads (the previous count is restored).

    Why: with the encoder in ONNX Runtime (its own thread pool), torch only runs
    the head on tiny tensors (a batch of words x a few tags). More than one
    OpenMP thread there buys nothing and leaves torch's threads spinning on the
    cores ONNX Runtime needs for the next batch; on 2 shared cores that cost
    more than the CRF itself (benchmarks/RESULTS.md section 4).
    """
    before = torch.get_num_threads()
    if before == n:
        yield
        return
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


# --------------------------------------------------------------------- ONNX
class _HiddenStates(nn.Module):
    """The encoder with positional inputs and one tensor output (what the exporter needs)."""

    def __init__(self, encoder: nn.Module):
        super().__init__()
        self.encoder = encoder

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state


def artifact_name(mode: str, weights_sha256: str, config_sha256: str) -> str:
    """File name of the export for these exact weights, encoder config and recipe."""
    key = hashlib.sha256(
        f"{EXPORT_VERSION}:{mode}:{weights_sha256}:{config_sha256}".encode()
    ).hexdigest()
    return f"{mode}.{key[:20]}.onnx"


def eager_copy(encoder: nn.Module) -> nn.Module:
    """A CPU fp32 copy with eager attention: its mask handling traces for any padding."""
    clone = copy.deepcopy(encoder).float().cpu().eval()
    if hasattr(clone, "set_attn_implementation"):
        clone.set_attn_implementation("eager")
    else:
        clone.config._attn_implementation = "eager"
    return clone


@contextlib.contextmanager
def _root_log_quiet():
    """onnxruntime's quantiser logs advice on the root logger; keep it off the user's screen."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


def export_onnx(encoder: nn.Module, path: Path, *, quantize: bool) -> None:
    """Export ``encoder`` to ``path`` (written atomically); int8 weights if ``quantize``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    module = _HiddenStates(eager_copy(encoder))
    # Padding in the example input: the traced graph must keep the attention mask.
    ids = torch.ones((2, 8), dtype=torch.long)
    mask = torch.ones((2, 8), dtype=torch.long)
    mask[1, 5:] = 0
    axes = {0: "windows", 1: "pieces"}
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=".export-") as tmp:
        fp32 = Path(tmp) / "encoder.onnx"
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
            torch.onnx.export(
                module,
                (ids, mask),
                str(fp32),
                input_names=["input_ids", "attention_mask"],
                output_names=["last_hidden_state"],
                opset_version=17,
                dynamo=False,
                dynamic_axes={"input_ids": axes, "attention_mask": axes, "last_hidden_state": axes},
            )
        final = fp32
        if quantize:
            import onnx
            from onnxruntime.quantization import QuantType, quantize_dynamic

            final = Path(tmp) / "encoder-int8.onnx"
            with _root_log_quiet():  # the quantiser's "consider pre-processing" advice
                quantize_dynamic(
                    str(fp32),
                    str(final),
                    weight_type=QuantType.QInt8,
                    extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
                )
        os.replace(final, path)


#: ONNX Runtime session settings beyond threads and graph level. Worker threads
#: sleep instead of spinning when idle: on 2 cores shared with torch (the head)
#: and other jobs, spinning workers took the cores the work needed (+28%
#: sentences/s at 2 threads under load, no change at 1; RESULTS.md section 4).
SESSION_CONFIG = {"session.intra_op.allow_spinning": "0"}


def onnx_session(path: Path, threads: int):
    """An ONNX Runtime CPU session with ``threads`` intra-op threads (as torch uses).

    Sequential execution (the default) and all graph optimisations; ONNX
    Runtime's offline BERT optimiser (fused attention) was measured slower here.
    """
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3
    for key, value in SESSION_CONFIG.items():
        so.add_session_config_entry(key, value)
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def session_runner(session) -> EncoderRunner:
    def run(input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        feeds = {
            "input_ids": input_ids.cpu().numpy(),
            "attention_mask": attention_mask.cpu().numpy(),
        }
        return torch.from_numpy(session.run(["last_hidden_state"], feeds)[0])

    return run


def open_export(path: Path, threads: int):
    """A session on the cached export at ``path``; None when it is missing or unreadable.

    A damaged file is logged (and rebuilt by the caller), never trusted.
    """
    if not path.is_file():
        return None
    try:
        return onnx_session(path, threads)
    except Exception as exc:  # damaged file: the caller rebuilds it
        log.warning(
            "cached ONNX encoder %s is unreadable (%s); rebuilding it",
            path,
            str(exc).splitlines()[0][:200],
        )
        return None


def cached_onnx_session(
    encoder: Callable[[], nn.Module], mode: str, folder: Path | None, name: str, threads: int
):
    """Load the export ``folder/name``, building it first when missing or unreadable.

    ``encoder()`` gives the PyTorch encoder; it is called only to export (a
    cache miss), so a cached export never needs the PyTorch encoder built.
    ``folder=None`` (a tagger never saved) or a read-only folder: export into a
    temporary folder for this process only.
    """
    quantize = mode == "onnx-int8"
    if folder is not None:
        path = folder / name
        session = open_export(path, threads)
        if session is not None:
            return session
        try:
            export_onnx(encoder(), path, quantize=quantize)
            for old in folder.glob(f"{mode}.*.onnx"):  # this mode's exports of earlier weights
                if old.name != name:
                    old.unlink(missing_ok=True)
            return onnx_session(path, threads)
        except OSError as exc:
            log.warning(
                "cannot write the ONNX encoder beside the tagger (%s); exporting to a "
                "temporary folder for this run",
                exc,
            )
    with tempfile.TemporaryDirectory(prefix="refineg-onnx-") as tmp:
        path = Path(tmp) / name
        export_onnx(encoder(), path, quantize=quantize)
        return onnx_session(path, threads)  # the session holds the graph in memory


def build_runner(
    mode: str,
    encoder: Callable[[], nn.Module],
    device: torch.device,
    *,
    folder: Path | None = None,
    name: str | None = None,
) -> EncoderRunner:
    """The encoder runner for a resolved ``mode`` (see :func:`resolve_mode`).

    ``encoder()`` gives the PyTorch encoder; the ONNX modes call it only when
    they must export (no valid cached file).
    """
    if mode == "torch":
        return torch_runner(encoder(), autocast_dtype(device))
    if mode == "bf16":
        return torch_runner(encoder(), torch.bfloat16)
    if mode == "int8":
        return torch_runner(quantize_int8(encoder()))
    if mode in ONNX_MODES:
        try:
            session = cached_onnx_session(
                encoder, mode, folder, name or f"{mode}.onnx", torch.get_num_threads()
            )
        except TaggerError:
            raise
        except Exception as exc:
            raise TaggerError(
                f"could not build the {mode} encoder: "
                f"{str(exc).splitlines()[0][:300]} (set inference = 'torch' to "
                "predict without ONNX Runtime)",
                where="tagger.options.inference",
            ) from None
        return session_runner(session)
    raise TaggerError(f"inference mode {mode!r} is not resolved", where="tagger.options.inference")
