"""torchattacks: every attack class by its name (``type: pgd``, ``type: torchattacks/PGD``), and the tutorial's ``sgd``.

A bare type with no source prefix is torchattacks', as it always was: ``pgd``, ``apgd``, ``square``. The
canonical type is the class name in lower case, so result rows of earlier runs keep their names.
"""

from __future__ import annotations

import functools
import inspect
from typing import TYPE_CHECKING, Any

import torch
import torch.nn as nn

from bench.attacks.base import AttackInfo, AttackUnavailable, Probe, lookup_in, names_of

if TYPE_CHECKING:
    from bench.specs import AttackSpec

NAME = "torchattacks"
PREFIX = "torchattacks/"
INSTALL = ("pip install --no-deps 'torchattacks>=3.5.1,<4' (--no-deps because its wheel pins requests~=2.25.1, "
           "which it never imports; or `make install`)")

# Attacks whose perturbation is bounded in L2 by ``eps``; those with a ``norm`` argument say it there.
_L2_ATTACKS = ("pgdl2", "pgdrsl2")
# Score-based black-box attacks: they query outputs only, so gradient masking cannot fool them.
BLACK_BOX = ("square", "spsa", "pixle", "onepixel")
# Attacks that search the smallest perturbation, and the norm they minimise (FAB: its `norm` argument).
_MINIMUM_NORM = {"cw": "L2", "deepfool": "L2", "eadl1": "L1", "eaden": "L1", "fab": None}
# Step sizes in pixel units, which an unbounded version of the attack scales with its budget: every
# attack's `alpha`, and SPSA's `lr` (the sgd attack's lr multiplies a gradient, not a budget).
_STEP_PARAMS = {"alpha"}
_STEP_PARAMS_OF = {"spsa": {"lr"}}


def claims(type_name: str) -> bool:
    return "/" not in type_name or type_name.lower().startswith(PREFIX)


def _torchattacks():
    try:
        import torchattacks
    except ImportError:
        raise AttackUnavailable(f"torchattacks is not installed: {INSTALL}") from None
    return torchattacks


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
            targeted = "targeted" in cls(Probe()).supported_mode
        except Exception:  # an attack whose defaults cannot even be instantiated is not offered
            continue
        minimum = _MINIMUM_NORM.get(name, "")
        if minimum is None:  # FAB: the norm it minimises is its own argument
            minimum = "params"
        out[name] = AttackInfo(name, NAME, params, targeted, cls=cls, minimum_norm=minimum or None,
                               black_box=name in BLACK_BOX, budget="required" if "eps" in params else "none",
                               step_params=frozenset(_STEP_PARAMS | _STEP_PARAMS_OF.get(name, set())))
    return out


def names() -> list[str]:
    return names_of(registry)


def lookup(type_name: str) -> AttackInfo:
    return lookup_in(registry, PREFIX, type_name)


def norm(info: AttackInfo, params: dict[str, Any]) -> str:
    if "eps" not in info.params:
        return "none"
    return _norm_arg(info, params) or ("L2" if info.name in _L2_ATTACKS else "Linf")


def _norm_arg(info: AttackInfo, params: dict[str, Any]) -> str | None:
    if "norm" not in info.params:
        return None
    value = str(params.get("norm", info.params["norm"]))
    return {"linf": "Linf", "l2": "L2", "l1": "L1"}.get(value.lower(), value)


def minimum_norm(info: AttackInfo, params: dict[str, Any]) -> str | None:
    if info.minimum_norm == "params":
        return _norm_arg(info, params)
    return info.minimum_norm


def build(info: AttackInfo, spec: "AttackSpec", model: nn.Module, seed: int, num_classes: int | None = None):
    kwargs = spec.kwargs
    if spec.eps is not None:
        kwargs["eps"] = spec.eps
    if "seed" in info.params and kwargs.get("seed") is None:
        kwargs["seed"] = int(seed)
    attack = info.cls(model, **kwargs)
    if spec.target is not None:
        target = spec.target
        attack.set_mode_targeted_by_function(lambda images, labels: torch.full_like(labels, target), quiet=True)
    return attack


def family(type_name: str, args: dict[str, Any]) -> tuple | None:
    """What the attack computes, in library-free terms, for comparing implementations (pure: no import)."""
    eps = args.get("eps")
    if eps is None:
        return None
    name = type_name.lower().removeprefix(PREFIX)
    if name == "fgsm":
        return ("fgsm", "Linf", eps)
    if name in ("pgd", "pgdl2"):
        return ("pgd", "Linf" if name == "pgd" else "L2", eps, args.get("steps"), args.get("alpha"), int(bool(args.get("random_start"))))
    if name == "bim":
        return ("pgd", "Linf", eps, args.get("steps"), args.get("alpha"), 0)
    if name == "autoattack":  # its re-implementation of the authors' ensemble (bench/attacks/autoattack_attacks.py)
        return ("autoattack", args.get("norm", "Linf"), eps, args.get("version", "standard"))
    return None
