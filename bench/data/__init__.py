"""Data sources: a registry, as ``bench/sources/`` is for models and ``bench/attacks/`` for attacks.

One module per source, each with its ``SOURCE`` (or ``SOURCES``): a :class:`~bench.data.base.SourceInfo` that
says how to load and describe it and which keys its entry takes (``source``, ``path`` or its own path key,
``limit``, ``image_size``, ``split``, ``max_pixels``, and its own):

- :mod:`.samples` — photos bundled with installed packages;
- :mod:`.digits` — scikit-learn's handwritten digits, a fixed split;
- :mod:`.folders` — ``manifest`` (a CSV) and ``imagefolder`` (a folder per class);
- :mod:`.torchvision_formats` — CIFAR, SVHN, MNIST, FashionMNIST, STL10 from the files torchvision's classes read;
- :mod:`.hf` — Hugging Face datasets saved to disk, or the Hub's parquet files.

:func:`parse` checks a suite's ``data:`` entry against the source's keys before any compute; :func:`describe`
counts images and classes without decoding; :func:`load_dataset` decodes. The shared pieces (the dataset, its
errors, decoding within bounds, preparing for a model) are on the floor below, :mod:`.base`.
"""

from __future__ import annotations

from typing import Any

from bench.data import digits, folders, hf, samples, torchvision_formats
from bench.data.base import IMAGE_SUFFIXES, ORDERS, DataError, Dataset, SkipImage, SourceInfo, open_image, prepare
from bench.names import closest
from bench.specs import DataSpec, Preprocess

__all__ = ["SOURCES", "IMAGE_SUFFIXES", "ORDERS", "DataError", "Dataset", "SkipImage", "SourceInfo", "describe",
           "load_dataset", "open_image", "parse", "prepare"]

SOURCES: dict[str, SourceInfo] = {s.name: s for s in (samples.SOURCE, *folders.SOURCES, digits.SOURCE,
                                                       torchvision_formats.SOURCE, hf.SOURCE)}
COMMON_KEYS = ("source", "path", "limit", "image_size", "split", "max_pixels")
MAX_PIXELS_RANGE = (64 * 64, 2 * 89_478_485)  # PIL itself refuses images over twice its 89.5 M warning


def describe(spec: DataSpec) -> tuple[int, int]:
    """(number of images, number of classes the labels need) before decoding anything, so a
    suite can be validated before any compute."""
    return SOURCES[spec.source].describe(spec)


def load_dataset(spec: DataSpec, pre: Preprocess | None = None) -> Dataset:
    """Decode every image of a source and prepare it as ``pre`` says (default: the data's
    image_size, bilinear, the usual 0.875 crop); raises DataError if none is usable."""
    ds = SOURCES[spec.source].load(spec, pre or Preprocess(spec.image_size))
    if len(ds) == 0:
        raise DataError(f"the dataset is empty after skipping {len(ds.skipped)} unreadable image(s)")
    return ds


def parse(value: Any, key: str, check: Any) -> tuple[DataSpec, int]:
    """A suite's ``data:`` entry (or a model's), checked before any compute against its source's keys; the spec
    and the number of classes its labels need. ``check`` is the suite loader's validator (``fail``, ``mapping``,
    ``integer``, ``existing_path``): errors name the file, the line and the key."""
    own = {k for info in SOURCES.values() for k in (info.path_key, *info.keys)}
    value = check.mapping(value, key, (*COMMON_KEYS, *sorted(own - {"path"})), ("source",))
    source = value["source"]
    if source not in SOURCES:
        raise check.fail(f"{key}.source", f"unknown source {source!r}{closest(source, SOURCES)}; allowed: {', '.join(SOURCES)}")
    info = SOURCES[source]
    for k in value:  # another source's keys
        if k in own and k not in ("path", info.path_key) and k not in info.keys:
            raise check.fail(f"{key}.{k}", f"source {source!r} takes no {k}")
    path = None
    if info.needs_path and info.path_key != "path" and "path" in value:
        raise check.fail(f"{key}.path", f"source {source!r} takes its folder as {info.path_key}: (not path:)")
    if info.needs_path:
        if info.path_key not in value:
            raise check.fail(f"{key}.{info.path_key}", f"is required for source {source!r}")
        path = str(check.existing_path(value[info.path_key], f"{key}.{info.path_key}", info.needs_path))
    elif "path" in value:
        raise check.fail(f"{key}.path", f"source {source!r} takes no path")
    for k in info.required:
        if k not in value:
            raise check.fail(f"{key}.{k}", f"is required for source {source!r}")
    limit = value.get("limit")
    if limit is not None:
        limit = check.integer(limit, f"{key}.limit", lo=1)
    default_size = info.size_of(value) if info.size_of else info.image_size
    image_size = check.integer(value.get("image_size", default_size), f"{key}.image_size", lo=16, hi=4096)
    splits = info.splits
    split = value.get("split", splits[0] if splits else info.default_split)  # the default spelled out: one spec, one decode
    if splits is None:  # any split the data has: the source checks it
        if not isinstance(split, str) or not split:
            raise check.fail(f"{key}.split", f"must be a split name, got {split!r}")
    elif split is not None and split not in splits:
        raise check.fail(f"{key}.split", f"source {source!r} has no split {split!r}; allowed: {', '.join(splits)}"
                         if splits else f"source {source!r} takes no split (it is one set of images)")
    options = []
    for k, problem_of in info.options.items():
        if k in value:
            problem = problem_of(value[k])
            if problem:
                raise check.fail(f"{key}.{k}", problem)
            if value[k] != info.defaults.get(k):  # a default stays out of the spec, so a suite without it keeps its digest
                options.append((k, value[k]))
    max_pixels = value.get("max_pixels")
    if max_pixels is not None:
        max_pixels = check.integer(max_pixels, f"{key}.max_pixels", lo=MAX_PIXELS_RANGE[0], hi=MAX_PIXELS_RANGE[1])
    spec = DataSpec(source=source, path=path, limit=limit, image_size=image_size, split=split,
                    name=value.get("name") if "name" in info.required else None, options=tuple(sorted(options)),
                    max_pixels=max_pixels)
    try:
        count, classes = describe(spec)
    except DataError as exc:
        raise check.fail(f"{key}.{exc.key or info.path_key}", str(exc)) from None
    if count == 0:
        raise check.fail(key, f"the dataset is empty: source {source!r}" + (f" at {path}" if path else "") + " has no images")
    return spec, classes
