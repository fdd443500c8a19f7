"""Runs a suite: the hub between the suite, an executor and the run folder.

Every cell becomes exactly one result row (:mod:`bench.cells` turns a cell into a row). An executor
(:mod:`bench.executors`: this process, or workers on Ray) runs the cells; this module is the only
writer of the run folder: it locks it, appends each row as it lands (fsynced), and writes the table,
run.json and the report at the end, also when the run is interrupted or resumed.
"""

from __future__ import annotations

import contextlib
import json
import logging
import secrets
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from bench import attacks as attack_registry
from bench import defenses as defense_registry
from bench import executors, files
from bench.audit import worst_case
from bench.audit.flags import apply_cross_cell
from bench.cells import _now, data_key, load_datasets
from bench.data import Dataset
from bench.executors import Executor, Job
from bench.failures import RunFolderUnwritable, LOG_FILE, Interrupted, _trace

if TYPE_CHECKING:
    import pandas as pd

from bench.results import (
    PREDICTIONS_FILE,
    ROWS_FILE,
    RUN_FILE,
    SHARDS_FILE,
    TABLE_FILE,
    WORST_CASE_FILE,
    WORST_CASE_IMAGES_FILE,
    RowLog,
    RunFolderError,
    environment,
    load_predictions,
    predictions_frame,
    read_json,
    read_rows,
    read_shards,
    to_frame,
    write_json,
    write_table,
)
from bench.runlock import LOCK_FILE, RunLock, RunLocked
from bench.specs import DataSpec, Preprocess
from bench.suite import Suite

log = logging.getLogger(__name__)
# Bytes of spaces kept at the end of run.json while a run is going, so that its final status can be
# written in place when the disk is full (files.overwrite_in_place): "error" and why, never "running".
RUN_FILE_RESERVE = 4096
RUN_FOLDER_FILES = (LOCK_FILE, ROWS_FILE, SHARDS_FILE, LOG_FILE, RUN_FILE, TABLE_FILE, PREDICTIONS_FILE,
                    WORST_CASE_FILE, WORST_CASE_IMAGES_FILE)
__all__ = ["run_suite", "RunResult", "ResumeError", "RunError", "Interrupted", "latest_run"]


def new_run_id() -> str:
    return datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ") + "-" + secrets.token_hex(2)


@dataclass
class RunResult:
    """A finished run: its folder and report, and its tables read from the folder (so they are what was written)."""

    run_dir: Path
    report_path: Path | None
    rows: list[dict[str, Any]]
    complete: bool

    @property
    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for r in self.rows:
            out[r["status"]] = out.get(r["status"], 0) + 1
        return out

    @property
    def table(self) -> "pd.DataFrame":
        """One row per cell, the results table's typed columns (docs/results.md)."""
        import pandas as pd

        return pd.read_parquet(self.run_dir / TABLE_FILE)

    @property
    def predictions(self) -> "pd.DataFrame | None":
        """Per image and cell: label, clean and robust predictions, whether attacked, the measured distance."""
        return load_predictions(self.run_dir)

    @property
    def worst_case(self) -> "pd.DataFrame | None":
        """Per model, defense, norm and ε: the share of images no attack broke (bench/audit/worst_case.py)."""
        loaded = worst_case.load(self.run_dir)
        return loaded[0] if loaded is not None else None

    @property
    def report(self) -> str:
        """The markdown report's text."""
        return self.report_path.read_text() if self.report_path else ""


def _describe(dataset: Dataset, key: tuple[DataSpec, Preprocess] | None = None, models: list[str] | None = None) -> dict[str, Any]:
    out = {"name": dataset.name, "n": len(dataset), "ids": dataset.ids, "labels": dataset.labels.tolist(),
           "class_names": dataset.class_names if dataset.class_names and len(dataset.class_names) <= 100 else None,
           "skipped": dataset.skipped, "note": dataset.note}
    if dataset.split:
        out["split"] = dataset.split
    if key is not None:
        out["preprocess"] = {"input_size": key[1].input_size, "resize_size": key[1].resize, "interpolation": key[1].interpolation,
                             "transform": dataset.transform}
        out["models"] = models or []
    return out


class ResumeError(ValueError):
    """A run that cannot be resumed (with this suite, or now: another process writes it); the message says why."""


class RunError(RuntimeError):
    """The run itself stopped (its results folder could not be written, say): not a cell's
    problem. Rows that landed are kept; run.json says ``status: error`` and why."""

    def __init__(self, run_dir: Path, reason: str, resumable: bool = True):
        super().__init__(f"the run stopped: {reason}; " + (
            f"the rows that finished are kept in {run_dir} (--resume finishes it once the cause is fixed)" if resumable
            else "nothing was run or kept: run it again once the cause is fixed"))
        self.run_dir, self.reason = run_dir, reason


def _check_targets(run_dir: Path | None, reports_dir: Path, run_id: str | None) -> None:
    """Every file the run will write, checked before anything is written: a symbolic link (or a FIFO,
    a folder …) where a file goes is a :class:`bench.files.LinkError`."""
    for folder in (reports_dir, run_dir.parent if run_dir is not None else None):
        if folder is not None and folder.is_symlink():  # a dangling one would fail only after every cell ran
            raise files.LinkError(folder, "is a symbolic link; bench never writes through a link (remove it and run again)")
    targets = [run_dir / name for name in RUN_FOLDER_FILES] if run_dir is not None else []
    targets.append(reports_dir / "latest.md")
    if reports_dir.is_dir():
        targets += [p for p in reports_dir.glob("latest-*.png")]
        if run_id:
            targets += [reports_dir / f"{run_id}.md", *reports_dir.glob(f"{run_id}-*.png")]
    for path in targets:
        files.check_target(path)


def _reason(exc: BaseException) -> str:
    """One line for run.json and the terminal: a write error says file and errno itself."""
    if isinstance(exc, RunFolderUnwritable):  # a shard's write: say what the write said
        return _reason(exc.cause)
    if isinstance(exc, files.WriteError):
        return str(exc)
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:300]


def _remove_stub(run_dir: Path) -> None:
    """A new run folder that never got its run.json (a full disk at its first write): its lock file and the
    folder go, so no empty run is left for --resume or history to trip on."""
    for path in (run_dir / LOCK_FILE, run_dir):
        try:
            path.rmdir() if path.is_dir() else path.unlink()
        except OSError:
            pass


def latest_run(results_root: str | Path, suite_name: str) -> Path | None:
    """The newest run folder of a suite (run ids start with a UTC timestamp, so names sort by time)."""
    folder = Path(results_root) / suite_name
    runs = sorted(p for p in folder.iterdir() if (p / RUN_FILE).is_file()) if folder.is_dir() else []
    return runs[-1] if runs else None


def _resumed(run_dir: Path, suite: Suite, retry_failed: bool) -> tuple[dict[str, Any], list[dict[str, Any]], list[dict[str, Any]]]:
    """run.json, the rows to keep, and (``retry_failed``) the failed rows to run again, of a run
    folder this process holds the lock of."""
    try:
        meta = read_json(run_dir / RUN_FILE)
        rows = read_rows(run_dir)
    except RunFolderError as exc:
        raise ResumeError(f"cannot resume: {exc}") from None
    if not isinstance(meta.get("run_id"), str):
        raise ResumeError(f"cannot resume: {run_dir / RUN_FILE}: has no run_id")
    if meta.get("suite_digest") != suite.digest():
        raise ResumeError(f"{run_dir}: the suite changed since this run started (its resolved content differs); "
                          "resume needs the same suite: restore it, or start a new run")
    by_id = {r["cell_id"]: r for r in rows}  # a cell logged twice keeps its last row
    wanted = {c.cell_id for c in suite.cells()}
    rows = [r for cid, r in by_id.items() if cid in wanted]
    again = {r["cell_id"] for r in rows if retry_failed and r.get("status") == "failed"}
    meta.setdefault("resumed_at", []).append(_now())
    return meta, [r for r in rows if r["cell_id"] not in again], [r for r in rows if r["cell_id"] in again]


def run_suite(
    suite: Suite,
    results_root: str | Path = "results",
    reports_root: str | Path = "reports",
    progress: Any = None,
    datasets: dict[tuple[DataSpec, Preprocess], Dataset] | None = None,
    resume: str | Path | None = None,
    stop: Callable[[], bool] = lambda: False,
    retry_failed: bool = False,
    executor: Executor | None = None,
) -> RunResult:
    """Run every cell of ``suite`` and write the table, run.json and the report.

    Each row is appended to ``rows.jsonl`` and fsynced as it lands, so a run killed at any moment
    loses at most the cells in progress. ``resume`` (a run folder of the same suite, unchanged)
    runs only the cells that have no row yet, and with ``retry_failed`` also those whose row is
    ``failed`` (the new row replaces the old). One process writes a run folder at a time: a second
    one gets :class:`ResumeError` naming the first. ``stop()`` is polled between batches and cells;
    when it turns true the run stops there, keeps its rows, writes the table and report, and raises
    :class:`Interrupted`. ``executor`` runs the cells (default: the suite's ``executor:``, local
    unless it says otherwise). ``progress`` is an optional object with ``start(total_cells,
    total_batches)``, ``cell(cell)``, ``cell_done()``, ``batch(n)``, ``stop()``.
    """
    cells = suite.cells()
    executor = executor if executor is not None else executors.create(executors.from_suite(suite))
    with contextlib.ExitStack() as cleanup:
        done_rows: list[dict[str, Any]] = []
        retry_rows: list[dict[str, Any]] = []
        if resume is not None:
            run_dir = Path(resume)
            if not (run_dir / RUN_FILE).is_file():
                raise ResumeError(f"{run_dir}: not a run folder (no {RUN_FILE})")
            try:
                _check_targets(run_dir, Path(reports_root) / suite.name, run_dir.name)
            except files.LinkError as exc:
                raise ResumeError(f"cannot resume: {exc}") from None
            _resumed(run_dir, suite, retry_failed)  # a damaged or changed run.json refused before the lock is written
            try:
                cleanup.callback(RunLock(run_dir).acquire().release)
            except RunLocked as exc:
                raise ResumeError(str(exc)) from None
            except files.LinkError as exc:
                raise ResumeError(f"cannot resume: {exc}") from None
            except files.WriteError as exc:  # a full disk: as any write of the run, one line and exit 1
                raise RunError(run_dir, _reason(exc)) from None
            except OSError as exc:  # a read-only folder, a lock file of another user
                raise ResumeError(f"{run_dir}: cannot lock it to write ({exc})") from None
            meta, done_rows, retry_rows = _resumed(run_dir, suite, retry_failed)
            run_id = meta["run_id"]
        datasets = datasets if datasets is not None else load_datasets(suite)
        cleanup.callback(executor.close)  # also after a start() that failed half-way
        executor.start()  # ExecutorError (no Ray, no cluster) before a new run folder exists
        if resume is None:
            run_id = new_run_id()
            run_dir = Path(results_root) / suite.name / run_id
            _check_targets(run_dir, Path(reports_root) / suite.name, None)  # LinkError: bad input, nothing written
            try:
                run_dir.mkdir(parents=True, exist_ok=False)
            except OSError as exc:
                raise RunError(run_dir, f"cannot create the run folder ({exc})", resumable=False) from None
            try:
                cleanup.callback(RunLock(run_dir).acquire().release)
            except OSError as exc:  # a full disk; flock unsupported on this file system (some network mounts)
                _remove_stub(run_dir)
                raise RunError(run_dir, _reason(exc) if isinstance(exc, files.WriteError) else
                               f"cannot lock the run folder ({exc})", resumable=False) from None
            meta = {
                "suite": suite.name,
                "run_id": run_id,
                "suite_file": suite.path,
                "suite_digest": suite.digest(),
                "resolved_suite": suite.raw,
                "dataset": _describe(next((d for k, d in datasets.items() if k[0] == suite.data), next(iter(datasets.values())))),
                # one entry per decoded copy: which models read it, at which preprocessing
                "datasets": {f"{d.name} @ {key[1].label} #{i}": _describe(d, key, [m.name for m in suite.models if data_key(suite, m) == key])
                             for i, (key, d) in enumerate(datasets.items())},
                "environment": environment(),
                "cells": len(cells),
                "started_at": _now(),
            }
        meta["status"] = "running"
        if "executor" in meta:  # a resume: the earlier sessions' record (retries, lost workers) is kept
            meta.setdefault("earlier_executors", []).append(meta["executor"])
        meta["executor"] = executor.describe()
        try:
            write_json(meta, run_dir / RUN_FILE, reserve=RUN_FILE_RESERVE)
        except OSError as exc:
            if resume is None:  # no run.json yet: nothing a resume could pick up
                cleanup.close()
                _remove_stub(run_dir)
            raise RunError(run_dir, _reason(exc), resumable=resume is not None) from None
        return _execute(suite, cells, done_rows, retry_rows, datasets, run_dir, meta, executor, progress, stop, reports_root)


def _execute(suite: Suite, cells: list, done_rows: list[dict[str, Any]], retry_rows: list[dict[str, Any]], datasets: dict,
             run_dir: Path, meta: dict[str, Any], executor: Executor, progress: Any, stop: Callable[[], bool],
             reports_root: str | Path) -> RunResult:
    """Run the cells without a row (and those of ``retry_rows``) through the executor, appending each
    row as it lands; write the table, run.json and the report however it ends. A failed row to retry
    stays in the table until its new row lands (an interrupted retry loses nothing)."""
    done = {r["cell_id"] for r in done_rows}
    todo = [c for c in cells if c.cell_id not in done]
    wanted = {c.cell_id for c in todo}
    job = Job(suite, datasets, meta["run_id"], meta["environment"], todo, stop=stop, done=list(done_rows),
              shard_parts={k: v for k, v in read_shards(run_dir).items() if k[0] in wanted})
    if progress is not None:
        progress.start(len(todo), sum(job.batches_of(g[0]) for g in executors.groups(todo)))
        job.started, job.batches = progress.cell, progress.batch
    rows: list[dict[str, Any]] = list(done_rows)
    try:
        handler = files.LogFile(run_dir / LOG_FILE)
    except OSError as exc:
        raise RunError(run_dir, _reason(exc)) from None
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    for logger in (logging.getLogger("bench"), _trace):
        logger.addHandler(handler)
    t0 = time.perf_counter()
    status, error = "interrupted", None
    seen_reasons: set = set()
    rowlog = None
    try:
        rowlog = RowLog(run_dir / ROWS_FILE)
        shardlog = RowLog(run_dir / SHARDS_FILE)
    except OSError as exc:
        if rowlog is not None:
            rowlog.close()
        _detach(handler)
        raise RunError(run_dir, _reason(exc)) from None
    # each shard's outcomes on disk (fsynced) before the next shard starts: a kill loses at most the shard in progress
    job.shard_done = lambda cell_id, shard, part: shardlog.append({"cell_id": cell_id, "shard": shard, **part})
    try:
        for row in executor.run(job):
            rowlog.append(row)
            rows.append(row)
            if progress is not None:
                progress.cell_done()
            if row["status"] != "ok" and (row["status"], row["reason"]) not in seen_reasons:
                seen_reasons.add((row["status"], row["reason"]))
                log.warning("%s %s: %s (same for the other cells with this reason)", row["cell_id"], row["status"], row["reason"])
        status = "complete"
    except KeyboardInterrupt:  # Ctrl-C (Interrupted included): the only stop that is "interrupted"
        raise
    except Exception as exc:  # the run itself broke (a full disk, say; a cell's own errors never get here): say so
        status, error = "error", _reason(exc)
        _trace.error("the run stopped", exc_info=True)
        raise RunError(run_dir, error) from exc
    finally:
        rowlog.close()
        shardlog.close()
        if progress is not None:
            progress.stop()
        landed = {r["cell_id"] for r in rows}
        rows += [r for r in retry_rows if r["cell_id"] not in landed]
        order = {c.cell_id: i for i, c in enumerate(cells)}
        rows.sort(key=lambda r: order.get(r["cell_id"], len(order)))
        meta.update(status=status, finished_at=_now(), wall_seconds=meta.get("wall_seconds", 0.0) + time.perf_counter() - t0,
                    executor=executor.describe())
        if error:
            meta["error"] = error
        else:
            meta.pop("error", None)
        meta["partial_cells"] = _partial(suite, todo, rows, datasets, run_dir) if status != "complete" else {}
        report, failure = _finish(suite, rows, run_dir, meta, reports_root)
        _detach(handler)
    if failure:  # the cells ran, but the table or the report could not be written
        raise RunError(run_dir, failure)
    return RunResult(run_dir, report, rows, status == "complete")


def _partial(suite: Suite, todo: list, rows: list[dict[str, Any]], datasets: dict, run_dir: Path) -> dict[str, str]:
    """Cells without a row that have shards on disk: cell id → "k of n shards" (a resume runs only the rest)."""
    from bench.cells import shard_plan

    try:
        logged = read_shards(run_dir)
    except Exception:  # noqa: BLE001 (the run's own error says more; the report goes on without this line)
        return {}
    landed = {r["cell_id"] for r in rows}
    out = {}
    for cell in todo:
        k = sum(1 for cid, _ in logged if cid == cell.cell_id)
        if k and cell.cell_id not in landed:
            n = len(shard_plan(len(datasets[data_key(suite, cell.model)]), cell.batch_size, suite.shard_size))
            out[cell.cell_id] = f"{min(k, n)} of {n} shards"
    return out


def _finish(suite: Suite, rows: list[dict[str, Any]], run_dir: Path, meta: dict[str, Any],
            reports_root: str | Path) -> tuple[Path | None, str | None]:
    """Write the tables and the report, then run.json with the run's status: never ``complete``
    before the table and the report are both on disk. Never raises: returns (report, None), or
    (None, why) after recording status ``error`` and why in run.json (in place on a full disk)."""
    from bench.reporting.report import write_report

    try:
        predictions = predictions_frame(rows)
        randomized = [d.label for d in suite.defenses if defense_registry.randomized(d)]
        black_box = sorted({r["attack_type"] for r in rows if r.get("attack_type") and attack_registry.black_box(r["attack_type"])})
        apply_cross_cell(rows, to_frame(rows), predictions, black_box, randomized)
        table = to_frame(rows)
        write_table(table, run_dir / TABLE_FILE)
        write_table(predictions, run_dir / PREDICTIONS_FILE)
        worst_case.write(table, predictions, run_dir)
        report = write_report(run_dir, reports_root, meta=meta)
        write_json(meta, run_dir / RUN_FILE)
        return report, None
    except Exception as exc:
        reason = _reason(exc)
        _trace.error("writing the table and report failed", exc_info=True)
        meta["status"] = "error"
        meta.setdefault("error", reason)  # a run that stopped with an error keeps that first reason
        text = (json.dumps(meta, indent=2, default=str) + "\n").encode()
        try:
            files.write_atomic(run_dir / RUN_FILE, text)
        except OSError:
            try:  # a full disk: no new file can be made, but run.json's own blocks (and its reserve) can be rewritten
                files.overwrite_in_place(run_dir / RUN_FILE, text)
            except OSError:
                _trace.error("run.json could not be updated either", exc_info=True)
        return None, reason


def _detach(handler: logging.Handler) -> None:
    for logger in (logging.getLogger("bench"), _trace):
        logger.removeHandler(handler)
    handler.close()
