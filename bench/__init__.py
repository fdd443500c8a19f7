"""Adversarial-robustness benchmark harness for PyTorch image classifiers.

The public API::

    result = bench.run("suites/tutorial.yaml")          # or a dict, or a Suite; models={"name": module} in memory
    result.table                                        # the results as a DataFrame; .predictions, .worst_case
    suite = bench.load_suite("suites/tutorial.yaml")   # or a dict (and models=); validated, or SuiteError
    result = bench.run_suite(suite)                     # table + report on disk
    train = bench.dataset("digits", split="train", image_size=16)  # a source's images and labels, to train on

They are imported on first use (PEP 562), so ``python -m bench`` answers ``--help``, ``report``
and bad input without importing torch first.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__all__ = ["run", "load_suite", "run_suite", "dataset", "Suite", "SuiteError", "RunResult"]
__version__ = "0.1.0"
_HOME = {"run": "bench.api", "dataset": "bench.api", "run_suite": "bench.runner", "RunResult": "bench.runner",
         "load_suite": "bench.api", "Suite": "bench.suite", "SuiteError": "bench.suite"}

if TYPE_CHECKING:
    from bench.api import run
    from bench.runner import RunResult, run_suite
    from bench.api import dataset, load_suite
    from bench.suite import Suite, SuiteError


def __getattr__(name: str) -> Any:
    if name in _HOME:
        return getattr(importlib.import_module(_HOME[name]), name)
    raise AttributeError(f"module 'bench' has no attribute {name!r}")
