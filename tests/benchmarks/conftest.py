"""pytest-benchmark set-up: the device under test, and machine info that names the hardware."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
import torch


HERE = Path(__file__).parent


def pytest_collection_modifyitems(items):
    # this hook sees every collected test, not only this folder's
    for item in items:
        if HERE in Path(item.fspath).parents:
            item.add_marker(pytest.mark.benchmark_suite)


def pytest_benchmark_update_machine_info(config, machine_info):
    """GPU, driver, CUDA, torch and torchvision in every saved result, so a comparison across
    different hardware or software is visible in the JSON."""
    import torchvision

    from bench.results import machine_slug

    info = {"device_slug": machine_slug(), "torch": torch.__version__, "torchvision": torchvision.__version__,
            "cuda": torch.version.cuda, "gpu": None, "driver": None}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
        if shutil.which("nvidia-smi"):
            out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                 capture_output=True, text=True, timeout=30)
            info["driver"] = out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else None
    machine_info.update(info)


@pytest.fixture(scope="session")
def device() -> str:
    return os.environ.get("BENCH_DEVICE") or ("cuda" if torch.cuda.is_available() else "cpu")
