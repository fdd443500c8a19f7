"""Data sources.

Every source yields a :class:`Dataset` of 8-bit images (N, 3, S, S) after the standard
evaluation crop: resize the shorter side to S/0.875, centre-crop S. Images stay on the 8-bit
grid, so a measured ‖x_adv − x‖∞ after quantising x_adv is bounded by ε + 1/510.
"""

from __future__ import annotations

import csv
import logging
import math
import os
import stat
import warnings
from itertools import zip_longest
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torchvision.transforms.v2 import functional as TF

from bench import data_hf, data_torchvision
from bench.specs import DEFAULT_MAX_PIXELS, DataSpec, Preprocess


log = logging.getLogger(__name__)

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
    images: torch.Tensor  # uint8, (N, 3, S, S)
    labels: torch.Tensor  # int64, (N,)
    ids: list[str]
    class_names: list[str] | None = None
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (item, reason)
    note: str = ""  # what a report must say about this data (e.g. that it is a proxy)
    split: dict | None = None  # how a fixed split was drawn (recorded in run.json)

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


# ---------------------------------------------------------------------------------------------
# Bundled samples: real photos that ship inside installed packages, with their true ImageNet class.


def _skimage(name: str) -> Callable[[], np.ndarray]:
    def load() -> np.ndarray:
        import skimage.data

        return getattr(skimage.data, name)()

    return load


def _grace_hopper() -> np.ndarray:
    import matplotlib.cbook
    from PIL import Image

    with matplotlib.cbook.get_sample_data("grace_hopper.jpg") as f:
        return np.asarray(Image.open(f).convert("RGB"))


# (id, loader, ImageNet class index, what it shows). Labels are the true class of the photo,
# not a model's prediction: Chelsea is an orange tabby, so 281 even where a model says 285.
SAMPLE_PHOTOS = (
    ("chelsea", _skimage("chelsea"), 281, "tabby cat (scikit-image)"),
    ("coffee", _skimage("coffee"), 967, "espresso in a cup (scikit-image)"),
    ("rocket", _skimage("rocket"), 657, "rocket on its launch pad, ImageNet 'missile' (scikit-image)"),
    ("grace_hopper", _grace_hopper, 652, "Grace Hopper in Navy uniform, ImageNet 'military uniform' (matplotlib)"),
)
# Views of each photo: (name, centre-crop fraction of the shorter side, horizontal flip). Four
# photos do not make a dataset, four views each give batches the runner can time; they are
# not independent samples, and the report says n honestly.
SAMPLE_VIEWS = (("full", 1.0, False), ("flip", 1.0, True), ("crop80", 0.8, False), ("crop65", 0.65, False))


def _load_samples(spec: "DataSpec", pre: "Preprocess") -> Dataset:
    from bench.models import imagenet_class_names

    images, labels, ids = [], [], []
    photos = [(pid, torch.from_numpy(np.array(load()[..., :3])).permute(2, 0, 1), label) for pid, load, label, _ in SAMPLE_PHOTOS]
    for view, frac, flip in SAMPLE_VIEWS:  # view-major so that `limit: 4` still covers every photo
        for pid, img, label in photos:
            h, w = img.shape[-2:]
            side = round(min(h, w) * frac)
            v = TF.center_crop(img, [side, side]) if frac < 1 else img
            v = TF.horizontal_flip(v) if flip else v
            images.append(prepare(v, pre))
            labels.append(label)
            ids.append(f"{pid}:{view}")
    return _finish("samples", images, labels, ids, spec, pre, imagenet_class_names())


def _count_samples(spec: "DataSpec") -> int:
    return _limited(len(SAMPLE_PHOTOS) * len(SAMPLE_VIEWS), spec)


# ---------------------------------------------------------------------------------------------
# scikit-learn's handwritten digits: 1,797 real 8×8 greyscale scans (0–16), 10 classes, on disk with
# the package. The split is fixed (its own seed, never the suite's), stratified, and recorded.

DIGITS_SPLIT_SEED = 0
DIGITS_TEST_FRACTION = 0.2
DIGITS_SPLITS = ("test", "train")  # the first is the default
DIGITS_IMAGES = 1797


def digits_split(split: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(indices into load_digits(), 8×8 images as uint8 on the 8-bit grid, labels) of one split,
    ordered round-robin across classes so that ``limit`` keeps them balanced."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    index = np.arange(len(bunch.target))
    train, test = train_test_split(index, test_size=DIGITS_TEST_FRACTION, stratify=bunch.target,
                                   random_state=DIGITS_SPLIT_SEED)
    chosen = np.sort(train if split == "train" else test)
    per_class = [chosen[bunch.target[chosen] == k] for k in range(10)]
    order = np.array([i for rank in zip_longest(*per_class) for i in rank if i is not None])
    # 0..16 onto 0..255: the scans' 17 grey levels land exactly on the 8-bit grid's nearest steps
    images = np.rint(bunch.images[order] * (255 / 16)).astype(np.uint8)
    return order, images, bunch.target[order].astype(np.int64)


def _load_digits(spec: "DataSpec", pre: "Preprocess") -> Dataset:
    import hashlib

    split = spec.split or DIGITS_SPLITS[0]
    if split not in DIGITS_SPLITS:
        raise DataError(f"digits has no split {split!r}; allowed: {', '.join(DIGITS_SPLITS)}", key="split")
    order, images, labels = digits_split(split)
    n_split = len(order)
    if spec.limit:
        order, images, labels = order[: spec.limit], images[: spec.limit], labels[: spec.limit]
    grey = torch.from_numpy(images)[:, None].expand(-1, 3, -1, -1)
    # The scans fill their 8×8 frame: upscale the whole image to the input size, never crop.
    mode = TF.InterpolationMode(pre.interpolation)
    up = TF.resize(grey, [pre.input_size, pre.input_size], interpolation=mode, antialias=True).contiguous()
    ds = Dataset(f"digits:{split}", up, torch.from_numpy(labels), [f"digits:{i}" for i in order.tolist()],
                 [str(k) for k in range(10)])
    ds.note = ("scikit-learn's handwritten digits (1,797 real 8×8 scans, 10 classes), upscaled to "
               f"{pre.input_size} px {pre.interpolation}; {split} split of a fixed stratified 80/20 split")
    ds.split = {"source": "digits", "split": split, "seed": DIGITS_SPLIT_SEED, "test_fraction": DIGITS_TEST_FRACTION,
                "stratified": True, "n_split": n_split,
                "indices_sha256": hashlib.sha256(np.sort(order).tobytes()).hexdigest()[:16]}
    return ds


def _describe_digits(spec: "DataSpec") -> tuple[int, int]:
    n_test = math.ceil(DIGITS_IMAGES * DIGITS_TEST_FRACTION)  # as scikit-learn rounds the test share
    n = n_test if (spec.split or DIGITS_SPLITS[0]) == "test" else DIGITS_IMAGES - n_test
    return _limited(n, spec), 10


# ---------------------------------------------------------------------------------------------
# Files on disk


def _manifest_items(spec: "DataSpec") -> list[tuple[Path, int]]:
    path = Path(spec.path)
    items = []
    try:
        with path.open(newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            if reader.fieldnames is None or not {"path", "label"} <= set(reader.fieldnames):
                raise DataError(f"{path}: the manifest needs a header with columns path,label; got {reader.fieldnames}")
            for line, row in enumerate(reader, start=2):
                rel, label = (row.get("path") or "").strip(), (row.get("label") or "").strip()
                if not rel:
                    raise DataError(f"{path}:{line}: empty path")
                try:
                    label_i = int(label)
                except ValueError:
                    raise DataError(f"{path}:{line}: label must be a non-negative integer class index, got {label!r}") from None
                if label_i < 0:
                    raise DataError(f"{path}:{line}: label must be a non-negative integer class index, got {label_i}")
                items.append((path.parent / rel, label_i))
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot read manifest ({exc})") from None
    return items


def _folder_items(spec: "DataSpec") -> tuple[list[tuple[Path, int]], list[str]]:
    """Images of every class folder, taken round-robin across classes (so ``limit`` keeps the
    classes balanced), each class in sorted file order."""
    root = Path(spec.path)
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    # not is_dir() rather than is_file(): a FIFO or a device named like an image is listed, then skipped with a reason
    per_class = [[(f, idx) for f in sorted((root / cls).rglob("*")) if not f.is_dir() and f.suffix.lower() in IMAGE_SUFFIXES]
                 for idx, cls in enumerate(classes)]
    items = [item for rank in zip_longest(*per_class) for item in rank if item is not None]
    return items, classes


def _read_files(name: str, items: list[tuple[Path, int]], spec: "DataSpec", pre: "Preprocess", class_names=None) -> Dataset:
    images, labels, ids, skipped = [], [], [], []
    for path, label in items[: spec.limit] if spec.limit else items:
        try:
            images.append(prepare(open_image(path, spec.pixel_budget), pre, spec.pixel_budget))
        except Exception as exc:  # SkipImage; PIL raises OSError, SyntaxError or ValueError depending on the damage
            skipped.append((str(path), str(exc).splitlines()[0][:160] if str(exc) else type(exc).__name__))
            log.warning("skipping unreadable image %s: %s", path, skipped[-1][1])
            continue
        labels.append(label)
        ids.append(str(path))
    ds = _finish(name, images, labels, ids, spec, pre, class_names, limit=False)
    ds.skipped = skipped
    return ds


def _load_manifest(spec: "DataSpec", pre: "Preprocess") -> Dataset:
    return _read_files(f"manifest:{Path(spec.path).name}", _manifest_items(spec), spec, pre)


def _load_folder(spec: "DataSpec", pre: "Preprocess") -> Dataset:
    items, classes = _folder_items(spec)
    root = Path(spec.path)
    ds = _read_files(f"imagefolder:{root.parent.name}/{root.name}", items, spec, pre, classes)
    ds.note = _split_note(root)
    return ds


def _split_note(root: Path) -> str:
    """The note of a data set made by `bench data` (its split.json sits in the folder or above)."""
    import json

    for folder in (root, root.parent):
        card = folder / "split.json"
        if card.is_file():
            try:
                return str(json.loads(card.read_text()).get("note", ""))
            except (OSError, ValueError):
                return ""
    return ""


# ---------------------------------------------------------------------------------------------
# Registry


@dataclass(frozen=True)
class SourceInfo:
    load: Callable[["DataSpec", "Preprocess"], Dataset]
    describe: Callable[["DataSpec"], tuple[int, int]]  # (images, classes); lists files, decodes nothing
    needs_path: str | None  # "file", "dir" or None
    splits: tuple[str, ...] | None = ()  # the values ``split:`` may take (empty: no split; None: any the data has)
    image_size: int = 224  # the default ``image_size``: ImageNet's, or the source's own
    path_key: str = "path"  # the entry key that holds its path (torchvision's datasets: root)
    keys: tuple[str, ...] = ()  # entry keys of its own (torchvision: name)
    size_of: Callable[[dict], int] | None = None  # the default image_size from the entry (a dataset's native size)
    default_split: str | None = None  # with splits None: the split when the entry names none


def _describe_manifest(spec: "DataSpec") -> tuple[int, int]:
    items = _manifest_items(spec)
    return _limited(len(items), spec), 1 + max((label for _, label in items), default=-1)


def _describe_folder(spec: "DataSpec") -> tuple[int, int]:
    items, classes = _folder_items(spec)
    return _limited(len(items), spec), len(classes)


SOURCES: dict[str, SourceInfo] = {
    "samples": SourceInfo(_load_samples, lambda s: (_count_samples(s), 1000), None),
    "manifest": SourceInfo(_load_manifest, _describe_manifest, "file"),
    "imagefolder": SourceInfo(_load_folder, _describe_folder, "dir"),
    "digits": SourceInfo(_load_digits, _describe_digits, None, DIGITS_SPLITS, 32),
    "torchvision": SourceInfo(data_torchvision.load, data_torchvision.describe, "dir", data_torchvision.SPLITS, 32,
                              path_key="root", keys=("name", "order"), size_of=lambda entry: data_torchvision.native_size(entry.get("name"))),
    "hf": SourceInfo(data_hf.load, data_hf.describe, "dir", None, keys=(*data_hf.KEYS, "order"), default_split=data_hf.DEFAULT_SPLIT),
}


def describe(spec: "DataSpec") -> tuple[int, int]:
    """(number of images, number of classes the labels need) before decoding anything, so a
    suite can be validated before any compute."""
    return SOURCES[spec.source].describe(spec)


def load_dataset(spec: "DataSpec", pre: "Preprocess | None" = None) -> Dataset:
    """Decode every image of a source and prepare it as ``pre`` says (default: the data's
    image_size, bilinear, the usual 0.875 crop); raises DataError if none is usable."""
    ds = SOURCES[spec.source].load(spec, pre or Preprocess(spec.image_size))
    if len(ds) == 0:
        raise DataError(f"the dataset is empty after skipping {len(ds.skipped)} unreadable image(s)")
    return ds


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


def _limited(n: int, spec: "DataSpec") -> int:
    return min(n, spec.limit) if spec.limit else n


def _finish(name, images, labels, ids, spec, pre, class_names, limit: bool = True) -> Dataset:
    if limit and spec.limit:
        images, labels, ids = images[: spec.limit], labels[: spec.limit], ids[: spec.limit]
    stacked = torch.stack(images) if images else torch.empty(0, 3, pre.input_size, pre.input_size, dtype=torch.uint8)
    return Dataset(name, stacked, torch.tensor(labels, dtype=torch.int64), list(ids), class_names)
