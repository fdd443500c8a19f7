"""``source: digits``: scikit-learn's handwritten digits, 1,797 real 8×8 greyscale scans (0–16), 10 classes, on disk
with the package. The split is fixed (its own seed, never the suite's), stratified, and recorded."""

from __future__ import annotations

import math
from itertools import zip_longest

import numpy as np
import torch

from bench.data.base import DataError, Dataset, SourceInfo, limited, resized
from bench.specs import DataSpec, Preprocess

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


def load(spec: "DataSpec", pre: "Preprocess") -> Dataset:
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
    ds = Dataset(f"digits:{split}", resized(grey, pre.input_size, pre.interpolation), torch.from_numpy(labels),
                 [f"digits:{i}" for i in order.tolist()], [str(k) for k in range(10)])
    ds.transform = "whole"
    ds.note = ("scikit-learn's handwritten digits (1,797 real 8×8 scans, 10 classes), upscaled to "
               f"{pre.input_size} px {pre.interpolation}; {split} split of a fixed stratified 80/20 split")
    ds.split = {"source": "digits", "split": split, "seed": DIGITS_SPLIT_SEED, "test_fraction": DIGITS_TEST_FRACTION,
                "stratified": True, "n_split": n_split,
                "indices_sha256": hashlib.sha256(np.sort(order).tobytes()).hexdigest()[:16]}
    return ds


def describe(spec: "DataSpec") -> tuple[int, int]:
    n_test = math.ceil(DIGITS_IMAGES * DIGITS_TEST_FRACTION)  # as scikit-learn rounds the test share
    n = n_test if (spec.split or DIGITS_SPLITS[0]) == "test" else DIGITS_IMAGES - n_test
    return limited(n, spec), 10


SOURCE = SourceInfo("digits", load, describe, None, DIGITS_SPLITS, 32)
