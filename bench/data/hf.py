"""``data: {source: hf, path: FOLDER, image_column: image, label_column: label, split: test}``: a Hugging Face dataset on disk.

``path`` is a folder that ``datasets`` wrote with ``save_to_disk`` (a ``Dataset``, or a ``DatasetDict`` with one
folder per split), or a folder of parquet files as the Hub keeps them (``test-00000-of-00001.parquet``,
``data/test-….parquet``: the split is the part of the file name before its first ``-``). Nothing is downloaded.
The ``datasets`` package (optional extra ``.[hf]``) reads ``save_to_disk`` folders; parquet files are read with
pyarrow. ``image_column`` holds images (the ``Image`` feature: encoded bytes, or a path relative to the folder),
``label_column`` integer classes; class names come from its ``ClassLabel`` feature where it has one. Images go
through the model's preprocessing like any image file (resize, centre crop); ``limit`` takes them round-robin
across classes.
"""

from __future__ import annotations

import functools
import io
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from bench.data.base import SourceInfo, order_problem

if TYPE_CHECKING:
    from bench.data.base import Dataset
    from bench.specs import DataSpec, Preprocess

DEFAULT_SPLIT = "test"
KEYS = ("image_column", "label_column")
INSTALL = "pip install -e '.[hf]' (the datasets package), or `make install`"


class HFDataError(ValueError):
    def __init__(self, message: str, key: str):
        super().__init__(message)
        self.key = key


def _parquet_splits(root: Path) -> dict[str, list[Path]]:
    splits: dict[str, list[Path]] = {}
    for f in sorted(root.rglob("*.parquet")):
        splits.setdefault(f.name.split("-")[0].split(".")[0], []).append(f)
    return splits


@functools.lru_cache(maxsize=2)
def _table(path: str, split: str):
    """(pyarrow table of the split, the features as ``datasets`` describes them or None, the folder images are
    relative to)."""
    import pyarrow.parquet as pq

    root = Path(path)
    if (root / "dataset_dict.json").is_file() or (root / "state.json").is_file():
        try:
            import datasets
        except ImportError:
            raise HFDataError(f"{root} was written by datasets' save_to_disk; reading it needs datasets: {INSTALL}", "path") from None
        loaded = datasets.load_from_disk(str(root))
        if isinstance(loaded, datasets.DatasetDict):
            if split not in loaded:
                raise HFDataError(f"{root} has no split {split!r}; it has: {', '.join(loaded)}", "split")
            loaded = loaded[split]
        elif split != DEFAULT_SPLIT:
            raise HFDataError(f"{root} holds one Dataset (no splits); leave split out", "split")
        features = {k: v for k, v in loaded.features.to_dict().items()} if hasattr(loaded.features, "to_dict") else None
        return loaded.data.table, features, root
    splits = _parquet_splits(root)
    if not splits:
        raise HFDataError(f"{root} holds neither a save_to_disk dataset (state.json, dataset_dict.json) nor parquet files", "path")
    if split not in splits:
        raise HFDataError(f"{root} has no split {split!r} among its parquet files; it has: {', '.join(splits)}", "split")
    table = pq.read_table(splits[split][0]) if len(splits[split]) == 1 else __import__("pyarrow").concat_tables(
        [pq.read_table(f) for f in splits[split]])
    meta = (table.schema.metadata or {}).get(b"huggingface")
    features = json.loads(meta).get("info", {}).get("features") if meta else None
    return table, features, root


def _columns(spec: "DataSpec") -> tuple[str, str]:
    options = dict(spec.options)
    return options.get("image_column", "image"), options.get("label_column", "label")


def _class_names(features: Any, column: str) -> list[str] | None:
    feature = (features or {}).get(column) if isinstance(features, dict) else None
    if isinstance(feature, dict) and feature.get("names"):
        return list(feature["names"])
    return None


def _read(spec: "DataSpec"):
    image_col, label_col = _columns(spec)
    table, features, root = _table(spec.path, spec.split or DEFAULT_SPLIT)
    for key, col in (("image_column", image_col), ("label_column", label_col)):
        if col not in table.column_names:
            raise HFDataError(f"{spec.path} ({spec.split or DEFAULT_SPLIT}) has no column {col!r}; its columns: "
                              f"{', '.join(table.column_names)}", key)
    labels = np.asarray(table.column(label_col).to_pylist(), dtype=object)
    if len(labels) and not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v >= 0 for v in labels):
        raise HFDataError(f"column {label_col!r} must hold non-negative integer classes", "label_column")
    return table, features, root, labels.astype(np.int64), image_col, label_col


def describe(spec: "DataSpec") -> tuple[int, int]:
    from bench.data.base import DataError, limited

    try:
        _, features, _, labels, _, label_col = _read(spec)
    except HFDataError as exc:
        raise DataError(str(exc), key=exc.key) from None
    except (OSError, ValueError) as exc:
        raise DataError(f"{spec.path}: cannot read it ({type(exc).__name__}: {exc})", key="path") from None
    names = _class_names(features, label_col)
    return limited(len(labels), spec), max(len(names or []), int(labels.max()) + 1 if len(labels) else 0)


def _decode(value: Any, root: Path, max_pixels: int) -> torch.Tensor:
    from bench.data.base import open_image

    if isinstance(value, dict):
        if value.get("bytes"):
            return open_image(io.BytesIO(value["bytes"]), max_pixels)
        if value.get("path"):
            path = Path(value["path"])
            return open_image(path if path.is_absolute() else root / path, max_pixels)
    raise ValueError(f"not an image (the Image feature's bytes or path): {type(value).__name__}")


def load(spec: "DataSpec", pre: "Preprocess") -> "Dataset":
    from bench.data.base import Dataset, log, ordered, prepare
    from bench.data.store import ImageSink

    describe(spec)  # the same checks, one error
    table, features, root, labels, image_col, label_col = _read(spec)
    order = ordered(labels, spec)
    column = table.column(image_col)
    sink, kept, skipped = ImageSink(pre.input_size), [], []
    for i in order.tolist():
        try:
            sink.add(prepare(_decode(column[i].as_py(), root, spec.pixel_budget), pre, spec.pixel_budget))
        except Exception as exc:  # a damaged row is skipped and named, as an unreadable file is
            skipped.append((f"{spec.path}#{i}", str(exc).splitlines()[0][:160] if str(exc) else type(exc).__name__))
            log.warning("skipping unreadable image %s: %s", *skipped[-1])
            continue
        kept.append(i)
    split = spec.split or DEFAULT_SPLIT
    ds = Dataset(f"hf:{Path(spec.path).name}:{split}", sink.result(), torch.from_numpy(labels[kept]),
                 [f"{Path(spec.path).name}:{split}:{i}" for i in kept], _class_names(features, label_col))
    ds.skipped = skipped
    ds.note = f"a Hugging Face dataset on disk ({spec.path}, {split} split, {len(labels)} rows)"
    return ds


def _column_problem(value) -> str | None:
    return None if isinstance(value, str) and value else f"must be a column name, got {value!r}"


SOURCE = SourceInfo("hf", load, describe, "dir", None, options={"image_column": _column_problem, "label_column": _column_problem,
                                                                  "order": order_problem},
                    default_split=DEFAULT_SPLIT, defaults={"order": "balanced"})
