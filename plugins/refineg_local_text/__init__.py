"""MLLM backend slot, text only: a local causal LM through transformers (SmolLM2 by default)."""

from refineg_local_text.backend import LocalTextBackend

__all__ = ["LocalTextBackend"]
