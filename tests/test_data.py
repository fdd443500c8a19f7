"""Data sources: bundled photos, manifests and image folders, all on the 8-bit grid."""

from __future__ import annotations

import pytest
import torch

from bench.data import DataError, describe, load_dataset
from bench.data.samples import SAMPLE_PHOTOS
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


# ---------------------------------------------------------------------------------------------
# scikit-learn's digits


def _digits(**kw):
    return load_dataset(DataSpec("digits", **kw))


def test_digits_split_is_a_fixed_stratified_eighty_twenty_partition():
    from sklearn.datasets import load_digits

    train, test = _digits(split="train", image_size=16), _digits(split="test", image_size=16)
    assert (len(train), len(test)) == (1437, 360) and describe(DataSpec("digits")) == (360, 10)
    assert describe(DataSpec("digits", split="train")) == (1437, 10)
    ids_train, ids_test = set(train.ids), set(test.ids)
    assert not ids_train & ids_test and len(ids_train | ids_test) == 1797  # every scan, exactly once
    # stratified: each class's share of the test split is its share of the whole set, to within one image
    whole = torch.bincount(torch.from_numpy(load_digits().target), minlength=10)
    assert (torch.bincount(test.labels, minlength=10) - whole * 0.2).abs().max() <= 1
    # the same split every time, and recorded with a digest of its indices
    again = _digits(split="test", image_size=16)
    assert again.ids == test.ids and again.split == test.split
    assert test.split["seed"] == 0 and test.split["n_split"] == 360 and len(test.split["indices_sha256"]) == 16


def test_digits_labels_are_the_scans_own_and_images_sit_on_the_8_bit_grid():
    from sklearn.datasets import load_digits

    bunch = load_digits()
    ds = _digits(split="test", image_size=8)  # at 8 px the resize is the identity: the scans themselves
    index = [int(i.split(":")[1]) for i in ds.ids]
    assert ds.labels.tolist() == bunch.target[index].tolist()
    assert ds.images.dtype == torch.uint8 and ds.images.shape == (360, 3, 8, 8)
    assert torch.equal(ds.images[:, 0], ds.images[:, 1]) and torch.equal(ds.images[:, 0], ds.images[:, 2])
    expected = torch.from_numpy(bunch.images[index] * 255 / 16).round().to(torch.uint8)
    assert torch.equal(ds.images[:, 0], expected)  # 0..16 → 0..255, nothing else
    big = _digits(split="test", image_size=32, limit=5)
    assert big.images.shape == (5, 3, 32, 32) and big.images.dtype == torch.uint8
    # upscaled whole (no evaluation crop: the scans fill their frame), bilinear, still uint8
    from torchvision.transforms.v2 import functional as TF

    assert torch.equal(big.images, TF.resize(ds.images[:5], [32, 32], antialias=True))
    assert big.class_names == [str(k) for k in range(10)]


def test_digits_limit_keeps_the_classes_balanced():
    ds = _digits(limit=30, image_size=16)
    assert torch.bincount(ds.labels, minlength=10).tolist() == [3] * 10
    assert describe(DataSpec("digits", limit=30)) == (30, 10)


def test_digits_in_a_suite_default_to_32_px_and_check_the_split(write_suite):
    from bench.suite import SuiteError, load_suite

    doc = {"name": "d", "data": {"source": "digits", "split": "test", "limit": 20},
           "models": [{"name": "cnn", "arch": "small_cnn"}], "attacks": [{"name": "fgsm", "type": "fgsm", "eps": 0.1}]}
    suite = load_suite(write_suite(doc))
    assert suite.data == DataSpec("digits", limit=20, image_size=32, split="test")
    assert suite.models[0].num_classes == 10 and suite.models[0].input_size == 32
    doc["data"].pop("split")  # the default, spelled out: the same spec as `split: test`
    assert load_suite(write_suite(doc)).data == suite.data
    with pytest.raises(DataError, match="digits has no split 'dev'; allowed: test, train"):
        load_dataset(DataSpec("digits", split="dev"))
    doc["data"]["split"] = "validation"
    with pytest.raises(SuiteError, match=r":\d+: data\.split: source 'digits' has no split 'validation'; allowed: test, train"):
        load_suite(write_suite(doc))
    doc["data"] = {"source": "samples", "split": "test"}
    with pytest.raises(SuiteError, match=r"data\.split: source 'samples' takes no split"):
        load_suite(write_suite(doc))


def test_a_fifo_named_like_an_image_is_skipped_with_its_reason_not_waited_on(image_folder):
    """A FIFO blocks whoever opens it until a writer comes: the run would hang silently."""
    import os

    os.mkfifo(image_folder / "fake" / "pipe.png")
    csv = image_folder / "list.csv"
    csv.write_text("path,label\nfake/pipe.png,0\nreal/001.png,1\n")
    for spec in (DataSpec("manifest", path=str(csv), image_size=32), DataSpec("imagefolder", path=str(image_folder), image_size=32)):
        ds = load_dataset(spec)
        assert [(p.rsplit("/", 2)[-2:], why) for p, why in ds.skipped] == [(["fake", "pipe.png"], "not a regular file (a FIFO, "
                                                                            "a device or a folder): not read")]
        assert not any(i.endswith("pipe.png") for i in ds.ids)


def test_an_image_over_the_pixel_budget_is_skipped_before_it_is_decoded(image_folder, monkeypatch):
    """A 12,000 × 12,000 PNG is 140 KB on disk and 432 MB decoded; the budget is checked on its header."""
    import numpy as np
    from PIL import Image

    Image.fromarray(np.zeros((3000, 4000, 3), np.uint8)).save(image_folder / "fake" / "big.png")
    decoded = []
    real_convert = Image.Image.convert
    monkeypatch.setattr(Image.Image, "convert", lambda im, *a, **k: decoded.append(im.size) or real_convert(im, *a, **k))
    ds = load_dataset(DataSpec("imagefolder", path=str(image_folder), image_size=32, max_pixels=10_000_000))
    assert not any(i.endswith("big.png") for i in ds.ids) and (4000, 3000) not in decoded
    (path, why), = ds.skipped
    assert path.endswith("big.png") and why == ("4000×3000 is 12.0 M pixels, over the budget of 10 M per image "
                                                "(data.max_pixels): not decoded")
    assert len(load_dataset(DataSpec("imagefolder", path=str(image_folder), image_size=32, max_pixels=20_000_000))) == 7


def test_a_strip_whose_resized_copy_would_be_over_the_budget_is_skipped():
    from bench.data import SkipImage, prepare
    from bench.specs import Preprocess

    strip = torch.zeros(3, 2, 20_000, dtype=torch.uint8)  # 40,000 pixels; resized to 256 px high: 256 × 2,560,000
    with pytest.raises(SkipImage, match=r"20000×2: resized to 256 px on its shorter side it would be 655\.4 M pixels"):
        prepare(strip, Preprocess(224, 256), max_pixels=64_000_000)
    assert prepare(torch.zeros(3, 300, 400, dtype=torch.uint8), Preprocess(224, 256)).shape == (3, 224, 224)


def test_formats_that_decode_when_opened_are_not_read_whatever_their_name(image_folder):
    """An ICO (or ICNS) file decodes its embedded image when PIL opens it, before any size check could run."""
    from PIL import Image

    Image.new("RGB", (64, 64)).save(image_folder / "fake" / "icon.png", format="ICO")  # an ICO named like a PNG
    ds = load_dataset(DataSpec("imagefolder", path=str(image_folder), image_size=32))
    (path, why), = ds.skipped
    assert path.endswith("icon.png") and why.startswith("not an image in a format bench reads (PNG, JPEG")
