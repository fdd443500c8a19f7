"""``median``: spatial median smoothing, Xu et al. 2018's second feature squeezer, per channel over
a ``size`` × ``size`` window. It follows their implementation, ``scipy.ndimage.median_filter`` with
``mode='reflect'``, exactly:

- the window of output pixel i covers inputs i − ⌊size/2⌋ … i − ⌊size/2⌋ + size − 1 (an even window
  reaches one pixel further up and left than down and right);
- borders are padded symmetrically, the edge pixel repeated (… c b a | a b c …: scipy's ``reflect``,
  numpy's ``symmetric``);
- an even window's median is the upper of its two middle values (scipy's rank size²//2).

The output is one of the input values, so it stays on the 8-bit grid; its gradient flows to the
pixel each window picked, which makes it differentiable as it is."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from bench.defenses.base import Defense, DefenseType, Param


def _symmetric_index(length: int, before: int, after: int, device: torch.device) -> torch.Tensor:
    i = torch.arange(-before, length + after, device=device)
    i = torch.where(i < 0, -i - 1, i)
    return torch.where(i >= length, 2 * length - i - 1, i).clamp(0, length - 1)


@dataclass
class Median(Defense):
    size: int = 3
    differentiable = True

    def transform(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        k = self.size
        before, after = k // 2, k - 1 - k // 2
        h, w = x.shape[-2:]
        padded = x.index_select(-2, _symmetric_index(h, before, after, x.device))
        padded = padded.index_select(-1, _symmetric_index(w, before, after, x.device))
        windows = padded.unfold(-2, k, 1).unfold(-2, k, 1).flatten(-2)  # N, C, H, W, k·k
        return windows.kthvalue(k * k // 2 + 1, dim=-1).values


DEFENSE = DefenseType(
    name="median",
    params=(Param("size", 3, "int", 2, 7, help="window side in pixels"),),
    build=lambda size: Median(size),
    label=lambda p: f"median-{p['size']}",
)
