"""Decoded images in memory while few, in a file read by rows once many (bench/data/store.py): the same images
either way, the same numbers from a run, nothing left on disk."""

from __future__ import annotations

import gc
import os
import pickle
import socket

import pandas as pd
import pytest
import torch
import yaml

from bench.data import load_dataset, store
from bench.data.store import ImageSink, ImageStore
from bench.specs import DataSpec


@pytest.fixture
def images() -> torch.Tensor:
    return torch.randint(0, 256, (23, 3, 8, 8), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))


@pytest.fixture(autouse=True)
def own_tmp(tmp_path, monkeypatch):  # spilled files go to this test's own folder
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", None)


def _spilled(images: torch.Tensor) -> ImageStore:
    sink = ImageSink(8, spill_bytes=images[0].numel() * 5)  # past five images: on disk
    for i in range(0, len(images), 3):
        sink.add(images[i : i + 3])
    out = sink.result()
    assert isinstance(out, ImageStore)
    return out


def test_few_images_stay_a_tensor(images):
    sink = ImageSink(8)
    for image in images:
        sink.add(image)
    out = sink.result()
    assert isinstance(out, torch.Tensor) and torch.equal(out, images)
    assert not list((store._folder()).glob("*.u8"))


def test_many_images_are_read_back_by_rows_exactly(images):
    got = _spilled(images)
    assert got.shape == images.shape and len(got) == 23 and got.dtype == torch.uint8
    assert torch.equal(got[:], images) and torch.equal(got[5:17], images[5:17]) and torch.equal(got[20:99], images[20:])
    assert torch.equal(got[::4], images[::4]) and torch.equal(got[3], images[3]) and torch.equal(got[-1], images[-1])
    for index in (torch.tensor([4, 5, 7]), torch.tensor([0, 22]), [9, 2, 9], torch.arange(23) % 2 == 0):
        assert torch.equal(got[index], images[torch.as_tensor(index)])
    assert got[torch.tensor([], dtype=torch.long)].shape == (0, 3, 8, 8)
    assert torch.equal(got[__import__("numpy").int64(4)], images[4]) and torch.equal(got[torch.tensor(7)], images[7])
    for bad in (torch.tensor([23]), 23, -24, torch.ones(5, dtype=torch.bool)):
        with pytest.raises(IndexError):
            got[bad]


def test_a_worker_reads_the_same_file_and_the_writer_removes_it(images):
    got = _spilled(images)
    path = got.path
    copy = pickle.loads(pickle.dumps(got))  # what a Ray worker on this machine receives
    assert torch.equal(copy[2:9], images[2:9])
    del copy
    gc.collect()
    assert path.exists()  # a reader's copy going away leaves the file to its writer
    del got
    gc.collect()
    assert not path.exists()


def test_a_load_that_fails_half_way_leaves_no_file(images):
    sink = ImageSink(8, spill_bytes=1)
    sink.add(images[:4])
    (path,) = store._folder().glob("*.u8")
    del sink
    gc.collect()
    assert not path.exists()


def test_the_file_of_a_killed_process_is_removed_by_the_next_one(images):
    folder = store._folder()
    dead = folder / f"{socket.gethostname()}-999999999-abcdef.u8"  # no such process
    mine = folder / f"{socket.gethostname()}-{os.getpid()}-abcdef.u8"
    elsewhere = folder / "another-host-999999999-abcdef.u8"  # a shared TMPDIR: that pid is another machine's
    for path in (dead, mine, elsewhere):
        path.write_bytes(b"x")
    _spilled(images)
    assert not dead.exists() and mine.exists() and elsewhere.exists()


def test_images_of_the_wrong_shape_are_refused():
    with pytest.raises(ValueError, match="3×8×8"):
        ImageSink(8).add(torch.zeros(3, 4, 4, dtype=torch.uint8))


@pytest.mark.parametrize("source", ["digits", "imagefolder"])
def test_a_source_past_the_threshold_gives_the_same_images_from_disk(tmp_path, monkeypatch, source):
    from PIL import Image

    if source == "imagefolder":
        for k in range(3):
            (tmp_path / "data" / f"c{k}").mkdir(parents=True)
            for j in range(4):
                Image.fromarray(torch.randint(0, 256, (20, 24, 3), dtype=torch.uint8).numpy()).save(
                    tmp_path / "data" / f"c{k}" / f"{j}.png")
        spec = DataSpec("imagefolder", path=str(tmp_path / "data"), image_size=16)
    else:
        spec = DataSpec("digits", limit=40, image_size=16)
    memory = load_dataset(spec)
    monkeypatch.setattr(store, "SPILL_BYTES", 3 * 16 * 16 * 2)
    disk = load_dataset(spec)
    assert isinstance(memory.images, torch.Tensor) and isinstance(disk.images, ImageStore)
    assert torch.equal(disk.images[:], memory.images) and torch.equal(disk.labels, memory.labels)


def test_a_run_over_images_on_disk_gives_the_numbers_of_one_in_memory(tmp_path, monkeypatch):
    from bench.runner import run_suite
    from bench.suite import load_suite

    doc = {"name": "spilled", "seed": 1, "data": {"source": "digits", "limit": 24, "image_size": 16},
           "models": [{"name": "cnn", "arch": "small_cnn", "num_classes": 10}],
           "attacks": [{"name": "pgd", "type": "pgdl2", "eps": 1.0, "steps": 2, "alpha": 0.4, "random_start": True}],
           "batch_size": 4, "shard_size": 8, "cascade": True, "unconstrained_check": False}
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(doc))

    def predictions(out: str) -> pd.DataFrame:
        result = run_suite(load_suite(path), tmp_path / out / "r", tmp_path / out / "p")
        assert result.complete and {r["status"] for r in result.rows} == {"ok"}
        return pd.read_parquet(result.run_dir / "predictions.parquet").sort_values(["cell_id", "image"], ignore_index=True)

    in_memory = predictions("memory")
    monkeypatch.setattr(store, "SPILL_BYTES", 1)
    on_disk = predictions("disk")
    assert in_memory["distance"].gt(0).any()  # an L2 start moves every distance: a real comparison
    pd.testing.assert_frame_equal(on_disk, in_memory)
