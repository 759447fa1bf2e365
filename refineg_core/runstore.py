"""The run directory's one owner: who may write it, and how each file is written.

A writing command holds an exclusive lock on ``<run_dir>/refineg.lock`` (its
holder's pid and command inside) for its whole life, so a second one is refused
at once; the kernel drops it when the holder dies, so a stale file never blocks.
Whole files are written temp-and-rename (a reader sees old or new, never half),
append-only files lose a torn last line, and a stage record keeps the digest of
the output it wrote so an edited or deleted file is never reused. Nothing here
knows a stage's meaning.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import shutil
import sys
import tempfile
import time
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import IO, Any, Protocol

import attrs

from refineg_core.errors import RefinegError
from refineg_core.filemodes import respect_umask

#: The lock file inside a run directory (kept: its lock, not its existence, counts).
LOCK_FILE = "refineg.lock"
#: How long a refused lock is retried: covers a reader's momentary probe, not a run.
_LOCK_PATIENCE_S = 0.5
#: Windows opens files in text mode unless told otherwise.
_BINARY = getattr(os, "O_BINARY", 0)


class RunDirBusy(RefinegError):
    """Another process holds the run directory (exit 2: rerun when it is done)."""


# ------------------------------------------------------------- whole files
@contextlib.contextmanager
def atomic_write(
    path: Path | str, *, binary: bool = False, encoding: str = "utf-8"
) -> Iterator[IO[Any]]:
    """A unique temp file beside ``path`` that replaces it on a clean exit (with the
    mode a plain ``open()`` gives); when the block raises, ``path`` is untouched."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # the name kept short: a long file name plus the temp suffix must still fit NAME_MAX
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name[:100]}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(
            fd, "wb" if binary else "w", **({} if binary else {"encoding": encoding})
        ) as fh:
            yield fh
        respect_umask(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def write_text(path: Path | str, text: str) -> None:
    """Write a whole text file atomically."""
    with atomic_write(path) as fh:
        fh.write(text)


def write_json(path: Path | str, data: Any, *, indent: int | None = 2) -> None:
    """Write a whole JSON file atomically."""
    write_text(path, json.dumps(data, indent=indent, default=str))


def copy_file(source: Path | str, target: Path | str) -> None:
    """Copy a file atomically (a reader never sees half of the copy)."""
    with atomic_write(target, binary=True) as out, Path(source).open("rb") as src:
        shutil.copyfileobj(src, out)


# ------------------------------------------------------- append-only files
def repair_tail(path: Path | str) -> None:
    """Cut a torn last line (a writer killed mid-line), reading only the file's tail."""
    path = Path(path)
    if not path.exists():
        return
    with path.open("rb+") as fh:
        end = fh.seek(0, os.SEEK_END)
        if end == 0:
            return
        fh.seek(end - 1)
        if fh.read(1) == b"\n":
            return
        pos = end
        while pos > 0:
            start = max(0, pos - (1 << 16))
            fh.seek(start)
            newline = fh.read(pos - start).rfind(b"\n")
            if newline >= 0:
                fh.truncate(start + newline + 1)
                return
            pos = start
        fh.truncate(0)


def set_aside(out: Path, earlier: Path) -> None:
    """Move a stopped stage's file aside for the rerun, its lines kept byte for byte;
    lines an earlier stopped resume already redid win over the older ones."""
    out, earlier = Path(out), Path(earlier)
    repair_tail(out)
    if not earlier.exists():
        os.replace(out, earlier)
        return
    repair_tail(earlier)
    with out.open(encoding="utf-8") as fh:
        redone = {_line_id(line) for line in fh if line.strip()}
    with atomic_write(earlier) as merged:
        with out.open(encoding="utf-8") as fh:
            merged.writelines(line for line in fh if line.strip())
        with earlier.open(encoding="utf-8") as fh:
            merged.writelines(line for line in fh if line.strip() and _line_id(line) not in redone)
    out.unlink()


def _line_id(line: str) -> str:
    return str(json.loads(line)["id"])


# --------------------------------------------------------------- the lock
if sys.platform == "win32":  # pragma: no cover - the suite runs on POSIX
    import msvcrt

    #: Far past the holder's note, which must stay readable (Windows locks ranges).
    _WINDOWS_LOCK_BYTE = 1 << 30

    def _try_lock(fd: int, *, probe: bool = False) -> bool:
        """Lock ``fd`` now or return False; a ``probe`` gives it back at once."""
        os.lseek(fd, _WINDOWS_LOCK_BYTE, os.SEEK_SET)
        try:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
        except OSError:
            return False
        if probe:
            os.lseek(fd, _WINDOWS_LOCK_BYTE, os.SEEK_SET)
            msvcrt.locking(fd, msvcrt.LK_UNLCK, 1)
        return True

else:
    import fcntl

    def _try_lock(fd: int, *, probe: bool = False) -> bool:
        """Lock ``fd`` now or return False; a ``probe`` takes a shared lock, which only
        an exclusive holder refuses."""
        try:
            fcntl.flock(fd, (fcntl.LOCK_SH if probe else fcntl.LOCK_EX) | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                return False
            raise
        return True


@attrs.frozen
class Holder:
    """Who holds a run directory, as the holder wrote it into the lock file."""

    pid: int | None
    command: str
    started: str

    def describe(self) -> str:
        pid = f"pid {self.pid}" if self.pid is not None else "a process"
        since = f" since {self.started}" if self.started else ""
        command = " ".join(self.command.split())  # one line, whatever the argv held
        if len(command) > 200:
            command = command[:197] + "..."
        return f"{pid} ({command or 'command unknown'}){since}"


def this_command() -> str:
    """This process's command line as a user would type it (``refineg run -c x``)."""
    argv = list(sys.argv)
    if argv and Path(argv[0]).name in ("refineg", "cli.py", "__main__.py"):
        return " ".join(["refineg", *argv[1:]])
    return " ".join(getattr(sys, "orig_argv", argv))


def _read_holder(path: Path) -> Holder:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return Holder(int(data["pid"]), str(data.get("command", "")), str(data.get("started", "")))
    except (OSError, ValueError, KeyError, TypeError):
        return Holder(None, "", "")


#: Locks this process holds (a forked child drops its copies of them).
_HELD: weakref.WeakSet[RunLock] = weakref.WeakSet()


def _forget_in_child() -> None:
    """In a forked child: close inherited lock descriptors without unlocking, so the
    lock lives exactly as long as the process that took it."""
    for lock in list(_HELD):
        if lock._fd is not None:
            with contextlib.suppress(OSError):
                os.close(lock._fd)
            lock._fd = None
    _HELD.clear()


if hasattr(os, "register_at_fork"):  # POSIX; Windows has no fork
    os.register_at_fork(after_in_child=_forget_in_child)


class RunLock:
    """An exclusive lock on ``<run_dir>/refineg.lock``, released on close or death."""

    def __init__(self, run_dir: Path) -> None:
        self.path = Path(run_dir) / LOCK_FILE
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self, command: str | None = None) -> None:
        """Take the lock or raise ``RunDirBusy`` naming the holder (idempotent)."""
        if self._fd is not None:
            return
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | _BINARY, 0o666)
        except OSError as exc:  # a folder or an unwritable file in its place
            raise RefinegError(
                f"cannot open the run directory's lock file: {exc.strerror or exc}",
                where=str(self.path),
            ) from None
        deadline = time.monotonic() + _LOCK_PATIENCE_S
        try:
            while not _try_lock(fd):
                if time.monotonic() >= deadline:
                    holder = _read_holder(self.path)
                    raise RunDirBusy(
                        f"{self.path.parent} is in use by {holder.describe()}; wait for it "
                        "to finish, or use another run_dir (--run-dir)"
                    )
                time.sleep(0.05)
        except BaseException:
            os.close(fd)
            raise
        info = {
            "pid": os.getpid(),
            "command": command if command is not None else this_command(),
            "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        # written in place, never renamed: the lock belongs to this inode
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, json.dumps(info).encode("utf-8"))
        self._fd = fd
        _HELD.add(self)

    def release(self) -> None:
        """Say nobody holds it (the file stays) and drop the lock."""
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        _HELD.discard(self)
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)
        os.close(fd)  # closing the only descriptor drops the lock

    def holder(self) -> Holder | None:
        """Who holds the lock now (None: nobody), asked with a probe that blocks no one."""
        if self._fd is not None:
            return _read_holder(self.path)
        try:
            fd = os.open(self.path, os.O_RDONLY | _BINARY)
        except OSError:
            return None
        try:
            free = _try_lock(fd, probe=True)
        finally:
            os.close(fd)
        return None if free else _read_holder(self.path)


# ----------------------------------------------------------- stage records
class FingerprintLike(Protocol):
    """What a record is written from (``pipeline.fingerprint.Fingerprint``)."""

    stage: str
    parts: Mapping[str, Any]

    @property
    def digest(self) -> str: ...


@attrs.frozen
class StageRecord:
    """What ``stages/<stage>.json`` holds."""

    parts: Mapping[str, Any]
    digest: str
    complete: bool
    #: Content digest of the stage's output file (downstream stages key on it).
    output: str | None = None
    #: Samples a rerun must redo (failed calls, unusable answers, skipped).
    pending: int = 0


def read_record(path: Path) -> StageRecord | None:
    """A stage record, or None when there is none or it is torn (never reusable)."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        return StageRecord(
            dict(data["parts"]),
            str(data["digest"]),
            bool(data["complete"]),
            data.get("output"),
            int(data.get("pending") or 0),
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None


def write_record(
    path: Path, fp: FingerprintLike, *, complete: bool, output: str | None = None, pending: int = 0
) -> None:
    """Atomically write a stage record (a kill mid-write leaves the old one)."""
    data = {
        "stage": fp.stage,
        "digest": fp.digest,
        "complete": complete,
        "output": output,
        "pending": pending,
        "written": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "parts": dict(fp.parts),
    }
    write_json(path, data, indent=1)


def file_digest(path: Path) -> str | None:
    """SHA-256 of a file's bytes (None when it is not a file)."""
    path = Path(path)
    if not path.is_file():
        return None
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


class StageStore:
    """Reads and writes the stage records of one run directory."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = Path(run_dir)
        self.dir = self.run_dir / "stages"

    def path(self, stage: str) -> Path:
        return self.dir / f"{stage}.json"

    def read(self, stage: str) -> StageRecord | None:
        return read_record(self.path(stage))

    def write(
        self, fp: FingerprintLike, *, complete: bool, output: str | None = None, pending: int = 0
    ) -> None:
        write_record(self.path(fp.stage), fp, complete=complete, output=output, pending=pending)

    def forget(self, stages: Iterable[str]) -> None:
        for stage in stages:
            self.path(stage).unlink(missing_ok=True)

    def output_problem(self, stage: str, out: Path) -> str | None:
        """Why ``out`` is not what a finished ``stage`` wrote (None: it is, or unfinished)."""
        record = self.read(stage)
        if record is None or not record.complete:
            return None
        on_disk = file_digest(out)
        if on_disk is None:
            return f"{out.name} is missing"
        if on_disk != record.output:
            return f"{out.name} is not the file the stage wrote (changed since)"
        return None


class RunStore(StageStore):
    """One run directory: its lock, its stage records, and what may be discarded."""

    #: What a run directory holds before any stage output (safe to discard).
    BOOKKEEPING = frozenset({"config.json", "data-warnings.log", "stages", "cache", LOCK_FILE})

    def __init__(self, run_dir: Path) -> None:
        super().__init__(run_dir)
        self.lock = RunLock(self.run_dir)
        self.created = False

    @property
    def locked(self) -> bool:
        return self.lock.held

    def open(self, *, make_dir: Callable[[Path], object] | None = None, command: str | None = None):
        """Create the run directory if needed (``make_dir``) and take its lock."""
        if self.lock.held:
            return self
        existed = self.run_dir.is_dir()
        (make_dir or (lambda p: p.mkdir(parents=True, exist_ok=True)))(self.run_dir)
        self.lock.acquire(command)
        self.created = self.created or not existed
        return self

    def close(self) -> None:
        self.lock.release()

    def holder(self) -> Holder | None:
        """Another process working in this run directory (None when none is)."""
        return None if self.lock.held else self.lock.holder()

    def discard_if_unused(self) -> None:
        """After a failed command, remove the directory this store created (and still
        locks) when it holds no stage output, so no half-made run is left behind."""
        if not (self.created and self.lock.held and self.run_dir.is_dir()):
            return
        leftovers = {p.name for p in self.run_dir.iterdir()}
        if leftovers <= self.BOOKKEEPING and not any(self.dir.glob("*.json")):
            shutil.rmtree(self.run_dir, ignore_errors=True)
