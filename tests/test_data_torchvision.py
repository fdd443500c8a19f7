"""torchvision's datasets read from their files on disk, in torchvision's own formats, never downloaded."""

from __future__ import annotations

import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import yaml

from bench.data import load_dataset
from bench.specs import DataSpec, Preprocess
from bench.suite import SuiteError, load_suite

N, CLASSES = 30, 3  # images per split, classes used (labels cycle 0, 1, 2 in a skewed order)


def _labels(n: int = N) -> np.ndarray:
    return np.array([0] * 14 + [1] * 10 + [2] * 6)[:n]  # class 0 first: a plain prefix would not be balanced


def _images(n: int, c: int, h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, c, h, w), dtype=np.uint8)


def write_cifar10(root: Path) -> np.ndarray:
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    x = _images(N, 3, 32, 32)
    with open(folder / "test_batch", "wb") as f:
        pickle.dump({"data": x.reshape(N, -1), "labels": _labels().tolist()}, f)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": ["airplane", "automobile", "bird"] + [f"c{i}" for i in range(3, 10)]}, f)
    return x


def write_cifar100(root: Path) -> np.ndarray:
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    x = _images(N, 3, 32, 32, 1)
    with open(folder / "test", "wb") as f:
        pickle.dump({"data": x.reshape(N, -1), "fine_labels": _labels().tolist()}, f)
    with open(folder / "meta", "wb") as f:
        pickle.dump({"fine_label_names": [f"fine{i}" for i in range(100)]}, f)
    return x


def write_mnist(root: Path, name: str = "MNIST") -> np.ndarray:
    folder = root / name / "raw"
    folder.mkdir(parents=True)
    x = _images(N, 1, 28, 28, 2)[:, 0]
    (folder / "t10k-images-idx3-ubyte").write_bytes(struct.pack(">IIII", 2051, N, 28, 28) + x.tobytes())
    (folder / "t10k-labels-idx1-ubyte").write_bytes(struct.pack(">II", 2049, N) + _labels().astype(np.uint8).tobytes())
    return x[:, None].repeat(3, 1)


def write_svhn(root: Path) -> np.ndarray:
    from scipy.io import savemat

    root.mkdir(parents=True, exist_ok=True)
    x = _images(N, 3, 32, 32, 3)
    labels = _labels().copy()
    labels[labels == 0] = 10  # SVHN's .mat files say 10 for the digit 0
    savemat(root / "test_32x32.mat", {"X": x.transpose(2, 3, 1, 0), "y": labels[:, None]})
    return x


def write_stl10(root: Path) -> np.ndarray:
    folder = root / "stl10_binary"
    folder.mkdir(parents=True)
    x = _images(N, 3, 96, 96, 4)
    (folder / "test_X.bin").write_bytes(np.transpose(x, (0, 1, 3, 2)).tobytes())  # column-major, as the files are
    (folder / "test_y.bin").write_bytes((_labels() + 1).astype(np.uint8).tobytes())  # 1-based on disk
    return x


WRITERS = {"CIFAR10": write_cifar10, "CIFAR100": write_cifar100, "MNIST": write_mnist, "SVHN": write_svhn,
           "STL10": write_stl10, "FashionMNIST": lambda root: write_mnist(root, "FashionMNIST")}


def _suite(tmp_path: Path, data: dict) -> Path:
    doc = {"name": "tv", "data": data, "models": [{"arch": "small_cnn", "num_classes": 100}], "attacks": [{"type": "fgsm", "eps": 0.1}]}
    path = tmp_path / "suite.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


@pytest.mark.parametrize("name", list(WRITERS))
def test_each_dataset_reads_its_own_files_at_their_native_size_in_class_balanced_order(tmp_path, name):
    pixels = WRITERS[name](tmp_path / "root")
    suite = load_suite(_suite(tmp_path, {"source": "torchvision", "name": name, "root": "root", "limit": 9}))
    spec = suite.data
    assert (spec.name, spec.split, spec.limit) == (name, "test", 9)
    ds = load_dataset(spec, Preprocess(spec.image_size))
    native = {"MNIST": 28, "FashionMNIST": 28, "STL10": 96}.get(name, 32)
    assert spec.image_size == native and tuple(ds.images.shape) == (9, 3, native, native)
    assert ds.labels.tolist() == [0, 1, 2] * 3  # round-robin across classes: the limit stays balanced
    first = {0: 0, 1: 14, 2: 24}  # where each class's first image is in the files
    for k, label in enumerate((0, 1, 2)):
        assert np.array_equal(ds.images[k].numpy(), pixels[first[label]]), f"{name}: image {k} is not the file's"


def test_order_file_takes_the_first_images_as_the_files_hold_them_as_robustbench_does(tmp_path):
    pixels = write_cifar10(tmp_path / "root")
    suite = load_suite(_suite(tmp_path, {"source": "torchvision", "name": "CIFAR10", "root": "root", "limit": 5, "order": "file"}))
    ds = load_dataset(suite.data, Preprocess(suite.data.image_size))
    assert ds.labels.tolist() == _labels()[:5].tolist() and np.array_equal(ds.images.numpy(), pixels[:5])
    assert ds.ids == [f"CIFAR10:test:{i}" for i in range(5)]
    default = load_suite(_suite(tmp_path, {"source": "torchvision", "name": "CIFAR10", "root": "root", "limit": 5,
                                           "order": "balanced"}))
    assert default.data.options == () and default.digest() == load_suite(_suite(
        tmp_path, {"source": "torchvision", "name": "CIFAR10", "root": "root", "limit": 5})).digest()  # the default adds nothing
    with pytest.raises(SuiteError, match=r"data.order: 'random' is not allowed; allowed: balanced, file"):
        load_suite(_suite(tmp_path, {"source": "torchvision", "name": "CIFAR10", "root": "root", "order": "random"}))


def test_an_image_is_resized_whole_to_the_input_size(tmp_path):
    write_cifar10(tmp_path / "root")
    ds = load_dataset(DataSpec("torchvision", str(tmp_path / "root"), 4, 64, "test", "CIFAR10"), Preprocess(64))
    assert tuple(ds.images.shape) == (4, 3, 64, 64)


@pytest.mark.parametrize("data, key, words", [
    ({"source": "torchvision", "name": "CIFAR10", "root": "root"}, "data.root",
     "CIFAR10 test split: 2 of its files are not in"),
    ({"source": "torchvision", "name": "CIFAR-10", "root": "root"}, "data.name", "did you mean CIFAR10"),
    ({"source": "torchvision", "root": "root"}, "data.name", "is required"),
    ({"source": "torchvision", "name": "MNIST", "root": "root", "split": "extra"}, "data.split", "MNIST has no split 'extra'"),
    ({"source": "torchvision", "name": "CIFAR10", "path": "root"}, "data.path", "takes its folder as root: (not path:)"),
    ({"source": "digits", "name": "CIFAR10"}, "data.name", "source 'digits' takes no name"),
])
def test_missing_files_and_bad_keys_are_one_line_errors_that_name_what_is_expected(tmp_path, data, key, words):
    (tmp_path / "root").mkdir()
    with pytest.raises(SuiteError) as info:
        load_suite(_suite(tmp_path, data))
    message = str(info.value)
    assert f": {key}: " in message and words in message and "\n" not in message, message


def test_a_missing_file_error_names_every_file_expected(tmp_path):
    (tmp_path / "root").mkdir()
    with pytest.raises(SuiteError, match=r"cifar-10-batches-py: test_batch, batches\.meta .*bench never downloads"):
        load_suite(_suite(tmp_path, {"source": "torchvision", "name": "CIFAR10", "root": "root"}))


def test_a_truncated_file_is_a_suite_error_naming_the_dataset(tmp_path):
    write_mnist(tmp_path / "root")
    images = tmp_path / "root" / "MNIST" / "raw" / "t10k-images-idx3-ubyte"
    images.write_bytes(images.read_bytes()[:100])
    with pytest.raises(SuiteError, match=r"data\.root: MNIST in .*torchvision cannot read it"):
        load_suite(_suite(tmp_path, {"source": "torchvision", "name": "MNIST", "root": "root"}))


def test_a_torchvision_suite_runs_end_to_end(tmp_path):
    from bench.runner import run_suite

    write_cifar10(tmp_path / "root")
    result = run_suite(load_suite(_suite(tmp_path, {"source": "torchvision", "name": "CIFAR10", "root": "root", "limit": 12})),
                       tmp_path / "results", tmp_path / "reports")
    assert result.counts == {"ok": 1}
