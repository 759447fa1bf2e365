"""Example third-party refineg plugins: a gazetteer tagger, a rule-based gate
and a CSV dataset format."""

__version__ = "0.1.0"
