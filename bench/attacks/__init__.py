"""Attack sources: where a suite's attack comes from, and the registry the suite loader asks.

An ``attacks:`` entry's ``type`` names exactly one source:

- ``pgd``, ``apgd``, ``square``, … or ``torchattacks/PGD`` — every torchattacks attack by its class name, and the
  tutorial's ``sgd`` (:mod:`.torchattacks_attacks`); a bare type is torchattacks';
- ``foolbox/<Attack>`` — foolbox 3, an optional extra (:mod:`.foolbox_attacks`);
- ``art/<Attack>`` — the Adversarial Robustness Toolbox, an optional extra (:mod:`.art_attacks`);
- ``autoattack/standard`` (``plus``, ``rand``, ``custom``) — AutoAttack from its authors' code, an optional extra
  (:mod:`.autoattack_attacks`): the AutoAttack to cite (torchattacks' ``autoattack`` is weaker);
- ``python`` with ``fn: "file.py:function"`` — the user's own attack (:mod:`.python_attacks`).

Every attack is made into the same thing: a callable ``attack(images, labels) -> adversarial images`` on
the harness's model wrapper (images in [0, 1]), so every source goes through the same path: precision,
seeding, quantisation, the per-image budget check, query counting, failure isolation and timing.

Each source module has the same small surface: ``NAME``; ``claims(type) -> bool``; ``lookup(type) ->
AttackInfo`` (KeyError when unknown, :class:`AttackUnavailable` when its library is missing) or, for the
python source, ``resolve(entry, key, check)``; ``names()``; ``norm(info, params)`` and
``minimum_norm(info, params)``; ``build(info, spec, model, seed, num_classes)``; optionally ``check(info,
spec)``; and ``family(type, args)``, what the attack computes in library-free terms, so two libraries'
PGD with the same budget, steps and step size can be compared image by image.
"""

from __future__ import annotations

import math
from dataclasses import replace
from types import ModuleType
from typing import TYPE_CHECKING, Any

import torch
import torch.nn as nn

from bench.attacks import art_attacks, autoattack_attacks, foolbox_attacks, python_attacks, torchattacks_attacks
from bench.attacks.base import AttackInfo, AttackUnavailable, Probe
from bench.names import closest
from bench.specs import AttackSpec

if TYPE_CHECKING:
    from bench.specs import ModelSpec

__all__ = ["AttackInfo", "AttackUnavailable", "SOURCES", "build", "check", "lookup", "names", "norm", "parse"]

SOURCES: dict[str, ModuleType] = {m.NAME: m for m in (torchattacks_attacks, foolbox_attacks, art_attacks, autoattack_attacks,
                                                        python_attacks)}
OTHER_SOURCES = "foolbox/<Attack>, art/<Attack>, autoattack/standard|plus|rand|custom, python (with fn: FILE.py:FUNCTION)"
ALLOWED = f"a torchattacks class (pgd, apgd, square, …), sgd, {OTHER_SOURCES}"
RESTARTS = "restarts"  # the harness's own attack key (not a constructor argument): see Restarts
COMMON_KEYS = ("name", "type", "target", RESTARTS, "eps")
UNKNOWN = "unknown"  # the norm of an attack whose library is missing where the suite was loaded

# Score-based black-box attacks by type (torchattacks' canonical lower-case names; the other sources' are
# matched through black_box()): gradient masking cannot fool them.
BLACK_BOX = torchattacks_attacks.BLACK_BOX


def source_of(type_name: Any) -> ModuleType | None:
    """The source a type names (None for an unknown ``prefix/``)."""
    if not isinstance(type_name, str):
        return None
    for module in (python_attacks, foolbox_attacks, art_attacks, autoattack_attacks, torchattacks_attacks):
        if module.claims(type_name):
            return module
    return None


def source_name(type_name: str) -> str:
    module = source_of(type_name)
    return module.NAME if module else "unknown"


def names() -> list[str]:
    """torchattacks' names, and every installed library's (``foolbox/…``, ``art/…``)."""
    return [*torchattacks_attacks.names(), *foolbox_attacks.names(), *art_attacks.names(), *autoattack_attacks.names()]


def lookup(type_name: Any) -> AttackInfo:
    """A library attack by type (``fgsm``, ``PGD``, ``foolbox/LinfPGD``, ``art/SquareAttack``), case-insensitive;
    KeyError if unknown, AttackUnavailable if its library is not installed."""
    module = source_of(type_name)
    if module is None or module is python_attacks:
        raise KeyError(type_name)
    return module.lookup(type_name)


def info(spec: AttackSpec) -> AttackInfo:
    """The AttackInfo of a resolved spec."""
    if spec.type == python_attacks.NAME:
        return python_attacks.info_for(spec)
    return lookup(spec.type)


# ---------------------------------------------------------------------------------------------
# What a spec is


def norm(spec: AttackSpec) -> str:
    """The norm ``eps`` bounds: ``Linf``, ``L2``, ``L1`` or ``L0``; ``none`` for an attack run without a
    budget (CW, DeepFool, a minimum-norm attack without eps), whose perturbation is measured, not bounded."""
    if spec.eps is None:
        return "none"
    if spec.norm is not None:
        return spec.norm
    return budget_norm(info(spec), spec.kwargs)


def budget_norm(info_: AttackInfo, params: dict[str, Any]) -> str:
    """The norm an attack's eps would be in, given its arguments."""
    return SOURCES[info_.source].norm(info_, params)


def minimum_norm(spec: AttackSpec) -> str | None:
    """The norm a minimum-norm attack (FMN, DDN, CW, DeepFool, FAB, …) minimises; None for other attacks."""
    if spec.minimum_norm is not None or spec.type == python_attacks.NAME or source_name(spec.type) != "torchattacks":
        return spec.minimum_norm
    info_ = info(spec)
    return torchattacks_attacks.minimum_norm(info_, spec.kwargs)


def black_box(attack_type: str) -> bool:
    """Whether an attack type queries outputs only (score- or decision-based)."""
    module = source_of(attack_type)
    if module is None or module is python_attacks:
        return False
    key = attack_type.lower().split("/", 1)[-1]
    return key in module.BLACK_BOX


def family(attack_type: str, args: dict[str, Any]) -> tuple | None:
    """What an attack computes in library-free terms (``("pgd", "Linf", ε, steps, step size, random starts per
    run, target, restarts)``), from its row's type and arguments alone; None for attacks no other library implements alike."""
    module = source_of(attack_type)
    if module is None:
        return None
    found = module.family(attack_type, args)
    if found is None:
        return None
    rounded = tuple(round(v, 9) if isinstance(v, float) else v for v in found)
    return (*rounded, args.get("target"), int(args.get(RESTARTS) or 1))


def unbounded_eps(norm_name: str, shape: tuple[int, ...]) -> float:
    """A budget that bounds nothing for images of ``shape`` (C, H, W) in [0, 1]: 1 for L∞, the
    largest possible distance between two images for L2 and L1, every value for L0."""
    size = math.prod(shape)
    return {"Linf": 1.0, "L2": math.sqrt(size), "L1": float(size), "L0": float(size)}[norm_name]


def unbounded(spec: AttackSpec, shape: tuple[int, ...]) -> AttackSpec:
    """The same attack with an unbounded budget (Pintor et al.'s unconstrained attack): ε as
    :func:`unbounded_eps`, its pixel-unit step sizes scaled by the same factor, so it takes the
    same number of steps of the same size relative to its budget, and no random start (noise
    over an unbounded ball would break the images without the attack's steps)."""
    big = unbounded_eps(norm(spec), shape)
    factor = big / spec.eps
    steps = info(spec).step_params
    params = []
    for k, v in spec.params:
        if k in steps and isinstance(v, (int, float)) and not isinstance(v, bool):
            v = v * factor
        if k == "random_start":  # uniform noise over an unbounded ball destroys the image by itself:
            v = False  # the check is whether the attack's steps find adversarial examples
        if k in ("num_random_init", "nb_random_init") and isinstance(v, int):  # ART's spelling of the same
            v = 0
        if k == RESTARTS:  # without a random start every restart would repeat the first run
            continue
        params.append((k, v))
    return replace(spec, eps=big, params=tuple(params))


def restartable(info_: AttackInfo, params: dict[str, Any]) -> bool:
    """Whether runs of an attack differ: a random start that is on, or a ``seed`` (which :class:`Restarts`
    changes per run), or any attack from a library that draws from the seeded global generators (foolbox,
    ART) or a python attack's generator. Restarting torchattacks' FGSM or CW would repeat the same run."""
    if info_.source != torchattacks_attacks.NAME:
        return bool(params.get("random_start") or params.get("num_random_init") or params.get("nb_random_init")) \
            or info_.source == python_attacks.NAME or info_.black_box
    return bool(params.get("random_start")) or "seed" in info_.params


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


def build(spec: AttackSpec, model: nn.Module, seed: int = 0, num_classes: int | None = None):
    """The attack a spec names, attacking ``model``, as a callable ``attack(images, labels)``; ``seed`` is the
    crafting's seed (an attack that takes one gets it when the suite left it open; a python attack's
    generator is seeded with it); ``num_classes`` the model's logits (ART needs it). With ``restarts`` > 1
    the attack is wrapped in :class:`Restarts`. AttackUnavailable when its library is not installed."""
    info_ = info(spec)
    restarts = spec.kwargs.get(RESTARTS, 1)
    bare = replace(spec, params=tuple((k, v) for k, v in spec.params if k != RESTARTS))
    attack = SOURCES[info_.source].build(info_, bare, model, seed, num_classes)
    return Restarts(attack, model, restarts, spec.target) if restarts > 1 else attack


def check(spec: AttackSpec) -> None:
    """Raise TypeError/ValueError if the attack rejects these arguments (no real model needed)."""
    info_ = info(spec)
    bare = replace(spec, params=tuple((k, v) for k, v in spec.params if k != RESTARTS))
    module = SOURCES[info_.source]
    if hasattr(module, "check"):
        module.check(info_, bare)
    else:
        module.build(info_, bare, Probe(), 0, 2)


# ---------------------------------------------------------------------------------------------
# A suite's attack entry


def parse(item: Any, key: str, check_, models: tuple["ModelSpec", ...]) -> tuple[AttackSpec, ...]:
    """One ``attacks:`` entry, checked before any compute, as its ε-variants. ``check_`` is the suite loader's
    validator (its ``fail``, ``mapping``, ``integer``, ``number``, ``name``, ``param`` and ``base``). An entry
    whose library is not installed still parses (its arguments unchecked): its cells are skipped."""
    fail = check_.fail
    if not isinstance(item, dict):
        raise fail(key, f"must be a mapping with a 'type', got {_kind(item)}")
    if "type" not in item:
        raise fail(f"{key}.type", f"is required; allowed: {ALLOWED}")
    type_name = item["type"]
    module = source_of(type_name)
    if module is None:
        raise fail(f"{key}.type", f"unknown attack {type_name!r}; allowed: {ALLOWED}")
    unavailable = None
    try:
        info_ = python_attacks.resolve(item, key, check_) if module is python_attacks else module.lookup(type_name)
    except KeyError:
        pool = module.names()
        raise fail(f"{key}.type", f"unknown attack {type_name!r}{closest(type_name, names())}; allowed: "
                   + (", ".join(pool) + f", {OTHER_SOURCES}" if module is torchattacks_attacks
                      else f"a class of {module.NAME}: {', '.join(pool)}")) from None
    except AttackUnavailable as exc:
        if module is torchattacks_attacks:  # the harness's own attacks: nothing runs without it
            raise fail(f"{key}.type", str(exc)) from None
        unavailable = str(exc)
        keys = [k for k in item if k not in COMMON_KEYS]
        info_ = AttackInfo(type_name, module.NAME, {k: None for k in keys} | {"eps": None}, True, checked=False,
                           budget="optional", default_name=type_name.replace("/", "-"))
    if "eps" in item and info_.budget == "none":
        raise fail(f"{key}.eps", f"{info_.name} takes no budget (it searches the smallest perturbation, or measures "
                                 "what it finds); leave eps out")
    allowed = ["name", "type", "target", RESTARTS, *info_.keys, *info_.params]
    check_.mapping(item, key, dict.fromkeys(allowed))
    name = check_.name(item.get("name", info_.label), f"{key}.name")
    target = item.get("target")
    if target is not None:
        target = check_.integer(target, f"{key}.target", lo=0)
        if not info_.targeted:
            raise fail(f"{key}.target", f"attack {info_.name} has no targeted mode")
        for m in models:
            if target >= m.num_classes:
                raise fail(f"{key}.target", f"class {target} does not exist for model {m.name!r} ({m.num_classes} classes)")
    # every argument the attack runs with, defaults filled in: equal specs are the same attack
    params = {}
    for p, default in info_.params.items():
        if p == "eps" or p in info_.keys:
            continue
        if p in item:
            if info_.source == art_attacks.NAME and p == "norm":  # inf, 2, 1 (or Linf, L2, L1), whatever the default's type
                try:
                    params[p] = art_attacks.check_param(p, item[p])
                except ValueError as exc:
                    raise fail(f"{key}.{p}", str(exc)) from None
            else:
                params[p] = check_.param(item[p], f"{key}.{p}", default)
        elif p in info_.required:
            raise fail(f"{key}.{p}", f"is required: {info_.path} has a parameter {p!r} without a default")
        else:
            params[p] = default
    for k in info_.keys:  # a source's own keys (a python attack's fn and norm), as the entry wrote them
        if k in info_.params:
            params[k] = item.get(k, info_.params[k])
    restarts = check_.integer(item.get(RESTARTS, 1), f"{key}.restarts", lo=1, hi=1000)
    if restarts > 1 and info_.checked and not restartable(info_, params):
        raise fail(f"{key}.restarts", f"{info_.name} has no random start here (random_start: false, or none "
                   "to turn on): every restart would repeat the first run")
    if restarts > 1:  # left out at 1, so a suite without the key keeps its cell ids
        params[RESTARTS] = restarts
    norm_ = budget_norm(info_, params) if info_.checked else UNKNOWN
    if "eps" in item:
        raw = item["eps"] if isinstance(item["eps"], list) else [item["eps"]]
        if not raw:
            raise fail(f"{key}.eps", "must not be empty")
        eps_key = (lambda j: f"{key}.eps[{j}]") if isinstance(item["eps"], list) else (lambda j: f"{key}.eps")
        epss = []
        for j, e in enumerate(raw):
            x = check_.number(e, eps_key(j))
            if norm_ == "Linf" and not 0 < x <= 1:
                raise fail(eps_key(j), f"must be in (0, 1] for an L-inf attack (pixel space, images in [0,1]), got {e!r}")
            if x <= 0:
                raise fail(eps_key(j), f"must be > 0 ({norm_} budget in pixel space, images in [0,1]), got {e!r}")
            epss.append(x)
    elif info_.budget == "required":
        raise fail(f"{key}.eps", f"is required ({norm_} budget in pixel space for images in [0,1], e.g. "
                                 f"{'8/255' if norm_ == 'Linf' else '0.5'})")
    else:
        epss = [None]
    own = {} if info_.source == torchattacks_attacks.NAME else {
        "norm": norm_, "minimum_norm": SOURCES[info_.source].minimum_norm(info_, params) if info_.checked else None}
    variants = []
    for eps in dict.fromkeys(epss):  # drop repeated values, keep order
        spec = AttackSpec(name=name, type=info_.name, eps=eps, params=tuple(sorted(params.items())), target=target,
                          path=info_.path, **own)
        if unavailable is None:
            try:
                check(spec)
            except Exception as exc:  # whatever the attack's constructor raises for bad arguments
                raise fail(key, f"invalid arguments for {info_.name}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None
        variants.append(spec)
    return tuple(variants)


def unavailable(spec: AttackSpec) -> str | None:
    """Why a spec's attack cannot run on this machine (its library is missing), or None. A spec resolved where its
    library was missing (its norm unknown) does not run anywhere, even where the library is: its arguments were
    never checked, and the suite's cell ids would change once they are."""
    if spec.norm == UNKNOWN:
        return (f"{spec.type}: its library was not installed where the suite was loaded ({_install(spec.type)}); "
                "install it there and run the suite again")
    try:
        info(spec)
    except AttackUnavailable as exc:
        return str(exc)
    except Exception:
        return None
    return None


def _install(type_name: str) -> str:
    module = source_of(type_name)
    return getattr(module, "INSTALL", "") if module else ""


def _kind(value: Any) -> str:
    return {dict: "a mapping", list: "a list", str: "a string", bool: "a boolean", type(None): "null"}.get(
        type(value), type(value).__name__)

