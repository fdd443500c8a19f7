"""``source: manifest`` (a CSV of ``path,label``, paths relative to it) and ``source: imagefolder`` (a sub-folder
per class, labels by sorted folder name, images taken from the classes in turn so ``limit`` keeps them balanced):
image files on disk, each decoded within bounds (bench.data.base.open_image), an unreadable one skipped and named."""

from __future__ import annotations

import csv
from itertools import zip_longest
from pathlib import Path

import torch

from bench.data.base import IMAGE_SUFFIXES, DataError, Dataset, SourceInfo, limited, log, open_image, prepare
from bench.data.store import ImageSink
from bench.specs import DataSpec, Preprocess


def _manifest_items(spec: "DataSpec") -> list[tuple[Path, int]]:
    path = Path(spec.path)
    items = []
    try:
        with path.open(newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            if reader.fieldnames is None or not {"path", "label"} <= set(reader.fieldnames):
                raise DataError(f"{path}: the manifest needs a header with columns path,label; got {reader.fieldnames}")
            for line, row in enumerate(reader, start=2):
                rel, label = (row.get("path") or "").strip(), (row.get("label") or "").strip()
                if not rel:
                    raise DataError(f"{path}:{line}: empty path")
                try:
                    label_i = int(label)
                except ValueError:
                    raise DataError(f"{path}:{line}: label must be a non-negative integer class index, got {label!r}") from None
                if label_i < 0:
                    raise DataError(f"{path}:{line}: label must be a non-negative integer class index, got {label_i}")
                items.append((path.parent / rel, label_i))
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot read manifest ({exc})") from None
    return items


def _folder_items(spec: "DataSpec") -> tuple[list[tuple[Path, int]], list[str]]:
    """Images of every class folder, taken round-robin across classes (so ``limit`` keeps the
    classes balanced), each class in sorted file order."""
    root = Path(spec.path)
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    # not is_dir() rather than is_file(): a FIFO or a device named like an image is listed, then skipped with a reason
    per_class = [[(f, idx) for f in sorted((root / cls).rglob("*")) if not f.is_dir() and f.suffix.lower() in IMAGE_SUFFIXES]
                 for idx, cls in enumerate(classes)]
    items = [item for rank in zip_longest(*per_class) for item in rank if item is not None]
    return items, classes


def _read_files(name: str, items: list[tuple[Path, int]], spec: "DataSpec", pre: "Preprocess", class_names=None) -> Dataset:
    sink, labels, ids, skipped = ImageSink(pre.input_size), [], [], []
    for path, label in items[: spec.limit] if spec.limit else items:
        try:
            sink.add(prepare(open_image(path, spec.pixel_budget), pre, spec.pixel_budget))
        except Exception as exc:  # SkipImage; PIL raises OSError, SyntaxError or ValueError depending on the damage
            skipped.append((str(path), str(exc).splitlines()[0][:160] if str(exc) else type(exc).__name__))
            log.warning("skipping unreadable image %s: %s", path, skipped[-1][1])
            continue
        labels.append(label)
        ids.append(str(path))
    ds = Dataset(name, sink.result(), torch.tensor(labels, dtype=torch.int64), ids, class_names)
    ds.skipped = skipped
    return ds


def load_manifest(spec: "DataSpec", pre: "Preprocess") -> Dataset:
    return _read_files(f"manifest:{Path(spec.path).name}", _manifest_items(spec), spec, pre)


def load_folder(spec: "DataSpec", pre: "Preprocess") -> Dataset:
    items, classes = _folder_items(spec)
    root = Path(spec.path)
    ds = _read_files(f"imagefolder:{root.parent.name}/{root.name}", items, spec, pre, classes)
    ds.note = _split_note(root)
    return ds


def _split_note(root: Path) -> str:
    """The note of a data set made by `bench data` (its split.json sits in the folder or above)."""
    import json

    for folder in (root, root.parent):
        card = folder / "split.json"
        if card.is_file():
            try:
                return str(json.loads(card.read_text()).get("note", ""))
            except (OSError, ValueError):
                return ""
    return ""


def describe_manifest(spec: "DataSpec") -> tuple[int, int]:
    items = _manifest_items(spec)
    return limited(len(items), spec), 1 + max((label for _, label in items), default=-1)


def describe_folder(spec: "DataSpec") -> tuple[int, int]:
    items, classes = _folder_items(spec)
    return limited(len(items), spec), len(classes)


SOURCES = (SourceInfo("manifest", load_manifest, describe_manifest, "file"),
           SourceInfo("imagefolder", load_folder, describe_folder, "dir"))
