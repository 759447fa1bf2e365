"""Readers and writers for the dataset formats refineg speaks.

``load_dataset`` is the one entry point the pipeline uses; each format module
has a ``read_*`` returning a ``Dataset`` (samples plus the warnings met on the
way) so nothing that could be kept is silently dropped.
"""

from refineg_core.formats.base import Dataset, read_text_file
from refineg_core.formats.ccks import read_ccks, write_ccks
from refineg_core.formats.conll import read_conll, write_conll
from refineg_core.formats.loader import FORMATS, load_dataset
from refineg_core.formats.native import read_jsonl, sample_from_dict, sample_to_dict, write_jsonl
from refineg_core.formats.twitter import read_twitter_gmner, write_twitter_gmner

__all__ = [
    "FORMATS",
    "Dataset",
    "load_dataset",
    "read_ccks",
    "read_conll",
    "read_jsonl",
    "read_text_file",
    "read_twitter_gmner",
    "sample_from_dict",
    "sample_to_dict",
    "write_ccks",
    "write_conll",
    "write_jsonl",
    "write_twitter_gmner",
]
