"""Timing: regions add up; memory is reported in MB."""

from __future__ import annotations

import time

import pytest
import torch

from bench.timing import Stopwatch, peak_memory_mb


def test_stopwatch_adds_up_its_regions_and_nothing_outside_them():
    watch = Stopwatch("cpu")
    with watch.region():
        time.sleep(0.05)
    time.sleep(0.5)  # outside: not counted
    with watch.region():
        time.sleep(0.05)
    assert 0.1 <= watch.seconds < 0.5


def test_cpu_peak_memory_is_the_process_resident_peak_in_mb():
    big = torch.ones(64 * 2**20 // 4)  # 64 MiB, touched
    assert peak_memory_mb("cpu") >= 64
    del big


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_stopwatch_waits_for_the_kernels():
    watch = Stopwatch("cuda")
    a = torch.randn(4096, 4096, device="cuda")
    with watch.region():
        for _ in range(20):
            a = a @ a / 64
    assert watch.seconds > 0
