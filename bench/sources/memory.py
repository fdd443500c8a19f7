"""The ``memory`` source: a model object handed to :func:`bench.run` in this process (a notebook's model).

``bench.run(suite, models={"mine": net})`` registers ``net`` under a token and gives the suite's entry named
``mine`` the key ``memory: <token>``; the entry may then hold only a name (and any of the usual preprocessing
keys). Preprocessing comes from the entry, else from the module itself as for a factory (``net.mean``,
``net.std``, ``net.input_size``, ``net.num_classes``, ``net.preprocessing``, ``net.pretrained_cfg``, …).
Each run works on a deep copy, so the harness's preparation (eval mode, frozen weights, folded BatchNorm)
never changes the user's module. The object lives in this process only: the local executor runs it, Ray
cannot.

A model in memory is known by its weights, not by the object: the token and the row's ``weights`` carry a SHA-256
digest of its state (parameters and buffers, names, dtypes, shapes and values, taken when it is handed over), so the
same weights in a new object are the same model to ``bench compare`` and ``bench history``, and weights changed in
place are another model.
"""

from __future__ import annotations

import copy
import hashlib
from typing import TYPE_CHECKING, Any

import torch
import torch.nn as nn

from bench.sources.factory import Layer, card_fields, model_layers, preprocessing

if TYPE_CHECKING:
    from bench.sources import Context, Entry
    from bench.specs import ModelSpec

NAME = "memory"
KEYS = ("memory",)
_OBJECTS: dict[str, nn.Module] = {}  # token → the module handed to bench.run in this process


DIGEST_CHARS = 16  # hex characters of the digest kept in names (64 bits: no two models of one user collide)


def state_digest(module: nn.Module) -> str:
    """SHA-256 over the module's state dict: every entry's name, dtype, shape and bytes, in name order."""
    h = hashlib.sha256()
    for key, value in sorted(module.state_dict(keep_vars=False).items()):
        h.update(key.encode() + b"\0")
        if not hasattr(value, "dtype"):  # extra state a module may keep: its repr stands for it
            h.update(repr(value).encode())
            continue
        h.update(f"{value.dtype}{tuple(value.shape)}".encode())
        if value.device.type == "meta":
            raise TypeError(f"{key} is on the meta device: the module has no weights to evaluate")
        h.update(value.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def register(name: str, module: nn.Module) -> str:
    """Keep ``module`` for this process; the token its suite entry names it by (its name and weights' digest)."""
    if not isinstance(module, nn.Module):
        raise TypeError(f"models[{name!r}] must be a torch.nn.Module, got {type(module).__name__}")
    token = f"{name}@sha256:{state_digest(module)[:DIGEST_CHARS]}"
    _OBJECTS[token] = module
    return token


def claims(entry: dict[str, Any]) -> bool:
    return "memory" in entry


def _module(token: str) -> nn.Module:
    if token not in _OBJECTS:
        raise KeyError(token)
    return _OBJECTS[token]


def resolve(entry: dict[str, Any], ctx: "Context") -> dict[str, Any]:
    try:
        model = _module(entry["memory"])
    except (KeyError, TypeError):
        ctx.error("memory", "no such model in this process: hand the object to bench.run(…, models={name: module})")
    layers = [Layer("the suite entry", "", entry), Layer("the checkpoint's card", "checkpoint", card_fields(ctx.card))]
    layers += [Layer(layer.label, "memory", layer.values) for layer in model_layers(model, {})]
    fields = preprocessing(layers, ctx, lambda f: f"give {f}: in the suite entry, or as an attribute of the module "
                                                  f"(net.{f} = ...) or in net.preprocessing")
    # the token (name@sha256:…) is the arch: a `checkpoint:` may still load other weights into it; the row's
    # `weights` says memory:sha256:… (bench/cells.py base_row)
    return {"arch": entry["memory"], "weights": None, **fields}


def build(spec: "ModelSpec") -> nn.Module:
    """A deep copy of the module (the harness's preparation must not change the user's object)."""
    return copy.deepcopy(_module(spec.arch))


def catalogue(text: str | None = None) -> list["Entry"]:
    return []
