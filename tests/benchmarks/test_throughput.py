"""Throughput benchmarks for the perf gate (`make perf-baseline`, `make perf-gate`); not part of
`make test`. Sizes are small on CPU, realistic on GPU. Each records images per second and peak
memory in ``extra_info``."""

from __future__ import annotations

import pytest
import torch
import torchattacks

from bench.defenses import JPEG
from bench.fastpath import Levers, backend_flags, prepare
from bench.sources import create_model
from bench.suite import ModelSpec
from bench.timing import peak_memory_mb, reset_peak_memory

pytestmark = pytest.mark.benchmark


def _batch(device: str, size: int) -> int:
    return 128 if device.startswith("cuda") else (4 if size >= 224 else 16)


def _model(arch: str, size: int, device: str, classes: int = 1000):
    base = create_model(ModelSpec(arch, arch, None, num_classes=classes, input_size=size), seed=0)
    precision = "bf16" if device.startswith("cuda") else "fp32"
    return prepare(base, device, precision, Levers(), sample=torch.rand(2, 3, size, size))


def _inputs(n: int, size: int, classes: int, device: str):
    g = torch.Generator().manual_seed(0)
    return torch.rand(n, 3, size, size, generator=g).to(device), torch.randint(classes, (n,), generator=g).to(device)


def _record(benchmark, images: int, device: str) -> None:
    benchmark.extra_info["images_per_s"] = images / benchmark.stats.stats.median
    benchmark.extra_info["peak_mem_mb"] = peak_memory_mb(device)
    benchmark.extra_info["device"] = device


def _run(benchmark, fn, images: int, device: str, rounds: int = 3) -> None:
    reset_peak_memory(device)
    with backend_flags(Levers()):  # cudnn.benchmark on, as the runner runs its cells
        benchmark.pedantic(fn, rounds=rounds, iterations=1, warmup_rounds=1)
    _record(benchmark, images, device)


@pytest.mark.parametrize("arch,size,classes", [("resnet18", 224, 1000), ("custom_cnn", 96, 2)])
def test_pgd_step(benchmark, device, arch, size, classes):
    """One PGD step (a forward and an input-gradient backward) on the fast path."""
    n = _batch(device, size)
    model = _model(arch, size, device, classes)
    x, y = _inputs(n, size, classes, device)
    attack = torchattacks.PGD(model, eps=4 / 255, alpha=1 / 255, steps=1)
    _run(benchmark, lambda: attack(x, y), n, device)


def test_fgsm(benchmark, device):
    n = _batch(device, 224)
    model = _model("resnet18", 224, device)
    x, y = _inputs(n, 224, 1000, device)
    attack = torchattacks.FGSM(model, eps=4 / 255)
    _run(benchmark, lambda: attack(x, y), n, device)


def test_clean_inference(benchmark, device):
    n = 2 * _batch(device, 224)
    model = _model("resnet18", 224, device)
    x, _ = _inputs(n, 224, 1000, device)

    def forward():
        with torch.no_grad():
            return model(x)

    _run(benchmark, forward, n, device)


def test_jpeg_pil(benchmark):
    x, _ = _inputs(32, 224, 2, "cpu")
    jpeg = JPEG(75)
    _run(benchmark, lambda: jpeg(x), 32, "cpu", rounds=5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="nvjpeg needs a CUDA device")
def test_jpeg_nvjpeg(benchmark):
    """4:4:4, the all-GPU nvjpeg path (a 4:2:0 JPEG on CUDA runs PIL; see bench/defenses.py)."""
    x, _ = _inputs(256, 224, 2, "cuda")
    jpeg = JPEG(75, 444)
    _run(benchmark, lambda: jpeg(x), 256, "cuda", rounds=5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_jpeg_420_on_cuda(benchmark):
    """4:2:0 on CUDA: the PIL round trip from GPU memory, as the runner does it."""
    x, _ = _inputs(256, 224, 2, "cuda")
    jpeg = JPEG(75)
    _run(benchmark, lambda: jpeg(x), 256, "cuda", rounds=5)
