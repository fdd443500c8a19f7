"""Your own attack: ``type: python, fn: "path/to/file.py:function"`` (or ``"pkg.module:function"``).

The function is called once per batch as::

    fn(model, images, labels, eps=eps, generator=generator, **kwargs) -> adversarial images

- ``model`` takes images in [0, 1] (N, 3, H, W) and returns logits; it is the harness's wrapper, so its
  preprocessing, precision and query counting are already in it;
- ``images`` in [0, 1] on the cell's device, ``labels`` the true classes;
- ``eps`` the entry's budget (``None`` when the entry gives none), in the norm the entry's ``norm:`` names
  (``Linf``, the default, ``L2`` or ``L1``); the harness checks every returned image against it, and a
  result outside the ball or outside [0, 1] fails the cell;
- ``generator`` a ``torch.Generator`` on that device, seeded per crafting: draw every random number from
  it and the same suite gives the same images;
- ``target`` (the entry's target class, or ``None``) only if the function has a ``target`` parameter;
- every other key of the entry is a keyword argument, checked against the function's signature before
  anything runs (a parameter without a default must be given).

Importing the file runs its top level, as running a script would: name only code you trust. The file is
found relative to the suite file's folder and imported as a model factory's is (bench/sources/factory.py).
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import torch
import torch.nn as nn

from bench.attacks.base import AttackInfo

if TYPE_CHECKING:
    from bench.specs import AttackSpec

NAME = "python"
KEYS = {"fn": "'path/to/file.py:function' or 'pkg.module:function'", "norm": "Linf (default), L2 or L1: the norm eps bounds"}
NORMS = ("Linf", "L2", "L1")
_GIVEN = ("eps", "generator", "target")  # keywords the harness passes itself
_PLAIN = (str, int, float, bool, type(None))


class AttackCodeError(RuntimeError):
    """The user's attack cannot be loaded, or its signature does not fit."""


def claims(type_name: str) -> bool:
    return type_name.lower() == NAME


def load(target: str) -> Callable[..., Any]:
    from bench.sources.factory import FactoryError, load_target

    try:
        return load_target(target)
    except FactoryError as exc:
        raise AttackCodeError(str(exc)) from None


def describe(fn: Callable[..., Any], where: str) -> tuple[dict[str, Any], tuple[str, ...], bool]:
    """(keyword arguments with their defaults, the ones without a default, whether it takes a target)
    of an attack function; AttackCodeError when it cannot be called as the module docstring says."""
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError) as exc:
        raise AttackCodeError(f"{where}: cannot read its signature ({exc})") from None
    params = list(sig.parameters.values())
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    var_pos = any(p.kind == p.VAR_POSITIONAL for p in params)
    var_kw = any(p.kind == p.VAR_KEYWORD for p in params)
    if len(positional) < 3 and not var_pos:
        raise AttackCodeError(f"{where} must take (model, images, labels, eps=..., generator=..., **kwargs); it takes "
                              f"({', '.join(p.name for p in params)})")
    later = {p.name for p in params[3:]}
    missing = [k for k in ("eps", "generator") if k not in later and not var_kw]
    if missing:
        raise AttackCodeError(f"{where} must accept the keyword argument(s) {', '.join(missing)} "
                              "(the budget and a seeded torch.Generator)")
    defaults, required = {}, []
    for p in params[3:]:
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) or p.name in _GIVEN:
            continue
        if p.default is p.empty:
            required.append(p.name)
        else:
            defaults[p.name] = p.default if isinstance(p.default, _PLAIN) else None
    return defaults, tuple(required), "target" in later


def resolve(item: dict[str, Any], key: str, check) -> AttackInfo:
    """The AttackInfo of a ``type: python`` entry: its function loaded and its signature read (errors name the key)."""
    from bench.sources.factory import normalise_target

    if "fn" not in item:
        raise check.fail(f"{key}.fn", f"is required for type: python ({KEYS['fn']}, relative to the suite file)")
    ctx = _Ctx(check, key)
    target = normalise_target(item["fn"], check.base, ctx, key="fn")
    try:
        fn = load(target)
        defaults, required, targeted = describe(fn, item["fn"])
    except AttackCodeError as exc:
        raise check.fail(f"{key}.fn", str(exc)) from None
    norm = item.get("norm", "Linf")
    if norm not in NORMS:
        raise check.fail(f"{key}.norm", f"{norm!r} is not allowed; allowed: {', '.join(NORMS)}")
    label = target.rpartition(":")[2].split(".")[-1]
    params = {"fn": item["fn"], "norm": norm, **defaults, **{r: None for r in required}, "eps": None}
    return AttackInfo(NAME, NAME, params, targeted, cls=fn, required=required, keys=dict(KEYS), budget="optional",
                      fixed_norm=norm, path=target, default_name=label)


class _Ctx:
    def __init__(self, check, key: str):
        self.check, self.key = check, key

    def error(self, sub: str, message: str):
        raise self.check.fail(f"{self.key}.{sub}" if sub else self.key, message)


def info_for(spec: "AttackSpec") -> AttackInfo:
    """The AttackInfo a resolved spec names (its function loaded from the spec's path)."""
    fn = load(spec.path)
    defaults, required, targeted = describe(fn, spec.path)
    params = dict(spec.params)
    return AttackInfo(NAME, NAME, {**params, "eps": None}, targeted, cls=fn, required=required, keys=dict(KEYS),
                      budget="optional", fixed_norm=params.get("norm", "Linf"), path=spec.path,
                      default_name=spec.path.rpartition(":")[2])


class PythonAttack:
    """The user's function called as the harness calls every attack: ``attack(images, labels) -> adversarial``."""

    def __init__(self, fn: Callable[..., Any], where: str, model: nn.Module, kwargs: dict[str, Any], eps: float | None,
                 target: int | None, targeted: bool, seed: int):
        self.fn, self.where, self.model, self.kwargs, self.eps, self.seed = fn, where, model, kwargs, eps, seed
        self.target, self.targeted = target, targeted
        self._generator: torch.Generator | None = None

    def __call__(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        from bench.sources.factory import _is_file, _script_path

        if self._generator is None or self._generator.device != images.device:
            self._generator = torch.Generator(device=images.device)
        # a fresh stream per call, from the harness's seeded draws (seeded per batch by its index in the data):
        # a batch's numbers do not depend on the batches before it
        self._generator.manual_seed((self.seed + int(torch.randint(0, 2**62, ()))) % 2**63)
        extra = {"target": self.target} if self.targeted else {}
        left = self.where.rpartition(":")[0]
        with _script_path(Path(left).parent if _is_file(left) else None):
            adv = self.fn(self.model, images, labels, eps=self.eps, generator=self._generator, **extra, **self.kwargs)
        if not isinstance(adv, torch.Tensor) or tuple(adv.shape) != tuple(images.shape):
            got = tuple(adv.shape) if isinstance(adv, torch.Tensor) else type(adv).__name__
            raise AttackCodeError(f"{self.where} returned {got}, expected a tensor of shape {tuple(images.shape)}")
        if not torch.isfinite(adv).all() or adv.min() < -1e-6 or adv.max() > 1 + 1e-6:
            raise AttackCodeError(f"{self.where} returned values outside [0, 1] (or not finite): images must stay images")
        return adv.detach().to(images.dtype)


def build(info: AttackInfo, spec: "AttackSpec", model: nn.Module, seed: int, num_classes: int | None = None):
    kwargs = {k: v for k, v in spec.params if k not in KEYS}
    return PythonAttack(info.cls, info.path or "", model, kwargs, spec.eps, spec.target, info.targeted, seed)


def check(info: AttackInfo, spec: "AttackSpec") -> None:
    """The signature was checked when the entry was resolved; nothing runs before the cells do."""
    missing = [r for r in info.required if dict(spec.params).get(r) is None]
    if missing:
        raise ValueError(f"missing argument(s) {', '.join(missing)} (parameters of {info.path} without a default)")


def family(type_name: str, args: dict[str, Any]) -> tuple | None:
    return None


def norm(info: AttackInfo, params: dict[str, Any]) -> str:
    return params.get("norm", info.fixed_norm or "Linf")


def minimum_norm(info: AttackInfo, params: dict[str, Any]) -> str | None:
    return None  # a user's attack is bounded by its eps (or, without one, measured only)
