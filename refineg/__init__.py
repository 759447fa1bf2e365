"""refineg: low-resource Grounded Multimodal NER (small tagger + uncertainty gate +
multimodal LLM), every component a plugin.

    import refineg
    pipe = refineg.load("runs/twitter-gmner")
    doc = pipe("Obama visits Paris", image="photo.jpg")
    print([(e.text, e.type, e.boxes) for e in doc.entities])
"""

from refineg_core import __version__
from refineg_core.api import load
from refineg_core.pipeline.orchestrator import Pipeline
from refineg_core.types import Box, Entity, ImageRef, Sample, SampleResult

#: What ``pipe(text)`` returns: the post, its entities, failures and gate verdict.
Doc = SampleResult

__all__ = ["Box", "Doc", "Entity", "ImageRef", "Pipeline", "Sample", "__version__", "load"]
