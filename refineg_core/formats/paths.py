"""Where data may point: an id from someone else's file becomes a file name only
through ``child_path`` (``../../x`` never leaves its folder), and output folders are
made by ``output_dir`` (an impossible location is one readable error)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from refineg_core.errors import ConfigError, DataError


def plain_name_problem(name: str) -> str | None:
    """Why ``name`` is not a plain file name inside one folder, or None when it is."""
    if not name or name in (".", ".."):
        return "is empty or a relative folder"
    if any(ord(c) < 32 or ord(c) == 127 for c in name):
        return "contains a control character (NUL, tab, newline...)"
    if "/" in name or "\\" in name or os.sep in name or (os.altsep and os.altsep in name):
        return "contains a path separator"
    if Path(name).is_absolute() or name.startswith("~"):
        return "is an absolute path"
    return None


def child_path(root: Path, name: str, suffix: str = "") -> Path:
    """``root / (name + suffix)``, refusing names that would leave ``root``."""
    problem = plain_name_problem(name)
    if problem is not None:
        raise DataError(f"id {name[:80]!r} {problem}; it cannot name a file inside {root}")
    return root / f"{name}{suffix}"


def inside(root: Path, path: Path) -> bool:
    """Whether ``path`` lies inside ``root`` once ``..`` and links are resolved."""
    try:
        return Path(path).resolve().is_relative_to(Path(root).resolve())
    except (OSError, RuntimeError):
        return False


def output_dir(path: Path | str, *, config_key: str = "run_dir") -> Path:
    """Create an output folder (with parents) or say in one line, at ``config_key``,
    why it cannot be."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):  # writable? (unique: runs may share it)
            pass
    except FileExistsError:
        raise ConfigError(
            f"cannot create the folder {path}: a file of that name exists", where=config_key
        ) from None
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        if isinstance(exc, NotADirectoryError):
            reason = "a parent of it is a regular file, not a folder"
        raise ConfigError(
            f"cannot create or write the folder {path}: {reason}", where=config_key
        ) from None
    return path
