"""Ctrl-C reaches work that runs in worker threads (Python tells only the main one).

The first Ctrl-C sets a flag long-running plugin code polls (``requested()``) and
raises ``KeyboardInterrupt`` as usual; a second ends the process at once with exit
130 (outputs are written atomically, so a rerun resumes).
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from typing import Any

#: Exit code of an interrupted command (128 + SIGINT).
EXIT_INTERRUPTED = 130

_flag = threading.Event()


def requested() -> bool:
    """Whether the user asked to stop (long-running work should end soon)."""
    return _flag.is_set()


def request() -> None:
    """Ask every worker to stop (what the first Ctrl-C does)."""
    _flag.set()


def clear() -> None:
    _flag.clear()


def _on_sigint(signum: int, frame: Any) -> None:
    if _flag.is_set():  # the second Ctrl-C: leave now, whatever threads still run
        try:
            sys.stderr.write("\nrefineg: interrupted again; stopping now\n")
            sys.stderr.flush()
        finally:
            os._exit(EXIT_INTERRUPTED)
    _flag.set()
    raise KeyboardInterrupt


def install_handler() -> None:
    """Route SIGINT through the flag (main thread only; elsewhere a no-op)."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, _on_sigint)


def leave_if_threads_linger(grace: float = 2.0) -> None:
    """After an interrupt, end the process now (exit 130) when worker threads are
    still busy ``grace`` seconds after being told to stop: the interpreter's exit
    would wait for them (a model still loading or generating). Outputs are safe:
    stage files are appended line by line and a torn tail is repaired on read,
    exactly as after a kill."""
    import time

    deadline = time.monotonic() + grace
    for thread in threading.enumerate():
        if thread is threading.current_thread() or thread.daemon:
            continue
        thread.join(max(0.0, deadline - time.monotonic()))
    if any(
        t.is_alive() and not t.daemon
        for t in threading.enumerate()
        if t is not threading.current_thread()
    ):
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(OSError, ValueError):
                stream.flush()
        os._exit(EXIT_INTERRUPTED)
