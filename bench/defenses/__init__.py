"""Input-transformation defenses: the registry.

Each defense type lives in its own module (``jpeg``, ``bit_depth``, ``median``, ``resize_pad``,
``noise``, ``chain``, ``python``) and declares its suite keys, defaults, ranges and short label in a
:class:`~bench.defenses.base.DefenseType`. This module owns the checks of those keys (the suite
loader asks it), turns a :class:`DefenseSpec` into the real defense (:func:`build`), and says what
an adaptive attack crafts against (:func:`attack_model`): ``adaptive-bpda`` (the real defense
forward, identity backward; every defense) and ``adaptive-diff`` (a differentiable version, where a
natural one exists), both averaged over ``eot_samples`` draws for randomized defenses (EOT).

Adding a defense: a module with a :class:`Defense` subclass and a ``DEFENSE`` entry, listed in
``_MODULES`` below, and its tests.
"""

from __future__ import annotations

import itertools
from typing import Any, Callable, Protocol

import torch
import torch.nn as nn

from bench.defenses import bit_depth, chain, jpeg, median, noise, python, resize_pad
from bench.defenses.base import (  # noqa: F401 (re-exported)
    EOT,
    Defended,
    Defense,
    DefenseType,
    Identity,
    Param,
    generator,
    quantize,
    quantize_straight_through,
    straight_through,
    to_uint8,
)
from bench.defenses.jpeg import JPEG, SUBSAMPLINGS, DiffJPEG  # noqa: F401 (re-exported)
from bench.names import closest
from bench.specs import DefenseSpec

NONE = DefenseType("none", (), lambda: Identity(), lambda p: "none")
_MODULES = (jpeg, bit_depth, median, resize_pad, noise, chain, python)
DEFENSES: dict[str, DefenseType] = {"none": NONE, **{m.DEFENSE.name: m.DEFENSE for m in _MODULES}}

ADAPTIVE_METHODS = ("bpda", "diff")
METHOD_ALIASES = {"diffjpeg": "diff"}  # the JPEG-only name of `diff` before other defenses had one
EOT_SAMPLES = 8  # draws averaged per gradient for randomized defenses (suite key eot_samples)


class DefenseError(ValueError):
    """A defense entry that cannot run; ``key`` is the entry key at fault (``fn``, ``max_scale``)."""

    def __init__(self, message: str, key: str = ""):
        super().__init__(message)
        self.key = key


# -- specs ---------------------------------------------------------------------------------------


def spec(type: str, **params: Any) -> DefenseSpec:
    """A defense spec with every parameter filled in and its label, for code (the suite loader
    checks its input first, through :func:`parse`). ``chain`` takes ``of=[spec, …]``."""
    info = DEFENSES[type]
    unknown = set(params) - set(info.defaults)
    if unknown:
        raise TypeError(f"{type} has no parameter {', '.join(sorted(unknown))}; it has: {', '.join(info.defaults) or 'none'}")
    values = {**info.defaults, **params}
    if "of" in values:
        values["of"] = tuple(values["of"])
    return DefenseSpec(type, tuple(values.items()), info.label(values))


def build(spec: DefenseSpec) -> Defense:
    """The real defense, as used for every evaluation: ``defense(x, generator)``."""
    kwargs = {k: (tuple(build(s) for s in v) if k == "of" else v) for k, v in spec.params}
    return DEFENSES[spec.type].build(**kwargs)


def randomized(spec: DefenseSpec) -> bool:
    return build(spec).randomized


def methods(spec: DefenseSpec) -> tuple[str, ...]:
    """The adaptive methods that apply: none for no defense, bpda for every defense, diff where
    the defense has a differentiable version."""
    if spec.type == "none":
        return ()
    return ("bpda", "diff") if build(spec).has_smooth else ("bpda",)


def attack_model(model: nn.Module, spec: DefenseSpec, eval_mode: str, eot_samples: int = EOT_SAMPLES,
                 generator: torch.Generator | None = None) -> nn.Module:
    """What an attack in ``eval_mode`` optimises against: the bare model (oblivious), the model
    behind the real defense with an identity backward (adaptive-bpda), or behind its
    differentiable version (adaptive-diff). For a randomized defense the adaptive ones average
    ``eot_samples`` draws per forward pass (:class:`EOT`), drawn from ``generator``."""
    if eval_mode == "oblivious":
        return model
    defense = build(spec)
    path = _path(defense, spec, eval_mode)
    if defense.randomized and eot_samples > 1:
        return EOT(model, path, eot_samples, generator)
    return Defended(model, path, generator)


def attack_path(spec: DefenseSpec, eval_mode: str) -> Callable[..., torch.Tensor]:
    """The defense as an attack in ``eval_mode`` sees it while crafting: ``path(x, generator)``."""
    if eval_mode == "oblivious":
        return lambda x, generator=None: x
    return _path(build(spec), spec, eval_mode)


def _path(defense: Defense, spec: DefenseSpec, eval_mode: str) -> Callable[..., torch.Tensor]:
    method = eval_mode.removeprefix("adaptive-")
    method = METHOD_ALIASES.get(method, method)
    if method == "bpda":
        return straight_through(defense)
    if method == "diff":
        if not defense.has_smooth:
            raise ValueError(f"{spec.label} has no differentiable version; its adaptive attack is bpda")
        return defense.smooth
    raise ValueError(f"unknown eval_mode {eval_mode!r}")


# -- suite entries -------------------------------------------------------------------------------


class Checker(Protocol):
    """What :func:`parse` needs from the suite loader: its typed checks, which raise its errors."""

    base: Any

    def fail(self, key: str, message: str) -> Exception: ...
    def integer(self, value: Any, key: str, lo: int | None = None, hi: int | None = None) -> int: ...
    def number(self, value: Any, key: str) -> float: ...
    def boolean(self, value: Any, key: str) -> bool: ...
    def mapping(self, value: Any, key: str, allowed: Any, required: Any = ()) -> dict: ...


def parse(item: Any, key: str, v: Checker, depth: int = 1) -> list[DefenseSpec]:
    """One ``defenses:`` entry (a name, or a mapping with ``type`` and its keys) as the defenses it
    expands into: a list of values for a parameter gives one defense per value (every combination
    of them)."""
    if isinstance(item, str):
        item = {"type": item}
    if not isinstance(item, dict) or "type" not in item:
        raise v.fail(key, f"must be a defense name or a mapping with 'type'; allowed types: {', '.join(DEFENSES)}")
    dtype = item["type"]
    if not isinstance(dtype, str) or dtype not in DEFENSES:
        raise v.fail(f"{key}.type", f"unknown defense {dtype!r}{closest(dtype, DEFENSES)}; allowed: {', '.join(DEFENSES)}")
    info = DEFENSES[dtype]
    v.mapping(item, key, ("type", *info.defaults), [p.name for p in info.params if p.default is None])
    choices: list[list[tuple[str, Any]]] = []
    for param in info.params:
        raw = item.get(param.name, param.default)
        pkey = f"{key}.{param.name}"
        if param.kind == "defenses":
            choices.append([(param.name, parts) for parts in _chain_parts(raw, pkey, v, depth)])
            continue
        many = isinstance(raw, list) and param.listable
        if many and not raw:
            raise v.fail(pkey, "must not be empty")
        values = [(x, f"{pkey}[{j}]") for j, x in enumerate(raw)] if many else [(raw, pkey)]
        choices.append([(param.name, _check(param, x, k, v)) for x, k in values])
    return [spec(dtype, **dict(combo)) for combo in itertools.product(*choices)]


def _chain_parts(raw: Any, key: str, v: Checker, depth: int) -> list[tuple[DefenseSpec, ...]]:
    if depth > chain.MAX_DEPTH:
        raise v.fail(key, f"chains nest at most {chain.MAX_DEPTH} deep")
    if not isinstance(raw, list) or not raw:
        raise v.fail(key, "must be a non-empty list of defenses, applied in order")
    options = [parse(part, f"{key}[{j}]", v, depth + 1) for j, part in enumerate(raw)]
    return list(itertools.product(*options))


def _check(param: Param, value: Any, key: str, v: Checker) -> Any:
    if param.kind == "int":
        lo = None if param.lo is None else int(param.lo)
        hi = None if param.hi is None else int(param.hi)
        if isinstance(value, bool) or not isinstance(value, int) or (lo is not None and value < lo) or (hi is not None and value > hi):
            raise v.fail(key, f"must be {param.allowed}, got {value!r}")
        return value
    if param.kind == "number":
        x = v.number(value, key)
        low = param.lo is not None and (x <= param.lo if param.lo_open else x < param.lo)
        if low or (param.hi is not None and x > param.hi):
            raise v.fail(key, f"must be {param.allowed}, got {value!r}")
        return x
    if param.kind == "bool":
        return v.boolean(value, key)
    if param.kind == "choice":
        if isinstance(value, bool) or value not in param.choices:
            hint = (" (write 420, not 4:2:0, which YAML reads as a base-60 number)"
                    if param.name == "subsampling" and isinstance(value, int) and value > 3600 else "")
            raise v.fail(key, f"must be {' or '.join(map(str, param.choices))}, got {value!r}{hint}; allowed: {param.help or param.allowed}")
        return value
    if param.kind == "target":
        from bench.sources.factory import FactoryError, load_target, normalise_target

        class _Ctx:
            base = v.base

            @staticmethod
            def error(k: str, message: str) -> None:
                raise v.fail(key, message)

        target = normalise_target(value, v.base, _Ctx, key=param.name)
        try:
            load_target(target)
        except FactoryError as exc:
            raise v.fail(key, str(exc)) from None
        return target
    raise AssertionError(param.kind)


def probe(spec: DefenseSpec, size: int, seed: int = 0) -> None:
    """Run the defense on a small batch of ``size`` px images, as the suite loader does before any
    compute. Raises :class:`DefenseError` with what is wrong. Only user code (``python``) and the
    size-dependent ``resize_pad`` can fail here; the rest are checked by their parameters."""
    parts = _flatten(spec)
    if not any(p.type in ("python", "resize_pad") for p in parts):
        return
    g = torch.Generator().manual_seed(seed)
    x = quantize(torch.rand(2, 3, size, size, generator=g))
    for part in parts:
        if part.type == "resize_pad":
            try:
                build(part)(x, generator(x.device, seed))
            except ValueError as exc:
                raise DefenseError(str(exc), "max_scale") from None
        if part.type == "python":
            _probe_python(build(part), x, seed)


def _flatten(spec: DefenseSpec) -> list[DefenseSpec]:
    if spec.type == "chain":
        return [p for part in spec.kwargs["of"] for p in _flatten(part)]
    return [spec]


def _probe_python(defense: "python.Python", x: torch.Tensor, seed: int) -> None:
    from bench.models import short_error

    def run(inp: torch.Tensor) -> torch.Tensor:
        return defense.transform(inp, generator(inp.device, seed))

    try:
        out = run(x.clone())
        again = run(x.clone())
    except Exception as exc:
        raise DefenseError(f"on a 2×{'×'.join(map(str, x.shape[1:]))} probe batch it raises "
                           f"{type(exc).__name__}: {short_error(exc)}", "fn") from None
    if not out.is_floating_point() or not torch.isfinite(out).all():
        raise DefenseError("it returns non-finite values on a probe batch", "fn")
    low, high = out.min().item(), out.max().item()
    if low < -1e-6 or high > 1 + 1e-6:
        raise DefenseError(f"its output leaves [0, 1] on a probe batch (min {low:.4g}, max {high:.4g}); "
                           "return images in [0, 1]", "fn")
    if not torch.equal(out, again):
        raise DefenseError("two calls with the same seed differ: "
                           + ("draw only from the `generator` it is given" if defense.randomized
                              else "it is random: say `randomized: true`"), "randomized")
    if defense.differentiable:
        xg = x.clone().requires_grad_(True)
        try:
            y = run(xg)
            grad = torch.autograd.grad(y.sum(), xg, allow_unused=True)[0] if y.requires_grad else None
        except Exception as exc:
            raise DefenseError(f"`differentiable: true`, but backward through it raises {type(exc).__name__}: "
                               f"{short_error(exc)}", "differentiable") from None
        if grad is None or not bool((grad != 0).any()):
            raise DefenseError("`differentiable: true`, but its output has no gradient with respect to its input; "
                               "leave it out (adaptive attacks then use BPDA)", "differentiable")
