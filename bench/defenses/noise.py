"""``gaussian_noise``: add N(0, sigma²) noise to every value (sigma in units of [0, 1] images), clip
to [0, 1] and store as 8 bits. Randomized: a fresh draw per image and call. Differentiable as it
is (the noise does not depend on the image)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from bench.defenses.base import Defense, DefenseType, Param, draw


@dataclass
class GaussianNoise(Defense):
    sigma: float = 0.05
    randomized = True
    differentiable = True

    def transform(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        return (x + self.sigma * draw(torch.randn, x.shape, x, generator)).clamp(0, 1)


DEFENSE = DefenseType(
    name="gaussian_noise",
    params=(Param("sigma", 0.05, "number", 0, help="standard deviation in units of [0, 1] images"),),
    build=lambda sigma: GaussianNoise(sigma),
    label=lambda p: f"noise-{p['sigma']:g}",
)
