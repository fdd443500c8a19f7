"""Input-transformation defenses, applied to 8-bit images before classification.

A defense maps a float batch in [0, 1] on the 8-bit grid to another such batch. ``jpeg`` is a
real JPEG encode/decode round trip: on CPU with PIL (what the tutorial did with a saved file) in a
thread pool, since PIL releases the GIL while coding; on CUDA batched with torchvision's nvjpeg.
"""

from __future__ import annotations

import io
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

import numpy as np
import torch
import torch.nn as nn
from PIL import Image

from bench.fastpath import Wrapper

if TYPE_CHECKING:
    from bench.suite import DefenseSpec

Defense = Callable[[torch.Tensor], torch.Tensor]


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """Quantise images in [0, 1] to 8 bits (round to nearest), as saving a PNG would."""
    return x.detach().clamp(0, 1).mul(255).round_().to(torch.uint8)


def quantize(x: torch.Tensor) -> torch.Tensor:
    """The float image a viewer would load back from an 8-bit file."""
    return to_uint8(x).float().div_(255)


def identity(x: torch.Tensor) -> torch.Tensor:
    return x


@dataclass
class JPEG:
    """JPEG round trip at ``quality`` (1–100) through PIL, one image per worker thread."""

    quality: int = 75
    workers: int = field(default_factory=lambda: min(8, os.cpu_count() or 1))

    def _one(self, img: np.ndarray) -> np.ndarray:
        buf = io.BytesIO()
        Image.fromarray(img).save(buf, format="JPEG", quality=self.quality)
        buf.seek(0)
        return np.asarray(Image.open(buf).convert("RGB"))

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if x.is_cuda:
            return self._nvjpeg(x)
        arrays = to_uint8(x).permute(0, 2, 3, 1).cpu().numpy()
        with ThreadPoolExecutor(self.workers) as pool:
            out = list(pool.map(self._one, arrays))
        return torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2).to(x.device).float().div_(255)


    def _nvjpeg(self, x: torch.Tensor) -> torch.Tensor:
        """Batched encode and decode on the GPU (nvjpeg); the compressed bytes are tiny, and
        torchvision's GPU decoder takes them from host memory."""
        from torchvision.io import decode_jpeg, encode_jpeg

        encoded = encode_jpeg(list(to_uint8(x)), quality=self.quality)
        decoded = decode_jpeg([e.cpu() for e in encoded], device=x.device)
        return torch.stack(decoded).float().div_(255)


@dataclass
class DiffJPEG:
    """kornia's differentiable JPEG (Reich et al. 2024; Shin & Song 2017): forward and backward
    through a smooth model of the codec. Used only to craft adaptive attacks; evaluation always
    goes through the real JPEG."""

    quality: int = 75

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        from kornia.enhance import jpeg_codec_differentiable

        quality = torch.tensor([float(self.quality)], device=x.device, dtype=x.dtype)
        return jpeg_codec_differentiable(x, quality)


def straight_through(defense: Defense) -> Defense:
    """BPDA with the identity as the backward approximation (Athalye et al. 2018): the forward
    pass runs the real defense, the backward pass treats it as if it were not there."""

    def bpda(x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            y = defense(x.detach())
        return x + (y - x).detach()

    return bpda


@dataclass(frozen=True)
class DefenseInfo:
    build: Callable[..., Defense]
    params: dict[str, Any]  # suite keys and their defaults
    differentiable: Callable[..., Defense] | None = None  # a smooth stand-in for adaptive attacks


DEFENSES: dict[str, DefenseInfo] = {
    "none": DefenseInfo(lambda: identity, {}, lambda: identity),
    "jpeg": DefenseInfo(lambda quality=75: JPEG(quality), {"quality": 75}, lambda quality=75: DiffJPEG(quality)),
}
ADAPTIVE_METHODS = ("bpda", "diffjpeg")


def _kwargs(spec: "DefenseSpec") -> dict[str, Any]:
    return {} if spec.quality is None else {"quality": spec.quality}


def build(spec: "DefenseSpec") -> Defense:
    """The real defense, as used for every evaluation."""
    return DEFENSES[spec.type].build(**_kwargs(spec))


def attack_path(spec: "DefenseSpec", eval_mode: str) -> Defense:
    """What an attack in ``eval_mode`` sees of the defense while it crafts: nothing (oblivious),
    the real defense with an identity backward (adaptive-bpda), or a differentiable model of it
    (adaptive-diffjpeg)."""
    if eval_mode == "oblivious":
        return identity
    if eval_mode == "adaptive-bpda":
        return straight_through(build(spec))
    if eval_mode == "adaptive-diffjpeg":
        return DEFENSES[spec.type].differentiable(**_kwargs(spec))
    raise ValueError(f"unknown eval_mode {eval_mode!r}")


class Defended(Wrapper):
    """model ∘ transform: the classifier an adaptive attack optimises against."""

    def __init__(self, model: nn.Module, transform: Defense):
        super().__init__(model)
        self.transform = transform

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(self.transform(x))
