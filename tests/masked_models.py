"""Small models for the indicators of attack failure, used as suite factories by tests/test_indicators.py.

Every model reads images in [0, 1] (mean 0, std 1: the harness's normalisation is the identity) and
decides on the image's mean value m: class 1 when m > 1/2. On constant images whose value is a
distance d from 1/2, an L∞ attack with budget ε moves m by at most ε, so an image is robust exactly
when d > ε: the true robust accuracy is known. The variants mask that model's gradients in the
classic ways (Athalye et al. 2018; Pintor et al. 2022), or return what a classifier must not.
"""

from __future__ import annotations

import torch
import torch.nn as nn

SCALE = 20.0  # logit gap per unit of m: confident, not saturated


class MeanModel(nn.Module):
    """The genuinely robust reference: logits s·(1/2 − m, m − 1/2)."""

    mean, std, input_size, num_classes = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0), 16, 2

    def __init__(self, kind: str = "robust", delay: float = 0.0, classes: int = 2):
        super().__init__()
        self.kind, self.delay, self.num_classes = kind, delay, classes
        self.dummy = nn.Parameter(torch.zeros(()))  # a parameter, so the model has a device

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.delay and x.device.type != "meta":  # a slow model, so that a run can be stopped midway
            import time

            time.sleep(self.delay)
        if self.kind == "shattered":  # x + a·sin(w·x): invisible forward, gradients of random sign
            x = x + 0.002 * torch.sin(1e4 * x)
        if self.kind == "quantised":  # a non-differentiable step: round to the 8-bit grid (zero gradient)
            x = torch.round(x * 255) / 255
        if self.kind == "noisy":  # randomness the suite does not declare
            x = x + 0.05 * torch.randn_like(x)
        m = x.mean(dim=(1, 2, 3)) + 0 * self.dummy
        z = SCALE * torch.stack([0.5 - m, m - 0.5], dim=1)
        if self.kind == "band":  # class 1 only in a thin band of m: PGD steps over it and back
            z = SCALE * torch.stack([torch.zeros_like(m), 0.02 - (m - 0.5).abs()], dim=1)
        if self.kind == "scaled":  # logits ×1e4: the softmax saturates, cross-entropy gradients are exactly zero
            z = z * 1e4
        if self.kind == "softmax":
            z = z.softmax(1)
        if self.kind == "constant":  # ignores the image
            z = torch.stack([torch.full_like(m, 3.0), torch.ones_like(m)], dim=1) + 0 * z
        if self.num_classes > 2:  # classes never predicted, for attacks that assume more than two (AutoAttack)
            z = torch.cat([z, torch.full((len(z), self.num_classes - 2), -10.0).to(z)], dim=1)
        return z


def build(kind: str = "robust", delay: float = 0.0, classes: int = 2) -> nn.Module:
    return MeanModel(kind, delay, classes)


# Constant 16 px images: class 0 ("a") below 1/2, class 1 ("b") above it. At ε = 8/255 an image is
# robust exactly when its value is more than 8 levels from 127.5: 90, 100, 110 and 145, 155, 165.
VALUES = {"a": [90, 100, 110, 122, 123, 124], "b": [165, 155, 145, 133, 132, 131]}
ROBUST_AT_8 = 6 / 12


def write_images(root):
    """The image folder of :data:`VALUES` (PNG files, labels by folder)."""
    import numpy as np
    from PIL import Image

    for name, values in VALUES.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for i, v in enumerate(values):
            Image.fromarray(np.full((16, 16, 3), v, np.uint8)).save(root / name / f"{i}.png")
    return root


def entry(kind: str, name: str | None = None, delay: float = 0.0) -> dict:
    """A suite's model entry for one of these models (``delay``: seconds of sleep per forward pass)."""
    from pathlib import Path

    kwargs = {"kind": kind, **({"delay": delay} if delay else {})}
    return {"name": name or kind, "factory": f"{Path(__file__).resolve()}:build", "kwargs": kwargs}
