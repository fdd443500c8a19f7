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

import copy
from pathlib import Path
from typing import Any

import torch.nn as nn

from bench.runner import RunResult, run_suite
from bench.suite import Suite, SuiteError, load_suite, parse_suite, read_suite

SOURCE_KEYS = ("arch", "factory", "file", "memory")


def run(suite: str | Path | dict[str, Any] | Suite, *, models: dict[str, nn.Module] | None = None, progress: bool = True,
        results_dir: str | Path = "results", reports_dir: str | Path = "reports") -> RunResult:
    """Validate and run a suite (a YAML path, a dict or a Suite); the result with its table, report and run folder."""
    loaded = _load(suite, models or {})
    bar = None
    if progress:
        from rich.console import Console

        from bench.cli import RichProgress

        bar = RichProgress(Console(stderr=True))
    return run_suite(loaded, results_dir, reports_dir, progress=bar)


def _load(suite: str | Path | dict[str, Any] | Suite, models: dict[str, nn.Module]) -> Suite:
    if isinstance(suite, Suite):
        if models:
            raise TypeError("models= needs the suite as a path or a dict (a Suite's models are already resolved)")
        return suite
    if isinstance(suite, (str, Path)):
        if not models:
            return load_suite(suite)
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
