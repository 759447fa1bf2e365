"""MLLM backend for any OpenAI-compatible chat-completions server (vLLM, Ollama, hosted APIs)."""

from refineg_openai.backend import OpenAIBackend

__all__ = ["OpenAIBackend"]
