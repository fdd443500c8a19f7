"""Hugging Face datasets on disk: save_to_disk folders (Dataset, DatasetDict) and parquet files as the Hub keeps them."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from bench.data import load_dataset
from bench.specs import Preprocess
from bench.suite import SuiteError, load_suite

datasets = pytest.importorskip("datasets", reason="the hf extra is not installed (make install installs it)")

LABELS = [0] * 8 + [1] * 5 + [2] * 3  # skewed: a plain prefix would not be balanced


def _png(seed: int, size: int = 40) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


def _dataset(image_column: str = "image", label_column: str = "label"):
    features = datasets.Features({image_column: datasets.Image(),
                                  label_column: datasets.ClassLabel(names=["cat", "dog", "fox"])})
    return datasets.Dataset.from_dict({image_column: [{"bytes": _png(i), "path": None} for i in range(len(LABELS))],
                                       label_column: LABELS}, features=features)


def _suite(tmp_path: Path, data: dict) -> Path:
    doc = {"name": "hf", "data": {"image_size": 32, **data}, "models": [{"arch": "small_cnn", "num_classes": 3}],
           "attacks": [{"type": "fgsm", "eps": 0.1}]}
    path = tmp_path / "suite.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def _check(spec, n: int = 6) -> None:
    ds = load_dataset(spec, Preprocess(spec.image_size))
    assert tuple(ds.images.shape) == (n, 3, 32, 32)
    assert ds.labels.tolist() == [0, 1, 2] * (n // 3)  # round-robin across classes
    assert ds.class_names == ["cat", "dog", "fox"]


def test_a_save_to_disk_dataset_reads_with_its_class_names(tmp_path):
    _dataset().save_to_disk(str(tmp_path / "ds"))
    suite = load_suite(_suite(tmp_path, {"source": "hf", "path": "ds", "limit": 6}))
    assert (suite.data.split, suite.data.options) == ("test", ())
    _check(suite.data)


def test_a_dataset_dict_picks_its_split_and_other_column_names_work(tmp_path):
    split = _dataset("img", "y")
    datasets.DatasetDict({"train": split, "test": split}).save_to_disk(str(tmp_path / "dd"))
    suite = load_suite(_suite(tmp_path, {"source": "hf", "path": "dd", "split": "train", "limit": 6,
                                         "image_column": "img", "label_column": "y"}))
    assert suite.data.options == (("image_column", "img"), ("label_column", "y"))
    _check(suite.data)


def test_parquet_files_as_the_hub_keeps_them(tmp_path):
    (tmp_path / "pq" / "data").mkdir(parents=True)
    _dataset().to_parquet(str(tmp_path / "pq" / "data" / "test-00000-of-00001.parquet"))
    suite = load_suite(_suite(tmp_path, {"source": "hf", "path": "pq", "limit": 6}))
    _check(suite.data)
    whole = load_suite(_suite(tmp_path, {"source": "hf", "path": "pq"})).data
    assert sorted(load_dataset(whole, Preprocess(32)).labels.tolist()) == LABELS


@pytest.mark.parametrize("data, key, words", [
    ({"source": "hf", "path": "dd", "split": "validation"}, "data.split", "has no split 'validation'; it has: train, test"),
    ({"source": "hf", "path": "dd", "image_column": "pixels"}, "data.image_column", "has no column 'pixels'; its columns: image, label"),
    ({"source": "hf", "path": "empty"}, "data.path", "neither a save_to_disk dataset"),
    ({"source": "hf", "path": "dd", "label_column": 3}, "data.label_column", "must be a column name"),
])
def test_bad_entries_are_one_line_errors_naming_the_key(tmp_path, data, key, words):
    datasets.DatasetDict({"train": _dataset(), "test": _dataset()}).save_to_disk(str(tmp_path / "dd"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(SuiteError) as info:
        load_suite(_suite(tmp_path, data))
    assert f": {key}: " in str(info.value) and words in str(info.value), str(info.value)
