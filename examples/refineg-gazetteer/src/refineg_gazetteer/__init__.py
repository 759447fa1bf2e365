"""Example third-party refineg plugins: a gazetteer tagger, a rule-based gate,
a CSV dataset format and an xywh box frame."""

__version__ = "0.1.0"
