"""Adversarial-robustness benchmark harness for PyTorch image classifiers.

Two functions are the public API::

    suite = bench.load_suite("suites/tutorial.yaml")   # validated, or SuiteError
    result = bench.run_suite(suite)                     # table + report on disk
"""

from bench.runner import RunResult, run_suite
from bench.suite import Suite, SuiteError, load_suite

__all__ = ["load_suite", "run_suite", "Suite", "SuiteError", "RunResult"]
__version__ = "0.1.0"
