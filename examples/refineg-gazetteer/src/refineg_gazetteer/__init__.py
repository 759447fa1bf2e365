"""Example third-party refineg plugins: a gazetteer tagger and a rule-based gate."""

__version__ = "0.1.0"
