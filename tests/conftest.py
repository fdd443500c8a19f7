from __future__ import annotations

import contextlib
import os

# OpenMP threads that spin while they wait turn every small tensor operation into milliseconds once other
# processes share the cores (measured: the authors' AutoAttack on 12 tiny images, 218 s spinning, 18 s passive,
# on 2 cores with 4 other busy processes). Set before torch loads its OpenMP runtime; subprocesses inherit it.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from pathlib import Path  # noqa: E402

import numpy as np
import pytest
import yaml
from PIL import Image


def write_images(root: Path, classes: dict[str, int], size: int = 72, seed: int = 0) -> Path:
    """An ImageFolder of small PNGs: class 0 dark with a bright square, class 1 bright with a dark one."""
    rng = np.random.default_rng(seed)
    for ci, (name, count) in enumerate(classes.items()):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            base = 60 if ci == 0 else 190
            img = rng.integers(base - 40, base + 40, size=(size, size + 8, 3), dtype=np.uint8)
            img[20:40, 20:40] = 255 - base
            Image.fromarray(img).save(root / name / f"{i:03d}.png")
    return root


@pytest.fixture
def image_folder(tmp_path: Path) -> Path:
    return write_images(tmp_path / "imgs", {"fake": 3, "real": 3})


@pytest.fixture
def write_suite(tmp_path: Path):
    """Write a suite mapping to a YAML file in tmp_path and return its path."""

    def _write(doc, name: str = "suite.yaml") -> Path:
        path = tmp_path / name
        path.write_text(doc if isinstance(doc, str) else yaml.safe_dump(doc, sort_keys=False))
        return path

    return _write


@pytest.fixture
def tiny_suite(image_folder: Path) -> dict:
    """A suite that runs in seconds: random custom CNN at 96 px, two attacks, two defenses."""
    return {
        "name": "tiny",
        "seed": 3,
        "data": {"source": "imagefolder", "path": str(image_folder), "image_size": 96},
        "models": [{"name": "cnn", "arch": "custom_cnn", "num_classes": 2}],
        "attacks": [
            {"name": "fgsm", "type": "fgsm", "eps": ["2/255", "8/255"]},
            {"name": "pgd", "type": "pgd", "eps": "8/255", "steps": 3, "alpha": "2/255"},
        ],
        "defenses": ["none", {"type": "jpeg", "quality": 50}],
        "devices": ["cpu"],
        "precisions": ["fp32"],
        "batch_size": 4,
    }


LINEAR_FACTORY = """
import torch
import torch.nn as nn


def build():
    net = nn.Sequential(nn.Flatten(), nn.Linear(3 * 16 * 16, 10))
    net.load_state_dict(torch.load(__file__.replace("linear.py", "linear.pt"), weights_only=True))
    net.mean, net.std, net.input_size, net.num_classes = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0), 16, 10
    return net
"""


@pytest.fixture(scope="session")
def linear(tmp_path_factory) -> Path:
    """A linear classifier of the digits at 16 px, fitted in a second: attacks break some of its images and not
    others, and where a random start lands decides a few (a random network's images all stand or all fall)."""
    import torch

    from bench.data import load_dataset
    from bench.specs import DataSpec

    folder = tmp_path_factory.mktemp("linear")
    data = load_dataset(DataSpec("digits", split="train", image_size=16))
    x, y = data.images.float() / 255, data.labels
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 16 * 16, 10))
    opt = torch.optim.Adam(net.parameters(), lr=0.01)
    for _ in range(60):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(net(x), y).backward()
        opt.step()
    torch.save(net.state_dict(), folder / "linear.pt")
    (folder / "linear.py").write_text(LINEAR_FACTORY)
    return folder / "linear.py"


@contextlib.contextmanager
def torch_threads(n: int):
    """torch's thread count set to ``n`` for the block, put back after (float sums, and so perturbations, can depend
    on it: a local run compared with a 1-CPU Ray worker runs on one thread too)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@pytest.fixture
def one_thread():
    with torch_threads(1):
        yield
