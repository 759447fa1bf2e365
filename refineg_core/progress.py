"""How progress is shown (tqdm on stderr): one bar at a time, so a bar opened inside
a stage's (from any thread) stays hidden; ``quiet()`` silences the libraries' too.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
from collections.abc import Iterable, Iterator
from typing import Any, TypeVar

from tqdm.auto import tqdm

T = TypeVar("T")

_lock = threading.Lock()
_shown = 0  # bars currently on screen (0 or 1)
_drawn = False  # a bar was drawn since the last ``fresh_line`` (its line has no newline)
_silenced = 0  # open ``silenced()`` blocks


@contextlib.contextmanager
def silenced() -> Iterator[None]:
    """No bar shows inside the block (process-wide: worker threads open bars too)."""
    global _silenced
    with _lock:
        _silenced += 1
    try:
        yield
    finally:
        with _lock:
            _silenced -= 1


def progress_disabled() -> bool:
    return os.environ.get("REFINEG_NO_PROGRESS", "") not in ("", "0")


class _Bar(tqdm):
    """A tqdm bar that gives the screen back when closed (or garbage-collected)."""

    _holds_screen = False

    def close(self) -> None:
        global _shown
        if self._holds_screen:
            self._holds_screen = False
            with _lock:
                _shown -= 1
        super().close()


def bar(
    iterable: Iterable[T] | None = None,
    *,
    desc: str,
    total: int | None = None,
    unit: str = "it",
    **kwargs: Any,
) -> tqdm:
    """A progress bar; hidden when another bar is shown, inside ``silenced()``, or
    with REFINEG_NO_PROGRESS=1."""
    global _shown, _drawn
    with _lock:
        show = not progress_disabled() and _shown == 0 and _silenced == 0
        if show:
            _shown += 1
    try:
        progress = _Bar(
            iterable,
            desc=desc,
            total=total,
            unit=unit,
            disable=not show,
            dynamic_ncols=True,
            leave=False,
            **kwargs,
        )
    except BaseException:
        if show:
            with _lock:
                _shown -= 1
        raise
    progress._holds_screen = show
    if show:
        _drawn = True
    return progress


def fresh_line(stream: Any = None) -> None:
    """Start the next message on a line of its own (off a terminal a bar's line has no
    newline, and the message would continue it)."""
    global _drawn
    if not _drawn:
        return
    _drawn = _shown > 0  # a bar still shown redraws on the next line, and ends it again
    stream = stream or sys.stderr
    try:
        if not stream.isatty():
            stream.write("\n")
    except (AttributeError, ValueError, OSError):  # a closed or odd stream: nothing to fix
        pass


def quiet() -> None:
    """Silence every progress bar and the libraries' info logging (``--quiet``): through
    the environment, and directly for libraries already imported."""
    os.environ["REFINEG_NO_PROGRESS"] = "1"
    os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
    os.environ["TRANSFORMERS_VERBOSITY"] = "error"
    os.environ["TRANSFORMERS_NO_ADVISORY_WARNINGS"] = "1"
    if "transformers" in sys.modules:
        import transformers

        transformers.utils.logging.disable_progress_bar()
        transformers.utils.logging.set_verbosity_error()
    if "huggingface_hub" in sys.modules:
        from huggingface_hub.utils import disable_progress_bars

        disable_progress_bars()
