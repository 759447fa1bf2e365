"""One place that decides how progress is shown (tqdm on stderr, off when quiet)."""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any, TypeVar

from tqdm.auto import tqdm

T = TypeVar("T")


def progress_disabled() -> bool:
    return os.environ.get("REFINEG_NO_PROGRESS", "") not in ("", "0")


def bar(
    iterable: Iterable[T] | None = None,
    *,
    desc: str,
    total: int | None = None,
    unit: str = "it",
    **kwargs: Any,
) -> tqdm:
    """A progress bar; set REFINEG_NO_PROGRESS=1 to silence it (tests, logs)."""
    return tqdm(
        iterable,
        desc=desc,
        total=total,
        unit=unit,
        disable=progress_disabled(),
        dynamic_ncols=True,
        leave=False,
        **kwargs,
    )
