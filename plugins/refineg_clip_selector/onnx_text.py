"""The selector's text encoder in ONNX Runtime: the exact (fp32) fast path for queries.

Why: during the ground stage the selector embeds query texts and entity names
on a background thread while the stage's HTTP workers run. PyTorch re-takes
Python's GIL between its ~100 small operators per forward pass, so on a busy
process (16 client threads, the image preparation) each forward waits for the
GIL again and again; ONNX Runtime runs the whole forward in one call with the
GIL released. The export is fp32, so embeddings equal PyTorch's up to float
rounding (checked by the tests), unlike bf16.

The export is cached under the selector's ``cache_dir`` (``onnx/<encoder
identity>.v<recipe>.onnx``; the identity names the weights' content, so new
weights never run a stale export), written atomically; a damaged file is
rebuilt, an unwritable folder exports to a temporary one for this process.
"""

from __future__ import annotations

import logging
import os
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

log = logging.getLogger(__name__)

#: Bump when the export recipe changes: every cached export is then rebuilt.
EXPORT_VERSION = 1


def onnxruntime_available() -> bool:
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


class _HiddenStates(nn.Module):
    """The encoder with positional inputs and one tensor output (what the exporter needs)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state


def _eager_copy(model: nn.Module) -> nn.Module:
    """A CPU fp32 copy with eager attention: its mask handling traces for any padding."""
    import copy

    clone = copy.deepcopy(model).float().cpu().eval()
    if hasattr(clone, "set_attn_implementation"):
        clone.set_attn_implementation("eager")
    else:
        clone.config._attn_implementation = "eager"
    return clone


def export(model: nn.Module, path: Path) -> None:
    """Export ``model`` (a transformers encoder) to ``path``, written atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    module = _HiddenStates(_eager_copy(model))
    ids = torch.ones((2, 8), dtype=torch.long)
    mask = torch.ones((2, 8), dtype=torch.long)
    mask[1, 5:] = 0  # padding in the example: the traced graph must keep the mask
    axes = {0: "texts", 1: "pieces"}
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=".export-") as tmp:
        out = Path(tmp) / "encoder.onnx"
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
            torch.onnx.export(
                module,
                (ids, mask),
                str(out),
                input_names=["input_ids", "attention_mask"],
                output_names=["last_hidden_state"],
                opset_version=17,
                dynamo=False,
                dynamic_axes={"input_ids": axes, "attention_mask": axes, "last_hidden_state": axes},
            )
        os.replace(out, path)


def session(path: Path, threads: int):
    """A CPU session with ``threads`` intra-op threads whose workers sleep when idle
    (spinning workers took the cores the stage's other threads needed)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = max(1, threads)
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def cached_session(model: nn.Module, folder: Path | None, identity: str, threads: int):
    """The session of ``folder/onnx/<identity>.v<N>.onnx``, exported first when missing
    or unreadable; ``folder=None`` or an unwritable one: a temporary export."""
    name = f"{identity}.v{EXPORT_VERSION}.onnx"
    if folder is not None:
        path = folder / "onnx" / name
        if path.is_file():
            try:
                return session(path, threads)
            except Exception as exc:  # a damaged file is rebuilt, never trusted
                log.warning("cached ONNX text encoder %s is unreadable (%s); rebuilding", path, exc)
        try:
            export(model, path)
            return session(path, threads)
        except OSError as exc:
            log.warning(
                "cannot write the ONNX text encoder under %s (%s); exporting to a "
                "temporary folder for this run",
                folder,
                exc,
            )
    with tempfile.TemporaryDirectory(prefix="refineg-selector-onnx-") as tmp:
        path = Path(tmp) / name
        export(model, path)
        return session(path, threads)  # the session holds the graph in memory


def mean_pooled(sess, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
    """Mean-pooled, L2-normalised embeddings of one padded batch (float32), the same
    arithmetic as the PyTorch path."""
    feeds = {
        "input_ids": input_ids.astype(np.int64, copy=False),
        "attention_mask": attention_mask.astype(np.int64, copy=False),
    }
    hidden = sess.run(["last_hidden_state"], feeds)[0]
    mask = attention_mask.astype(np.float32)[:, :, None]
    pooled = (hidden * mask).sum(1) / np.maximum(mask.sum(1), 1.0)
    norm = np.maximum(np.linalg.norm(pooled, axis=-1, keepdims=True), 1e-12)
    return (pooled / norm).astype(np.float32)
