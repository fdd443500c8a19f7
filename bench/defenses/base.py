"""What every defense is: a batch transform of [0, 1] images on the 8-bit grid, its parameter
schema, and the pieces adaptive attacks are built from.

A defense subclasses :class:`Defense` and implements ``transform(x, generator)`` with torch ops on
``x``'s device. Calling the defense runs the real thing: no gradient, and the output quantised to
8 bits, as the image a defended pipeline would save and load. ``smooth(x, generator)`` is the
differentiable version an ``adaptive-diff`` attack crafts through (``None`` where there is no
natural one): by default the same transform with a straight-through rounding at the end, so its
forward pass is the real defense and only its backward pass is new. Randomized defenses draw only
from the ``generator`` they are given, so a seeded generator gives the same bits again.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.nn as nn

from bench.fastpath import Wrapper


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """Quantise images in [0, 1] to 8 bits (round to nearest), as saving a PNG would."""
    return x.detach().clamp(0, 1).mul(255).round_().to(torch.uint8)


def quantize(x: torch.Tensor) -> torch.Tensor:
    """The float image a viewer would load back from an 8-bit file."""
    return to_uint8(x).to(x.dtype if x.is_floating_point() else torch.float32).div_(255)


def quantize_straight_through(x: torch.Tensor) -> torch.Tensor:
    """Forward: :func:`quantize`. Backward: the identity inside [0, 1] (rounding's own gradient
    is zero almost everywhere, which would hide everything before it)."""
    clamped = x.clamp(0, 1)
    return clamped + (quantize(x) - clamped).detach()


def generator(device: str | torch.device, seed: int) -> torch.Generator:
    """A generator on ``device`` (CUDA draws need a CUDA generator), seeded."""
    return torch.Generator(device=torch.device(device)).manual_seed(int(seed))


def draw(sample: Callable[..., torch.Tensor], shape: tuple[int, ...], x: torch.Tensor,
         g: torch.Generator | None) -> torch.Tensor:
    """``sample`` (``torch.rand``, ``torch.randn``) of ``shape`` in ``x``'s dtype on ``x``'s device,
    drawn from ``g`` on its own device (the global generator when ``g`` is None)."""
    if g is None:
        return sample(shape, device=x.device, dtype=x.dtype)
    return sample(shape, generator=g, device=g.device, dtype=x.dtype).to(x.device)


class Defense:
    """One configured defense. Subclasses set ``randomized`` and ``differentiable`` and implement
    :meth:`transform`; ``__call__`` is the real defense, :meth:`smooth` its differentiable version."""

    randomized: bool = False
    differentiable: bool = False  # whether transform() is differentiable as it is

    def transform(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        raise NotImplementedError

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        # contiguous NCHW whatever the transform returns (PIL's decode is channels-last): one memory
        # layout for the model, one compiled graph
        with torch.no_grad():
            return quantize(self.transform(x.detach(), generator)).contiguous()

    def smooth(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Forward as the real defense, backward through the transform; only for differentiable ones."""
        if not self.differentiable:
            raise TypeError(f"{type(self).__name__} has no differentiable version")
        return quantize_straight_through(self.transform(x, generator))

    @property
    def has_smooth(self) -> bool:
        return self.differentiable


class Identity(Defense):
    """No defense. Called, it returns its input itself (no copy: the clean pass of `none` is free)."""

    differentiable = True

    def transform(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        return x

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        return x

    def smooth(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        return x


def straight_through(defense: Defense) -> Callable[..., torch.Tensor]:
    """BPDA with the identity as the backward approximation (Athalye et al. 2018): the forward
    pass runs the real defense, the backward pass treats it as if it were not there."""

    def bpda(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        y = defense(x, generator)
        return x + (y - x).detach()

    return bpda


# -- parameter schema ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Param:
    """One suite key of a defense: its default and what is allowed. ``kind`` is ``int``,
    ``number`` (a float; fractions such as ``8/255`` are accepted), ``bool``, ``choice``,
    ``target`` (``file.py:function`` or ``pkg.module:function``) or ``defenses`` (a chain's parts). A list of values expands into
    one defense each, where ``listable``."""

    name: str
    default: Any
    kind: str
    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False  # lo itself is not allowed (max_scale > 1)
    choices: tuple[Any, ...] = ()
    listable: bool = True
    help: str = ""

    @property
    def allowed(self) -> str:
        if self.kind == "choice":
            return self.help or ", ".join(map(str, self.choices))
        if self.kind == "bool":
            return "true or false"
        if self.kind == "target":
            return "'path/to/file.py:function' or 'pkg.module:function'"
        lo = "" if self.lo is None else (f"> {self.lo:g}" if self.lo_open else f">= {self.lo:g}")
        if self.lo is not None and self.hi is not None and not self.lo_open:
            text = f"{'an integer' if self.kind == 'int' else 'a number'} between {self.lo:g} and {self.hi:g}"
        else:
            text = " and ".join(t for t in (lo, "" if self.hi is None else f"<= {self.hi:g}") if t)
            text = f"{'an integer' if self.kind == 'int' else 'a number'} {text}".strip()
        return text + (f" ({self.help})" if self.help and self.kind in ("int", "number") else "")


@dataclass(frozen=True)
class DefenseType:
    """A registry entry: the suite keys of one defense type, how to build it, and its short label."""

    name: str
    params: tuple[Param, ...]
    build: Callable[..., Defense]
    label: Callable[[dict[str, Any]], str]

    @property
    def defaults(self) -> dict[str, Any]:
        return {p.name: p.default for p in self.params}


# -- what an attack optimises against ------------------------------------------------------------


class Defended(Wrapper):
    """model ∘ transform: the classifier an adaptive attack optimises against, one draw per call."""

    def __init__(self, model: nn.Module, transform: Callable[..., torch.Tensor], generator: torch.Generator | None = None):
        super().__init__(model)
        self.transform = transform
        self.generator = generator

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(self.transform(x, self.generator))


class EOT(Wrapper):
    """Expectation over Transformation (Athalye et al. 2018) as a model: each call draws
    ``samples`` transformations and returns the mean of the model's logits over them. Its input
    gradient, for any upstream gradient the attack sends back, is the mean of the ``samples``
    single-draw gradients, so any attack that takes a model gets EOT without changing the attack.
    (An attack's loss sees the mean logits: for a loss linear in the logits that is exactly the
    expected loss's gradient; for cross-entropy it is the gradient at the mean logits.)"""

    def __init__(self, model: nn.Module, transform: Callable[..., torch.Tensor], samples: int,
                 generator: torch.Generator | None = None):
        super().__init__(model)
        if samples < 1:
            raise ValueError(f"EOT needs at least one sample, got {samples}")
        self.transform, self.samples, self.generator = transform, samples, generator

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        total = None
        for _ in range(self.samples):  # a running sum: without autograd only one draw's activations live at once
            logits = self.model(self.transform(x, self.generator))
            total = logits if total is None else total + logits
        return total / self.samples
