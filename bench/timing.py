"""Honest timing and memory.

CPU regions are timed with ``time.perf_counter``. CUDA regions are timed with CUDA events
recorded on the current stream *of the stopwatch's device* (not of whichever device is current)
and read only after synchronising that device, so asynchronous kernel launches are never mistaken
for finished work, and a stopwatch for ``cuda:1`` times ``cuda:1``.
"""

from __future__ import annotations

import resource
import sys
import time
from contextlib import contextmanager
from typing import Iterator

import torch


class Stopwatch:
    """Accumulates the duration of several timed regions on one device."""

    def __init__(self, device: torch.device | str):
        self.device = torch.device(device)
        self._cuda = self.device.type == "cuda"
        self._events: list[tuple[torch.cuda.Event, torch.cuda.Event]] = []
        self._seconds = 0.0

    @contextmanager
    def region(self) -> Iterator[None]:
        if self._cuda:
            # the stopwatch's device's stream: Event.record() alone would use the current device's
            stream = torch.cuda.current_stream(self.device)
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record(stream)
            yield
            end.record(stream)
            self._events.append((start, end))
        else:
            t0 = time.perf_counter()
            yield
            self._seconds += time.perf_counter() - t0

    @property
    def seconds(self) -> float:
        if self._cuda and self._events:
            torch.cuda.synchronize(self.device)
            self._seconds += sum(s.elapsed_time(e) for s, e in self._events) / 1000.0
            self._events.clear()
        return self._seconds


def reset_peak_memory(device: torch.device | str) -> None:
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_mb(device: torch.device | str) -> float:
    """Peak memory since the last reset: allocated CUDA memory on GPU; on CPU the process's
    peak resident set size so far (the OS offers no reset, so it never decreases in a run)."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if sys.platform == "darwin" else rss / 1024  # bytes on macOS, KiB on Linux


def synchronized_timer() -> float:
    """``time.perf_counter`` after waiting for queued CUDA work: a timer pytest-benchmark can use
    (``--benchmark-timer bench.timing.synchronized_timer``) so GPU kernels are timed to completion."""
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()
    return time.perf_counter()
