"""Data sources: bundled photos, manifests and image folders, all on the 8-bit grid."""

from __future__ import annotations

import pytest
import torch

from bench.data import SAMPLE_PHOTOS, DataError, describe, load_dataset
from bench.suite import DataSpec


def test_samples_are_real_photos_with_imagenet_labels():
    ds = load_dataset(DataSpec("samples"))
    assert len(ds) == 16 and ds.images.dtype == torch.uint8 and ds.images.shape[1:] == (3, 224, 224)
    assert set(ds.labels.tolist()) == {label for _, _, label, _ in SAMPLE_PHOTOS}
    assert ds.class_names[281] == "tabby" and ds.class_names[967] == "espresso"
    assert len(set(ds.ids)) == 16


def test_limit_keeps_one_view_of_every_photo_first():
    ds = load_dataset(DataSpec("samples", limit=4, image_size=64))
    assert [i.split(":")[1] for i in ds.ids] == ["full"] * 4
    assert ds.images.shape == (4, 3, 64, 64)


def test_image_folder_labels_follow_sorted_class_folders(image_folder):
    spec = DataSpec("imagefolder", path=str(image_folder), image_size=48)
    assert describe(spec) == (6, 2)
    ds = load_dataset(spec)
    assert ds.class_names == ["fake", "real"] and ds.labels.tolist() == [0, 1, 0, 1, 0, 1]  # round-robin: limit stays balanced
    assert ds.images.shape == (6, 3, 48, 48)


def test_manifest_paths_are_relative_to_the_csv(image_folder):
    csv = image_folder / "list.csv"
    csv.write_text("path,label\nfake/000.png,7\nreal/001.png,3\n")
    ds = load_dataset(DataSpec("manifest", path=str(csv), image_size=32))
    assert ds.labels.tolist() == [7, 3] and ds.name == "manifest:list.csv"
    assert describe(DataSpec("manifest", path=str(csv))) == (2, 8)


def test_manifest_with_a_bad_label_names_the_line(image_folder):
    csv = image_folder / "list.csv"
    csv.write_text("path,label\nfake/000.png,7\nreal/001.png,cat\n")
    with pytest.raises(DataError, match=r"list.csv:3: label must be"):
        describe(DataSpec("manifest", path=str(csv)))


def test_unreadable_images_are_skipped_and_named(image_folder):
    (image_folder / "real" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    ds = load_dataset(DataSpec("imagefolder", path=str(image_folder), image_size=32))
    assert len(ds) == 6
    assert [p.endswith("broken.png") for p, _ in ds.skipped] == [True]


def test_a_dataset_of_only_broken_images_is_an_error(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "x.jpg").write_bytes(b"nope")
    with pytest.raises(DataError, match="empty"):
        load_dataset(DataSpec("imagefolder", path=str(tmp_path), image_size=32))


def test_batches_are_floats_in_the_unit_interval(image_folder):
    ds = load_dataset(DataSpec("imagefolder", path=str(image_folder), image_size=32))
    batches = list(ds.batches(4))
    assert [len(y) for _, y in batches] == [4, 2]
    x = batches[0][0]
    assert x.dtype == torch.float32 and 0 <= x.min() and x.max() <= 1
    assert torch.allclose(x * 255, (x * 255).round(), atol=1e-4)  # on the 8-bit grid
