"""Built-in dataset formats, registered as ``refineg.formats`` plugins like any third-party one.

``twitter-gmner`` (CoNLL + VOC XML), ``ccks`` (CCKS 2025 JSON), ``conll`` and
``jsonl`` (refineg's native format). Select one with ``format = "NAME"`` on a
data source; ``refineg plugins`` lists every installed format.
"""
