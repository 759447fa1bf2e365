"""``llm``: one text-only chat request per seed; the answer parsed into candidates.

Validation, de-duplication, tagging, concurrency, resuming and the yield
report are the core's job (``refineg_core.pipeline.synth``); this plugin only
asks and parses. A candidate is labelled ``"rewrite"`` when all its names are
the seed's names, else ``"new"`` — decided from the content, not from where
the model happened to put it in its list.
"""

from __future__ import annotations

import pydantic

from refineg_core.chat import ChatMessage, ChatRequest
from refineg_core.errors import PluginError
from refineg_core.interfaces import MLLMBackend, PluginOptions, Synthesizer
from refineg_core.types import Sample, SynthesisCandidate
from refineg_llm_synth.parsing import parse_samples
from refineg_llm_synth.prompt import build_prompt


class LLMSynthesizer(Synthesizer):
    """Domain-aware synthesis through any backend in text mode."""

    class Options(PluginOptions):
        n_rewrites: int = pydantic.Field(10, ge=0)
        n_new: int = pydantic.Field(10, ge=0)
        new_for_empty_seeds: bool = False
        temperature: float = pydantic.Field(0.1, ge=0)
        max_tokens: int = pydantic.Field(2048, ge=16)

    options: Options

    def build_request(self, seed: Sample) -> ChatRequest:
        if self.labels is None:
            raise PluginError(
                "the llm synthesizer needs the task's label set (type descriptions)",
                where="synthesizer",
            )
        system, user = build_prompt(
            seed,
            self.labels.descriptions,
            n_rewrites=self.options.n_rewrites,
            n_new=self.options.n_new,
            new_for_empty_seeds=self.options.new_for_empty_seeds,
        )
        return ChatRequest(
            (ChatMessage.text("system", system), ChatMessage.text("user", user)),
            max_tokens=self.options.max_tokens,
            temperature=self.options.temperature,
            purpose="synth",
        )

    def synthesize(self, seed: Sample, backend: MLLMBackend) -> list[SynthesisCandidate]:
        response = backend.complete(self.build_request(seed))
        seed_names = {(e.text or seed.span_text(e.start, e.end)).casefold() for e in seed.entities}
        out = []
        for text, entities in parse_samples(response.text):
            names = {n.casefold() for n, _ in entities}
            kind = "rewrite" if names <= seed_names else "new"
            out.append(SynthesisCandidate(text, entities, kind, seed.id))
        return out
