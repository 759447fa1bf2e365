"""The ``llm`` synthesizer: domain-aware training sentences from gold seeds through any text LLM."""
