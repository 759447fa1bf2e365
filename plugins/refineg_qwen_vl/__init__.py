"""MLLM backend: Qwen2-VL / Qwen2.5-VL / Qwen3-VL run locally through transformers."""

from refineg_qwen_vl.backend import QwenVLBackend

__all__ = ["QwenVLBackend"]
