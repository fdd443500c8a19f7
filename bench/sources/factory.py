"""The ``factory`` source: the user's own code, ``factory: "pkg.module:function"`` or
``factory: "path/to/file.py:function"``, with optional ``kwargs:``.

**A factory runs the named code**, exactly as running a Python script would: importing the file (or
module) executes its top level, and the function is called with ``kwargs``. Only name code you trust.

Target
    ``path/to/file.py:function`` — a file, relative to the suite file's folder (or absolute). It is
    imported under a module name of its own (two ``model.py`` files in different folders do not
    clash), once per process while the file is unchanged, with its folder at the front of
    ``sys.path`` while it is imported and while the function runs, so it can import files beside
    it. ``pkg.module:function`` — a module imported as ``import pkg.module`` would be in the Python
    environment bench runs in (installed packages, ``PYTHONPATH``); for code beside the suite use the
    file form. ``function`` may be any callable returning a module (a class too) and may be dotted
    (``Class.build``).

kwargs
    A mapping of plain values (numbers, strings, booleans, null, and lists of them), passed as
    keyword arguments. Lists arrive as tuples (the spec must hash). Nested mappings are refused.

What the function returns
    An ``nn.Module`` that takes *normalised* images (N, 3, H, W) and returns logits (N, classes),
    or a pair ``(module, preprocessing_dict)``. Random initialisation draws from torch's global RNG,
    which bench seeds before each build, so a factory must not seed it itself.

Preprocessing: for each of ``mean``, ``std`` (3 numbers each), ``input_size`` (an int, or timm's
``(3, H, W)`` with H == W), ``num_classes``, ``class_names`` (one string per class),
``interpolation`` (bilinear, bicubic, nearest) and ``crop_pct`` (in [0.25, 1]; resize size =
floor(input_size / crop_pct), else bench's usual input_size / 0.875), the first of these that has it
wins:

1. the suite entry (``mean: [...]`` etc.);
2. the card beside the entry's ``checkpoint`` (``X.json``, as ``bench train`` writes: its
   ``classes`` are the class names);
3. the dict the factory returned beside the module;
4. ``model.preprocessing``, a dict attribute of the returned module;
5. attributes of the returned module: ``model.mean``, ``model.std``, ``model.input_size``,
   ``model.num_classes``, ``model.class_names``, ``model.interpolation``, ``model.crop_pct``;
6. ``model.pretrained_cfg`` (timm models carry one), so ``factory: "timm:create_model"`` works.

``mean``, ``std``, ``input_size`` and ``num_classes`` are required. A tensor is never read as the
mean or std: a module with a ``mean`` buffer most likely normalises inside, and reading it would
normalise twice (give ``mean: [0, 0, 0]``, ``std: [1, 1, 1]`` in the entry for such a model).

``resolve()`` imports the code and calls the function once, on the CPU and without touching the
global RNG, to read these (``bench run --dry-run`` does this check); ``build()`` calls it again.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import importlib.util
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any, Callable, Iterator, Mapping

import torch
import torch.nn as nn

from bench.models import short_error
from bench.specs import crop_problem, resize_for_crop

if TYPE_CHECKING:
    from bench.sources import Context
    from bench.specs import ModelSpec

NAME = "factory"
KEYS = ("factory", "kwargs")

PREPROCESSING = ("mean", "std", "input_size", "num_classes", "class_names", "interpolation", "crop_pct")
INTERPOLATIONS = ("bilinear", "bicubic", "nearest")


class FactoryError(RuntimeError):
    """A factory target cannot be imported, found or called; ``key`` is the entry key at fault."""

    def __init__(self, message: str, key: str = "factory"):
        super().__init__(message)
        self.key = key


def claims(entry: dict[str, Any]) -> bool:
    return "factory" in entry


# ---------------------------------------------------------------------------------------------
# The source's surface


def resolve(entry: dict[str, Any], ctx: "Context") -> dict[str, Any]:
    target = normalise_target(entry.get("factory"), ctx.base, ctx)
    kwargs = freeze_kwargs(entry.get("kwargs"), ctx)
    try:
        fn = load_target(target)
        with torch.random.fork_rng(devices=[]), torch.device("cpu"):
            model, said = call(fn, target, dict(kwargs))
    except FactoryError as exc:
        ctx.error(exc.key, str(exc))
    layers = [Layer("the suite entry", "", entry), Layer("the checkpoint's card", "checkpoint", card_fields(ctx.card))]
    layers += model_layers(model, said)
    fields = preprocessing(layers, ctx, _where)
    return {"arch": target, "kwargs": kwargs, "weights": None, **fields}


def _where(field: str) -> str:
    value = "(r, g, b)" if field in ("mean", "std") else "..."
    return (f"give {field}: in the suite entry, or say it from the factory (model.{field} = {value}, "
            f"model.preprocessing = {{'{field}': ...}}, or return (model, {{'{field}': ...}}))")


def build(spec: "ModelSpec") -> nn.Module:
    """The module the factory returns now (kwargs from the spec); the caller seeds torch's RNG."""
    model, _ = call(load_target(spec.arch), spec.arch, dict(spec.kwargs))
    return model


def files(spec: "ModelSpec") -> list[str]:
    """The factory's file, for ``file.py:function`` (a ``pkg.module`` comes with the environment)."""
    left = spec.arch.rpartition(":")[0]
    return [left] if _is_file(left) else []


def defaults(spec: "ModelSpec") -> dict[str, Any]:
    """mean/std/class names for a spec made in code (not resolved from a suite): what the model says."""
    model, said = build_with_info(spec)
    found: dict[str, Any] = {}
    for layer in model_layers(model, said):
        for k in ("mean", "std", "class_names"):
            v = layer.values.get(k)
            if k not in found and v is not None and not isinstance(v, torch.Tensor):
                found[k] = tuple(v)
    return {"mean": found.get("mean"), "std": found.get("std"), "class_names": found.get("class_names")}


def build_with_info(spec: "ModelSpec") -> tuple[nn.Module, dict[str, Any]]:
    with torch.random.fork_rng(devices=[]):
        return call(load_target(spec.arch), spec.arch, dict(spec.kwargs))


# ---------------------------------------------------------------------------------------------
# Targets: parse, import, call


def _is_file(left: str) -> bool:
    return left.endswith(".py") or "/" in left or "\\" in left


def normalise_target(value: Any, base: Path, ctx: "Context", key: str = "factory") -> str:
    """``file.py:fn`` with the file made absolute (it must exist), or ``pkg.module:fn`` as given;
    problems are reported under ``key``."""
    usage = "must be 'pkg.module:function' or 'path/to/file.py:function'"
    if not isinstance(value, str) or not value.strip():
        ctx.error(key, f"{usage}, got {value!r}")
    left, sep, fn = value.strip().rpartition(":")
    if not sep or not left or not fn or not all(part.isidentifier() for part in fn.split(".")):
        ctx.error(key, f"{usage}, got {value!r}")
    if _is_file(left):
        path = Path(left).expanduser()
        path = (path if path.is_absolute() else Path(base) / path).resolve()
        if not path.is_file():
            ctx.error(key, f"file not found: {path}")
        return f"{path}:{fn}"
    if not all(part.isidentifier() for part in left.split(".")):
        ctx.error(key, f"{usage}, got {value!r}")
    return f"{left}:{fn}"


_PLAIN = (str, int, float, bool, type(None))


def freeze_kwargs(value: Any, ctx: "Context") -> tuple[tuple[str, Any], ...]:
    """``kwargs:`` as sorted (name, value) pairs of hashable plain values (lists become tuples)."""
    if value is None:
        return ()
    if not isinstance(value, Mapping):
        ctx.error("kwargs", f"must be a mapping of argument names to plain values, got {type(value).__name__}")

    def freeze(v: Any, key: str) -> Any:
        if isinstance(v, _PLAIN):
            return v
        if isinstance(v, (list, tuple)):
            return tuple(freeze(x, key) for x in v)
        ctx.error(key, f"must be a plain value (number, string, boolean, null or a list of them), got {type(v).__name__}")

    out = []
    for k, v in value.items():
        if not isinstance(k, str) or not k.isidentifier():
            ctx.error("kwargs", f"argument names must be identifiers, got {k!r}")
        out.append((k, freeze(v, f"kwargs.{k}")))
    return tuple(sorted(out))


_FILE_MODULES: dict[Path, tuple[tuple[int, int], ModuleType]] = {}


@contextlib.contextmanager
def _script_path(folder: Path | None) -> Iterator[None]:
    """The script's folder at the front of sys.path for the block, as ``python file.py`` has it."""
    if folder is None:
        yield
        return
    entry = str(folder)
    sys.path.insert(0, entry)
    try:
        yield
    finally:
        try:
            sys.path.remove(entry)
        except ValueError:  # the user's code took it out itself
            pass


def _module_name(path: Path) -> str:
    stem = re.sub(r"\W", "_", path.stem)
    return f"_bench_factory_{hashlib.sha1(str(path).encode()).hexdigest()[:12]}_{stem}"


def load_file(path: Path) -> ModuleType:
    """The module a file defines, imported once per process while the file is unchanged."""
    stat = path.stat()
    stamp = (stat.st_mtime_ns, stat.st_size)
    cached = _FILE_MODULES.get(path)
    if cached and cached[0] == stamp:
        return cached[1]
    name = _module_name(path)
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise FactoryError(f"cannot import {path}: not a Python source file")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses, pickling and relative lookups find it by name
    try:
        with _script_path(path.parent):
            spec.loader.exec_module(module)
    except BaseException as exc:  # the user's top-level code: anything, SystemExit included
        sys.modules.pop(name, None)
        if isinstance(exc, KeyboardInterrupt):
            raise
        raise FactoryError(f"importing {path}{_line_in(exc, path)} raises {type(exc).__name__}: {short_error(exc)}") from None
    _FILE_MODULES[path] = (stamp, module)
    return module


def _line_in(exc: BaseException, path: Path) -> str:
    """``:LINE`` of the last place in ``path`` the exception passed through (a SyntaxError's own line), or ``""``."""
    import traceback

    if isinstance(exc, SyntaxError) and exc.lineno and Path(exc.filename or "") == path:
        return f":{exc.lineno}"
    lines = [line for frame, line in traceback.walk_tb(exc.__traceback__) if Path(frame.f_code.co_filename) == path]
    return f":{lines[-1]}" if lines else ""


def _callables(module: ModuleType) -> list[str]:
    public = {n: v for n, v in vars(module).items() if not n.startswith("_") and callable(v)}
    own = [n for n, v in public.items() if getattr(v, "__module__", None) == module.__name__]
    return sorted(own or public)


def load_target(target: str) -> Callable[..., Any]:
    """The callable a normalised target names (raises :class:`FactoryError`)."""
    from bench.names import closest

    left, _, fn = target.rpartition(":")
    if _is_file(left):
        path = Path(left)
        if not path.is_file():
            raise FactoryError(f"file not found: {path}")
        module, where = load_file(path), str(path)
    else:
        try:
            module = importlib.import_module(left)
        except BaseException as exc:
            if isinstance(exc, KeyboardInterrupt):
                raise
            hint = ("; a module is imported from the Python environment bench runs in: for code beside the suite "
                    "write path/to/file.py:function" if isinstance(exc, ModuleNotFoundError) else "")
            raise FactoryError(f"cannot import module {left!r}: {type(exc).__name__}: {short_error(exc)}{hint}") from None
        where = f"module {left}"
    obj: Any = module
    for i, part in enumerate(fn.split(".")):
        if not hasattr(obj, part):
            if i == 0:
                names = _callables(module)
                shown = ", ".join(names[:20]) + (" …" if len(names) > 20 else "")
                raise FactoryError(f"{where} has no function {part!r}{closest(part, names)}; "
                                   + (f"its functions and classes: {shown}" if names else "it defines no functions"))
            raise FactoryError(f"{'.'.join(fn.split('.')[:i])} in {where} has no attribute {part!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise FactoryError(f"{fn} in {where} is a {type(obj).__name__}, not a function")
    return obj


def call(fn: Callable[..., Any], target: str, kwargs: dict[str, Any]) -> tuple[nn.Module, dict[str, Any]]:
    """Call the factory; the module and the preprocessing dict it returned beside it (or {})."""
    left = target.rpartition(":")[0]
    folder = Path(left).parent if _is_file(left) else None
    try:
        with _script_path(folder):
            result = fn(**kwargs)
    except BaseException as exc:
        if isinstance(exc, KeyboardInterrupt):
            raise
        raise FactoryError(f"calling {target}({_args(kwargs)}) raises {type(exc).__name__}: {short_error(exc)}") from None
    said: Any = {}
    if isinstance(result, tuple) and len(result) == 2 and isinstance(result[1], Mapping):
        result, said = result
    if not isinstance(result, nn.Module):
        raise FactoryError(f"{target} returns {type(result).__name__}, not a torch.nn.Module "
                           "(return the network, or (network, preprocessing dict))")
    return result, dict(said)


def _args(kwargs: dict[str, Any]) -> str:
    text = ", ".join(f"{k}={v!r}" for k, v in kwargs.items())
    return text if len(text) <= 80 else text[:77] + "..."


# ---------------------------------------------------------------------------------------------
# Preprocessing, shared with the ``file`` source


@dataclass(frozen=True)
class Layer:
    """One place preprocessing may come from: ``label`` names it in messages, ``key`` is the entry
    key to blame for a bad value ("" = the field's own key, as in the suite entry)."""

    label: str
    key: str
    values: Mapping[str, Any]


def card_fields(card: Mapping[str, Any] | None) -> dict[str, Any]:
    """The preprocessing fields of a card (``bench train``'s ``classes`` are the class names)."""
    card = dict(card or {})
    if card.get("class_names") is None and card.get("classes") is not None:
        card["class_names"] = card["classes"]
    return {k: card[k] for k in PREPROCESSING if card.get(k) is not None}


def model_layers(model: nn.Module, said: Mapping[str, Any]) -> list[Layer]:
    """What a factory's model says about its preprocessing, most specific first."""
    attrs = {}
    for k in PREPROCESSING:
        v = getattr(model, k, None)
        if v is not None and not callable(v):
            attrs[k] = v
    layers = [Layer("the dict the factory returned", "factory", said)]
    pre = getattr(model, "preprocessing", None)
    if isinstance(pre, Mapping):
        layers.append(Layer("model.preprocessing", "factory", pre))
    layers.append(Layer("the model's attributes", "factory", {f"{k}": v for k, v in attrs.items()}))
    cfg = getattr(model, "pretrained_cfg", None)
    if isinstance(cfg, Mapping):
        layers.append(Layer("model.pretrained_cfg", "factory", cfg))
    return layers


def _bad(ctx: "Context", layer: Layer, field: str, message: str):
    if layer.key:
        ctx.error(layer.key, f"{field} from {layer.label}: {message}")
    ctx.error(field, message)


def _triple(ctx: "Context", layer: Layer, field: str, v: Any) -> tuple[float, ...]:
    if isinstance(v, torch.Tensor):
        _bad(ctx, layer, field, "is a tensor (a buffer the model normalises with?); bench feeds the network "
                                f"normalised images, so give {field} as 3 plain numbers — for a model that "
                                "normalises inside, mean: [0, 0, 0] and std: [1, 1, 1] in the suite entry")
    if (not isinstance(v, (list, tuple)) or len(v) != 3
            or not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in v)):
        got = f"{len(v)} values" if isinstance(v, (list, tuple)) else repr(v)
        _bad(ctx, layer, field, f"must be 3 numbers (one per RGB channel), got {got}")
    if field == "std" and any(x <= 0 for x in v):
        _bad(ctx, layer, field, f"must be > 0 per channel, got {list(v)}")
    return tuple(float(x) for x in v)


def _size(ctx: "Context", layer: Layer, v: Any) -> int:
    if isinstance(v, (list, tuple)) and layer.key:  # timm's (3, H, W), or (H, W)
        dims = list(v[1:]) if len(v) == 3 else list(v)
        if len(v) == 3 and v[0] != 3 or len(dims) != 2 or dims[0] != dims[1]:
            _bad(ctx, layer, "input_size", f"must be one size or a square (3, H, W), got {tuple(v)}")
        v = dims[0]
    if isinstance(v, bool) or not isinstance(v, int) or not 16 <= v <= 4096:
        _bad(ctx, layer, "input_size", f"must be an integer >= 16 and <= 4096, got {v!r}")
    return int(v)


def preprocessing(layers: list[Layer], ctx: "Context", where: Callable[[str], str],
                  check: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """The ModelSpec preprocessing fields from ``layers`` (first that has a field wins), checked.
    ``where(field)`` says where a missing required field may be given; ``check`` sees the fields once
    mean, std, input_size and num_classes are settled, before the rest is checked against them."""
    chosen: dict[str, tuple[Layer, Any]] = {}
    for field in PREPROCESSING:
        for layer in layers:
            v = layer.values.get(field)
            if v is not None:
                chosen[field] = (layer, v)
                break
    for field in ("mean", "std", "input_size", "num_classes"):
        if field not in chosen:
            ctx.error(field, f"is required and not given: {where(field)}")
    out: dict[str, Any] = {}
    layer, v = chosen["mean"]
    out["mean"] = _triple(ctx, layer, "mean", v)
    layer, v = chosen["std"]
    out["std"] = _triple(ctx, layer, "std", v)
    layer, v = chosen["input_size"]
    out["input_size"] = _size(ctx, layer, v)
    layer, v = chosen["num_classes"]
    if isinstance(v, bool) or not isinstance(v, int) or not 2 <= v <= 10**6:
        _bad(ctx, layer, "num_classes", f"must be an integer >= 2, got {v!r}")
    out["num_classes"] = int(v)
    if check is not None:
        check(out)
    names = None
    if "class_names" in chosen:
        layer, v = chosen["class_names"]
        if (not isinstance(v, (list, tuple)) or not all(isinstance(n, str) for n in v)
                or len(v) != out["num_classes"]):
            got = f"{len(v)} entries" if isinstance(v, (list, tuple)) else repr(v)
            _bad(ctx, layer, "class_names", f"must be a list of {out['num_classes']} names (one per class), got {got}")
        names = tuple(v)
    out["class_names"] = names
    if "interpolation" in chosen:
        layer, v = chosen["interpolation"]
        if v not in INTERPOLATIONS:
            _bad(ctx, layer, "interpolation", f"{v!r} is not allowed; allowed: {', '.join(INTERPOLATIONS)}")
        out["interpolation"] = v
    if "crop_pct" in chosen:
        layer, v = chosen["crop_pct"]
        problem = crop_problem(v, out["input_size"])
        if problem:  # a card beside a checkpoint or a program is checked as the suite is
            _bad(ctx, layer, "crop_pct", problem)
        out["resize_size"] = resize_for_crop(out["input_size"], v)
    return out
