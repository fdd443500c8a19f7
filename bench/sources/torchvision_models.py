"""The ``torchvision`` source: ``arch: torchvision/<name>``, every classification builder in
``torchvision.models.list_models(module=torchvision.models)``.

``weights: null`` (random init), ``imagenet`` (the builder's DEFAULT weights enum) or an enum member
name (``IMAGENET1K_V2``). Mean, std, resize size, crop size and interpolation are read from that
enum's ``transforms()`` (from DEFAULT for random init: what the architecture is meant to see), and
class names from its ``meta``. Weights come from the torch hub cache only; offline and absent, the
cells are skipped with the file to put where.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn as nn

from bench.models import torchvision_state_dict

if TYPE_CHECKING:
    from bench.sources import Context, Entry
    from bench.specs import ModelSpec

NAME = "torchvision"
PREFIX = "torchvision/"
KEYS = ("arch", "weights")


def claims(entry: dict[str, Any]) -> bool:
    arch = entry.get("arch")
    return isinstance(arch, str) and arch.startswith(PREFIX)


def names() -> list[str]:
    import torchvision

    return list(torchvision.models.list_models(module=torchvision.models))


def weights_enum(name: str, tag: str | None):
    """The weights enum member a tag names (``imagenet`` = DEFAULT); None for random init."""
    from torchvision.models import get_model_weights

    enum = get_model_weights(name)
    if tag is None:
        return None
    return enum.DEFAULT if tag == "imagenet" else enum[tag]


def resolve(entry: dict[str, Any], ctx: "Context") -> dict[str, Any]:
    from torchvision.models import get_model_weights

    from bench.names import closest

    name = entry["arch"][len(PREFIX):]
    known = names()
    if name not in known:
        ctx.error("arch", f"unknown torchvision classification model {name!r}{closest(name, known)}; "
                          "`bench models --source torchvision` lists them")
    enum = get_model_weights(name)
    tags = [m for m in enum.__members__ if m != "DEFAULT"]
    tag = entry.get("weights")
    if tag is not None and tag != "imagenet" and tag not in tags:
        ctx.error("weights", f"{tag!r} is not a weights tag of {name}; allowed: null, imagenet, {', '.join(tags)}")
    member = weights_enum(name, tag) or enum.DEFAULT
    t = member.transforms()
    crop, resize = _first(t.crop_size), _first(t.resize_size)
    categories = member.meta.get("categories")
    return {"arch": name, "weights": None if tag is None else member.name,
            "num_classes": len(categories) if categories else 1000, "mean": tuple(t.mean), "std": tuple(t.std),
            "input_size": crop, "resize_size": resize, "interpolation": t.interpolation.value,
            "class_names": tuple(categories) if tag is not None and categories else None}


def _first(size) -> int:
    return int(size[0] if isinstance(size, (list, tuple)) else size)


def build(spec: "ModelSpec") -> nn.Module:
    from torchvision.models import get_model

    kwargs = {"num_classes": spec.num_classes} if spec.num_classes else {}
    if spec.arch.startswith("inception") or spec.arch == "googlenet":
        kwargs["aux_logits"] = False  # one logits tensor out, as an attack needs (their weights load without them)
        kwargs["init_weights"] = True
        kwargs["transform_input"] = spec.weights is not None  # as torchvision does for these weights
    net = get_model(spec.arch, weights=None, **kwargs)
    if spec.weights is not None:
        member = weights_enum(spec.arch, spec.weights)
        state = torchvision_state_dict(member, spec.arch)
        state = {k: v for k, v in state.items() if not k.startswith("AuxLogits.") and not k.startswith("aux")}
        net.load_state_dict(state)
    return net


def weights_file(member) -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints" / Path(member.url).name


def catalogue(text: str | None = None) -> list["Entry"]:
    from torchvision.models import get_model_weights

    from bench.sources import Entry

    out = []
    for name in names():
        if text and text not in (PREFIX + name).lower():
            continue
        members = [m for m in get_model_weights(name) if m.name != "DEFAULT"]
        here = [m.name for m in members if weights_file(m).is_file()]
        out.append(Entry(NAME, PREFIX + name, ", ".join(["null", "imagenet", *(m.name for m in members)]),
                         ", ".join(here) if here else "random init only"))
    return out
