"""Faces data: the split protocol and the offline proxy."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bench.faces import CLASSES, FacesError, make_proxy, split_protocol, tree_digest


def _source(root: Path, per_class: int = 12) -> Path:
    rng = np.random.default_rng(0)
    for cls in ("real", "fake"):
        (root / cls).mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 256, (20, 20, 3), dtype=np.uint8)).save(root / cls / f"{i:03d}.png")
    return root


def _contents(folder: Path) -> set[str]:
    return {hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.rglob("*.png")}


def test_split_takes_the_protocols_counts_with_no_leakage(tmp_path):
    record = split_protocol(_source(tmp_path / "src"), tmp_path / "out", seed=1, train_per_class=8)
    assert record["counts"] == {"train/fake": 8, "train/real": 8, "test/fake": 4, "test/real": 4}
    for split in ("train", "test"):
        for cls in CLASSES:
            assert len(list((tmp_path / "out" / split / cls).glob("*.png"))) == record["counts"][f"{split}/{cls}"]
    assert not _contents(tmp_path / "out" / "train") & _contents(tmp_path / "out" / "test")
    manifest = (tmp_path / "out" / "manifest.csv").read_text().splitlines()
    assert manifest[0] == "split,path,label,source" and len(manifest) == 25
    assert json.loads((tmp_path / "out" / "split.json").read_text())["split_hash"] == record["split_hash"]


def test_split_is_reproducible_with_the_seed_and_changes_with_it(tmp_path):
    src = _source(tmp_path / "src")
    a = split_protocol(src, tmp_path / "a", seed=3, train_per_class=8)
    b = split_protocol(src, tmp_path / "b", seed=3, train_per_class=8)
    c = split_protocol(src, tmp_path / "c", seed=4, train_per_class=8)
    assert a["split_hash"] == b["split_hash"] != c["split_hash"]
    assert tree_digest(tmp_path / "a" / "train") == tree_digest(tmp_path / "b" / "train")


def test_split_refuses_too_few_images_or_a_missing_class(tmp_path):
    src = _source(tmp_path / "src", per_class=5)
    with pytest.raises(FacesError, match="takes 8 for training"):
        split_protocol(src, tmp_path / "out", train_per_class=8)
    (tmp_path / "only").mkdir()
    with pytest.raises(FacesError, match="real/ and fake/"):
        split_protocol(tmp_path / "only", tmp_path / "out2")


def test_proxy_is_deterministic_whatever_the_thread_count_balanced_and_says_it_is_a_proxy(tmp_path):
    import torch

    threads = torch.get_num_threads()
    a = make_proxy(tmp_path / "a", per_class=400, size=32, seed=0, train_per_class=300)
    torch.set_num_threads(threads + 2)  # another machine's core count: the same data
    try:
        b = make_proxy(tmp_path / "b", per_class=400, size=32, seed=0, train_per_class=300)
        assert torch.get_num_threads() == threads + 2  # the caller's setting is left as it was
    finally:
        torch.set_num_threads(threads)
    assert a["counts"] == {"train/fake": 300, "train/real": 300, "test/fake": 100, "test/real": 100}
    assert a["split_hash"] == b["split_hash"]
    assert tree_digest(tmp_path / "a" / "source") == tree_digest(tmp_path / "b" / "source")
    assert a["proxy"] and "PROXY" in a["note"] and "PROXY" in (tmp_path / "a" / "PROXY.md").read_text()
    real = np.asarray(Image.open(tmp_path / "a" / "source" / "real" / "real_0000.png"))
    fake = np.asarray(Image.open(tmp_path / "a" / "source" / "fake" / "fake_0000.png"))
    assert real.shape == fake.shape == (32, 32, 3)


def test_proxy_needs_400_images_per_class(tmp_path):
    with pytest.raises(FacesError, match="at least 400"):
        make_proxy(tmp_path / "p", per_class=100)
