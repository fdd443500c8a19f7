"""``gaussian_noise``: add N(0, sigma²) noise to every value (sigma in units of [0, 1] images), clip
to [0, 1] and store as 8 bits. Randomized: a fresh draw per image and call. Differentiable as it
is (the noise does not depend on the image)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from bench.defenses.base import Defense, DefenseType, Param


@dataclass
class GaussianNoise(Defense):
    sigma: float = 0.05
    randomized = True
    differentiable = True

    def transform(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        if generator is None:
            noise = torch.randn(x.shape, device=x.device, dtype=x.dtype)
        else:
            noise = torch.randn(x.shape, generator=generator, device=generator.device, dtype=x.dtype).to(x.device)
        return (x + self.sigma * noise).clamp(0, 1)


DEFENSE = DefenseType(
    name="gaussian_noise",
    params=(Param("sigma", 0.05, "number", 0, help="standard deviation in units of [0, 1] images"),),
    build=lambda sigma: GaussianNoise(sigma),
    label=lambda p: f"noise-{p['sigma']:g}",
    summary="add Gaussian noise of standard deviation sigma, clip to [0, 1]",
)
