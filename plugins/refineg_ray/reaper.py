"""Ends the local Ray a driver started once that driver is gone, however it went.

``ray.shutdown()`` runs only when the driver exits normally. After a kill -9 the
node's processes that Ray itself does not tie to the driver's life (the
dashboard agent, the runtime-env agent, idle workers) would stay forever. So
the engine starts this small watcher as a separate process: while the driver
lives it notes the driver's Ray descendants every half second (Ray's agents and
workers rename themselves ``ray::...``, and are re-parented when the raylet
dies, so they must be known beforehand); once the driver is gone it
terminates every noted process still alive, and every process whose command
line names the driver's session directory (a path unique to that
``ray.init``), then exits.

Run as ``python -m refineg_ray.reaper DRIVER_PID CREATE_TIME SESSION_DIR``.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time

#: Seconds between two looks at the driver.
POLL = 0.5
#: Seconds a session process gets to exit after SIGTERM before SIGKILL.
GRACE = 3.0


def start(session_dir: str) -> subprocess.Popen | None:
    """Start the watcher for this process's Ray session (None when psutil is missing)."""
    try:
        import psutil
    except ImportError:
        return None
    created = psutil.Process(os.getpid()).create_time()
    return subprocess.Popen(
        [sys.executable, "-m", __name__, str(os.getpid()), repr(created), session_dir],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # a Ctrl-C meant for the driver does not end it first
        close_fds=True,
    )


def _alive(pid: int, created: float) -> bool:
    import psutil

    try:
        proc = psutil.Process(pid)
        return abs(proc.create_time() - created) < 1e-3 and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _is_ray(proc, session_dir: str) -> bool:
    """A process of this Ray session: a ``ray::`` worker or agent, or one whose
    command line names the session (raylet, GCS, dashboard, monitors). Other
    children of the driver (a user's own subprocesses) are never touched."""
    if proc.name().startswith("ray::"):
        return True
    return any(session_dir in part for part in proc.cmdline())


def _descendants(pid: int, session_dir: str) -> set[tuple[int, float]]:
    """(pid, create time) of every Ray process below ``pid`` now."""
    import psutil

    found = set()
    try:
        for child in psutil.Process(pid).children(recursive=True):
            try:
                if _is_ray(child, session_dir):
                    found.add((child.pid, child.create_time()))
            except psutil.Error:
                continue
    except psutil.Error:
        pass
    return found


def _still_there(noted: set[tuple[int, float]]) -> list:
    """The noted processes that still run (same pid *and* start time: not a reuse)."""
    import psutil

    alive = []
    for pid, created in noted:
        if pid == os.getpid():
            continue
        try:
            proc = psutil.Process(pid)
            if abs(proc.create_time() - created) < 1e-3:
                alive.append(proc)
        except psutil.Error:
            continue
    return alive


def session_processes(session_dir: str) -> list:
    """Every process whose command line names ``session_dir`` (but this one)."""
    import psutil

    found = []
    for proc in psutil.process_iter(["pid", "cmdline"]):
        if proc.pid == os.getpid():
            continue
        cmdline = proc.info.get("cmdline") or []
        if any(session_dir in part for part in cmdline):
            found.append(proc)
    return found


def reap(session_dir: str, noted: set[tuple[int, float]] = frozenset()) -> int:
    """Terminate (then kill) the session's processes; how many there were."""
    import psutil

    procs = {p.pid: p for p in [*_still_there(set(noted)), *session_processes(session_dir)]}
    procs = list(procs.values())
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            proc.terminate()
    _, alive = psutil.wait_procs(procs, timeout=GRACE)
    for proc in alive:
        with contextlib.suppress(psutil.Error):
            proc.kill()
    return len(procs)


def main(argv: list[str]) -> int:
    pid, created, session_dir = int(argv[0]), float(argv[1]), argv[2]
    if not session_dir.strip("/"):
        return 2  # never match every process
    noted: set[tuple[int, float]] = set()
    while _alive(pid, created):
        noted |= _descendants(pid, session_dir)
        time.sleep(POLL)
    reap(session_dir, noted)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
