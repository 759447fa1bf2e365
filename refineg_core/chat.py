"""The project's own request/response types for MLLM backends (no vendor's shape)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs


@attrs.frozen
class TextPart:
    text: str


@attrs.frozen
class ImagePart:
    """An image by path, with its original size when known (boxes map without pixels)."""

    path: Path
    size: tuple[int, int] | None = None


Part = TextPart | ImagePart


@attrs.frozen
class ChatMessage:
    role: str  # "system" | "user" | "assistant"
    parts: tuple[Part, ...]

    @classmethod
    def text(cls, role: str, text: str) -> ChatMessage:
        return cls(role, (TextPart(text),))

    @property
    def images(self) -> tuple[ImagePart, ...]:
        return tuple(p for p in self.parts if isinstance(p, ImagePart))


@attrs.frozen
class ChatRequest:
    """One chat call; ``purpose`` names the stage, ``answer_schema`` is for backends
    that can enforce it (guided decoding)."""

    messages: tuple[ChatMessage, ...]
    max_tokens: int | None = None
    temperature: float | None = None
    purpose: str = "chat"
    answer_schema: Mapping[str, Any] | None = attrs.field(default=None, hash=False)

    @property
    def images(self) -> tuple[ImagePart, ...]:
        return tuple(img for m in self.messages for img in m.images)

    @property
    def has_images(self) -> bool:
        return bool(self.images)

    def token_limit(self, cap: int | None, default: int | None = None) -> int | None:
        """How many tokens this call may generate: the request's ``max_tokens``, but
        never above the backend's own ``cap`` (a stage asks for at most that many; it
        must not raise a limit the user set on the backend). ``default`` when neither
        says."""
        limits = [v for v in (self.max_tokens, cap) if v is not None]
        return min(limits) if limits else default

    def fingerprint(self) -> str:
        """A content hash (image *bytes*, not paths) used as the response-cache key."""
        h = hashlib.sha256()
        h.update(json.dumps(self._describe(), sort_keys=True).encode())
        for img in self.images:
            try:
                h.update(img.path.read_bytes())
            except OSError:
                h.update(b"<missing>" + str(img.path).encode())
        return h.hexdigest()

    def _describe(self) -> dict[str, Any]:
        return {
            "messages": [
                {
                    "role": m.role,
                    "parts": [
                        {"text": p.text} if isinstance(p, TextPart) else {"image": True}
                        for p in m.parts
                    ],
                }
                for m in self.messages
            ],
            "max_tokens": self.max_tokens,
            "temperature": self.temperature,
            **({"answer_schema": self.answer_schema} if self.answer_schema is not None else {}),
        }


@attrs.frozen
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            self.prompt_tokens + other.prompt_tokens,
            self.completion_tokens + other.completion_tokens,
        )


@attrs.frozen
class ChatResponse:
    text: str
    usage: Usage = Usage()
    model: str | None = None
    cached: bool = False
