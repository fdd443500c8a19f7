"""Adversarial Robustness Toolbox: ``type: art/<Attack>``, any evasion attack of ``art.attacks.evasion`` by
its class name (``ProjectedGradientDescent``, ``AutoAttack``, ``SquareAttack``, ``HopSkipJump``, …).

The model is handed to ART as a ``PyTorchClassifier`` (cross-entropy loss, clip values (0, 1), the cell's
device) around the harness's wrapper, so every query is counted as for any attack; ART works in NumPy,
so images cross to the host and back once per batch. ``targeted`` is not a suite argument: the entry's
``target`` sets it. ``verbose`` is always off (progress bars would flood the terminal) and
``summary_writer`` is not offered (it writes TensorBoard files).
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import logging
import math
from typing import TYPE_CHECKING, Any

import torch
import torch.nn as nn

from bench.attacks.base import AttackInfo, AttackUnavailable, Float32, lookup_in, names_of

if TYPE_CHECKING:
    from bench.specs import AttackSpec

NAME = "art"
PREFIX = "art/"
INSTALL = "pip install -e '.[art]' (adversarial-robustness-toolbox>=1.17), or `make install`"
BLACK_BOX = ("squareattack", "hopskipjump", "boundaryattack", "simba", "zooattack", "geoda", "signoptattack",
             "pixelattack", "thresholdattack")
# Attacks that search the smallest perturbation, and the norm they minimise (HopSkipJump: its `norm`).
_MINIMUM_NORM = {"hopskipjump": None, "carlinil2method": "L2", "deepfool": "L2", "elasticnet": "L1",
                 "boundaryattack": "L2", "newtonfool": "L2"}
_HIDDEN = {"estimator", "classifier", "verbose", "summary_writer", "targeted", "estimator_orig", "attacks"}
_PLAIN = (str, int, float, bool, type(None))
NORMS = {"inf": "Linf", "linf": "Linf", "2": "L2", "l2": "L2", "1": "L1", "l1": "L1"}


def claims(type_name: str) -> bool:
    return type_name.lower().startswith(PREFIX)


def _art():
    try:
        import art.attacks.evasion as evasion
        from art.attacks.attack import EvasionAttack
    except ImportError as exc:
        raise AttackUnavailable(f"adversarial-robustness-toolbox is not installed ({exc}): {INSTALL}") from None
    return evasion, EvasionAttack


def norm_value(value: Any) -> str | None:
    """An ART ``norm`` argument as the harness names norms (Linf, L2, L1); None if it is none of them."""
    if isinstance(value, float) and math.isinf(value):
        return "Linf"
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)) and float(value).is_integer():
        value = int(value)
    return NORMS.get(str(value).lower())


@functools.cache
def registry() -> dict[str, AttackInfo]:
    evasion, EvasionAttack = _art()
    out = {}
    for cls_name in dir(evasion):
        cls = getattr(evasion, cls_name)
        if not (isinstance(cls, type) and issubclass(cls, EvasionAttack)) or inspect.isabstract(cls):
            continue
        sig = list(inspect.signature(cls.__init__).parameters.items())[1:]
        if not sig or sig[0][0] not in ("estimator", "classifier"):
            continue
        params, usable = {}, True
        for name, p in sig[1:]:
            if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
                continue
            if p.default is p.empty:
                usable = False
            elif name == "norm":
                params[name] = {"Linf": "inf", "L2": 2, "L1": 1}.get(norm_value(p.default), p.default)
            elif name not in _HIDDEN and isinstance(p.default, _PLAIN):
                params[name] = p.default
        if not usable:
            continue
        names = [n for n, _ in sig[1:]]
        key = cls_name.lower()
        minimum = _MINIMUM_NORM.get(key, "")
        out[key] = AttackInfo(
            f"{PREFIX}{cls_name}", NAME, params, "targeted" in names, cls=cls,
            minimum_norm="params" if minimum is None else (minimum or None), black_box=key in BLACK_BOX,
            step_params=frozenset({"eps_step"}) & set(params), budget="required" if "eps" in params else "none",
            default_name=f"art-{cls_name}")
    return out


def names() -> list[str]:
    return names_of(registry)


def lookup(type_name: str) -> AttackInfo:
    return lookup_in(registry, PREFIX, type_name)


def check_param(name: str, value: Any) -> Any:
    """ART's ``norm`` as written in a suite (inf, Linf, 2, L2, 1, L1) → its stored form; ValueError otherwise."""
    if name != "norm":
        return value
    found = norm_value(value)
    if found is None:
        raise ValueError(f"must be inf, 2 or 1 (or Linf, L2, L1), got {value!r}")
    return {"Linf": "inf", "L2": 2, "L1": 1}[found]


def norm(info: AttackInfo, params: dict[str, Any]) -> str:
    if "eps" not in info.params:
        return "none"
    return norm_value(params.get("norm", info.params.get("norm", "inf"))) or "Linf"


def minimum_norm(info: AttackInfo, params: dict[str, Any]) -> str | None:
    if info.minimum_norm == "params":
        return norm_value(params.get("norm", info.params.get("norm")))
    return info.minimum_norm


@contextlib.contextmanager
def _quiet():
    """ART logs a warning per image it cannot break (HopSkipJump, Boundary): that is the row's result, not news
    for the terminal. Its loggers say only errors while it runs, and are put back after."""
    logger = logging.getLogger("art")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


class ArtAttack:
    """An ART evasion attack called as the harness calls every attack: ``attack(images, labels) -> adversarial``.
    The classifier and the attack are made at the first call, when the images' shape and device are known."""

    def __init__(self, cls: type, kwargs: dict[str, Any], model: nn.Module, num_classes: int, target: int | None):
        self.cls, self.kwargs, self.model, self.num_classes, self.target = cls, kwargs, model, num_classes, target
        self._made: dict[tuple, Any] = {}

    def attack_for(self, shape: tuple[int, ...], device: torch.device):
        key = (tuple(shape), str(device))
        if key not in self._made:
            from art.estimators.classification import PyTorchClassifier

            cuda = device.type == "cuda"
            with torch.cuda.device(device) if cuda else contextlib.nullcontext():  # ART picks the current GPU
                classifier = PyTorchClassifier(model=Float32(self.model).eval(), loss=nn.CrossEntropyLoss(), input_shape=tuple(shape),
                                               nb_classes=self.num_classes, clip_values=(0.0, 1.0),
                                               device_type="gpu" if cuda else "cpu")
            self._made[key] = self.cls(classifier, **self.kwargs)
        return self._made[key]

    def __call__(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        attack = self.attack_for(tuple(images.shape[1:]), images.device)
        goal = torch.full_like(labels, self.target) if self.target is not None else labels
        x = images.detach().float().cpu().numpy()
        with torch.cuda.device(images.device) if images.is_cuda else contextlib.nullcontext(), _quiet():
            adv = attack.generate(x=x, y=goal.cpu().numpy())
        return torch.from_numpy(adv).to(images.device, images.dtype)


def build(info: AttackInfo, spec: "AttackSpec", model: nn.Module, seed: int, num_classes: int | None = None):
    kwargs = spec.kwargs
    if "norm" in kwargs:
        kwargs["norm"] = {"Linf": math.inf, "L2": 2, "L1": 1}[norm_value(kwargs["norm"])]
    if spec.eps is not None:
        kwargs["eps"] = spec.eps
    names = set(inspect.signature(info.cls.__init__).parameters)
    if "targeted" in names:
        kwargs["targeted"] = spec.target is not None
    if "verbose" in names:
        kwargs["verbose"] = False
    return ArtAttack(info.cls, kwargs, model, num_classes or 10, spec.target)


def check(info: AttackInfo, spec: "AttackSpec") -> None:
    """ART checks its arguments when the attack is made: make it, on a stand-in model of 10 classes."""
    from bench.attacks.base import Probe

    build(info, spec, Probe(10), 0, 10).attack_for((3, 16, 16), torch.device("cpu"))


def family(type_name: str, args: dict[str, Any]) -> tuple | None:
    """PGD and FGSM in library-free terms (pure: no import), for comparing implementations."""
    eps, name = args.get("eps"), type_name.lower().removeprefix(PREFIX)
    if eps is None:
        return None
    norm_ = norm_value(args.get("norm", "inf"))
    if name in ("projectedgradientdescent", "projectedgradientdescentnumpy", "projectedgradientdescentpytorch"):
        if args.get("random_eps") or args.get("decay"):
            return None
        # num_random_init k: k random starts, the best kept (0: start at the image)
        return ("pgd", norm_, eps, args.get("max_iter"), args.get("eps_step"), int(args.get("num_random_init") or 0))
    if name == "basiciterativemethod":
        return ("pgd", "Linf", eps, args.get("max_iter"), args.get("eps_step"), 0)
    if name == "fastgradientmethod" and not args.get("num_random_init") and not args.get("minimal"):
        return ("fgsm", norm_, eps)
    return None
