"""Model sources: where a suite's model comes from, and the registry the suite loader asks.

A ``models:`` entry names exactly one source:

- ``arch: resnet18 | efficientnet_lite0 | custom_cnn | small_cnn`` — the harness's own (:mod:`bench.sources.builtin`);
- ``arch: torchvision/<name>`` — any torchvision classification builder (:mod:`.torchvision_models`);
- ``arch: timm/<name>`` — any timm model, timm being an optional extra (:mod:`.timm_models`);
- ``factory: "pkg.module:function"`` or ``"file.py:function"`` — the user's own code (:mod:`.factory`);
- ``file: model.pt2`` — a ``torch.export`` ExportedProgram (:mod:`.exported`);
- ``memory: <token>`` — a module handed to :func:`bench.run` in this process (:mod:`.memory`; ``bench.run`` writes the key);
- ``source: robustbench`` (``name:`` the zoo entry) or ``arch: robustbench/<entry>`` — RobustBench's model zoo, with
  ``dataset``, ``threat_model`` and ``model_dir`` (:mod:`.robustbench_models`).

Each source module has the same small surface:

- ``NAME``: the value of the ``model_source`` column;
- ``KEYS``: the entry keys it reads beyond the common ones (:data:`COMMON_KEYS`);
- ``claims(entry) -> bool``: whether an entry is its own;
- ``resolve(entry, ctx) -> dict``: checks the entry (``ctx.fail(key, message)`` for errors) and returns
  the :class:`~bench.specs.ModelSpec` fields it decides: ``arch``, ``weights``, ``num_classes``, and
  the preprocessing it carries (``mean``, ``std``, ``input_size``, ``resize_size``, ``interpolation``,
  ``class_names``) where it has one; entry keys of the same names override it;
- ``build(spec) -> nn.Module``: the network on the CPU, taking normalised input, weights loaded (raises
  :class:`~bench.models.ModelUnavailable` with the file to put where when they are not on this machine);
- ``catalogue(text) -> list[Entry]``: what ``bench models`` lists (names containing ``text``, lower case, if given).

Adding a source is one module here and its test, plus its line in :data:`SOURCES` and :data:`CLAIM_ORDER`.
"""

from __future__ import annotations

import logging
import re
import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from types import ModuleType
from typing import Any, Callable, NoReturn

import torch

from bench.models import Classifier, ModelUnavailable, ProbeError, load_checkpoint, short_error
from bench.sources import builtin, exported, factory, memory, robustbench_models, timm_models, torchvision_models
from bench.specs import MAX_RESIZE, ModelSpec, crop_problem, resize_for_crop

log = logging.getLogger(__name__)

# Keys every source accepts (the suite loader handles name, checkpoint, compile and data itself).
COMMON_KEYS = ("name", "checkpoint", "compile", "data", "num_classes", "input_size", "mean", "std",
               "interpolation", "crop_pct", "class_names")
INTERPOLATIONS = ("bilinear", "bicubic", "nearest")
ALLOWED = ("resnet18, efficientnet_lite0, custom_cnn, small_cnn, torchvision/<name>, timm/<name>, factory: FILE.py:FN, "
           "file: MODEL.pt2, source: robustbench (or arch: robustbench/<entry>)")
SOURCES: dict[str, ModuleType] = {m.NAME: m for m in (memory, builtin, torchvision_models, timm_models, factory, exported,
                                                      robustbench_models)}
# The order sources are asked whether an entry is theirs: robustbench's {source: robustbench, name: ...} has no arch,
# which builtin would otherwise take for its own.
CLAIM_ORDER: tuple[ModuleType, ...] = (memory, robustbench_models, builtin, torchvision_models, timm_models, factory, exported)


@dataclass(frozen=True)
class Entry:
    """One line of ``bench models``."""

    source: str
    name: str
    weights: str  # the tags a suite may give, comma-separated
    available: str  # which pretrained weights are on this machine now ("random init only" when none)


@dataclass
class Context:
    """What a source needs from the suite loader while it resolves one entry."""

    key: str  # the entry's key path, e.g. models[2]
    base: Path  # the suite file's folder: relative paths resolve against it
    default_size: int  # the data's image_size, for sources without an input size of their own
    fail: Callable[[str, str], Exception]  # (key path, message) → the error to raise
    card: dict[str, Any] | None = None  # the card beside a checkpoint, if any

    def error(self, sub: str, message: str) -> NoReturn:
        raise self.fail(f"{self.key}.{sub}" if sub else self.key, message)


def source_of(entry: dict[str, Any]) -> ModuleType | None:
    """The one source an entry names (None when it names none)."""
    claimed = [m for m in CLAIM_ORDER if m.claims(entry)]
    return claimed[0] if claimed else None


def resolve(entry: dict[str, Any], ctx: Context, **fixed: Any) -> ModelSpec:
    """A checked :class:`ModelSpec` for one ``models:`` entry: the source decides what it knows
    (architecture, weights, classes, preprocessing), then the entry's own keys override it, then the
    card beside a checkpoint fills what is still open. ``fixed`` holds the fields the suite loader
    decided (name, checkpoint, compile, data)."""
    source = source_of(entry)
    if source is None:
        ctx.error("arch", f"unknown model {entry.get('arch')!r}; allowed: {ALLOWED}")
    claims = [k for k in ("factory", "file", "memory") if k in entry] + (["arch"] if "arch" in entry else [])
    if len(claims) > 1:
        ctx.error("", f"give one of arch, factory, file; got {', '.join(claims)}")
    fields = source.resolve(entry, ctx)
    card = ctx.card or {}
    value = lambda k: entry.get(k, card.get(k))  # noqa: E731  the entry wins over the card

    num_classes = value("num_classes")
    if num_classes is not None:
        num_classes = _integer(ctx, "num_classes", num_classes, 2, 10**6)
        if fields.get("weights") is not None and fields.get("num_classes") and num_classes != fields["num_classes"]:
            ctx.error("num_classes", f"{fields['weights']} weights have {fields['num_classes']} classes, got {num_classes}")
    num_classes = num_classes or fields.get("num_classes")
    if not num_classes:
        ctx.error("num_classes", "is required for this model (the number of logits it returns)")

    mean, std = (_triple(ctx, k, value(k)) if value(k) is not None else fields.get(k) for k in ("mean", "std"))
    if mean is None or std is None:
        ctx.error("mean" if mean is None else "std", "is required for this model: the per-channel normalisation its "
                  "weights expect, for images in [0, 1] (e.g. [0.485, 0.456, 0.406] / [0.229, 0.224, 0.225])")
    if any(v <= 0 for v in std):
        ctx.error("std", f"must be > 0 per channel, got {list(std)}")

    size = fields.get("input_size") or ctx.default_size
    resize = fields.get("resize_size")
    if value("input_size") is not None:
        new = _integer(ctx, "input_size", value("input_size"), 16, 4096)
        resize = round(resize * new / size) if resize else None  # keep the source's crop fraction
        size = new
    if value("crop_pct") is not None:
        pct = value("crop_pct")
        problem = crop_problem(pct, size)
        if problem:
            ctx.error("crop_pct", problem)
        resize = resize_for_crop(size, pct)
    if resize and resize > MAX_RESIZE:  # a source's own resize, scaled to a larger input_size
        ctx.error("input_size", f"{size} resizes images to {resize} px before the crop; the resize size must be <= {MAX_RESIZE}")
    interpolation = value("interpolation") or fields.get("interpolation") or "bilinear"
    if interpolation not in INTERPOLATIONS:
        ctx.error("interpolation", f"{interpolation!r} is not allowed; allowed: {', '.join(INTERPOLATIONS)}")

    names = value("class_names")
    if names is not None:
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names) or len(names) != num_classes:
            ctx.error("class_names", f"must be a list of {num_classes} names (one per class)")
        names = tuple(names)
    else:
        names = fields.get("class_names")
        names = tuple(names) if names and len(names) == num_classes else None
    return ModelSpec(arch=fields["arch"], weights=fields.get("weights"), num_classes=int(num_classes), input_size=size,
                     source=source.NAME, mean=tuple(mean), std=tuple(std), resize_size=resize, interpolation=interpolation,
                     kwargs=fields.get("kwargs", ()), class_names=names, **fixed)


def from_name(text: str, input_size: int | None = None, default_size: int = 224, weights: str | None = "imagenet") -> ModelSpec:
    """A spec from one string, as ``bench perf --model`` takes it: a builtin name, ``torchvision/<name>``,
    ``timm/<name>``, ``file.py:function`` or ``pkg.module:function``, or ``model.pt2``. ``weights`` is
    asked for where the source has it (random init otherwise). Raises ValueError with the reason."""
    if text.endswith(".pt2"):
        entry: dict[str, Any] = {"file": text}
    elif ":" in text:
        entry = {"factory": text}
    else:
        entry = {"arch": text}
        if weights is not None and (text.startswith(("torchvision/", "timm/")) or None in _builtin_weights(text, weights)):
            entry["weights"] = weights
    if input_size is not None:
        entry["input_size"] = input_size
    source = source_of(entry)
    if source is None:
        raise ValueError(f"unknown model {text!r}; allowed: {ALLOWED}")
    unknown = set(entry) - set(COMMON_KEYS) - set(source.KEYS)
    if unknown:
        entry = {k: v for k, v in entry.items() if k not in unknown}
    ctx = Context("--model", Path.cwd(), default_size, lambda key, message: ValueError(message))
    try:
        return resolve(entry, ctx, name=re.sub(r"[^A-Za-z0-9_.\-]", "_", text.rsplit("/", 1)[-1]))
    except ValueError as exc:
        if "weights" in entry and "weights" in str(exc):  # no such pretrained weights: random init
            return from_name(text, input_size, default_size, None)
        raise


def _builtin_weights(arch: str, weights: str) -> tuple:
    from bench.models import ARCHS

    return (None,) if arch in ARCHS and weights in ARCHS[arch].weights else ()


def _integer(ctx: Context, key: str, value: Any, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        ctx.error(key, f"must be an integer >= {lo} and <= {hi}, got {value!r}")
    return value


def _triple(ctx: Context, key: str, value: Any) -> tuple[float, float, float]:
    if (not isinstance(value, (list, tuple)) or len(value) != 3
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)):
        ctx.error(key, f"must be a list of 3 numbers (one per RGB channel), got {value!r}")
    return tuple(float(v) for v in value)


def create_model(spec: ModelSpec, seed: int = 0) -> Classifier:
    """Build the model a spec names, in eval mode with frozen weights, on the CPU, wrapped so it
    takes images in [0, 1] and normalises with its own mean/std. Randomly initialised weights are
    drawn from ``seed``, so runs are repeatable."""
    source = SOURCES[spec.source]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = source.build(spec)
    if spec.checkpoint:
        load_checkpoint(net, spec.checkpoint)
    fields = {"mean": spec.mean, "std": spec.std, "class_names": spec.class_names}
    if spec.mean is None and hasattr(source, "defaults"):  # a spec made in code, not resolved from a suite
        fields = source.defaults(spec)
    if fields["mean"] is None or fields["std"] is None:
        raise ValueError(f"model {spec.name!r}: no mean/std; give them in the suite entry")
    model = Classifier(net, fields["mean"], fields["std"], spec.input_size or 224, spec.num_classes or 1000,
                       fields["class_names"])
    model.eval()
    # Attacks need input gradients only; frozen weights skip the weight-gradient work in backward.
    model.requires_grad_(False)
    return model


def missing_files(spec: ModelSpec) -> list[str]:
    """The files a model needs that are not on this machine: its checkpoint, and the source's own
    (a factory's ``file.py``, an exported ``.pt2``). A remote worker checks them before a cell."""
    source = SOURCES[spec.source]
    needed = ([spec.checkpoint] if spec.checkpoint else []) + (source.files(spec) if hasattr(source, "files") else [])
    return [p for p in needed if not Path(p).is_file()]


def probe(spec: ModelSpec) -> None:
    """Build the network without weights and push one image of its input size through it, so a
    shape problem is a suite error before anything runs. The meta device makes this free (no
    memory, no compute); a network with an op that has no meta kernel is probed on the CPU."""
    bare = replace(spec, weights=None, checkpoint=None)
    size = spec.input_size or 224
    source = SOURCES[spec.source]
    for device in ("meta", "cpu"):
        try:
            with torch.device(device), torch.no_grad(), torch.random.fork_rng(devices=[]), warnings.catch_warnings():
                # a factory that loads a state dict copies into meta parameters here: PyTorch warns once per
                # parameter that the copy is a no-op, which is the probe's own doing, not the user's news
                warnings.filterwarnings("ignore", message=".*copying from a non-meta parameter.*")
                net = source.build(bare)
                out = net(torch.zeros(1, 3, size, size))
        except Exception as exc:  # whatever the user's or library's network raises for a bad shape
            if device == "meta":
                continue  # ops without meta kernels or with data-dependent shapes: try for real
            if isinstance(exc, ModelUnavailable):  # it cannot be built on this machine: its cells are skipped, saying why
                return
            raise ProbeError(f"a 1×3×{size}×{size} probe batch fails: {type(exc).__name__}: {short_error(exc)}") from None
        if isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor):
            out = out[0]
        if not isinstance(out, torch.Tensor) or tuple(out.shape) != (1, spec.num_classes):
            got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise ProbeError(f"a 1×3×{size}×{size} probe batch gives output {got}, expected (1, {spec.num_classes})")
        return


def catalogue(source: str | None = None, text: str | None = None) -> list[Entry]:
    """What a suite may name, per source, with the pretrained weights on this machine now."""
    out: list[Entry] = []
    for name, module in SOURCES.items():
        if source in (None, name) and hasattr(module, "catalogue"):
            out += module.catalogue(text.lower() if text else None)
    return out
