"""The base of wrappers around a backend plugin (the response cache): the contract is
delegated in one place, so a wrapper overrides only what it adds."""

from __future__ import annotations

from refineg_core.chat import ChatRequest, ChatResponse
from refineg_core.interfaces import BoxCodec, MLLMBackend


class BackendWrapper(MLLMBackend):
    """An ``MLLMBackend`` that forwards everything to ``inner``."""

    def __init__(self, inner: MLLMBackend) -> None:
        super().__init__(inner.options, inner.labels)
        self.inner = inner

    @property  # type: ignore[override]
    def supports_images(self) -> bool:
        return self.inner.supports_images

    @property
    def box_codec(self) -> BoxCodec | None:
        return self.inner.box_codec

    @property
    def max_concurrency(self) -> int:
        return self.inner.max_concurrency

    def describe(self) -> str:
        return self.inner.describe()

    def cache_identity(self) -> dict:
        return self.inner.cache_identity()

    def check_available(self) -> str | None:
        return self.inner.check_available()

    def report(self) -> dict:
        return self.inner.report()

    def complete(self, request: ChatRequest) -> ChatResponse:
        return self.inner.complete(request)

    def close(self) -> None:
        self.inner.close()
