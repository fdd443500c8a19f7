"""How a cell ends other than ok: its failures and skips, one line each, and Ctrl-C.

A cell never takes a run down: whatever it raises becomes its ``failed`` row (:func:`failure`: the
exception's type and first line; the traceback goes to the run's log file only, through ``_trace``).
"""

from __future__ import annotations

import logging

from bench.specs import CellSpec

# Tracebacks of failed cells go to the run's log file only (run_suite attaches it), not the terminal.
_trace = logging.getLogger("bench.trace")
_trace.propagate = False
_trace.addHandler(logging.NullHandler())  # outside a run (tests, the API) tracebacks go nowhere
LOG_FILE = "run.log"


class CellFailure(RuntimeError):
    """The cell ran but its result cannot be trusted (non-finite logits, a budget violation)."""

    def __init__(self, message: str, flag: str = ""):
        super().__init__(message)
        self.flag = flag  # a flag (bench/audit/flags.py) the failure also raises


class RunFolderUnwritable(RuntimeError):
    """A shard's outcomes could not be written to the run folder (a full disk): the run stops there, and no cell
    is to blame. ``cause`` is the write's own error."""

    def __init__(self, cause: BaseException):
        super().__init__(str(cause))
        self.cause = cause


class CellSkipped(RuntimeError):
    """The cell cannot run on this machine; the message says why and how to fix it."""


class Interrupted(KeyboardInterrupt):
    """Stopped on request (Ctrl-C) at a safe point: between batches or cells."""


def failure(exc: BaseException, cell: CellSpec | None = None) -> "CellFailure":
    """A foreign exception as a cell failure: the reason names its type and message; the full
    traceback goes to the run's log file."""
    if isinstance(exc, CellFailure):
        return exc
    _trace.error("%s failed", cell.cell_id if cell else "cell", exc_info=(type(exc), exc, exc.__traceback__))
    return CellFailure(one_line(exc))


def one_line(exc: BaseException) -> str:
    """An exception as one line of a row's reason: its type and the first line of its message."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:300]}" if text else type(exc).__name__
