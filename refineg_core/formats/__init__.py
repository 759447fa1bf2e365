"""Dataset files: the format plugin contract, the loader and the native format. A
reader returns a ``Dataset`` (samples plus warnings), so nothing is silently dropped."""

from refineg_core.formats.base import Dataset, DatasetFormat, read_text_file
from refineg_core.formats.loader import (
    format_plugin,
    iter_source,
    load_dataset,
    load_source,
    recognised_format,
)
from refineg_core.formats.native import read_jsonl, sample_from_dict, sample_to_dict, write_jsonl

__all__ = [
    "Dataset",
    "DatasetFormat",
    "format_plugin",
    "iter_source",
    "load_dataset",
    "load_source",
    "read_jsonl",
    "read_text_file",
    "recognised_format",
    "sample_from_dict",
    "sample_to_dict",
    "write_jsonl",
]
