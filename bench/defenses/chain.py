"""``chain``: several defenses in order, each one's 8-bit output the next one's input (as saving
the image between steps would). Randomized if any part is. Its differentiable version runs each
part's own differentiable version and BPDA (identity backward) through the parts that have none,
so ``chain(bits-5,jpeg-q75)`` is crafted through through kornia's JPEG and straight through the
rounding; a chain with no differentiable part has BPDA only."""

from __future__ import annotations

from typing import Any, Sequence

import torch

from bench.defenses.base import Defense, DefenseType, Param, straight_through

MAX_DEPTH = 4  # chains of chains, at most this deep


class Chain(Defense):
    def __init__(self, parts: Sequence[Defense]):
        self.parts = tuple(parts)
        self.randomized = any(p.randomized for p in self.parts)

    def transform(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        for part in self.parts:
            x = part(x, generator)
        return x

    @property
    def has_smooth(self) -> bool:
        return any(p.has_smooth for p in self.parts)

    def smooth(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        for part in self.parts:
            x = part.smooth(x, generator) if part.has_smooth else straight_through(part)(x, generator)
        return x


def _label(p: dict[str, Any]) -> str:
    return f"chain({','.join(part.label for part in p['of'])})"


DEFENSE = DefenseType(
    name="chain",
    params=(Param("of", None, "defenses", listable=False, help=f"a list of defenses, applied in order; at most {MAX_DEPTH} deep"),),
    build=lambda of: Chain(of),
    label=_label,
)
