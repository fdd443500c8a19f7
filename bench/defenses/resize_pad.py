"""``resize_pad``: randomization at inference time, Xie et al. 2018. For an s × s input: resize to
r × r with r drawn uniformly from [s, ⌊s·max_scale⌋) (nearest neighbour, as their code), pad with
zeros to ⌊s·max_scale⌋ at a random offset (top and left each uniform in [0, ⌊s·max_scale⌋ − r), as
theirs), then resize back to s × s (bilinear, antialiased) so that any model reads its own input
size, and store as 8 bits. ImageNet's 299 → 331 is ``max_scale`` ≈ 1.107; the default is 1.1.
Every image draws its own size and offset. Differentiable as it is (interpolation and padding)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from bench.defenses.base import Defense, DefenseType, Param, draw


def padded_size(side: int, max_scale: float) -> int:
    return math.floor(side * max_scale + 1e-9)


@dataclass
class ResizePad(Defense):
    max_scale: float = 1.1
    randomized = True
    differentiable = True

    def transform(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        n, _, h, w = x.shape
        big_h, big_w = padded_size(h, self.max_scale), padded_size(w, self.max_scale)
        if big_h <= h or big_w <= w:
            raise ValueError(f"max_scale {self.max_scale:g} leaves no room at {h}×{w} px: "
                             f"⌊{h}·{self.max_scale:g}⌋ = {big_h}; use a larger max_scale")
        u = draw(torch.rand, (n, 3), x, generator).cpu()  # size, top, left: three numbers per image
        out = []
        for i in range(n):
            rh = h + int(u[i, 0] * (big_h - h))  # uniform in [h, big_h)
            rw = round(rh * w / h)
            rw = min(max(rw, w), big_w - 1)
            top, left = int(u[i, 1] * (big_h - rh)), int(u[i, 2] * (big_w - rw))
            small = F.interpolate(x[i : i + 1], size=(rh, rw), mode="nearest")
            padded = F.pad(small, (left, big_w - rw - left, top, big_h - rh - top))
            out.append(F.interpolate(padded, size=(h, w), mode="bilinear", align_corners=False, antialias=True))
        return torch.cat(out).clamp(0, 1)


DEFENSE = DefenseType(
    name="resize_pad",
    params=(Param("max_scale", 1.1, "number", 1, lo_open=True, help="padded size over input size"),),
    build=lambda max_scale: ResizePad(max_scale),
    label=lambda p: f"resize_pad-{p['max_scale']:g}",
)
