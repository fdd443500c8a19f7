"""The plain spec types every other module speaks: data, model, attack, defense, grid cell.

They sit at the bottom of the package and import nothing from it: the registries (models,
attacks, defenses, data) check and fill them in, the suite loader asks the registries, and the
runner turns a :class:`CellSpec` into one result row. All are frozen and built from plain
values, so they hash, compare and serialise.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from dataclasses import dataclass
from typing import Any

CROP_FRACTION = 0.875  # 224 / 256, the usual ImageNet evaluation crop


# Bounds checked before any compute: a preprocessing value that validation accepts must not be
# able to exhaust memory (crop_pct 0.001 would decode one image at 224,000 px on its shorter side).
MIN_CROP_PCT = 0.25  # timm's and torchvision's evaluation crops lie in [0.75, 1]
MAX_RESIZE = 8192  # the shorter side an image is resized to before its centre crop
DEFAULT_MAX_PIXELS = 64_000_000  # per decoded image, width × height (PIL only warns at 89.5 M); data.max_pixels


def resize_for_crop(input_size: int, crop_pct: float) -> int:
    """The shorter side to resize to so that a centre crop of ``crop_pct`` is ``input_size``:
    timm's ⌊size / crop_pct⌋, guarded against float error (224 / 0.875 is 256, not 255.99…)."""
    return math.floor(input_size / crop_pct + 1e-6)


def crop_problem(crop_pct: Any, input_size: int) -> str | None:
    """Why ``crop_pct`` cannot be used at ``input_size`` (None when it can)."""
    if isinstance(crop_pct, bool) or not isinstance(crop_pct, (int, float)) or not MIN_CROP_PCT <= crop_pct <= 1:
        return f"must be a number in [{MIN_CROP_PCT}, 1] (input size / resize size), got {crop_pct!r}"
    resize = resize_for_crop(input_size, crop_pct)
    if resize > MAX_RESIZE:
        return (f"{crop_pct} at input size {input_size} resizes images to {resize} px; the resize size "
                f"(input size / crop_pct) must be <= {MAX_RESIZE}")
    return None


@dataclass(frozen=True)
class DataSpec:
    source: str
    path: str | None = None  # resolved, absolute
    limit: int | None = None
    image_size: int = 224  # the input size of models that do not bring their own
    split: str | None = None  # a source with a fixed split (digits): train or test (default test)
    name: str | None = None  # which dataset of a source that holds several (torchvision: CIFAR10, MNIST, …)
    options: tuple[tuple[str, Any], ...] = ()  # a source's own keys (hf: image_column, label_column)
    max_pixels: int | None = None  # largest image decoded, width × height; None: DEFAULT_MAX_PIXELS

    @property
    def pixel_budget(self) -> int:
        return self.max_pixels or DEFAULT_MAX_PIXELS


@dataclass(frozen=True)
class Preprocess:
    """How images are decoded for a model: resize the shorter side to ``resize_size`` with
    ``interpolation``, centre-crop ``input_size``. It decides which decoded copy of a dataset a
    model reads (models with equal preprocessing share one). Normalisation is not here: it is
    inside the model (its ``mean``/``std``), so attacks see images in [0, 1]."""

    input_size: int = 224
    resize_size: int | None = None  # None: round(input_size / 0.875)
    interpolation: str = "bilinear"  # bilinear, bicubic, nearest (antialiased, as torchvision's transforms)

    @property
    def resize(self) -> int:
        return self.resize_size or round(self.input_size / CROP_FRACTION)

    @property
    def label(self) -> str:
        return f"{self.resize}→{self.input_size} {self.interpolation}"


@dataclass(frozen=True)
class ModelSpec:
    name: str
    arch: str  # builtin name, or the source's own name (resnet50, vit_tiny_patch16_224, pkg.mod:fn, file path)
    weights: str | None = None  # None = random init; "imagenet" or a source's own tag
    checkpoint: str | None = None  # resolved, absolute
    num_classes: int | None = None
    input_size: int | None = None
    compile: bool = False
    data: DataSpec | None = None  # this model's own data; None = the suite's
    source: str = "builtin"  # builtin, torchvision, timm, factory, file
    mean: tuple[float, ...] | None = None  # None: the source's own (builtin models)
    std: tuple[float, ...] | None = None
    resize_size: int | None = None
    interpolation: str = "bilinear"
    kwargs: tuple[tuple[str, Any], ...] = ()  # a factory's keyword arguments
    class_names: tuple[str, ...] | None = None

    @property
    def preprocess(self) -> Preprocess:
        return Preprocess(self.input_size or 224, self.resize_size, self.interpolation)


@dataclass(frozen=True)
class AttackSpec:
    """One attack at one ε: a single grid value of an attack entry. ``params`` holds every
    constructor argument the attack runs with (the loader fills in the defaults), so two specs
    run the same attack exactly when they are equal."""

    name: str
    type: str
    eps: float | None
    params: tuple[tuple[str, Any], ...] = ()
    target: int | None = None
    # what the registry resolved (bench/attacks), kept so that rows need no attack library: not part of the
    # attack's identity beyond type and params (not in the digest)
    norm: str | None = None  # the norm eps bounds (None: torchattacks', worked out from type and params)
    minimum_norm: str | None = None  # the norm a minimum-norm attack minimises (None: not one, or torchattacks')
    path: str | None = None  # a python attack's resolved file.py:function (params hold it as the suite wrote it)

    @property
    def kwargs(self) -> dict[str, Any]:
        return dict(self.params)

    @property
    def targeted(self) -> bool:
        return self.target is not None

    def resolved(self) -> dict[str, Any]:
        """The arguments as plain JSON values, with ε and the target."""
        args = {k: list(v) if isinstance(v, tuple) else v for k, v in self.params}
        if self.eps is not None:
            args["eps"] = self.eps
        args["target"] = self.target
        return dict(sorted(args.items()))

    @property
    def digest(self) -> str:
        """Six hex digits of the resolved arguments: PGD with 10 steps and PGD with 20 steps
        never share a cell id."""
        text = json.dumps([self.type, self.resolved()], sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:6]


@dataclass(frozen=True)
class DefenseSpec:
    """One defense with every parameter resolved: ``params`` are (name, value) pairs in the
    defense's own order (a chain's ``of`` holds DefenseSpecs), ``label`` the short readable name
    the registry gives it (``jpeg-q75``, ``bits-4``, ``chain(bits-5,jpeg-q75)``): it names the
    defense in cell ids, tables and plots."""

    type: str
    params: tuple[tuple[str, Any], ...] = ()
    label: str = ""

    def __post_init__(self) -> None:
        if not self.label:
            object.__setattr__(self, "label", self.type)

    @property
    def kwargs(self) -> dict[str, Any]:
        return dict(self.params)


@dataclass(frozen=True)
class CellSpec:
    """One grid cell. Running it yields exactly one result row."""

    suite: str
    seed: int
    model: ModelSpec
    attack: AttackSpec
    defense: DefenseSpec
    device: str
    precision: str
    batch_size: int
    eval_mode: str = "oblivious"  # oblivious, adaptive-bpda, adaptive-diff
    eot_samples: int = 8  # draws averaged per gradient by adaptive attacks on randomized defenses
    eval_draws: int = 1  # draws of a randomized defense per image for robust_acc_all_draws

    @property
    def cell_id(self) -> str:
        return "/".join(
            [
                self.model.name,
                f"{self.attack.name}@{self.attack.digest}",
                f"eps={eps_key(self.attack.eps)}",
                self.defense.label,
                self.eval_mode,
                self.device,
                self.precision,
            ]
        )

    @property
    def crafted_through(self) -> tuple:
        """What the attack works on besides the model: (defense, method) for an adaptive attack, nothing
        for an oblivious one (crafted on the bare model, it serves every defense)."""
        return (self.defense, self.eval_mode) if self.eval_mode != "oblivious" else ()

    @property
    def crafting_key(self) -> tuple:
        """The cells that share one crafting of adversarial images."""
        return (self.model, self.attack, self.device, self.precision, *self.crafted_through)

    @property
    def attack_seed(self) -> int:
        """Seed for crafting this cell's adversarial images. It depends on the model, attack, ε,
        device and precision, on the defense and mode only for adaptive attacks (oblivious ones
        never see the defense), and not on which cells ran before."""
        parts = [self.model.name, self.attack.name, eps_key(self.attack.eps), self.device, self.precision]
        if self.eval_mode != "oblivious":  # an adaptive attack crafts against this defense
            parts += [self.defense.label, self.eval_mode]
        key = "/".join(parts)
        digest = hashlib.sha256(f"{self.seed}:{key}".encode()).digest()
        return int.from_bytes(digest[:4], "little")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class ExecutorSpec:
    """Where a run's cells execute. Not part of the suite's digest: the same grid gives the same
    table on any executor, so a run may be resumed on another."""

    type: str = "local"  # local | ray
    address: str | None = None  # ray: None starts a local instance; "auto" or "ray://HOST:10001" joins one
    workers: int | None = None  # ray: CPU worker actors (None: the cluster's CPUs // cpus_per_worker)
    cpus_per_worker: int = 1  # ray: CPUs (and torch threads) per CPU worker
    max_retries: int = 2  # ray: times a crafting group runs again after its worker is lost


def eps_key(eps: float | None) -> str:
    """ε in ids (cell ids, worst-case ids): a fraction of 255 where it is one (``10/255``), else a short decimal.
    Fixed for good: runs are paired across versions by these ids."""
    if eps is None or (isinstance(eps, float) and math.isnan(eps)):
        return "-"
    k = eps * 255
    if abs(k - round(k)) < 1e-6:
        return f"{round(k)}/255"
    return f"{eps:.6g}"


def format_eps(eps: float | None) -> str:
    """ε in the unit a suite writes it in: a short decimal stays one (``0.2``, ``0.15``, ``1``), other fractions of
    255 are written so (``8/255``), anything else as a decimal. (0.2 is 51/255 exactly; a suite that gives 0.2 means
    0.2.)"""
    if eps is None or (isinstance(eps, float) and math.isnan(eps)):
        return "-"
    short = f"{eps:.6g}"
    if "e" not in short and len(short.partition(".")[2]) <= 2:
        return short
    return eps_key(eps)


def eps_axis(values) -> tuple[float, str]:
    """How a plot's ε axis reads: ×1/255 when every ε is a fraction of 255 written so, else ε as given."""
    labels = [format_eps(float(v)) for v in values]
    if labels and all(label.endswith("/255") for label in labels):
        return 255.0, "ε (×1/255)"
    return 1.0, "ε"
