"""The ``timm`` source: ``arch: timm/<name>`` (timm is an optional extra: ``pip install -e '.[timm]'``).

``weights: null`` (random init), ``imagenet`` (the model's default pretrained tag) or a pretrained tag
(``augreg_in21k_ft_in1k``). Preprocessing (mean, std, input size, interpolation, crop_pct) comes from
``timm.data.resolve_data_config`` on the model's ``pretrained_cfg``. Pretrained weights are read from
the local Hugging Face cache only (never the network); absent, the cells are skipped with where to
put them.

Weights are opened as data, whatever timm's version: a cache file that links to a blob named by its
SHA-256 (an LFS file) must have that hash; ``model.safetensors`` is handed to timm (safetensors holds no
code); a ``pytorch_model.bin`` is loaded here with ``torch.load(weights_only=True)`` and timm is given the
state dict, so the pickle never reaches a ``torch.load`` that would run what it asks for. A file that
fails is a one-line error naming it (the cells fail; nothing in it ran).
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

import torch.nn as nn

from bench.specs import resize_for_crop

if TYPE_CHECKING:
    from bench.sources import Context, Entry
    from bench.specs import ModelSpec

NAME = "timm"
PREFIX = "timm/"
KEYS = ("arch", "weights")
INSTALL_HINT = "timm is not installed: pip install 'timm>=0.9' (or pip install -e '.[timm]')"
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


def claims(entry: dict[str, Any]) -> bool:
    arch = entry.get("arch")
    return isinstance(arch, str) and arch.startswith(PREFIX)


def _timm():
    try:
        import timm
    except ImportError:
        raise ImportError(INSTALL_HINT) from None
    return timm


def _cfg(name: str, tag: str | None) -> dict[str, Any]:
    """The pretrained config of ``name`` (at ``tag``, or its default), without building the model."""
    _timm()  # a clear error when timm is missing
    from timm.models import get_pretrained_cfg

    cfg = get_pretrained_cfg(f"{name}.{tag}" if tag else name)
    if cfg is None:
        cfg = get_pretrained_cfg(name)
    return cfg.to_dict() if cfg is not None and hasattr(cfg, "to_dict") else dict(cfg or {})


def resolve(entry: dict[str, Any], ctx: "Context") -> dict[str, Any]:
    try:
        timm = _timm()
    except ImportError as exc:
        ctx.error("arch", str(exc))
    from timm.data import resolve_data_config

    from bench.names import closest

    name = entry["arch"][len(PREFIX):]
    known = timm.list_models()
    if name not in known:
        ctx.error("arch", f"unknown timm model {name!r}{closest(name, known)}; `bench models --source timm` lists them")
    tags = sorted({p.split(".", 1)[1] for p in timm.list_pretrained(f"{name}.*") if "." in p})
    tag = entry.get("weights")
    if tag is not None and tag != "imagenet" and tag not in tags:
        ctx.error("weights", f"{tag!r} is not a pretrained tag of {name}; allowed: null, imagenet"
                             + (f", {', '.join(tags)}" if tags else " (it has no pretrained tags)"))
    if tag == "imagenet" and not tags:
        ctx.error("weights", f"{name} has no pretrained weights in timm; allowed: null")
    cfg = _cfg(name, None if tag in (None, "imagenet") else tag)
    data = resolve_data_config(pretrained_cfg=cfg)
    size = int(data["input_size"][-1])
    crop_pct = float(data.get("crop_pct") or 0.875)
    return {"arch": name, "weights": None if tag is None else (cfg.get("tag") or tag),
            "num_classes": int(cfg.get("num_classes") or 1000), "mean": tuple(data["mean"]), "std": tuple(data["std"]),
            "input_size": size, "resize_size": resize_for_crop(size, crop_pct), "interpolation": data["interpolation"]}


def _cached_file(cfg: dict[str, Any]) -> str | None:
    from huggingface_hub import try_to_load_from_cache

    repo = cfg.get("hf_hub_id")
    if not repo:
        return None
    for filename in WEIGHT_FILES:
        path = try_to_load_from_cache(repo, filename)
        if isinstance(path, str):
            return path
    return None


def build(spec: "ModelSpec") -> nn.Module:
    timm = _timm()
    from bench.models import CheckpointError, ModelUnavailable
    from bench.untrusted import UnsafeFile, check_hf_blob, load_tensors, no_code

    kwargs = {"num_classes": spec.num_classes} if spec.num_classes else {}
    if spec.weights is None:
        return timm.create_model(spec.arch, pretrained=False, **kwargs)
    cfg = _cfg(spec.arch, spec.weights)
    path = _cached_file(cfg)
    if path is None:
        repo = cfg.get("hf_hub_id", f"timm/{spec.arch}.{spec.weights}")
        raise ModelUnavailable(f"timm weights {spec.arch}.{spec.weights} are not in the local Hugging Face cache: on a "
                               f"machine with internet run `huggingface-cli download {repo}` and copy its folder "
                               f"models--{repo.replace('/', '--')} into ~/.cache/huggingface/hub/ (or $HF_HOME/hub) here")
    name = f"{spec.arch}.{spec.weights}"
    try:
        check_hf_blob(path)
        if path.endswith(".safetensors"):  # a safetensors file holds tensors only: timm reads it itself
            return timm.create_model(name, pretrained=True, pretrained_cfg_overlay={"file": path}, **kwargs)
        state = load_tensors(path)  # a pickle: loaded here as data, whatever torch.load timm would call
        if not isinstance(state, dict):
            raise CheckpointError(f"{path}: expected a state dict, got {type(state).__name__}")
        if _takes_state_dict():
            return timm.create_model(name, pretrained=True, pretrained_cfg_overlay={"state_dict": _unwrap(state)}, **kwargs)
        with no_code() as guard:  # a timm without the state_dict overlay: its torch.load held to weights_only=True
            try:
                return timm.create_model(name, pretrained=True, pretrained_cfg_overlay={"file": path}, **kwargs)
            except Exception:
                if guard.blocked:
                    raise CheckpointError(f"{path}: cannot be loaded as plain tensors; bench opens weights as data") from None
                raise
    except UnsafeFile as exc:
        raise CheckpointError(str(exc)) from None


def _takes_state_dict() -> bool:
    """Whether this timm's pretrained config takes a state dict in place of a file."""
    try:
        from timm.models._pretrained import PretrainedCfg
    except ImportError:
        return False
    return "state_dict" in {f.name for f in dataclasses.fields(PretrainedCfg)}


def _unwrap(checkpoint: dict) -> dict:
    """The weights in a checkpoint, as timm's own ``load_state_dict`` finds them (EMA first, then
    ``state_dict``/``model``), without DDP and torch.compile prefixes."""
    for key in ("state_dict_ema", "model_ema", "state_dict", "model"):
        if isinstance(checkpoint.get(key), dict):
            checkpoint = checkpoint[key]
            break
    prefixes = ("_orig_mod.", "module.")
    out = {}
    for k, v in checkpoint.items():
        while isinstance(k, str) and k.startswith(prefixes):
            k = k.split(".", 1)[1]
        out[k] = v
    return out


def catalogue(text: str | None = None) -> list["Entry"]:
    from bench.sources import Entry

    try:
        timm = _timm()
    except ImportError:
        return []
    pretrained: dict[str, list[str]] = {}
    for p in timm.list_pretrained():
        name, _, tag = p.partition(".")
        pretrained.setdefault(name, []).append(tag)
    out = []
    for name in timm.list_models():
        if text and text not in (PREFIX + name).lower():
            continue
        tags = pretrained.get(name, [])
        here = [t for t in tags if _cached_file(_cfg(name, t))] if tags else []
        out.append(Entry(NAME, PREFIX + name, ", ".join(["null", *(["imagenet"] if tags else []), *tags]),
                         ", ".join(here) if here else "random init only"))
    return out
