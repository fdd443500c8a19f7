"""``source: samples``: real photos that ship inside installed packages (scikit-image, matplotlib), with their true
ImageNet class, in four views each."""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch
from torchvision.transforms.v2 import functional as TF

from bench.data.base import Dataset, SourceInfo, finish, limited, prepare
from bench.specs import DataSpec, Preprocess


def _skimage(name: str) -> Callable[[], np.ndarray]:
    def load() -> np.ndarray:
        import skimage.data

        return getattr(skimage.data, name)()

    return load


def grace_hopper() -> np.ndarray:
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
    ("grace_hopper", grace_hopper, 652, "Grace Hopper in Navy uniform, ImageNet 'military uniform' (matplotlib)"),
)

# Views of each photo: (name, centre-crop fraction of the shorter side, horizontal flip). Four
# photos do not make a dataset, four views each give batches the runner can time; they are
# not independent samples, and the report says n honestly.
SAMPLE_VIEWS = (("full", 1.0, False), ("flip", 1.0, True), ("crop80", 0.8, False), ("crop65", 0.65, False))


def load(spec: "DataSpec", pre: "Preprocess") -> Dataset:
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
    return finish("samples", images, labels, ids, spec, pre, imagenet_class_names())


def count(spec: "DataSpec") -> int:
    return limited(len(SAMPLE_PHOTOS) * len(SAMPLE_VIEWS), spec)


SOURCE = SourceInfo("samples", load, lambda s: (count(s), 1000), None)
