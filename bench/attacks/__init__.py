"""Attack registry: every torchattacks attack by its class name, plus the tutorial's ``sgd``.

Attacks see models that take images in [0, 1] (the model wrapper normalises), and return
adversarial images in [0, 1]. ``build(spec, model, seed)`` makes a configured torchattacks
``Attack``. An attack that takes a ``seed`` and is not given one in the suite gets the harness's
per-crafting seed (torchattacks' AutoAttack and Square would otherwise seed themselves from the
clock), so the same suite gives the same adversarial images, bit for bit, on CPU.
"""

from __future__ import annotations

import functools
import inspect
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
import torch.nn as nn

if TYPE_CHECKING:
    from bench.specs import AttackSpec

_INSTALL_HINT = (
    "torchattacks is not installed: pip install --no-deps 'torchattacks>=3.5.1,<4' "
    "(--no-deps because its wheel pins requests~=2.25.1, which it never imports)"
)


@dataclass(frozen=True)
class AttackInfo:
    name: str  # canonical type name used in suites and result rows
    cls: type
    params: dict[str, Any]  # constructor arguments (except the model) and their defaults
    targeted: bool  # has a targeted mode


def _torchattacks():
    try:
        import torchattacks
    except ImportError:
        raise ImportError(_INSTALL_HINT) from None
    return torchattacks


class _Probe(nn.Module):
    """A stand-in model, so argument checks run before any real model is loaded."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(1, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.flatten(1).mean(1, keepdim=True))


def _params(cls: type) -> dict[str, Any] | None:
    sig = inspect.signature(cls.__init__)
    out = {}
    for name, p in list(sig.parameters.items())[2:]:  # skip self, model
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        if p.default is p.empty:
            return None  # needs an argument a suite cannot give (a data loader, other attacks)
        # None: the harness's per-crafting seed (build() fills it in); a number in the suite pins it
        out[name] = None if name == "seed" else p.default
    return out


@functools.cache
def registry() -> dict[str, AttackInfo]:
    ta = _torchattacks()
    from torchattacks.attack import Attack

    from bench.attacks.sgd import SGD

    classes = {"sgd": SGD}
    for cls_name in ta.__all__:
        cls = getattr(ta, cls_name)
        if isinstance(cls, type) and issubclass(cls, Attack):
            classes[cls_name.lower()] = cls
    out = {}
    for name, cls in classes.items():
        params = _params(cls)
        if params is None:
            continue
        try:
            targeted = "targeted" in cls(_Probe()).supported_mode
        except Exception:  # an attack whose defaults cannot even be instantiated is not offered
            continue
        out[name] = AttackInfo(name, cls, params, targeted)
    return out


def names() -> list[str]:
    return list(registry())


def lookup(type_name: Any) -> AttackInfo:
    """Case-insensitive lookup by type (``fgsm``, ``PGD``, ``sgd``); KeyError if unknown."""
    if not isinstance(type_name, str):
        raise KeyError(type_name)
    return registry()[type_name.lower()]


# Attacks whose perturbation is bounded in L2 by ``eps``; those with a ``norm`` argument say it there.
_L2_ATTACKS = ("pgdl2", "pgdrsl2")
# Score-based black-box attacks: they query outputs only, so gradient masking cannot fool them.
BLACK_BOX = ("square", "spsa", "pixle", "onepixel")
# Step sizes in pixel units, which an unbounded version of the attack scales with its budget: every
# attack's `alpha`, and SPSA's `lr` (the sgd attack's lr multiplies a gradient, not a budget).
_STEP_PARAMS = {"alpha"}
_STEP_PARAMS_OF = {"spsa": {"lr"}}


def norm(spec: "AttackSpec") -> str:
    """The norm ``eps`` bounds: ``Linf``, ``L2`` or ``L1``; ``none`` for attacks without an ε
    budget (CW, DeepFool, the L0 attacks), whose perturbation is measured but not bounded."""
    info = lookup(spec.type)
    if "eps" not in info.params:
        return "none"
    if "norm" in info.params:
        value = str(spec.kwargs.get("norm", info.params["norm"]))
        return {"linf": "Linf", "l2": "L2", "l1": "L1"}.get(value.lower(), value)
    return "L2" if info.name in _L2_ATTACKS else "Linf"


def unbounded_eps(norm_name: str, shape: tuple[int, ...]) -> float:
    """A budget that bounds nothing for images of ``shape`` (C, H, W) in [0, 1]: 1 for L∞, the
    largest possible distance between two images for L2 and L1."""
    size = math.prod(shape)
    return {"Linf": 1.0, "L2": math.sqrt(size), "L1": float(size)}[norm_name]


def unbounded(spec: "AttackSpec", shape: tuple[int, ...]) -> "AttackSpec":
    """The same attack with an unbounded budget (Pintor et al.'s unconstrained attack): ε as
    :func:`unbounded_eps`, its pixel-unit step sizes scaled by the same factor, so it takes the
    same number of steps of the same size relative to its budget, and no random start (noise
    over an unbounded ball would break the images without the attack's steps)."""
    from dataclasses import replace

    big = unbounded_eps(norm(spec), shape)
    factor = big / spec.eps
    steps = _STEP_PARAMS | _STEP_PARAMS_OF.get(spec.type, set())
    params = []
    for k, v in spec.params:
        if k in steps and isinstance(v, (int, float)) and not isinstance(v, bool):
            v = v * factor
        if k == "random_start":  # uniform noise over an unbounded ball destroys the image by itself:
            v = False  # the check is whether the attack's steps find adversarial examples
        if k == RESTARTS:  # without a random start every restart would repeat the first run
            continue
        params.append((k, v))
    return replace(spec, eps=big, params=tuple(params))


RESTARTS = "restarts"  # the harness's own attack key (not a constructor argument): see Restarts


def restartable(info: AttackInfo, params: dict[str, Any]) -> bool:
    """Whether runs of an attack differ: a random start that is on, or a ``seed`` (which :class:`Restarts`
    changes per run). Restarting FGSM or CW would repeat the same run."""
    return bool(params.get("random_start")) or "seed" in info.params


class Restarts:
    """An attack run ``n`` times, each run on the images the runs before did not fool (as the model
    the attack sees classifies them), keeping the first adversarial example found: random restarts
    for any attack with a random start (Madry et al.'s PGD with restarts; AutoAttack's ``n_restarts``
    does the same inside APGD). Each run draws a new start from the crafting's seeded generators; an
    attack that reseeds itself from its ``seed`` on every call gets seed + k for run k."""

    def __init__(self, attack, model: nn.Module, n: int, target: int | None):
        self.attack, self.model, self.n, self.target = attack, model, n, target

    def _fooled(self, adv: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            pred = self.model(adv).argmax(1)
        return pred == self.target if self.target is not None else pred != labels

    def __call__(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        seed = getattr(self.attack, "seed", None)
        adv = self.attack(images, labels)
        try:
            for k in range(1, self.n):
                left = ~self._fooled(adv, labels)
                if not left.any():
                    break
                if isinstance(seed, int):
                    self.attack.seed = seed + k
                adv = adv.clone()
                adv[left] = self.attack(images[left], labels[left])
        finally:
            if isinstance(seed, int):
                self.attack.seed = seed
        return adv


def build(spec: "AttackSpec", model: nn.Module, seed: int = 0):
    """A torchattacks Attack for this spec, attacking ``model``; ``seed`` is the crafting's seed,
    given to an attack that takes one when the suite left it open. With ``restarts`` > 1 the
    attack is wrapped in :class:`Restarts`."""
    info = lookup(spec.type)
    kwargs = spec.kwargs
    restarts = kwargs.pop(RESTARTS, 1)
    if spec.eps is not None:
        kwargs["eps"] = spec.eps
    if "seed" in info.params and kwargs.get("seed") is None:
        kwargs["seed"] = int(seed)
    attack = info.cls(model, **kwargs)
    if spec.target is not None:
        target = spec.target
        attack.set_mode_targeted_by_function(lambda images, labels: torch.full_like(labels, target), quiet=True)
    return Restarts(attack, model, restarts, spec.target) if restarts > 1 else attack


def check(spec: "AttackSpec") -> None:
    """Raise TypeError/ValueError if the attack rejects these arguments (no real model needed)."""
    build(spec, _Probe())
