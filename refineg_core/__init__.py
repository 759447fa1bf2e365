"""refineg: low-resource Grounded Multimodal NER with a small tagger, an
uncertainty gate and multimodal LLMs, every component a plugin."""

from importlib import metadata

try:
    __version__ = metadata.version("refineg")
except metadata.PackageNotFoundError:  # running from a source tree without install
    __version__ = "0.0.0+unknown"
