"""Timing: regions add up to the time spent in them; memory is reported in MB."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
import torch

from bench.timing import Stopwatch, peak_memory_mb, reset_peak_memory

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def test_stopwatch_adds_up_its_regions_and_nothing_outside_them():
    watch = Stopwatch("cpu")
    with watch.region():
        time.sleep(0.1)
    assert 0.1 <= watch.seconds < 0.1 + 0.3  # one region: the sleep, give or take a busy scheduler
    time.sleep(0.5)  # outside: not counted
    with watch.region():
        time.sleep(0.1)
    # both regions, and not the 0.5 s between them
    assert 0.2 <= watch.seconds < 0.2 + 0.45  # far below 0.7: the gap is not counted


def _rss_mb() -> float:
    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


@pytest.mark.skipif(not Path("/proc/self/statm").exists(), reason="reads the current resident size from /proc (Linux)")
def test_cpu_peak_memory_rises_by_what_is_allocated():
    """ru_maxrss is a high-water mark (on Linux even inherited from the parent across fork and
    exec), so a buffer that fits under the old mark moves nothing. Allocate enough to pass the
    mark by 512 MiB: the peak must rise by about 512 MB. Wrong units (KiB read as bytes or as
    MB) or a wrong source would miss by orders of magnitude."""
    before = peak_memory_mb("cpu")
    over = 512
    size_mb = max(0.0, before - _rss_mb()) + over
    buf = torch.ones(int(size_mb * 2**20) // 4)  # touched: resident
    after = peak_memory_mb("cpu")
    del buf
    assert over - 64 <= after - before <= over + 64


class _FakeEvent:
    recorded: list = []

    def __init__(self, enable_timing: bool = False):
        self.stream = None

    def record(self, stream=None):
        self.stream = stream
        _FakeEvent.recorded.append(stream)

    def elapsed_time(self, end: "_FakeEvent") -> float:
        return 250.0  # ms


def test_cuda_stopwatch_records_on_its_own_devices_stream(monkeypatch):
    """Events recorded with no stream go on the *current* device's stream: a stopwatch for
    cuda:1 then timed device 0. Runs without a GPU, with fakes for the CUDA calls."""
    streams = {torch.device("cuda:1"): "stream-of-cuda:1", torch.device("cuda:0"): "stream-of-cuda:0"}
    synced = []
    _FakeEvent.recorded = []
    monkeypatch.setattr(torch.cuda, "Event", _FakeEvent)
    monkeypatch.setattr(torch.cuda, "current_stream", lambda device=None: streams[torch.device(device)])
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: synced.append(torch.device(device)))
    watch = Stopwatch("cuda:1")
    with watch.region():
        pass
    with watch.region():
        pass
    assert _FakeEvent.recorded == ["stream-of-cuda:1"] * 4  # start and end of both regions
    assert watch.seconds == pytest.approx(0.5)
    assert synced == [torch.device("cuda:1")]  # the stopwatch's device is the one waited for


@pytest.mark.gpu
@needs_cuda
def test_cuda_stopwatch_waits_for_the_kernels_and_adds_regions():
    """A known GPU busy-wait (torch.cuda._sleep) timed by the stopwatch matches the wall time of
    the same work measured with synchronisation; two regions add up; launches alone are not
    mistaken for the work."""
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    torch.cuda._sleep(50_000_000)
    torch.cuda.synchronize()
    wall = time.perf_counter() - t0
    assert wall > 0.005

    watch = Stopwatch("cuda")
    with watch.region():
        launch = time.perf_counter()
        torch.cuda._sleep(50_000_000)
        launch = time.perf_counter() - launch
    one = watch.seconds
    assert launch < one / 2  # the kernel was still running when the region closed
    assert one == pytest.approx(wall, rel=0.2, abs=0.002)
    with watch.region():
        torch.cuda._sleep(50_000_000)
    assert watch.seconds == pytest.approx(2 * one, rel=0.2, abs=0.002)


@pytest.mark.gpu
@needs_cuda
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices")
def test_cuda_stopwatch_on_the_second_device_times_that_device():
    with torch.cuda.device(0):  # device 0 current, the work on device 1
        watch = Stopwatch("cuda:1")
        with watch.region():
            torch.cuda._sleep(50_000_000)  # launches on the current device: 0 ...
        idle_on_1 = watch.seconds
        with watch.region():
            with torch.cuda.device(1):
                torch.cuda._sleep(50_000_000)  # ... this one on device 1
        busy_on_1 = watch.seconds - idle_on_1
    assert busy_on_1 > 5 * idle_on_1


@pytest.mark.gpu
@needs_cuda
def test_cuda_peak_memory_rises_by_what_is_allocated():
    torch.cuda.synchronize()
    reset_peak_memory("cuda")
    base = torch.cuda.memory_allocated() / 2**20
    buf = torch.ones(256 * 2**20 // 4, device="cuda")  # 256 MiB
    peak = peak_memory_mb("cuda")
    del buf
    assert 256 <= peak - base <= 256 + 16
