"""Dataset files: the format plugin contract, the loader, and the generic readers.

``load_dataset`` is the one entry point the pipeline uses: it picks the format
plugin by name, or the one installed format that recognises the file
(``refineg.formats`` entry points; the dataset-specific ones live in
``plugins/refineg_formats``). Each reader returns a ``Dataset``
(samples plus the warnings met on the way) so nothing that could be kept is
silently dropped.
"""

from refineg_core.formats.base import Dataset, DatasetFormat, read_text_file
from refineg_core.formats.conll import write_conll
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
    "write_conll",
    "write_jsonl",
]
