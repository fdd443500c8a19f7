"""``jpeg``: a real JPEG encode/decode round trip (Guo et al. 2018; Das et al. 2017), 4:2:0
chroma by default (what the tutorial's saved file had) or 4:4:4, and the same transformation on
every device: PIL in a thread pool on CPU and for 4:2:0 on CUDA, torchvision's batched nvjpeg for
4:4:4 on CUDA (see ``JPEG``). Its differentiable version is kornia's differentiable JPEG.
"""

from __future__ import annotations

import io
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch
from PIL import Image

from bench.defenses.base import Defense, DefenseType, Param, to_uint8

SUBSAMPLINGS = (420, 444)  # JPEG chroma subsampling: 4:2:0 (PIL's and libjpeg's default), 4:4:4 (none)
_PIL_SUBSAMPLING = {420: 2, 444: 0}  # PIL's save(subsampling=...): 2 is 4:2:0, 0 is 4:4:4
CUDA_420_PATHS = ("pil", "pil+nvjpeg")


@dataclass
class JPEG(Defense):
    """JPEG round trip at ``quality`` (1–100) with ``subsampling`` 420 (4:2:0 chroma, what PIL and
    libjpeg save by default) or 444 (4:4:4, full-resolution chroma).

    One label must be one transformation on every device, so the device only chooses *how* it runs:

    - CPU, either subsampling: PIL (libjpeg) encode and decode, one image per worker thread
      (PIL releases the GIL while coding).
    - CUDA, 444: torchvision's nvjpeg ``encode_jpeg``/``decode_jpeg``, batched, all on the GPU.
      nvjpeg's encoder writes 4:4:4 only (torchvision hard-codes ``NVJPEG_CSS_444``), which is
      why this fast path is for 444 alone. Residual against CPU 444: nvjpeg's own forward DCT,
      rounding and inverse DCT against libjpeg's (the bitstreams differ; no chroma resampling is
      involved at 4:4:4). The GPU test in tests/test_defenses.py bounds it.
    - CUDA, 420 (``cuda_420="pil"``, the default): the CPU path itself, so it is the same
      transformation bit for bit. The batch crosses to the host as uint8 (150 kB a 224 px image)
      and back. The alternatives were not chosen because neither is the CPU transformation:
      subsampling chroma on the GPU before a 4:4:4 nvjpeg encode quantises chroma in 8×8 blocks of
      the full-resolution plane instead of the half-resolution one, and its resampling filters
      stand in for libjpeg's; ``"pil+nvjpeg"`` (libjpeg encode, so the same bitstream, then nvjpeg
      decode on the GPU) still differs in the decoder: torchvision creates its nvjpeg decoder with
      ``NVJPEG_FLAGS_DEFAULT``, not ``NVJPEG_FLAGS_UPSAMPLING_WITH_INTERPOLATION``, so chroma is not
      upsampled with libjpeg's default triangle ("fancy") filter, and its IDCT is not libjpeg's.
      An estimate made on CPU, not on nvjpeg: decoding the same PIL q75 bitstreams of the bundled
      photos with replicated instead of fancy-upsampled chroma moves them by 0.71/255 mean, over a
      third of the 1.92/255 that 420 against 444 moves them. ``"pil+nvjpeg"`` is kept so a GPU
      machine can measure the real residual and the speed (``JPEG(75, cuda_420="pil+nvjpeg")``,
      ``pytest -m gpu -s tests/test_defenses.py``) before anyone makes it the default.
    """

    quality: int = 75
    subsampling: int = 420
    workers: int = field(default_factory=lambda: min(8, os.cpu_count() or 1))
    cuda_420: str = "pil"  # how CUDA batches run 420: see the class docstring

    def __post_init__(self) -> None:
        if self.subsampling not in SUBSAMPLINGS:
            raise ValueError(f"subsampling must be one of {SUBSAMPLINGS}, got {self.subsampling!r}")
        if self.cuda_420 not in CUDA_420_PATHS:
            raise ValueError(f"cuda_420 must be one of {CUDA_420_PATHS}, got {self.cuda_420!r}")

    def transform(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        if not x.is_cuda:
            return self._pil(x)
        return self._cuda(x)

    @property
    def has_smooth(self) -> bool:
        return True

    def smooth(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """kornia's differentiable JPEG (see :class:`DiffJPEG`): a model of the codec, both ways."""
        return DiffJPEG(self.quality, self.subsampling)(x)

    def _cuda(self, x: torch.Tensor) -> torch.Tensor:
        """The CUDA dispatch, callable with CPU tensors too (the tests fake torchvision's codecs)."""
        if self.subsampling == 444:
            return self._nvjpeg(x)
        return self._pil_nvjpeg(x) if self.cuda_420 == "pil+nvjpeg" else self._pil(x)

    # -- the pieces, each usable alone for measurements ------------------------------------

    def _encode_one(self, img: np.ndarray) -> bytes:
        buf = io.BytesIO()
        Image.fromarray(img).save(buf, format="JPEG", quality=self.quality, subsampling=_PIL_SUBSAMPLING[self.subsampling])
        return buf.getvalue()

    def _one(self, img: np.ndarray) -> np.ndarray:
        return np.asarray(Image.open(io.BytesIO(self._encode_one(img))).convert("RGB"))

    def _map(self, fn: Callable[[np.ndarray], Any], x: torch.Tensor) -> list:
        arrays = to_uint8(x).permute(0, 2, 3, 1).cpu().numpy()
        with ThreadPoolExecutor(self.workers) as pool:
            return list(pool.map(fn, arrays))

    def _pil(self, x: torch.Tensor) -> torch.Tensor:
        """Encode and decode with PIL on the host; the result goes back to ``x``'s device."""
        out = np.stack(self._map(self._one, x))
        return torch.from_numpy(out).permute(0, 3, 1, 2).to(x.device).float().div_(255)

    def _nvjpeg(self, x: torch.Tensor) -> torch.Tensor:
        """444 only: batched encode and decode with nvjpeg (its encoder writes 4:4:4 whatever is asked).
        The compressed bytes are tiny, and torchvision's GPU decoder takes them from host memory."""
        if self.subsampling != 444:
            raise ValueError("nvjpeg's encoder writes 4:4:4 only; 420 runs through PIL (see JPEG)")
        from torchvision.io import decode_jpeg, encode_jpeg

        encoded = encode_jpeg(list(to_uint8(x)), quality=self.quality)
        decoded = decode_jpeg([e.cpu() for e in encoded], device=x.device)
        return torch.stack(decoded).float().div_(255)

    def _pil_nvjpeg(self, x: torch.Tensor) -> torch.Tensor:
        """PIL (libjpeg) encode on host threads, batched nvjpeg decode on ``x``'s device: the same
        bitstream as the CPU path, a different decoder (see the class docstring)."""
        from torchvision.io import decode_jpeg

        encoded = [torch.frombuffer(bytearray(b), dtype=torch.uint8) for b in self._map(self._encode_one, x)]
        return torch.stack(decode_jpeg(encoded, device=x.device)).float().div_(255)


@dataclass
class DiffJPEG:
    """kornia's differentiable JPEG (Reich et al. 2024; Shin & Song 2017): forward and backward
    through a smooth model of the codec. Used only to craft adaptive attacks; evaluation always
    goes through the real JPEG.

    kornia models 4:2:0 only, and has no switch for it: ``kornia.enhance.jpeg`` halves Cb and Cr
    with an antialiased bilinear resize (not libjpeg's 2×2 box average) and doubles them back
    bilinearly (close to libjpeg's triangle upsampling). For ``subsampling=444`` the attack
    therefore crafts against a 4:2:0 model of a 4:4:4 defense: its gradient sees chroma smoothed
    that the real defense keeps. ``subsampling`` is kept to record what the real defense is; the
    adaptive-bpda attack (real JPEG forward, identity backward) has no such mismatch."""

    quality: int = 75
    subsampling: int = 420  # what the real defense does; kornia models 4:2:0 whatever it is

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        from kornia.enhance import jpeg_codec_differentiable

        quality = torch.tensor([float(self.quality)], device=x.device, dtype=x.dtype)
        return jpeg_codec_differentiable(x, quality)


def _label(p: dict[str, Any]) -> str:
    label = f"jpeg-q{p['quality']}"
    return label if p["subsampling"] == 420 else f"{label}-{p['subsampling']}"


DEFENSE = DefenseType(
    name="jpeg",
    params=(
        Param("quality", 75, "int", 1, 100),
        Param("subsampling", 420, "choice", choices=SUBSAMPLINGS,
              help="420 (4:2:0 chroma, what PIL and libjpeg save), 444 (4:4:4, no chroma subsampling)"),
    ),
    build=lambda quality, subsampling: JPEG(quality, subsampling),
    label=_label,
)
