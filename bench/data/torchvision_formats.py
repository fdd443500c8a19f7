"""``data: {source: torchvision, name: CIFAR10, root: PATH, split: test}``: torchvision's datasets from their files on disk.

CIFAR10, CIFAR100, SVHN, MNIST, FashionMNIST and STL10, from the layout torchvision's ``download=True`` leaves under
``root`` (bench never downloads: a missing file is a one-line error naming every file expected, and where).
torchvision checks each file's MD5 before reading it; bench checks that the split's files are there and parses them,
so a truncated file still fails, with its name. The CIFAR files are pickles, and unpickling runs whatever a pickle
asks for: bench reads them itself with a restricted unpickler (:class:`bench.untrusted.DataUnpickler`: dicts, lists,
strings, numbers and numpy arrays, nothing else), and a file that asks for anything more is a one-line error naming
it; the other datasets are read by torchvision's own classes (raw binary, or SVHN's .mat), never from its legacy
``processed/*.pt`` files. Grey images (MNIST, FashionMNIST) become 3 channels. An image fills its frame: it is
resized whole to the input size (the native size by default: 32 px, 28 px for the MNISTs, 96 px for STL10), never
cropped. ``limit`` takes the images round-robin across classes, so a limited set stays class-balanced; ``order: file``
keeps the dataset's own order instead (RobustBench evaluates the first n test images).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np
import torch

from bench.data.base import SourceInfo, order_problem
from bench.names import closest
from bench.untrusted import UnsafeFile, load_data_pickle

if TYPE_CHECKING:
    from bench.data.base import Dataset
    from bench.specs import DataSpec, Preprocess

SPLITS = ("test", "train", "extra")  # the first is the default; extra is SVHN's alone


@dataclass(frozen=True)
class Layout:
    """Where torchvision keeps one dataset's files under ``root``, per split, and its native image size."""

    folder: str  # below root
    files: Callable[[str], list[str]]  # the split's files, in that folder
    size: int
    splits: tuple[str, ...] = ("test", "train")


LAYOUTS = {
    "CIFAR10": Layout("cifar-10-batches-py", lambda s: (["test_batch"] if s == "test" else [f"data_batch_{i}" for i in range(1, 6)])
                      + ["batches.meta"], 32),
    "CIFAR100": Layout("cifar-100-python", lambda s: [s, "meta"], 32),
    "SVHN": Layout("", lambda s: [f"{s}_32x32.mat"], 32, ("test", "train", "extra")),
    "MNIST": Layout("MNIST/raw", lambda s: [f"{'t10k' if s == 'test' else 'train'}-images-idx3-ubyte",
                                            f"{'t10k' if s == 'test' else 'train'}-labels-idx1-ubyte"], 28),
    "FashionMNIST": Layout("FashionMNIST/raw", lambda s: [f"{'t10k' if s == 'test' else 'train'}-images-idx3-ubyte",
                                                          f"{'t10k' if s == 'test' else 'train'}-labels-idx1-ubyte"], 28),
    "STL10": Layout("stl10_binary", lambda s: [f"{s}_X.bin", f"{s}_y.bin"], 96),
}
NAMES = tuple(LAYOUTS)


class TorchvisionDataError(ValueError):
    def __init__(self, message: str, key: str):
        super().__init__(message)
        self.key = key


def check(name: Any, split: str, root: Path) -> Layout:
    """The layout of ``name``, its split checked and every file of it present (TorchvisionDataError with the key)."""
    if name not in LAYOUTS:
        raise TorchvisionDataError(f"unknown torchvision dataset {name!r}{closest(name, NAMES)}"
                                   f"; allowed: {', '.join(NAMES)}", "name")
    layout = LAYOUTS[name]
    if split not in layout.splits:
        raise TorchvisionDataError(f"{name} has no split {split!r}; allowed: {', '.join(layout.splits)}", "split")
    folder = root / layout.folder
    missing = [f for f in layout.files(split) if not (folder / f).is_file()]
    if missing:
        raise TorchvisionDataError(f"{name} {split} split: {len(missing)} of its files are not in {folder}: {', '.join(missing)} "
                                   f"(torchvision's layout, as download=True leaves it under root; bench never downloads)", "root")
    return layout


def _dataset(name: str, root: Path, split: str):
    """torchvision's dataset object (not for CIFAR: see :func:`_cifar`), its MD5 checks replaced by
    :func:`check`'s presence check."""
    import torchvision.datasets as D

    base = getattr(D, name)

    class Present(base):  # type: ignore[misc,valid-type]
        def _check_integrity(self) -> bool:
            return True

        def _check_exists(self) -> bool:
            return True

        def _check_legacy_exist(self) -> bool:  # MNIST: the raw files check() found, never processed/*.pt
            return False

    Present.__name__ = name  # MNIST's folders are named after the class
    if name in ("SVHN", "STL10"):
        return Present(str(root), split=split)
    return Present(str(root), train=split == "train")


CIFAR_KEYS = {"CIFAR10": ("labels", "label_names"), "CIFAR100": ("fine_labels", "fine_label_names")}
NOT_CIFAR = "a CIFAR batch"


def _field(entry: Any, key: str, path: Path) -> Any:
    """``entry[key]`` of an unpickled CIFAR dict, whose keys are str (Python 2 files read as latin1) or bytes."""
    if not isinstance(entry, dict):
        raise TorchvisionDataError(f"{path}: not {NOT_CIFAR}: it holds a {type(entry).__name__}, not a dict", "root")
    for k in (key, key.encode()):
        if k in entry:
            return entry[k]
    raise TorchvisionDataError(f"{path}: not {NOT_CIFAR}: it has no {key!r} entry", "root")


def _cifar(name: str, root: Path, split: str) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    """A CIFAR split read from its pickles as data (the format torchvision reads: a dict per batch with
    ``data``, N×3072 uint8 rows of R, G, B planes, and the labels; the meta file's class names)."""
    layout = LAYOUTS[name]
    folder = root / layout.folder
    *batches, meta = layout.files(split)
    label_key, names_key = CIFAR_KEYS[name]
    images, labels = [], []
    for file in batches:
        path = folder / file
        entry = load_data_pickle(path, NOT_CIFAR)
        data = np.asarray(_field(entry, "data", path))
        y = np.asarray(_field(entry, label_key, path))
        if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or y.shape != (len(data),) \
                or not np.issubdtype(y.dtype, np.integer):
            raise TorchvisionDataError(f"{path}: not {NOT_CIFAR}: expected uint8 data of N×3072 and N integer labels, got "
                                       f"{data.dtype} {data.shape} and {y.dtype} {y.shape}", "root")
        images.append(data.reshape(-1, 3, 32, 32))
        labels.append(y.astype(np.int64))
    names = _field(load_data_pickle(folder / meta, NOT_CIFAR), names_key, folder / meta)
    if not isinstance(names, (list, tuple)):
        raise TorchvisionDataError(f"{folder / meta}: not {NOT_CIFAR}: {names_key} is not a list of names", "root")
    names = tuple(n.decode("latin1") if isinstance(n, bytes) else str(n) for n in names)
    y = np.concatenate(labels)
    names = names or tuple(str(k) for k in range(int(y.max()) + 1 if len(y) else 0))
    return np.ascontiguousarray(np.concatenate(images)), y, names


@functools.lru_cache(maxsize=2)
def _raw(name: str, root: str, split: str) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    """(uint8 images N×C×H×W, labels, class names) of one split, read once per process."""
    if name in CIFAR_KEYS:
        return _cifar(name, Path(root), split)
    ds = _dataset(name, Path(root), split)
    data = ds.data.numpy() if isinstance(ds.data, torch.Tensor) else np.asarray(ds.data)
    labels = getattr(ds, "targets", None)
    labels = getattr(ds, "labels", None) if labels is None else labels
    labels = labels.numpy() if isinstance(labels, torch.Tensor) else np.asarray(labels)
    if data.ndim == 3:  # grey: N×H×W
        data = data[:, None]
    elif data.shape[-1] == 3 and data.shape[1] != 3:  # CIFAR: N×H×W×C
        data = data.transpose(0, 3, 1, 2)
    classes = tuple(getattr(ds, "classes", None) or [str(k) for k in range(int(labels.max()) + 1)])
    return np.ascontiguousarray(data), labels.astype(np.int64), classes


def describe(spec: "DataSpec") -> tuple[int, int]:
    from bench.data.base import DataError, limited

    try:
        check(spec.name, spec.split or SPLITS[0], Path(spec.path))
        _, labels, classes = _raw(spec.name, spec.path, spec.split or SPLITS[0])
    except TorchvisionDataError as exc:
        raise DataError(str(exc), key=exc.key) from None
    except UnsafeFile as exc:  # a data file that would run code: refused, nothing in it ran
        raise DataError(str(exc), key="root") from None
    except Exception as exc:  # a file torchvision cannot parse (truncated, another format)
        raise DataError(f"{spec.name} in {spec.path}: torchvision cannot read it ({type(exc).__name__}: {exc})", key="root") from None
    return limited(len(labels), spec), max(len(classes), int(labels.max()) + 1 if len(labels) else 0)


def load(spec: "DataSpec", pre: "Preprocess") -> "Dataset":
    from bench.data.base import Dataset, ordered, resized

    split = spec.split or SPLITS[0]
    describe(spec)  # the same checks, one error
    data, labels, classes = _raw(spec.name, spec.path, split)
    order = ordered(labels, spec)
    images = torch.from_numpy(data[order])
    if images.shape[1] == 1:
        images = images.expand(-1, 3, -1, -1)
    # the whole image, never cropped
    ds = Dataset(f"{spec.name}:{split}", resized(images, pre.input_size, pre.interpolation), torch.from_numpy(labels[order]),
                 [f"{spec.name}:{split}:{i}" for i in order.tolist()], list(classes))
    ds.transform = "whole"
    ds.note = f"torchvision's {spec.name} ({split} split, {len(labels)} images) read from {spec.path}"
    return ds


def native_size(name: Any) -> int:
    return LAYOUTS[name].size if name in LAYOUTS else 32


def _name_problem(value) -> str | None:
    return None  # checked with the files, by describe(): one message naming what is expected and where


SOURCE = SourceInfo("torchvision", load, describe, "dir", SPLITS, 32, path_key="root", required=("name",),
                    options={"order": order_problem}, size_of=lambda entry: native_size(entry.get("name")),
                    defaults={"order": "balanced"})
