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
rebuilt, an unwritable folder exports to a temporary one for this process. The
export recipe and the session settings are the tagger's (``refineg_bert_crf.inference``).
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

import numpy as np
from refineg_bert_crf.inference import export_onnx, onnx_session
from torch import nn

log = logging.getLogger(__name__)

#: Bump when the export recipe changes: every cached export is then rebuilt.
EXPORT_VERSION = 2


def onnxruntime_available() -> bool:
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


def cached_session(model: nn.Module, folder: Path | None, identity: str, threads: int):
    """The session of ``folder/onnx/<identity>.v<N>.onnx``, exported first when missing
    or unreadable; ``folder=None`` or an unwritable one: a temporary export."""
    name = f"{identity}.v{EXPORT_VERSION}.onnx"
    if folder is not None:
        path = folder / "onnx" / name
        if path.is_file():
            try:
                return onnx_session(path, max(1, threads))
            except Exception as exc:  # a damaged file is rebuilt, never trusted
                log.warning("cached ONNX text encoder %s is unreadable (%s); rebuilding", path, exc)
        try:
            export_onnx(model, path, quantize=False)
            return onnx_session(path, max(1, threads))
        except OSError as exc:
            log.warning(
                "cannot write the ONNX text encoder under %s (%s); exporting to a "
                "temporary folder for this run",
                folder,
                exc,
            )
    with tempfile.TemporaryDirectory(prefix="refineg-selector-onnx-") as tmp:
        path = Path(tmp) / name
        export_onnx(model, path, quantize=False)
        return onnx_session(path, max(1, threads))  # the session holds the graph in memory


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
