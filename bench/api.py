"""The Python API for notebooks: ``bench.run(suite, models=...)`` → a :class:`~bench.runner.RunResult` with the table.

::

    import bench
    result = bench.run("suites/tutorial.yaml")                       # a YAML file
    result = bench.run({"name": "nb", "data": {...}, "models": [{"name": "mine"}], "attacks": [...]},
                       models={"mine": net})                         # a dict, and a model already in memory
    result.table            # the results as a pandas DataFrame (result.predictions: per image; result.worst_case)

``suite`` is a YAML path, a dict with the same keys as a YAML suite (relative paths resolve against the
current folder), or a :class:`~bench.suite.Suite`. ``models`` maps model names to ``nn.Module`` objects: the
suite's entry of that name (added when the suite has none) runs that object, preprocessing from the entry or
the module's own attributes (bench/sources/memory.py). Errors are :class:`~bench.suite.SuiteError` as for
``bench run``, raised before anything runs.
"""

from __future__ import annotations

import contextlib
import copy
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch.nn as nn

from bench.runner import RunResult, run_suite

if TYPE_CHECKING:
    from bench.data import Dataset
from bench.suite import Suite, SuiteError, parse_suite, read_suite
from bench.suite import load_suite as load_suite_file

SOURCE_KEYS = ("arch", "factory", "file", "memory")


def run(suite: str | Path | dict[str, Any] | Suite, *, models: dict[str, nn.Module] | None = None, progress: bool = True,
        results_dir: str | Path = "results", reports_dir: str | Path = "reports") -> RunResult:
    """Validate and run a suite (a YAML path, a dict or a Suite); the result with its table, report and run folder."""
    loaded = _load(suite, models or {})
    if not progress:
        with _silent():
            return run_suite(loaded, results_dir, reports_dir)
    from rich.console import Console

    from bench.progress import for_console

    # bars on a terminal; in a notebook (or a pipe) a line per finished cell, on the notebook's output
    return run_suite(loaded, results_dir, reports_dir, progress=for_console(Console(stderr=True)))


def dataset(source: str | dict[str, Any], **keys: Any) -> "Dataset":
    """A data source's images and labels as a suite's ``data:`` entry would give them, e.g. to train your own model::

        train = bench.dataset("digits", split="train", image_size=16)   # or a dict: {"source": "digits", ...}
        test = bench.dataset("digits", split="test", image_size=16)
        x, y = train.images[:].float() / 255, train.labels              # uint8 (N, 3, S, S) → [0, 1]; int64 (N,)

    ``keys`` are the entry's keys (``split``, ``image_size``, ``limit``, ``path``, …: docs/suite-reference.md#data);
    the images are decoded at ``image_size`` (default 224) as a model with that input size reads them. Bad keys are a
    :class:`~bench.suite.SuiteError` naming the key and what is allowed."""
    from bench.data import load_dataset
    from bench.specs import Preprocess
    from bench.suite import _Validator

    entry = dict(source) if isinstance(source, dict) else {"source": source}
    entry.update(keys)
    check = _Validator(Path("<memory>"), {})
    spec = check.data(entry)
    return load_dataset(spec, Preprocess(spec.image_size))


def load_suite(suite: str | Path | dict[str, Any] | Suite, *, models: dict[str, nn.Module] | None = None) -> Suite:
    """A suite validated and resolved as :func:`run` would run it (a YAML path, a dict or a Suite; ``models`` as
    for :func:`run`): :class:`~bench.suite.SuiteError` before anything runs. ``bench.run_suite`` runs it."""
    return _load(suite, models or {})


@contextlib.contextmanager
def _silent():
    """``progress=False``: nothing on the terminal or in the notebook; warnings still go to the run's run.log."""
    logger = logging.getLogger("bench")
    quiet = logging.NullHandler()
    propagate = logger.propagate
    logger.addHandler(quiet)
    logger.propagate = False
    try:
        yield
    finally:
        logger.removeHandler(quiet)
        logger.propagate = propagate


def _load(suite: str | Path | dict[str, Any] | Suite, models: dict[str, nn.Module]) -> Suite:
    if isinstance(suite, Suite):
        if models:
            raise TypeError("models= needs the suite as a path or a dict (a Suite's models are already resolved)")
        return suite
    if isinstance(suite, (str, Path)):
        if not models:
            return load_suite_file(suite)
        doc, lines = read_suite(suite)
        return parse_suite(_with_models(doc, models, str(suite)), Path(suite), lines)
    if isinstance(suite, dict):
        return parse_suite(_with_models(copy.deepcopy(suite), models, "<memory>"))
    raise TypeError(f"suite must be a YAML path, a dict or a Suite, got {type(suite).__name__}")


def _with_models(doc: Any, models: dict[str, nn.Module], where: str) -> Any:
    """The suite document with each in-memory model in the entry of its name (added when there is none)."""
    from bench.sources import memory

    if not models:  # nothing to add: the document as written (no models key invented)
        return doc
    if not isinstance(doc, dict):
        return doc  # parse_suite says what is wrong with it
    entries = doc.setdefault("models", [])
    if not isinstance(entries, list):
        return doc
    for name, module in models.items():
        token = memory.register(name, module)
        entry = next((e for e in entries if isinstance(e, dict) and e.get("name") == name), None)
        if entry is None:
            entries.append({"name": name, "memory": token})
        elif any(k in entry for k in SOURCE_KEYS):
            key = next(k for k in SOURCE_KEYS if k in entry)
            raise SuiteError(where, f"models[{entries.index(entry)}].{key}", f"model {name!r} is given in memory "
                             f"(models={{{name!r}: …}}) and by {key}: in the suite; give it one way")
        else:
            entry["memory"] = token
    return doc
