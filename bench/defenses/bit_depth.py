"""``bit_depth``: colour bit-depth reduction, the first of Xu et al. 2018's feature squeezers (also
in Guo et al. 2018): each channel value is rounded to one of 2^bits evenly spaced levels in [0, 1],
then stored as 8 bits like any saved image. Rounding has no useful gradient, so its only adaptive
attack is BPDA."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from bench.defenses.base import Defense, DefenseType, Param


@dataclass
class BitDepth(Defense):
    bits: int = 5

    def transform(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        levels = 2**self.bits - 1
        return torch.round(x * levels) / levels  # Xu et al.: np.rint(x * (2**bits - 1)) / (2**bits - 1)


DEFENSE = DefenseType(
    name="bit_depth",
    params=(Param("bits", 5, "int", 1, 8),),
    build=lambda bits: BitDepth(bits),
    label=lambda p: f"bits-{p['bits']}",
)
