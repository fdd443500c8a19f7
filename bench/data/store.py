"""Where decoded images live: in memory while they are few, in a file on disk once they are many.

A source adds its decoded 8-bit images one (or a chunk) at a time to an :class:`ImageSink`. Up to
:data:`SPILL_BYTES` they stay a tensor, as before; past it, everything goes to one file of raw uint8 images
(N, 3, S, S) and the dataset's ``images`` is an :class:`ImageStore` over that file, which reads the rows a shard or
a batch asks for (``images[lo:hi]``, ``images[index]``) and nothing else. So the memory of a run holds the shard
being worked on, never the data: ImageNet's 50,000 validation images at 224 px are 7.5 GB of uint8.

Why a file read on demand rather than decoding each shard from the source again: decoding (JPEG, resizing) is the
slow part, a cell reads the same images once per attack and defense, and every source (folders, parquet rows,
CIFAR batches, digits) then shares one path. Why ``pread`` rather than a memory map: pages of a map stay in the
process's resident set once touched, so a map of the whole file would grow to the data's size over a run; a read
copies the rows asked for and leaves the rest to the kernel's page cache, which it can drop.

The file is in the system's temporary folder (``TMPDIR``), named with the host and process id, removed when the dataset is
collected or the process exits; a file left by a killed process is removed by the next one that spills.
"""

from __future__ import annotations

import os
import re
import socket
import tempfile
import weakref
from pathlib import Path
from typing import Any

import numpy as np
import torch

SPILL_BYTES = 256 * 2**20  # decoded images past this size go to disk (ImageNet at 224 px: ~1,700 images)
FOLDER = "bench-decoded"


def _folder() -> Path:
    folder = Path(tempfile.gettempdir()) / FOLDER
    folder.mkdir(mode=0o700, exist_ok=True)
    return folder


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _prefix() -> str:
    """This process's files: host and pid (a shared TMPDIR holds other machines' files, whose pids mean nothing here)."""
    return f"{socket.gethostname()}-{os.getpid()}-"


def _remove_stale(folder: Path) -> None:
    """Files of this machine's processes that no longer run (a kill -9 leaves its file behind)."""
    host = re.escape(socket.gethostname())
    for path in folder.glob("*.u8"):
        match = re.fullmatch(host + r"-(\d+)-[0-9a-f]+\.u8", path.name)
        if match and not _alive(int(match.group(1))):
            path.unlink(missing_ok=True)


class ImageStore:
    """uint8 images (N, 3, S, S) in a file, read by rows: ``store[lo:hi]``, ``store[i]``, ``store[index]`` (an
    index tensor, list or array) return tensors of those rows only. ``shape``, ``dtype`` and ``len()`` as a tensor's."""

    dtype = torch.uint8

    def __init__(self, path: Path | str, n: int, size: int, owner: bool = False):
        self.path, self.n, self.size = Path(path), n, size
        self.row = 3 * size * size
        self._fd = os.open(self.path, os.O_RDONLY)
        weakref.finalize(self, os.close, self._fd)
        if owner:  # the process that wrote it removes it (pickled copies in Ray workers only read it)
            weakref.finalize(self, Path.unlink, self.path, True)

    @property
    def shape(self) -> torch.Size:
        return torch.Size((self.n, 3, self.size, self.size))

    def __len__(self) -> int:
        return self.n

    def __reduce__(self):  # a worker process on this machine reads the same file (docs/scaling-out.md)
        return (ImageStore, (str(self.path), self.n, self.size))

    def _rows(self, lo: int, hi: int) -> np.ndarray:
        count = max(0, hi - lo)
        buf = bytearray(count * self.row)
        view, done = memoryview(buf), 0
        while done < len(buf):
            got = os.preadv(self._fd, [view[done:]], lo * self.row + done)
            if got <= 0:
                raise OSError(f"{self.path}: decoded image file ended early")
            done += got
        return np.frombuffer(buf, dtype=np.uint8).reshape(count, 3, self.size, self.size)

    def __getitem__(self, index: Any) -> torch.Tensor:
        if isinstance(index, slice):
            lo, hi, step = index.indices(self.n)
            if step == 1:
                return torch.from_numpy(self._rows(lo, hi))  # a buffer of its own: writable, nobody else's
            return self[np.arange(lo, hi, step)]
        if isinstance(index, (int, np.integer)) or (isinstance(index, torch.Tensor) and index.dim() == 0):
            i = int(index)
            if not -self.n <= i < self.n:
                raise IndexError(f"index {i} is out of range for {self.n} images")
            return self[i % self.n : i % self.n + 1][0]
        idx = torch.as_tensor(index)
        if idx.dtype == torch.bool:
            if idx.shape != (self.n,):
                raise IndexError(f"a mask of {tuple(idx.shape)} for {self.n} images")
            idx = idx.nonzero().squeeze(1)
        idx = torch.where(idx < 0, idx + self.n, idx).long()
        if len(idx) == 0:
            return torch.empty(0, 3, self.size, self.size, dtype=torch.uint8)
        if int(idx.min()) < 0 or int(idx.max()) >= self.n:
            raise IndexError(f"index out of range for {self.n} images")
        lo, hi = int(idx.min()), int(idx.max()) + 1
        if hi - lo <= 4 * len(idx):  # a batch of a shard (a cascade's standing images): one read of the span
            return torch.from_numpy(self._rows(lo, hi)[(idx - lo).numpy()])
        return torch.from_numpy(np.stack([self._rows(i, i + 1)[0] for i in idx.tolist()]))

    def numel(self) -> int:
        return self.n * self.row


class ImageSink:
    """Collects a source's decoded images in order; :meth:`result` is a tensor, or an :class:`ImageStore` once
    they passed ``spill_bytes``."""

    def __init__(self, size: int, spill_bytes: int | None = None):
        self.size, self.n = size, 0
        self.spill_bytes = SPILL_BYTES if spill_bytes is None else spill_bytes
        self._chunks: list[torch.Tensor] = []
        self._held = 0
        self._file = None
        self._path: Path | None = None

    def add(self, images: torch.Tensor) -> None:
        """One image (3, S, S) or a chunk (k, 3, S, S), uint8."""
        chunk = images[None] if images.dim() == 3 else images
        if tuple(chunk.shape[1:]) != (3, self.size, self.size) or chunk.dtype != torch.uint8:
            raise ValueError(f"expected uint8 images of 3×{self.size}×{self.size}, got {chunk.dtype} {tuple(chunk.shape)}")
        self.n += len(chunk)
        if self._file is None:
            self._chunks.append(chunk)
            self._held += chunk.numel()
            if self._held > self.spill_bytes:
                self._spill()
        else:
            self._file.write(chunk.contiguous().numpy().tobytes())

    def _spill(self) -> None:
        folder = _folder()
        _remove_stale(folder)
        self._path = folder / f"{_prefix()}{os.urandom(6).hex()}.u8"
        # O_EXCL | O_NOFOLLOW: a file of our own, never one planted under that name
        fd = os.open(self._path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        self._file = os.fdopen(fd, "wb")
        self._cleanup = weakref.finalize(self, Path.unlink, self._path, True)  # a load that fails leaves nothing
        for chunk in self._chunks:
            self._file.write(chunk.contiguous().numpy().tobytes())
        self._chunks, self._held = [], 0

    def result(self) -> torch.Tensor | ImageStore:
        if self._file is None:
            if not self._chunks:
                return torch.empty(0, 3, self.size, self.size, dtype=torch.uint8)
            return torch.cat(self._chunks) if len(self._chunks) > 1 else self._chunks[0].contiguous()
        self._file.close()
        self._file = None
        self._cleanup.detach()  # the store owns the file now
        return ImageStore(self._path, self.n, self.size, owner=True)
