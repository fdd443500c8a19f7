"""How bench writes the files it owns: run folders, reports, histories, perf reports.

Three rules for every write:

- **Never through a link.** Files are opened with ``O_NOFOLLOW`` and must be regular files with one name,
  so a symlink or a hard link planted in a run folder (``.lock`` → ``~/.bashrc``) can never redirect a
  write: it is a :class:`LinkError` naming the file, and nothing is written.
- **Atomic, with a temp name of its own.** A whole file is written to ``.<name>.<pid>-<random>.tmp``
  in the target's folder, fsynced and renamed over the target: a reader sees the old file or the
  new one, and two processes writing one report never share a temp file. A failed write removes
  its temp file.
- **One line on failure.** An ``OSError`` (a full disk, a read-only folder) becomes
  :class:`WriteError`, whose message names the file and the errno.

Appending (``rows.jsonl``, ``run.log``) uses the same opening rules, with unbuffered writes, so a
failed append leaves nothing queued that a later ``close()`` would try (and fail) to write again.
"""

from __future__ import annotations

import errno as errnos
import logging
import os
import secrets
import stat
from pathlib import Path
from typing import BinaryIO, Callable

_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_NONBLOCK = getattr(os, "O_NONBLOCK", 0)


class WriteError(OSError):
    """A file bench could not write; ``str()`` is one line naming the file and the errno."""

    def __init__(self, path: str | Path, cause: OSError | str):
        self.path, self.cause = Path(path), cause
        if isinstance(cause, OSError):
            code = errnos.errorcode.get(cause.errno or 0, str(cause.errno))
            text = f"{cause.strerror or cause}" + (f" ({code})" if cause.errno else "")
            super().__init__(cause.errno, f"{self.path}: cannot write: {text}")
        else:
            super().__init__(f"{self.path}: {cause}")

    def __str__(self) -> str:
        return self.args[-1]


class LinkError(WriteError):
    """A path bench would write is a symbolic link or not a regular file: bad input, nothing written."""


def check_target(path: str | Path) -> None:
    """Raise :class:`LinkError` when ``path`` exists and is a link or not a regular file."""
    path = Path(path)
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    except OSError as exc:
        raise WriteError(path, exc) from None
    if stat.S_ISLNK(st.st_mode):
        raise LinkError(path, "is a symbolic link; bench never writes through a link (remove it and run again)")
    if not stat.S_ISREG(st.st_mode):
        raise LinkError(path, f"is not a regular file ({_kind(st.st_mode)}); bench writes only regular files there")
    if st.st_nlink > 1:
        raise LinkError(path, _HARD_LINKED.format(n=st.st_nlink))


_HARD_LINKED = ("has {n} hard links: a write would change the other names too; bench never writes through a link "
                "(copy it to a file of its own, or remove it, and run again)")


def open_fd(path: str | Path, flags: int, mode: int = 0o644) -> int:
    """``os.open`` that never follows a link at ``path`` and accepts only a regular file."""
    path = Path(path)
    try:  # O_NONBLOCK: a FIFO planted there must not hang the open; cleared again for the regular file
        fd = os.open(path, flags | _NOFOLLOW | _CLOEXEC | _NONBLOCK, mode)
    except OSError as exc:
        if exc.errno in (errnos.ELOOP, errnos.EMLINK):  # what O_NOFOLLOW gives for a link (Linux, macOS; BSD)
            raise LinkError(path, "is a symbolic link; bench never writes through a link (remove it and run again)") from None
        if exc.errno == errnos.ENXIO:  # a FIFO with no reader
            raise LinkError(path, "is not a regular file (a FIFO); bench writes only regular files there") from None
        raise WriteError(path, exc) from None
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode) or st.st_nlink > 1:
        os.close(fd)
        raise LinkError(path, f"is not a regular file ({_kind(st.st_mode)}); bench writes only regular files there"
                        if not stat.S_ISREG(st.st_mode) else _HARD_LINKED.format(n=st.st_nlink))
    if _NONBLOCK:
        os.set_blocking(fd, True)
    return fd


def write_all(fd: int, data: bytes, path: str | Path) -> None:
    """Write every byte (os.write may write fewer), raising :class:`WriteError` naming ``path``."""
    view = memoryview(data)
    try:
        while view:
            view = view[_write(fd, view):]
    except OSError as exc:
        raise WriteError(path, exc) from None


def _write(fd: int, data) -> int:  # the one place bytes reach the disk (tests inject a full disk here)
    return os.write(fd, data)


def _temp_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp")


def write_with(path: str | Path, writer: Callable[[BinaryIO], None]) -> None:
    """Write ``path`` atomically: ``writer`` fills a file object opened on a fresh temp file beside it,
    which is fsynced and renamed over ``path``. Any failure removes the temp file."""
    path = Path(path)
    check_target(path)
    tmp = _temp_name(path)
    fd = open_fd(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL)
    try:
        with _Guarded(fd, tmp) as f:
            writer(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        _remove(tmp)
        if isinstance(exc, WriteError) and exc.path == tmp:  # name the file being written, not its temp copy
            raise WriteError(path, exc.cause) from None
        if isinstance(exc, WriteError) or not isinstance(exc, OSError):
            raise
        raise WriteError(path, exc) from None
    _sync_folder(path.parent)


def write_atomic(path: str | Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` (see :func:`write_with`)."""
    write_with(path, lambda f: f.write(data))


def overwrite_in_place(path: str | Path, data: bytes) -> None:
    """Rewrite an existing file's bytes where they are (no new file, no rename): the last resort on
    a full disk, where a new temp file cannot be made but blocks a file already holds can be
    rewritten. ``data`` must not be longer than the file (:class:`WriteError` otherwise)."""
    path = Path(path)
    fd = open_fd(path, os.O_WRONLY)
    try:
        if len(data) > os.fstat(fd).st_size:
            raise WriteError(path, f"cannot write: the new content ({len(data)} bytes) does not fit in place")
        try:
            os.pwrite(fd, data, 0)
            os.ftruncate(fd, len(data))
            os.fsync(fd)
        except OSError as exc:
            raise WriteError(path, exc) from None
    finally:
        os.close(fd)


class AppendFile:
    """A file opened for appending (created if missing) under the rules above; ``append`` writes
    and fsyncs, ``close`` never raises."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.fd: int | None = open_fd(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT)

    def size(self) -> int:
        return os.fstat(self.fd).st_size if self.fd is not None else 0

    def append(self, data: bytes, sync: bool = True) -> None:
        if self.fd is None:
            raise WriteError(self.path, "cannot write: the file is closed")
        write_all(self.fd, data, self.path)
        if sync:
            try:
                os.fsync(self.fd)
            except OSError as exc:
                raise WriteError(self.path, exc) from None

    def close(self) -> None:
        if self.fd is not None:
            fd, self.fd = self.fd, None
            try:
                os.close(fd)
            except OSError:
                pass


class LogFile(logging.Handler):
    """A run's ``run.log`` handler: opened under the rules above; a write that fails (a full disk)
    is dropped silently, since the run reports that failure itself, in one line, and a logging
    error must not add a traceback of its own on the terminal."""

    def __init__(self, path: str | Path):
        super().__init__()
        self._file = AppendFile(path)
        self.failed = False

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self._file.append((self.format(record) + "\n").encode("utf-8", "replace"), sync=False)
        except Exception:
            self.failed = True

    def close(self) -> None:
        self._file.close()
        super().close()


class _Guarded:
    """``os.fdopen`` whose close never raises after a failed write (the caller reports the first error)."""

    def __init__(self, fd: int, path: Path):
        self._f = os.fdopen(fd, "wb", buffering=0)
        self._path = path

    def __enter__(self) -> BinaryIO:
        return _RawWriter(self._f, self._path)  # type: ignore[return-value]

    def __exit__(self, *exc) -> None:
        try:
            self._f.close()
        except OSError:
            if exc[0] is None:
                raise


class _RawWriter:
    """A binary file object over an unbuffered file whose writes go through :func:`write_all`."""

    def __init__(self, f, path: Path):
        self._f, self._path = f, path

    def write(self, data) -> int:
        data = bytes(data)
        write_all(self._f.fileno(), data, self._path)
        return len(data)

    def __getattr__(self, name):  # fileno, flush, tell, seek … of the underlying file
        return getattr(self._f, name)

    def writable(self) -> bool:
        return True

    def readable(self) -> bool:
        return False

    def seekable(self) -> bool:
        return False

    @property
    def closed(self) -> bool:
        return self._f.closed


def _remove(path: Path) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def _sync_folder(folder: Path) -> None:
    """fsync a folder so a rename in it survives a power cut (best effort: not every file system allows it)."""
    try:
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"), (stat.S_ISLNK, "a symbolic link")):
        if test(mode):
            return name
    return "not a regular file"
