"""Files refineg writes get the mode a plain ``open()`` gives (``mkstemp`` and
safetensors make 0600 files, unreadable to a group sharing the run directory)."""

from __future__ import annotations

import os
from pathlib import Path


def current_umask() -> int:
    """The process umask, read without changing it where the OS shows it (Linux)."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)  # elsewhere: the only portable way is to set it and put it back
    os.umask(mask)
    return mask


def respect_umask(path: Path | str) -> None:
    """Give ``path`` the mode ``open(path, "w")`` would have: 0666 minus the umask."""
    os.chmod(path, 0o666 & ~current_umask())
