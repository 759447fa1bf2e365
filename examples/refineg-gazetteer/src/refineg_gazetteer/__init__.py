"""Example third-party refineg plugins: a gazetteer tagger, a rule-based gate, an xywh frame."""

__version__ = "0.1.0"
