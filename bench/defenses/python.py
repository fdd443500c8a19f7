"""``python``: the user's own batch transform, ``fn: "file.py:function"`` or
``"pkg.module:function"`` (imported as a model factory is: see bench/sources/factory.py).

The function takes a float NCHW batch in [0, 1] on the cell's device and returns one of the same
shape in [0, 1]; the harness stores its output as 8 bits like every defense's. ``randomized: true``
says it draws random numbers: if it takes a ``generator`` keyword it is given the cell's seeded
``torch.Generator`` (draw with ``torch.rand(..., generator=generator, device=generator.device)``);
if not, torch's global generator is seeded from it around the call, so reruns give the same bits
either way. ``differentiable: true`` says autograd can go through it, which gives it an
``adaptive-diff`` cell; BPDA works for any. The suite loader calls it on a small probe batch and
refuses one that cannot be imported, raises, changes the shape, leaves [0, 1], is random without
saying so, or claims a gradient it does not have."""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from bench.defenses.base import Defense, DefenseType, Param


@dataclass
class Python(Defense):
    fn: str  # normalised target
    differentiable: bool = False
    randomized: bool = False
    _callable: Callable[..., Any] | None = field(default=None, repr=False, compare=False)

    def load(self) -> Callable[..., Any]:
        if self._callable is None:
            from bench.sources.factory import load_target

            self._callable = load_target(self.fn)
        return self._callable

    def transform(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        fn = self.load()
        if not self.randomized:
            out = fn(x)
        elif _takes_generator(fn):
            out = fn(x, generator=generator)
        else:
            seed = 0
            if generator is not None:
                seed = int(torch.randint(2**62, (1,), generator=generator, device=generator.device).item())
            devices = [x.device] if x.is_cuda else []
            with torch.random.fork_rng(devices=devices):
                torch.manual_seed(seed)
                out = fn(x)
        if not isinstance(out, torch.Tensor):
            raise TypeError(f"{self.fn} returned {type(out).__name__}, not a tensor")
        if out.shape != x.shape:
            raise ValueError(f"{self.fn} changed the batch's shape from {tuple(x.shape)} to {tuple(out.shape)}")
        return out.to(x.dtype)


def _takes_generator(fn: Callable[..., Any]) -> bool:
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False
    return "generator" in params or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())


def _label(p: dict[str, Any]) -> str:
    return f"python-{p['fn'].rpartition(':')[2].rpartition('.')[2]}"


DEFENSE = DefenseType(
    name="python",
    params=(
        Param("fn", None, "target", listable=False),
        Param("differentiable", False, "bool", listable=False),
        Param("randomized", False, "bool", listable=False),
    ),
    build=lambda fn, differentiable, randomized: Python(fn, differentiable, randomized),
    label=_label,
)
