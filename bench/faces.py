"""Real-vs-fake face data: the seed's split protocol, and an offline proxy data set.

The seed trained on 500 real + 500 fake images and tested on the rest, split at random.
``split_protocol`` does that reproducibly from a folder with ``real/`` and ``fake/`` and writes
an ImageFolder (``train/``, ``test/``), a manifest and a hash of the split.

No real-vs-fake face set is reachable offline, so ``make_proxy`` builds one in the spirit of
AutoGAN (Zhang et al. 2019): real images are crops of photos that ship in packages (scikit-image,
matplotlib, including scikit-image's LFW faces); fakes are *other* real crops passed through a
small up-sampling CNN generator (strided-conv encoder, transposed-conv decoder) trained briefly
as an autoencoder, which leaves the up-sampling artefacts CNN-generated images carry. It is a
proxy, and everything built on it says so.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image

from bench.data import IMAGE_SUFFIXES

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger(__name__)

CLASSES = ("fake", "real")  # ImageFolder order: fake = 0, real = 1
SPLIT_FILE = "split.json"
PROXY_NOTE = (
    "PROXY DATA: not real-vs-fake faces. Real images are crops of photos bundled with scikit-image and matplotlib "
    "(LFW faces among them); fakes are other such crops passed through a small up-sampling CNN generator "
    "(AutoGAN-style). Accuracies on it show that the pipeline works, not how a detector fares on GAN faces."
)


class FacesError(ValueError):
    """A face data set that cannot be built; the message says why."""


def _images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def split_protocol(source: Path, out: Path, seed: int = 0, train_per_class: int = 500, note: str | None = None) -> dict:
    """Split ``source/real`` and ``source/fake`` into ``out/train`` (``train_per_class`` each, at
    random with ``seed``) and ``out/test`` (the rest). Returns the split record (also in split.json)."""
    source, out = Path(source), Path(out)
    files = {}
    for cls in CLASSES:
        if not (source / cls).is_dir():
            raise FacesError(f"{source}: needs sub-folders real/ and fake/; {cls}/ is missing")
        files[cls] = _images(source / cls)
        if len(files[cls]) <= train_per_class:
            raise FacesError(
                f"{source / cls}: {len(files[cls])} images, but the protocol takes {train_per_class} for training "
                "and needs at least one more for testing"
            )
    if out.exists() and any(p for p in out.iterdir() if p.name != "source"):
        raise FacesError(f"{out}: already holds a data set; choose an empty or new folder")
    out.mkdir(parents=True, exist_ok=True)

    rng = np.random.default_rng(seed)
    entries = []  # (split, path in out, label, path in source)
    for label, cls in enumerate(CLASSES):
        order = rng.permutation(len(files[cls]))
        for rank, idx in enumerate(order):
            src = files[cls][idx]
            split = "train" if rank < train_per_class else "test"
            rel_src = src.relative_to(source).as_posix()
            dst = out / split / cls / rel_src.split("/", 1)[1].replace("/", "__")
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, dst)
            entries.append((split, dst.relative_to(out).as_posix(), label, rel_src))
    entries.sort()
    (out / "manifest.csv").write_text("split,path,label,source\n" + "".join(f"{s},{p},{l},{r}\n" for s, p, l, r in entries))
    # the split's identity: which file (by content) went to which split and class
    digest = hashlib.sha256()
    for split, path, label, _ in entries:
        digest.update(f"{split},{label},{_sha256(out / path)}\n".encode())
    counts = {f"{split}/{cls}": sum(1 for e in entries if e[0] == split and e[2] == label)
              for split in ("train", "test") for label, cls in enumerate(CLASSES)}
    record = {
        "protocol": f"{train_per_class} real + {train_per_class} fake for training, the rest for testing, random with the seed",
        "seed": seed,
        "train_per_class": train_per_class,
        "classes": list(CLASSES),
        "counts": counts,
        "split_hash": digest.hexdigest(),
        "source": str(source),
        "proxy": note is not None,
        "note": note or "",
    }
    (out / SPLIT_FILE).write_text(json.dumps(record, indent=2) + "\n")
    return record


# ---------------------------------------------------------------------------------------------
# The proxy


def _photos() -> list[np.ndarray]:
    import skimage.data

    from bench.data.samples import grace_hopper as _grace_hopper

    photos = [skimage.data.astronaut(), skimage.data.chelsea(), skimage.data.coffee(), skimage.data.rocket(), _grace_hopper()]
    folder = Path(skimage.data.__file__).parent
    for name in ("motorcycle_left.png", "motorcycle_right.png"):
        if (folder / name).exists():
            photos.append(np.asarray(Image.open(folder / name).convert("RGB")))
    return [np.ascontiguousarray(p[..., :3]) for p in photos]


def _lfw_faces() -> np.ndarray:
    import skimage.data

    faces = skimage.data.lfw_subset()[:100]  # the first 100 of lfw_subset are faces
    return np.repeat((faces * 255).round().astype(np.uint8)[..., None], 3, axis=-1)


def real_crops(count: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """``count`` real images (size × size, uint8 HWC): random crops of the bundled photos at random
    scales, and LFW faces (one in eight), each flipped at random."""
    photos, faces = _photos(), _lfw_faces()
    out = np.empty((count, size, size, 3), dtype=np.uint8)
    for i in range(count):
        if i % 8 == 7:
            img = Image.fromarray(faces[rng.integers(len(faces))])
            # a random crop of the face before resizing, so no two face images are identical
            w = img.width
            c = int(rng.integers(int(0.8 * w), w + 1))
            x0, y0 = rng.integers(0, w - c + 1, size=2)
            img = img.crop((x0, y0, x0 + c, y0 + c))
        else:
            photo = photos[rng.integers(len(photos))]
            h, w = photo.shape[:2]
            c = int(rng.integers(size, min(h, w) + 1))
            y0, x0 = rng.integers(0, h - c + 1), rng.integers(0, w - c + 1)
            img = Image.fromarray(photo[y0 : y0 + c, x0 : x0 + c])
        img = img.resize((size, size), Image.BICUBIC if img.width < size else Image.BILINEAR, reducing_gap=2.0)
        arr = np.asarray(img)
        out[i] = arr[:, ::-1] if rng.random() < 0.5 else arr
    return out


class UpsamplingGenerator(nn.Module):
    """AutoGAN's idea in miniature: halve the resolution with a strided conv, restore it with a
    transposed conv (whose uneven kernel overlap leaves checkerboard artefacts) and a conv."""

    def __init__(self, width: int = 16):
        super().__init__()
        self.encode = nn.Sequential(nn.Conv2d(3, width, 4, 2, 1), nn.ReLU(), nn.Conv2d(width, width, 3, 1, 1), nn.ReLU())
        self.decode = nn.Sequential(nn.ConvTranspose2d(width, width, 4, 2, 1), nn.ReLU(), nn.Conv2d(width, 3, 3, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.decode(self.encode(x)))


def train_generator(images: np.ndarray, seed: int, steps: int = 150, batch: int = 32, crop: int = 48) -> UpsamplingGenerator:
    """Fit the generator as an autoencoder of real images (L1), briefly and deterministically. It is
    fully convolutional, so it trains on random ``crop``-pixel patches (a quarter of the work at 96 px)."""
    g = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        gen = UpsamplingGenerator()
    opt = torch.optim.Adam(gen.parameters(), lr=2e-3)
    data = torch.from_numpy(images).permute(0, 3, 1, 2)
    crop = min(crop, images.shape[1])
    for _ in range(steps):
        idx = torch.randint(len(data), (batch,), generator=g)
        y0, x0 = torch.randint(data.shape[-1] - crop + 1, (2,), generator=g).tolist()
        x = data[idx, :, y0 : y0 + crop, x0 : x0 + crop].float() / 255
        loss = F.l1_loss(gen(x), x)
        opt.zero_grad()
        loss.backward()
        opt.step()
    log.info("proxy generator: final L1 reconstruction error %.4f", loss.item())
    return gen.eval()


def make_proxy(out: Path, per_class: int = 800, size: int = 96, seed: int = 0, train_per_class: int = 500) -> dict:
    """Generate the proxy (``out/source/{real,fake}``) and split it with the seed's protocol."""
    if per_class < 400:
        raise FacesError(f"--per-class must be at least 400, got {per_class}")
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise FacesError(f"{out}: already exists and is not empty; choose a new folder")
    rng = np.random.default_rng(seed)
    reals = real_crops(2 * per_class, size, rng)
    kept, fake_sources = reals[:per_class], reals[per_class:]  # fakes come from crops not in the real class
    fakes = []
    # One thread: float sums split over threads round differently, the generator's training drifts with
    # them, and the same seed gave other fakes on a machine with another core count (and detectors
    # trained on them another test accuracy). Restored afterwards.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        gen = train_generator(fake_sources, seed)
        with torch.no_grad():
            for i in range(0, per_class, 64):
                x = torch.from_numpy(fake_sources[i : i + 64]).permute(0, 3, 1, 2).float() / 255
                fakes.append((gen(x) * 255).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy())
    finally:
        torch.set_num_threads(threads)
    fakes = np.concatenate(fakes)
    src = out / "source"
    for cls, arrays in (("real", kept), ("fake", fakes)):
        (src / cls).mkdir(parents=True, exist_ok=True)
        for i, arr in enumerate(arrays):
            Image.fromarray(arr).save(src / cls / f"{cls}_{i:04d}.png")
    record = split_protocol(src, out, seed=seed, train_per_class=train_per_class, note=PROXY_NOTE)
    (out / "PROXY.md").write_text(f"# Proxy real-vs-fake data\n\n{PROXY_NOTE}\n\nseed {seed}, {per_class} images per class, {size} px.\n")
    return record


def read_split(data_dir: Path) -> dict:
    path = Path(data_dir) / SPLIT_FILE
    if not path.is_file():
        raise FacesError(f"{data_dir}: no {SPLIT_FILE}; build the data with `bench data faces`")
    return json.loads(path.read_text())


def tree_digest(folder: Path) -> str:
    """Hash of every file's relative path and content under ``folder`` (for determinism checks)."""
    h = hashlib.sha256()
    for p in sorted(Path(folder).rglob("*")):
        if p.is_file():
            h.update(p.relative_to(folder).as_posix().encode() + b"\0" + p.read_bytes())
    return h.hexdigest()


# ---------------------------------------------------------------------------------------------
# The report's faces table (bench/reporting/report.py puts it in every report of a real-vs-fake data set)


def fakes_accepted(ok: "pd.DataFrame", meta: dict[str, Any], predictions: "pd.DataFrame | None", index: list[str]) -> str | None:
    """For a real-vs-fake data set: per detector, attack and defense, the share of fakes the
    attacker gets accepted as real; the "no attack" rows are the detector's own miss rate."""
    import pandas as pd

    from bench.reporting.text import group_by_defense, pct
    datasets = meta.get("datasets") or {meta.get("dataset", {}).get("name"): meta.get("dataset", {})}
    faces = {d.get("name", name): d["class_names"] for name, d in datasets.items() if {"fake", "real"} <= set(d.get("class_names") or [])}
    if predictions is None or not faces:
        return None
    ok = ok[ok["dataset"].isin(list(faces))]
    names = next(iter(faces.values()))  # `bench data faces` always orders the classes fake, real
    fake, real = names.index("fake"), names.index("real")
    fakes = predictions[(predictions["label"] == fake) & predictions["cell_id"].isin(ok["cell_id"])]
    if fakes.empty:
        return None
    rates = fakes.assign(r=fakes["robust_pred"] == real, c=fakes["clean_pred"] == real).groupby("cell_id")[["r", "c"]].mean()
    merged = ok.merge(rates, left_on="cell_id", right_index=True)
    clean = merged[merged["eval_mode"] == "oblivious"].drop_duplicates(["model", "defense", *index[3:]])
    clean = clean.assign(attack="(no attack)", r=clean["c"], column=clean["defense"])
    clean["ε"] = "-"
    both = pd.concat([clean, merged])
    order = group_by_defense(list(dict.fromkeys(merged["column"])))
    table = both.pivot_table(index=index, columns="column", values="r", aggfunc="first", sort=False)
    table = table[[d for d in order if d in table.columns]].map(pct).reset_index()
    table.columns.name = None
    models = {m: i for i, m in enumerate(dict.fromkeys(merged["model"]))}
    table = table.sort_values("model", key=lambda col: col.map(models), kind="stable")
    return table.to_markdown(index=False)
