"""What every data source shares: the dataset, its errors, decoding one image within bounds, preparing it for a
model, and the order a limited set is taken in.

Every source yields a :class:`Dataset` of 8-bit images (N, 3, S, S) after the model's evaluation crop (resize the
shorter side, centre-crop S; sources of images that fill their frame resize them whole). Images stay on the 8-bit
grid, so a measured ‖x_adv − x‖∞ after quantising x_adv is bounded by ε + 1/510.
"""

from __future__ import annotations

import logging
import math
import os
import stat
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torchvision.transforms.v2 import functional as TF

from bench.data.store import ImageSink, ImageStore
from bench.specs import DEFAULT_MAX_PIXELS, DataSpec, Preprocess

log = logging.getLogger("bench.data")

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")

IMAGE_FORMATS = ("PNG", "JPEG", "MPO", "BMP", "GIF", "WEBP", "TIFF")  # PIL's names; MPO: a phone's multi-picture JPEG



class DataError(ValueError):
    """A data source that cannot be used; ``key`` is the suite key it concerns (under ``data``)."""

    def __init__(self, message: str, key: str | None = None):
        super().__init__(message)
        self.key = key


@dataclass
class Dataset:
    name: str
    images: "torch.Tensor | ImageStore"  # uint8, (N, 3, S, S); on disk when large (bench/data/store.py)
    labels: torch.Tensor  # int64, (N,)
    ids: list[str]
    class_names: list[str] | None = None
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (item, reason)
    note: str = ""  # what a report must say about this data (e.g. that it is a proxy)
    split: dict | None = None  # how a fixed split was drawn (recorded in run.json)
    # how images became S × S: "crop" (shorter side resized, centre crop: photos) or "whole" (resized whole, never
    # cropped: sources whose images fill their frame, digits and the torchvision formats); the report says which
    transform: str = "crop"

    def __len__(self) -> int:
        return len(self.labels)

    def batches(self, batch_size: int):
        """Yield (images as float in [0, 1], labels) batches, in order."""
        for i in range(0, len(self), batch_size):
            yield self.images[i : i + batch_size].float().div_(255), self.labels[i : i + batch_size]


class SkipImage(ValueError):
    """One image that is not decoded (the reason says why); the data set goes on without it."""


def open_image(source, max_pixels: int = DEFAULT_MAX_PIXELS) -> torch.Tensor:
    """One image file (a path or a file object) decoded as uint8 (3, H, W). Refused before any pixel
    is decoded: a path that is not a regular file (a FIFO would block the run for ever, a device
    never ends) and an image over ``max_pixels`` (a 12,000 × 12,000 PNG of 420 KB decodes into
    432 MB, and PIL only warns below 179 M pixels)."""
    if isinstance(source, (str, Path)):
        try:
            mode = os.stat(source).st_mode
        except OSError as exc:
            raise SkipImage(exc.strerror or str(exc)) from None
        if not stat.S_ISREG(mode):
            raise SkipImage("not a regular file (a FIFO, a device or a folder): not read")
    with warnings.catch_warnings():  # PIL's DecompressionBombWarning: the budget below decides, in one line
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        Image.init()  # PIL registers its plugins (MPO, WEBP, TIFF …) lazily; open() with formats needs them
        try:  # only formats whose header gives the size before any pixel is decoded (ICO, ICNS decode on open)
            im = Image.open(source, formats=[f for f in IMAGE_FORMATS if f in Image.OPEN])
        except UnidentifiedImageError:
            raise SkipImage(f"not an image in a format bench reads ({', '.join(IMAGE_FORMATS)}): not decoded") from None
    with im:
        w, h = im.size
        if w * h > max_pixels:
            raise SkipImage(f"{w}×{h} is {w * h / 1e6:.1f} M pixels, over the budget of {max_pixels / 1e6:g} M per image "
                            "(data.max_pixels): not decoded")
        return torch.from_numpy(np.array(im.convert("RGB"))).permute(2, 0, 1)


def prepare(image: torch.Tensor, pre: "Preprocess | int", max_pixels: int = DEFAULT_MAX_PIXELS) -> torch.Tensor:
    """Resize the shorter side to the model's resize size (default size/0.875) with its
    interpolation (antialiased, as torchvision's and timm's eval transforms) and centre-crop its
    input size; uint8 in, uint8 out. An image so elongated that the resized copy would be over
    ``max_pixels`` is :class:`SkipImage` (a 100 × 600,000 strip resized to 256 px would be 1.5 G pixels)."""
    pre = Preprocess(pre) if isinstance(pre, int) else pre
    h, w = image.shape[-2:]
    resized = pre.resize * math.ceil(pre.resize * max(h, w) / max(min(h, w), 1))
    if resized > max_pixels:
        raise SkipImage(f"{w}×{h}: resized to {pre.resize} px on its shorter side it would be {resized / 1e6:.1f} M pixels, "
                        f"over the budget of {max_pixels / 1e6:g} M (data.max_pixels): not resized")
    mode = TF.InterpolationMode(pre.interpolation)
    image = TF.resize(image, pre.resize, interpolation=mode, antialias=True)
    return TF.center_crop(image, [pre.input_size, pre.input_size]).contiguous()


@dataclass(frozen=True)
class SourceInfo:
    """One data source as the registry (bench/data/__init__.py) knows it: how to load and describe it, and the
    keys of its entry."""

    name: str
    load: Callable[["DataSpec", "Preprocess"], "Dataset"]
    describe: Callable[["DataSpec"], tuple[int, int]]  # (images, classes); lists files, decodes nothing
    needs_path: str | None  # "file", "dir" or None
    splits: tuple[str, ...] | None = ()  # the values ``split:`` may take (empty: no split; None: any the data has)
    image_size: int = 224  # the default ``image_size``: ImageNet's, or the source's own
    path_key: str = "path"  # the entry key that holds its path (torchvision's datasets: root)
    required: tuple[str, ...] = ()  # its own keys an entry must give (torchvision: name)
    # its own optional keys, each with the check of its value (a problem in words, or None), kept in DataSpec.options
    options: dict[str, Callable[[Any], str | None]] = field(default_factory=dict)
    size_of: Callable[[dict], int] | None = None  # the default image_size from the entry (a dataset's native size)
    default_split: str | None = None  # with splits None: the split when the entry names none
    defaults: dict[str, Any] = field(default_factory=dict)  # option values left out of the spec (its digest stays)

    @property
    def keys(self) -> tuple[str, ...]:
        return (*self.required, *self.options)


def order_problem(value: Any) -> str | None:
    """``order``'s check: balanced (default) or file."""
    if value not in ORDERS:
        return f"{value!r} is not allowed; allowed: {', '.join(ORDERS)} (file: the dataset's own order, as RobustBench takes its first n)"
    return None


def balanced(labels: np.ndarray) -> np.ndarray:
    """Indices taken round-robin across classes (each class in its own order): any prefix is class-balanced."""
    rank = np.zeros(len(labels), dtype=np.int64)
    for c in np.unique(labels):
        where = np.flatnonzero(labels == c)
        rank[where] = np.arange(len(where))
    return np.lexsort((labels, rank))


ORDERS = ("balanced", "file")  # data.order of the sources that take it (torchvision, hf)



def ordered(labels: np.ndarray, spec: "DataSpec") -> np.ndarray:
    """The indices a source takes, ``limit`` of them: round-robin across classes (``order: balanced``, the default:
    any prefix is class-balanced), or the dataset's own order (``order: file``: RobustBench's first n test images)."""
    index = np.arange(len(labels)) if dict(spec.options).get("order", "balanced") == "file" else balanced(labels)
    return index[: spec.limit] if spec.limit else index


def limited(n: int, spec: "DataSpec") -> int:
    return min(n, spec.limit) if spec.limit else n


def finish(name, images, labels, ids, spec, pre, class_names, limit: bool = True) -> Dataset:
    if limit and spec.limit:
        images, labels, ids = images[: spec.limit], labels[: spec.limit], ids[: spec.limit]
    sink = ImageSink(pre.input_size)
    for image in images:
        sink.add(image)
    return Dataset(name, sink.result(), torch.tensor(labels, dtype=torch.int64), list(ids), class_names)


RESIZE_CHUNK = 256  # images resized at a time: memory holds one chunk at the input size, not the data


def resized(images: torch.Tensor, size: int, interpolation: str) -> "torch.Tensor | ImageStore":
    """uint8 images (N, 3, h, w) that fill their frame, resized whole to size × size (never cropped), a chunk at a
    time into an :class:`ImageSink` (small sources at their own size, e.g. CIFAR's 32 px, become large at 224)."""
    sink = ImageSink(size)
    mode = TF.InterpolationMode(interpolation)
    for i in range(0, len(images), RESIZE_CHUNK):
        chunk = images[i : i + RESIZE_CHUNK]
        if chunk.shape[-1] != size or chunk.shape[-2] != size:
            chunk = TF.resize(chunk, [size, size], interpolation=mode, antialias=True)
        sink.add(chunk.contiguous())
    return sink.result()
