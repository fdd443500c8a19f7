"""One writer per run folder: an OS file lock on ``<run>/.lock``.

Two processes appending to one ``rows.jsonl`` (a ``--resume`` started while the run is still going)
would duplicate rows. The lock is ``flock``'s: the kernel drops it when the holding process exits,
however it exits (Ctrl-C, ``kill -9``, a crash), so a stale lock never blocks a resume. The file
also says who holds it (process, host, start time, command) for the second writer's error. It is
opened as every file bench writes (bench/files.py): a symbolic link there is refused, never followed.
"""

from __future__ import annotations

import json
import os
import socket
import sys
from datetime import datetime, timezone
from pathlib import Path

from bench import files

try:
    import fcntl
except ImportError:  # Windows: no flock; the run folder is then unguarded (docs/running.md says so)
    fcntl = None  # type: ignore[assignment]

LOCK_FILE = ".lock"


class RunLocked(RuntimeError):
    """Another process is writing this run folder; the message names it."""


class RunLock:
    """Held from ``acquire()`` to ``release()`` (or the end of a ``with`` block, or the process)."""

    def __init__(self, run_dir: str | Path):
        self.path = Path(run_dir) / LOCK_FILE
        self._fd: int | None = None

    def acquire(self) -> "RunLock":
        fd = files.open_fd(self.path, os.O_RDWR | os.O_CREAT)  # never through a link planted as .lock (LinkError)
        try:
            if fcntl is not None:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    raise RunLocked(f"{self.path.parent}: another process is writing this run ({_read_holder(fd)}); "
                                    "wait for it to finish or stop it, then --resume") from None
            info = json.dumps(_holder()).encode()
            try:
                os.pwrite(fd, info, 0)
                os.ftruncate(fd, len(info))  # written first, then cut: a reader never sees an empty file
            except OSError as exc:  # a full disk: one line naming the file and the errno
                raise files.WriteError(self.path, exc) from None
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor drops the flock
            self._fd = None

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def _holder() -> dict:
    return {"pid": os.getpid(), "host": socket.gethostname(),
            "since": datetime.now(timezone.utc).isoformat(timespec="seconds"), "command": " ".join(sys.argv)}


def _read_holder(fd: int) -> str:
    try:
        info = json.loads(os.pread(fd, 4096, 0).decode() or "{}")
        return f"process {info['pid']} on {info['host']} since {info['since']}: {info['command']}"
    except (OSError, ValueError, KeyError, TypeError):
        return "a process that did not say who it is"
