"""The ``robustbench`` source: RobustBench's model zoo (https://github.com/RobustBench/robustbench).

A suite names a zoo entry in either of two forms::

    models:
      - {source: robustbench, name: Carmon2019Unlabeled, dataset: cifar10, threat_model: Linf, model_dir: models}
      - {name: mine, arch: robustbench/Carmon2019Unlabeled, dataset: cifar10, threat_model: Linf}

In the first, ``name`` is both the zoo entry and the model's name in the suite; in the second ``arch``
names the entry. ``dataset``: cifar10 | cifar100 | imagenet (default cifar10); ``threat_model``: Linf |
L2 | corruptions (default Linf; the zoo has no cifar100 L2 models); ``model_dir``: RobustBench's own
``model_dir`` (default ``./models``, relative to the suite file).

The networks are RobustBench's own definitions: ``robustbench.model_zoo.models.model_dicts[dataset]
[threat_model][entry]["model"]``, called as ``robustbench.utils.load_model`` calls it. Every entry takes
images in [0, 1] and normalises inside (mean 0, std 1 here). Preprocessing is the zoo's: CIFAR images as
they are (32 px, no resize); ImageNet by the entry's RobustBench preprocessing (``Res256Crop224``: shorter
side to 256, centre crop 224, bilinear; ``BicubicRes256Crop224`` the same, bicubic; ``Res224`` and
``Crop288``: see :data:`PREPROCESSINGS`), or the timm config of an entry RobustBench takes from timm.

Weights are never downloaded. They must be where ``robustbench.utils.load_model`` looks:
``<model_dir>/<dataset>/<threat_model>/<entry>.pt`` (an ensemble: ``<entry>.pt_m0.pt``, ``<entry>.pt_m1.pt``, …);
for the few entries RobustBench takes from timm (``Debenedetti2022Light_XCiT-*``, ``AlexNet``,
``Tian2022Deeper_DeiT-*``), the file timm downloads into the torch hub cache
(``$TORCH_HOME/hub/checkpoints/<file>``); for ImageNet ``Standard_R50``, torchvision's ResNet-50 weights
in the same cache. A missing file is :class:`~bench.models.ModelUnavailable` naming the exact path: the
model's cells are skipped with it (so are they when the zoo's own definition cannot be built on this
machine, e.g. one that asks for CUDA, the suite still loading). Files are opened with ``torch.load(weights_only=True)``
(:func:`bench.untrusted.load_tensors`), never with RobustBench's ``load_model`` (it downloads what is
missing, and its ``torch.load`` leaves ``weights_only`` to torch's default, which ran pickles before torch 2.6); a file that is not plain tensors fails its cells with one line. The state
dict fixes are RobustBench 1.1.1's ``load_model``/``_safe_load_state_dict``: the ``state_dict`` wrapper,
the ``module.``/``model.`` prefixes, ``last`` for Kireev2021Effectiveness and Andriushchenko2020Understanding,
the ImageNet ``model.`` prefix and Swin key conversion, the known partial loads, the ensembles' files.

Installing. robustbench 1.1.1's wheel pins ``timm==1.0.9`` and ``gdown==5.1.0`` and its package
``__init__`` imports its evaluation code (gdown, autoattack, and ``pkg_resources``, which recent setuptools
releases no longer ship), none of which the model zoo needs. So it goes in with ``--no-deps`` and bench imports
only ``robustbench.model_zoo`` (the package's ``__init__`` is not run; see :func:`_package`); what the
zoo imports is the ``robustbench`` extra (torchdiffeq, geotorch, timm, no pin). torchattacks 3.5.1 ships
an old copy of the ``robustbench`` package without an install record: the Makefile installs RobustBench
after it, over that copy. A missing or stale robustbench is a one-line suite error with
:data:`INSTALL` (nothing can be checked without the zoo); where a suite was checked but the zoo is
missing when the model is built (another machine), the cells are skipped with it.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import importlib
import importlib.metadata
import importlib.util
import io
import math
import re
import sys
import warnings
from collections import OrderedDict
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any, Iterator, Mapping

import torch
import torch.nn as nn

from bench.models import CheckpointError, ModelUnavailable, imagenet_class_names, short_error

if TYPE_CHECKING:
    from bench.sources import Context, Entry
    from bench.specs import ModelSpec

NAME = "robustbench"
PREFIX = "robustbench/"
KEYS = ("source", "arch", "dataset", "threat_model", "model_dir")
DATASETS = {"cifar10": 10, "cifar100": 100, "imagenet": 1000}
THREAT_MODELS = ("Linf", "L2", "corruptions")
DEFAULT_DATASET, DEFAULT_THREAT_MODEL, DEFAULT_MODEL_DIR = "cifar10", "Linf", "./models"
REQUIREMENT = "robustbench>=1.1,<2"
INSTALL = (f"pip install torchdiffeq geotorch 'timm>=0.9' && pip install --no-deps '{REQUIREMENT}' (make install does "
           "both; --no-deps because robustbench's wheel pins timm==1.0.9 and gdown==5.1.0)")
MEAN, STD = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)  # every zoo model takes [0, 1] images and normalises inside
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")

# robustbench/data.py PREPROCESSINGS (1.1.1) as bench's (input_size, resize_size, interpolation): shorter side
# resized, then a centre crop. Two are near, not equal: Res224 resizes to 224×224 (a non-square image is
# squashed there, cropped here); Crop288 crops 288 px from the image at its own size, which bench cannot say
# (it resizes first): here the shorter side goes to 329 (bench's usual 0.875 crop), about the scale of an
# ImageNet validation image (shorter side 333–375) at its own size.
PREPROCESSINGS = {
    "Res256Crop224": (224, 256, "bilinear"),
    "BicubicRes256Crop224": (224, 256, "bicubic"),
    "Res224": (224, 224, "bilinear"),
    "Crop288": (288, 329, "bilinear"),
}

# robustbench/utils.py (1.1.1): _safe_load_state_dict's known partial loads, and load_model's ImageNet key rules
KNOWN_FAILING = {
    "Andriushchenko2020Understanding", "Augustin2020Adversarial", "Engstrom2019Robustness", "Pang2020Boosting",
    "Rice2020Overfitting", "Rony2019Decoupling", "Wong2020Fast", "Hendrycks2020AugMix_WRN",
    "Hendrycks2020AugMix_ResNeXt", "Kireev2021Effectiveness_Gauss50percent", "Kireev2021Effectiveness_AugMixNoJSD",
    "Kireev2021Effectiveness_RLAT", "Kireev2021Effectiveness_RLATAugMixNoJSD", "Kireev2021Effectiveness_RLATAugMix",
    "Chen2020Efficient", "Wu2020Adversarial", "Augustin2020Adversarial_34_10", "Augustin2020Adversarial_34_10_extra",
    "Diffenderfer2021Winning_LRR", "Diffenderfer2021Winning_LRR_CARD_Deck", "Diffenderfer2021Winning_Binary",
    "Diffenderfer2021Winning_Binary_CARD_Deck", "Huang2022Revisiting_WRN-A4", "Bai2024MixedNUTS",
}
FAILURE_MESSAGES = (
    'Missing key(s) in state_dict: "mu", "sigma".',
    'Unexpected key(s) in state_dict: "model_preact_hl1.1.weight"',
    'Missing key(s) in state_dict: "normalize.mean", "normalize.std"',
    'Unexpected key(s) in state_dict: "conv1.scores"',
    'Missing key(s) in state_dict: "mean", "std".',
)
SWIN_FILTERED = {"Liu2023Comprehensive_Swin-B", "Liu2023Comprehensive_Swin-L", "Mo2022When_Swin-B",
                 "RodriguezMunoz2024Characterizing_Swin-B", "RodriguezMunoz2024Characterizing_Swin-L"}
NO_MODEL_PREFIX = {"Singh2023Revisiting_ConvNeXt-T-ConvStem", "Singh2023Revisiting_ViT-B-ConvStem",
                   "Singh2023Revisiting_ConvNeXt-S-ConvStem", "Singh2023Revisiting_ConvNeXt-B-ConvStem",
                   "Singh2023Revisiting_ConvNeXt-L-ConvStem", "Peng2023Robust", "Chen2024Data_WRN_50_2",
                   "Xu2024MIMIR_Swin-B", "Xu2024MIMIR_Swin-L"}


class ZooUnavailable(ImportError):
    """robustbench (a recent one, with its model zoo) is not importable here; the message says how to install it."""


# ---------------------------------------------------------------------------------------------
# The package


_ZOO: ModuleType | None = None


@contextlib.contextmanager
def _package() -> Iterator[None]:
    """``robustbench`` in ``sys.modules`` without running its ``__init__`` (which imports RobustBench's evaluation
    code: gdown, autoattack, pkg_resources), so that ``robustbench.model_zoo`` and what it imports, now or
    while a model is built, can be imported. The placeholder goes again afterwards, so a later ``import
    robustbench`` gets the real package (its submodules already imported are shared)."""
    if "robustbench" in sys.modules:  # imported already: the real package, or our placeholder further up
        yield
        return
    spec = importlib.util.find_spec("robustbench")
    if spec is None or not spec.submodule_search_locations:
        raise ZooUnavailable(f"robustbench is not installed: {INSTALL}")
    placeholder = importlib.util.module_from_spec(spec)
    sys.modules["robustbench"] = placeholder
    try:
        yield
    finally:
        if sys.modules.get("robustbench") is placeholder:
            del sys.modules["robustbench"]


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """timm's deprecation warnings for the zoo's old import paths; the parameter counts some zoo models print."""
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore", FutureWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.filterwarnings("ignore", message=".*[Oo]verwriting .* in registry.*")
        yield


def _record_hash(path: Path) -> str:
    return base64.urlsafe_b64encode(hashlib.sha256(path.read_bytes()).digest()).rstrip(b"=").decode()


def check_install() -> str:
    """The installed robustbench's version; raises :class:`ZooUnavailable` when it is missing, older than
    1.1, or not what its install record says (torchattacks' old copy of the package, with no record or over
    a real install)."""
    spec = importlib.util.find_spec("robustbench") if "robustbench" not in sys.modules else sys.modules["robustbench"].__spec__
    if spec is None or not spec.submodule_search_locations:
        raise ZooUnavailable(f"robustbench is not installed: {INSTALL}")
    folder = Path(list(spec.submodule_search_locations)[0])
    try:
        dist = importlib.metadata.distribution("robustbench")
    except importlib.metadata.PackageNotFoundError:
        raise ZooUnavailable(f"the robustbench package in {folder} has no install record (the old copy torchattacks "
                             f"ships?): {INSTALL}") from None
    version = dist.version
    parts = [int(p) for p in re.findall(r"\d+", version)[:2]]
    if parts < [1, 1]:
        raise ZooUnavailable(f"robustbench {version} is older than 1.1: {INSTALL}")
    for f in dist.files or []:  # the package's sources as its record says (an editable install has no hashes)
        path = str(f).replace("\\", "/")
        if f.hash is None or f.hash.mode != "sha256" or not path.startswith("robustbench/") or not path.endswith(".py"):
            continue
        mine = folder / path[len("robustbench/"):]
        if not mine.is_file() or _record_hash(mine) != f.hash.value:
            raise ZooUnavailable(f"{folder} does not hold robustbench {version}'s files ({path} differs: torchattacks' "
                                 f"old copy written over them?): pip install --no-deps --force-reinstall '{REQUIREMENT}'")
    return version


def zoo() -> ModuleType:
    """``robustbench.model_zoo.models`` (its ``model_dicts``), imported once; :class:`ZooUnavailable` when it cannot be."""
    global _ZOO
    if _ZOO is not None:
        return _ZOO
    check_install()
    try:
        with _package(), _quiet():
            module = importlib.import_module("robustbench.model_zoo.models")
    except ZooUnavailable:
        raise
    except Exception as exc:  # a dependency of the zoo missing (torchdiffeq, geotorch, timm), or too old
        raise ZooUnavailable(f"robustbench's model zoo cannot be imported ({type(exc).__name__}: {short_error(exc)}): "
                             f"{INSTALL}") from None
    if not hasattr(module, "model_dicts"):
        raise ZooUnavailable(f"this robustbench has no model_zoo.models.model_dicts: {INSTALL}")
    _ZOO = module
    return module


def _tables() -> dict[tuple[str, str], Mapping[str, Any]]:
    """The zoo's entries by (dataset, threat model), named as a suite names them (the enums' values)."""
    return {(getattr(ds, "value", ds), getattr(tm, "value", tm)): entries
            for ds, tms in zoo().model_dicts.items() for tm, entries in tms.items()}


def _table(dataset: str, threat_model: str) -> Mapping[str, Any] | None:
    """The zoo's entries for a dataset and threat model (None when the zoo has none)."""
    return _tables().get((dataset, threat_model))


def listing() -> list[tuple[str, str, str]]:
    """Every (dataset, threat_model, entry) of the zoo."""
    return [(ds, tm, name) for (ds, tm), entries in _tables().items() for name in entries]


# ---------------------------------------------------------------------------------------------
# Where each entry's weights come from


def timm_name(name: str, dataset: str, threat_model: str) -> str:
    """The timm model robustbench's load_model looks for first (``debenedetti2022light_xcit_s12_cifar10_linf``)."""
    return f"{name.lower().replace('-', '_')}_{dataset}_{threat_model.lower()}"


def kind(name: str, dataset: str, threat_model: str) -> str:
    """How load_model gets the entry: ``timm`` (a timm model with pretrained weights), ``torchvision``
    (ImageNet ``Standard_R50``: torchvision's pretrained ResNet-50), ``ensemble`` (one file per member) or
    ``file`` (one file)."""
    import timm

    zoo()  # registers the zoo's timm models
    if timm.is_model(timm_name(name, dataset, threat_model)):
        return "timm"
    if dataset == "imagenet" and "Standard" in name:
        return "torchvision"
    info = _table(dataset, threat_model)[name]
    return "ensemble" if isinstance(info.get("gdrive_id"), list) else "file"


def _timm_cfg(name: str, dataset: str, threat_model: str) -> dict[str, Any]:
    from timm.models import get_pretrained_cfg

    cfg = get_pretrained_cfg(timm_name(name, dataset, threat_model))
    return cfg.to_dict() if cfg is not None and hasattr(cfg, "to_dict") else dict(cfg or {})


def _hub_file(url: str) -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints" / Path(url).name


def weight_files(name: str, dataset: str, threat_model: str, model_dir: str | Path) -> list[Path]:
    """The files the entry's weights are read from, as robustbench's load_model names them."""
    how = kind(name, dataset, threat_model)
    if how == "timm":
        url = _timm_cfg(name, dataset, threat_model).get("url")
        return [_hub_file(url)] if url else []
    if how == "torchvision":
        from torchvision.models import ResNet50_Weights

        return [_hub_file(ResNet50_Weights.IMAGENET1K_V1.url)]
    path = Path(model_dir) / dataset / threat_model / f"{name}.pt"
    if how == "ensemble":
        count = len(_table(dataset, threat_model)[name]["gdrive_id"])
        return [Path(f"{path}_m{i}.pt") for i in range(count)]
    return [path]


def preprocessing(name: str, dataset: str, threat_model: str) -> dict[str, Any] | None:
    """input_size, resize_size and interpolation as robustbench's get_preprocessing has them (None: a
    preprocessing name bench does not know)."""
    if dataset != "imagenet":
        return {"input_size": 32, "resize_size": 32, "interpolation": "bilinear"}  # ToTensor only
    if kind(name, dataset, threat_model) == "timm":  # get_timm_model_preprocessing
        cfg = _timm_cfg(name, dataset, threat_model)
        size = int(cfg["input_size"][-1])
        return {"input_size": size, "resize_size": int(math.floor(size / (cfg.get("crop_pct") or 0.875))),
                "interpolation": cfg.get("interpolation") or "bilinear"}
    found = PREPROCESSINGS.get(_table(dataset, threat_model)[name].get("preprocessing"))
    if found is None:
        return None
    size, resize, interpolation = found
    return {"input_size": size, "resize_size": resize, "interpolation": interpolation}


# ---------------------------------------------------------------------------------------------
# The source's surface


def claims(entry: dict[str, Any]) -> bool:
    arch = entry.get("arch")
    return "source" in entry or (isinstance(arch, str) and arch.startswith(PREFIX))


def _choice(ctx: "Context", key: str, value: Any, allowed: list[str] | tuple[str, ...], what: str) -> str:
    from bench.names import closest

    if not isinstance(value, str) or value not in allowed:
        ctx.error(key, f"{value!r} is not a {what}{closest(str(value), list(allowed))}; allowed: {', '.join(allowed)}")
    return value


def resolve(entry: dict[str, Any], ctx: "Context") -> dict[str, Any]:
    from bench.names import closest

    if "source" in entry and entry["source"] != NAME:
        ctx.error("source", f"unknown model source {entry['source']!r}; allowed: {NAME} (the others are named by "
                            "arch: torchvision/<name>, timm/<name>, factory: or file:)")
    arch = entry.get("arch")
    if arch is not None:
        if not isinstance(arch, str) or not arch.startswith(PREFIX) or len(arch) == len(PREFIX):
            ctx.error("arch", f"names a RobustBench entry as robustbench/<entry> (or leave arch out: with source: "
                              f"robustbench, name: is the entry), got {arch!r}")
        key, name = "arch", arch[len(PREFIX):]
    else:
        key, name = "name", entry.get("name")
        if not isinstance(name, str) or not name:
            ctx.error("name", "is required: the RobustBench entry, e.g. Carmon2019Unlabeled "
                              "(or give arch: robustbench/<entry> and any name)")
    dataset = _choice(ctx, "dataset", entry.get("dataset", DEFAULT_DATASET), list(DATASETS), "RobustBench dataset")
    threat = _choice(ctx, "threat_model", entry.get("threat_model", DEFAULT_THREAT_MODEL), THREAT_MODELS,
                     "RobustBench threat model")
    model_dir = entry.get("model_dir", DEFAULT_MODEL_DIR)
    if not isinstance(model_dir, str) or not model_dir.strip():
        ctx.error("model_dir", f"must be a folder (RobustBench's model_dir: weights at <model_dir>/{dataset}/{threat}/"
                               f"<entry>.pt), got {model_dir!r}")
    if "checkpoint" in entry and "model_dir" in entry:
        ctx.error("model_dir", "give either model_dir (RobustBench's weights) or checkpoint (your own weights for the "
                               "zoo's architecture), not both")
    try:
        folder = Path(model_dir).expanduser()
        folder = (folder if folder.is_absolute() else Path(ctx.base) / folder).resolve()
    except (OSError, RuntimeError, ValueError) as exc:  # a NUL byte, an unknown ~user, a symlink loop
        ctx.error("model_dir", f"is not a usable folder path ({short_error(exc)}), got {model_dir!r}")
    try:
        zoo()
    except ZooUnavailable as exc:
        ctx.error("source" if "source" in entry else "arch", str(exc))
    entries = _table(dataset, threat)
    if entries is None:
        have = [t for t in THREAT_MODELS if _table(dataset, t) is not None]
        ctx.error("threat_model", f"RobustBench has no {dataset} models for {threat}; allowed for {dataset}: {', '.join(have)}")
    if name not in entries:
        elsewhere = [f"dataset: {d}, threat_model: {t}" for d, t, n in listing() if n == name]
        hint = f" (it is in {'; '.join(elsewhere)})" if elsewhere else closest(name, list(entries))
        ctx.error(key, f"{name!r} is not in RobustBench's {dataset} {threat} zoo{hint}; `bench models --filter "
                       f"robustbench/` lists the zoo")
    pre = preprocessing(name, dataset, threat)
    if pre is None:
        if "input_size" not in entry:
            ctx.error(key, f"RobustBench's preprocessing {entries[name].get('preprocessing')!r} for {name} is not one bench "
                           f"knows ({', '.join(PREPROCESSINGS)}); give input_size, crop_pct and interpolation in the entry")
        pre = {}
    classes = DATASETS[dataset]
    names = CIFAR10_CLASSES if dataset == "cifar10" else tuple(imagenet_class_names()) if dataset == "imagenet" else None
    own = "checkpoint" in entry  # the zoo's architecture with the user's weights (bench loads the checkpoint)
    return {"arch": f"{dataset}/{threat}/{name}", "weights": None if own else NAME, "num_classes": classes,
            "mean": MEAN, "std": STD, **pre, "class_names": names,
            "kwargs": () if own else (("model_dir", str(folder)),)}


def _parts(spec: "ModelSpec") -> tuple[str, str, str, Path]:
    dataset, threat, name = spec.arch.split("/", 2)
    return dataset, threat, name, Path(dict(spec.kwargs).get("model_dir", DEFAULT_MODEL_DIR))


def files(spec: "ModelSpec") -> list[str]:
    """The weight files the model reads (none for the architecture alone)."""
    if spec.weights is None:
        return []
    try:
        dataset, threat, name, model_dir = _parts(spec)
        return [str(p) for p in weight_files(name, dataset, threat, model_dir)]
    except ZooUnavailable:
        return []


def defaults(spec: "ModelSpec") -> dict[str, Any]:
    """mean/std for a spec made in code (not resolved from a suite): zoo models normalise inside."""
    return {"mean": MEAN, "std": STD, "class_names": None}


def build(spec: "ModelSpec") -> nn.Module:
    """The zoo's network, its weights loaded as robustbench's load_model loads them (from files opened as data)."""
    try:
        zoo()
    except ZooUnavailable as exc:
        raise ModelUnavailable(str(exc)) from None
    dataset, threat, name, model_dir = _parts(spec)
    entries = _table(dataset, threat)
    if not entries or name not in entries:
        raise ModelUnavailable(f"RobustBench {check_install()} here has no {dataset} {threat} entry {name}: "
                               f"pip install --no-deps --upgrade '{REQUIREMENT}'")
    how = kind(name, dataset, threat)
    paths = weight_files(name, dataset, threat, model_dir) if spec.weights is not None else []
    missing = [str(p) for p in paths if not p.is_file()]
    if spec.weights is not None and (missing or not paths):
        raise ModelUnavailable(_missing_message(name, dataset, threat, how, missing))
    with _package(), _quiet():
        if spec.weights is not None and how == "timm":  # timm builds it with the weights
            return _load_timm(name, dataset, threat, paths[0])
        net = _architecture(name, dataset, threat, how)
        if spec.weights is None:
            return net
        if how == "torchvision":
            return _load_torchvision(net, paths[0])
        if how == "ensemble":
            return _load_ensemble(net, name, dataset, paths)
        return _load_file(net, name, dataset, paths[0])


def _missing_message(name: str, dataset: str, threat: str, how: str, missing: list[str]) -> str:
    what = f"RobustBench's {name} ({dataset}, {threat})"
    if how == "timm":
        url = _timm_cfg(name, dataset, threat).get("url")
        if not url:
            return f"{what}: robustbench takes its weights from timm, whose config names no file URL; bench reads none"
        return (f"{what} weights are not on this machine (bench downloads nothing): put {url} at {missing[0]} "
                "(where timm keeps it; robustbench takes this entry from timm)")
    if how == "torchvision":
        from torchvision.models import ResNet50_Weights

        return (f"{what} is torchvision's ResNet-50 and its weights are not on this machine (bench downloads nothing): "
                f"put {ResNet50_Weights.IMAGENET1K_V1.url} at {missing[0]}")
    if len(missing) > 1:
        return (f"{what} weights are not on this machine (bench downloads nothing): put {', '.join(missing)} there "
                f"({len(missing)} files of the ensemble, as robustbench's load_model saves them)")
    return (f"{what} weights are not on this machine (bench downloads nothing): put {missing[0]} there, the file "
            f"robustbench's load_model saves for it under its model_dir")


def _architecture(name: str, dataset: str, threat: str, how: str) -> nn.Module:
    """The entry's network with its initial weights: the zoo's own factory, called as load_model calls it
    (for a timm entry, the timm model without pretrained weights; for Standard_R50, the zoo's
    ``normalize_model`` around torchvision's ResNet-50, as its factory builds it)."""
    on_meta = torch.empty(()).device.type == "meta"
    try:
        if how == "timm":
            import timm

            return timm.create_model(timm_name(name, dataset, threat), num_classes=DATASETS[dataset], pretrained=False)
        if how == "torchvision":  # the zoo's factory calls resnet50(pretrained=True): torchvision would download and load it
            from robustbench.model_zoo.architectures.utils_architectures import normalize_model
            from torchvision.models import resnet50

            from bench.models import IMAGENET_MEAN, IMAGENET_STD

            return normalize_model(resnet50(weights=None), IMAGENET_MEAN, IMAGENET_STD)
        return _table(dataset, threat)[name]["model"]()
    except Exception as exc:
        if on_meta:  # the probe tries the meta device first and the CPU after
            raise
        raise ModelUnavailable(f"RobustBench's definition of {name} ({dataset}, {threat}) cannot be built here "
                               f"({type(exc).__name__}: {short_error(exc)})") from None


def _tensors(path: Path) -> Any:
    from bench.untrusted import UnsafeFile, load_tensors

    try:
        return load_tensors(path)
    except UnsafeFile as exc:
        raise CheckpointError(str(exc)) from None


def _one_line(exc: BaseException) -> str:
    text = " ".join(line.strip() for line in str(exc).splitlines() if line.strip())
    text = re.sub(r"\x1b\[[0-9;]*m", "", text)
    return (text[:300] + " …") if len(text) > 300 else text or type(exc).__name__


def rm_substr_from_state_dict(state_dict: Mapping, substr: str) -> OrderedDict:
    """robustbench.utils.rm_substr_from_state_dict (1.1.1), as it is: a key containing ``substr`` anywhere
    loses its first ``len(substr)`` characters."""
    out = OrderedDict()
    for key in state_dict.keys():
        out[key[len(substr):] if substr in key else key] = state_dict[key]
    return out


def add_substr_to_state_dict(state_dict: Mapping, substr: str) -> OrderedDict:
    """robustbench.utils.add_substr_to_state_dict (1.1.1)."""
    return OrderedDict((substr + k, v) for k, v in state_dict.items())


def safe_load_state_dict(model: nn.Module, name: str, state_dict: Mapping, dataset: str) -> nn.Module:
    """robustbench.utils._safe_load_state_dict (1.1.1): strict, except the known partial loads."""
    try:
        model.load_state_dict(state_dict, strict=True)
    except RuntimeError as exc:
        if (name in KNOWN_FAILING or dataset == "imagenet") and any(m in str(exc) for m in FAILURE_MESSAGES):
            model.load_state_dict(state_dict, strict=False)
        else:
            raise
    return model


def _swin_filter(state: Mapping, model: nn.Module) -> Mapping:
    try:
        from timm.models.swin_transformer import checkpoint_filter_fn

        return checkpoint_filter_fn(state, model)
    except Exception:  # as load_model: the checkpoint is used as it is
        return state


def _load_file(net: nn.Module, name: str, dataset: str, path: Path) -> nn.Module:
    checkpoint = _tensors(path)
    try:
        if "Kireev2021Effectiveness" in name or name == "Andriushchenko2020Understanding":
            checkpoint = checkpoint["last"]  # load_model takes the last model (choices: 'last', 'best')
        if not isinstance(checkpoint, Mapping):
            raise CheckpointError(f"{path}: expected a state dict, got {type(checkpoint).__name__}")
        try:
            state = rm_substr_from_state_dict(checkpoint["state_dict"], "module.")
            state = rm_substr_from_state_dict(state, "model.")
        except Exception:  # load_model's bare except: the checkpoint is the state dict itself
            state = rm_substr_from_state_dict(checkpoint, "module.")
            state = rm_substr_from_state_dict(state, "model.")
        if dataset == "imagenet":
            if name in SWIN_FILTERED:
                state = _swin_filter(state, net.model)
            if name not in NO_MODEL_PREFIX:
                state = add_substr_to_state_dict(state, "model.")
        safe_load_state_dict(net, name, state, dataset)
    except CheckpointError:
        raise
    except Exception as exc:
        raise CheckpointError(f"{path}: does not fit RobustBench's {name} ({type(exc).__name__}: {_one_line(exc)})") from None
    return net


def _load_ensemble(net: nn.Module, name: str, dataset: str, paths: list[Path]) -> nn.Module:
    for i, path in enumerate(paths):
        checkpoint = _tensors(path)
        try:
            if not isinstance(checkpoint, Mapping):
                raise CheckpointError(f"{path}: expected a state dict, got {type(checkpoint).__name__}")
            try:
                state = rm_substr_from_state_dict(checkpoint["state_dict"], "module.")
            except KeyError:
                state = rm_substr_from_state_dict(checkpoint, "module.")
            if name.startswith("Bai2023Improving"):
                if i < 2:
                    net.comp_model.models[i] = safe_load_state_dict(net.comp_model.models[i], name, state, dataset).eval()
                else:
                    net.comp_model.policy_net = safe_load_state_dict(net.comp_model.policy_net, name, state["model"], dataset)
                    net.comp_model.bn = safe_load_state_dict(net.comp_model.bn, name, state["bn"], dataset)
            elif name.startswith("Bai2024MixedNUTS"):
                if i == 0:
                    net.std_model = safe_load_state_dict(net.std_model, name, state, dataset)
                elif i == 1:
                    if dataset == "imagenet":
                        state = add_substr_to_state_dict(_swin_filter(state, net.rob_model.model), "model.")
                    net.rob_model = safe_load_state_dict(net.rob_model, name, state, dataset)
                else:
                    raise ValueError("unexpected checkpoint")
            else:
                net.models[i] = safe_load_state_dict(net.models[i], name, state, dataset).eval()
        except CheckpointError:
            raise
        except Exception as exc:
            raise CheckpointError(f"{path}: does not fit member {i} of RobustBench's {name} "
                                  f"({type(exc).__name__}: {_one_line(exc)})") from None
    return net


def _load_torchvision(net: nn.Module, path: Path) -> nn.Module:
    from torchvision.models import ResNet50_Weights

    from bench.models import torchvision_state_dict

    state = torchvision_state_dict(ResNet50_Weights.IMAGENET1K_V1, "RobustBench's Standard_R50")  # the file is there
    try:
        net.model.load_state_dict(state)
    except RuntimeError as exc:
        raise CheckpointError(f"{path}: does not fit torchvision's ResNet-50 ({_one_line(exc)})") from None
    return net


def _load_timm(name: str, dataset: str, threat: str, path: Path) -> nn.Module:
    """A timm entry as load_model builds it (timm.create_model(..., pretrained=True)), timm handed the state
    dict read here as data instead of the file it would download and unpickle itself."""
    import timm

    from bench.sources.timm_models import _takes_state_dict
    from bench.untrusted import UnsafeFile, check_sha256

    match = torch.hub.HASH_REGEX.search(path.name)
    try:
        check_sha256(path, match.group(1) if match else None)
    except UnsafeFile as exc:
        raise CheckpointError(str(exc)) from None
    state = _tensors(path)
    if not isinstance(state, Mapping):
        raise CheckpointError(f"{path}: expected a state dict, got {type(state).__name__}")
    if not _takes_state_dict():
        raise ModelUnavailable(f"this timm ({timm.__version__}) cannot be handed weights as a state dict, which bench "
                               "needs to open them as data: pip install -U 'timm>=1.0'")
    try:
        return timm.create_model(timm_name(name, dataset, threat), num_classes=DATASETS[dataset], pretrained=True,
                                 pretrained_cfg_overlay={"state_dict": dict(state)})
    except Exception as exc:
        raise CheckpointError(f"{path}: does not fit RobustBench's {name} ({type(exc).__name__}: {_one_line(exc)})") from None


def catalogue(text: str | None = None) -> list["Entry"]:
    """Every zoo entry as ``robustbench/<entry>``, with whether its weights are under ./models (the default model_dir)."""
    from bench.sources import Entry

    try:
        everything = listing()
    except ZooUnavailable:
        return []
    out = []
    for dataset, threat, name in everything:
        label = PREFIX + name
        if text and text not in label.lower():
            continue
        paths = weight_files(name, dataset, threat, DEFAULT_MODEL_DIR)
        here = bool(paths) and all(p.is_file() for p in paths)
        out.append(Entry(NAME, label, f"dataset: {dataset}, threat_model: {threat}",
                         ("here: " + ", ".join(str(p) for p in paths)) if here else "none here (cells skipped)"))
    return out
