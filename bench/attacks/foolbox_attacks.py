"""foolbox 3: ``type: foolbox/<Attack>``, any attack class of ``foolbox.attacks`` by its name (``LinfPGD``,
``L2FMNAttack``, ``DDNAttack``, ``L2CarliniWagnerAttack``, ``EADAttack``, ``BoundaryAttack``, …).

Fixed-ε attacks (PGD, FGSM, …) need ``eps``. Minimisation attacks (FMN, DDN, CW, EAD, Boundary, …)
search the smallest perturbation: without ``eps`` they run unbounded and the harness records each
image's smallest perturbation (a robust-accuracy curve over ε from one run); with ``eps`` foolbox
clips their result to the ball. The model is handed to foolbox as ``PyTorchModel`` with bounds
(0, 1) on the cell's device, through the harness's wrapper, so queries are counted as for any attack.
"""

from __future__ import annotations

import functools
import inspect
from typing import TYPE_CHECKING, Any

import torch
import torch.nn as nn

from bench.attacks.base import AttackInfo, AttackUnavailable, Float32, lookup_in, names_of

if TYPE_CHECKING:
    from bench.specs import AttackSpec

NAME = "foolbox"
PREFIX = "foolbox/"
INSTALL = "pip install -e '.[foolbox]' (foolbox>=3.3,<4), or `make install`"
BLACK_BOX = ("boundaryattack", "hopskipjumpattack", "genattack", "pointwiseattack")
_PLAIN = (str, int, float, bool, type(None))


def claims(type_name: str) -> bool:
    return type_name.lower().startswith(PREFIX)


def _foolbox():
    try:
        import foolbox
    except ImportError as exc:
        raise AttackUnavailable(f"foolbox is not installed ({exc}): {INSTALL}") from None
    return foolbox


def _distance(attack) -> str:
    p = getattr(getattr(attack, "distance", None), "p", None)
    return {float("inf"): "Linf", 2: "L2", 1: "L1", 0: "L0"}.get(p, "none")


@functools.cache
def registry() -> dict[str, AttackInfo]:
    fb = _foolbox()
    from foolbox.attacks.base import Attack, FixedEpsilonAttack, MinimizationAttack

    out = {}
    for cls_name in dir(fb.attacks):
        cls = getattr(fb.attacks, cls_name)
        if not (isinstance(cls, type) and issubclass(cls, Attack)) or inspect.isabstract(cls):
            continue
        params, usable = {}, True
        for name, p in inspect.signature(cls.__init__).parameters.items():
            if name == "self" or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
                continue
            if p.default is p.empty:
                usable = False  # needs an argument a suite cannot give (a dataset to feed)
            elif isinstance(p.default, _PLAIN):
                params[name] = p.default
        if not usable:
            continue
        try:
            distance = _distance(cls())
        except Exception:  # defaults that cannot even be made (a distance it needs to be given)
            continue
        minimum = issubclass(cls, MinimizationAttack)
        if not minimum and not issubclass(cls, FixedEpsilonAttack):
            continue
        canonical = cls.__name__ if cls.__name__ == cls_name else cls_name  # aliases (LinfPGD) keep their name
        out[cls_name.lower()] = AttackInfo(
            f"{PREFIX}{canonical}", NAME, {**params, "eps": None}, "deepfool" not in cls_name.lower(), cls=cls,
            minimum_norm=distance if minimum and distance != "none" else None,
            black_box=cls_name.lower() in BLACK_BOX, step_params=frozenset({"abs_stepsize"}) & set(params),
            budget="optional" if minimum else "required", fixed_norm=distance, default_name=f"foolbox-{canonical}")
    return out


def names() -> list[str]:
    return names_of(registry)


def lookup(type_name: str) -> AttackInfo:
    return lookup_in(registry, PREFIX, type_name)


def norm(info: AttackInfo, params: dict[str, Any]) -> str:
    return info.fixed_norm or "none"


def minimum_norm(info: AttackInfo, params: dict[str, Any]) -> str | None:
    return info.minimum_norm


class FoolboxAttack:
    """A foolbox attack called as the harness calls every attack: ``attack(images, labels) -> adversarial``."""

    def __init__(self, attack, model: nn.Module, eps: float | None, target: int | None):
        self.attack, self.model, self.eps, self.target = attack, model, eps, target
        self._fmodel = None

    def __call__(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        fb = _foolbox()
        if self._fmodel is None:
            self._fmodel = fb.PyTorchModel(Float32(self.model).eval(), bounds=(0, 1), device=images.device)
        criterion = (fb.criteria.TargetedMisclassification(torch.full_like(labels, self.target))
                     if self.target is not None else labels)
        _, clipped, _ = self.attack(self._fmodel, images, criterion, epsilons=self.eps)
        return clipped.detach()


def build(info: AttackInfo, spec: "AttackSpec", model: nn.Module, seed: int, num_classes: int | None = None):
    return FoolboxAttack(info.cls(**spec.kwargs), model, spec.eps, spec.target)


def family(type_name: str, args: dict[str, Any]) -> tuple | None:
    """PGD and FGSM in library-free terms (pure: no import), for comparing implementations."""
    eps, name = args.get("eps"), type_name.lower().removeprefix(PREFIX)
    if eps is None:
        return None
    norm = "Linf" if name.startswith(("linf", "pgd", "fgsm")) else "L2" if name.startswith("l2") else None
    if norm is None:
        return None
    if name in ("fgsm", "linffastgradientattack", "l2fastgradientattack", "fgm") and not args.get("random_start"):
        return ("fgsm", "L2" if name in ("l2fastgradientattack", "fgm") else "Linf", eps)
    if name in ("linfpgd", "pgd", "linfprojectedgradientdescentattack", "l2pgd", "l2projectedgradientdescentattack",
                "linfbasiciterativeattack", "l2basiciterativeattack"):
        step = args.get("abs_stepsize")
        step = step if step is not None else args.get("rel_stepsize", 0) * eps
        return ("pgd", norm, eps, args.get("steps"), step, int(bool(args.get("random_start"))))
    return None
