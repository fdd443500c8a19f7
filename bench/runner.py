"""Runs a suite: each grid cell becomes exactly one result row.

``run_cell(cell, workspace)`` is a function from a cell spec to a row. The workspace holds what
cells share and must not recompute: the dataset (loaded once per run), models (loaded once per
run), clean predictions per model and defense, and the latest adversarial batch. Oblivious
attacks are crafted on the undefended model, so the same adversarial images serve every defense
of a (model, attack, ε) and are crafted once; every cell of that group reports that one crafting's
time. Randomness is seeded per (model, attack, ε, device, precision), so a row does not depend on
which cells ran before it.
"""

from __future__ import annotations

import json
import logging
import math
import secrets
import time
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn as nn

from bench import attacks as attack_registry
from bench import defenses as defense_registry
from bench.data import Dataset, load_dataset
from bench.defenses import Defended, attack_path
from bench.fastpath import GradientUnderflow, Levers, Wrapper, input_gradient, prepare
from bench.flags import apply_cross_cell, cell_flags
from bench.flags import join as join_flags
from bench.stats import wilson
from bench.models import CheckpointError, ModelUnavailable, create_model
from bench.results import (
    COLUMNS,
    read_rows,
    PREDICTIONS_FILE,
    PREDICTIONS_KEY,
    ROWS_FILE,
    RUN_FILE,
    TABLE_FILE,
    RowLog,
    environment,
    predictions_frame,
    to_frame,
    write_json,
    write_table,
)
from bench.suite import CellSpec, DataSpec, DefenseSpec, Suite
from bench.timing import Stopwatch, peak_memory_mb, reset_peak_memory

log = logging.getLogger(__name__)

# |q(x_adv) - x|∞ can exceed ε by at most half a quantisation step; allow float round-off on top.
QUANT_SLACK = 1 / 510 + 1e-6


class CellFailure(RuntimeError):
    """The cell ran but its result cannot be trusted (non-finite logits, a budget violation)."""

    def __init__(self, message: str, flag: str = ""):
        super().__init__(message)
        self.flag = flag  # a sanity flag (bench/flags.py) the failure also raises


class CellSkipped(RuntimeError):
    """The cell cannot run on this machine; the message says why and how to fix it."""


@dataclass
class Adversarial:
    images: torch.Tensor  # uint8, quantised as a saved image would be
    zero_grad: bool  # the attacked model's input gradient on the first batch was all zero
    seconds: float
    steps: int  # images × gradient steps: forward passes with autograd on, summed over images
    peak_mem_mb: float
    batch_size: int  # the batch size actually used (smaller than asked after a GPU out-of-memory)


class StepCounter(Wrapper):
    """Counts the images the attack pushes through the model with autograd on (its steps)."""

    def __init__(self, model: nn.Module):
        super().__init__(model)
        self.images = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled():
            self.images += x.shape[0]
        return self.model(x)


@dataclass
class Prepared:
    model: nn.Module
    warmup_seconds: float  # building, fp16 calibration, compilation and the first pass; never in throughput
    batch_size: int  # shrinks for good after a GPU out-of-memory


@dataclass
class Workspace:
    suite: Suite
    datasets: dict[DataSpec, Dataset]  # the suite's data and any model's own, loaded once per run
    run_id: str
    env: dict[str, Any]
    on_batch: Callable[[int], None] = lambda n: None  # progress hook: n batches done
    should_stop: Callable[[], bool] = lambda: False  # polled between batches (Ctrl-C)
    _base: dict = field(default_factory=dict)
    _prepared: dict = field(default_factory=dict)
    _clean: dict = field(default_factory=dict)
    _adv_key: Any = None
    _adv: Adversarial | None = None

    def data(self, cell: CellSpec) -> Dataset:
        return self.datasets[cell.model.data or self.suite.data]

    def model(self, cell: CellSpec) -> Prepared:
        """The cell's model on its device and precision with the fast-path levers; built once per run."""
        if cell.device.startswith("cuda") and not torch.cuda.is_available():
            raise CellSkipped("CUDA is not available on this machine")
        if cell.model not in self._base:
            try:
                self._base[cell.model] = create_model(cell.model, seed=self.suite.seed)
            except (ModelUnavailable, CheckpointError) as exc:
                self._base[cell.model] = exc
        base = self._base[cell.model]
        if isinstance(base, ModelUnavailable):
            raise CellSkipped(str(base))
        if isinstance(base, Exception):
            raise CellFailure(str(base))
        key = (cell.model, cell.device, cell.precision)
        if key not in self._prepared:
            t0 = time.perf_counter()
            sample = next(self.data(cell).batches(cell.batch_size))[0]
            try:
                model = prepare(base, cell.device, cell.precision, Levers(compile=cell.model.compile), sample=sample)
                self._warm_up(model, sample.to(cell.device))
            except GradientUnderflow as exc:
                model = exc
            self._prepared[key] = model if isinstance(model, Exception) else Prepared(model, time.perf_counter() - t0, cell.batch_size)
        prepared = self._prepared[key]
        if isinstance(prepared, Exception):
            raise CellFailure(str(prepared))
        return prepared

    @staticmethod
    def _warm_up(model: nn.Module, x: torch.Tensor) -> None:
        """One untimed forward and backward: first-call overheads and compilation stay out of throughput."""
        x = x.clone().requires_grad_(True)
        torch.autograd.grad(model(x).sum(), x)
        if x.is_cuda:
            torch.cuda.synchronize(x.device)

    def clean(self, cell: CellSpec, prep: Prepared) -> tuple[torch.Tensor, float]:
        """Predictions on defended clean images, and the model's clean-inference seconds."""
        key = (cell.model, cell.device, cell.precision, cell.defense)
        if key not in self._clean:
            defense = defense_registry.build(cell.defense)
            self._clean[key] = _shrink_on_oom(prep, lambda bs: self._clean_pass(cell, prep.model, defense, bs))
        return self._clean[key]

    def _clean_pass(self, cell: CellSpec, model: nn.Module, defense, batch_size: int) -> tuple[torch.Tensor, float]:
        watch = Stopwatch(cell.device)
        preds = []
        for x, _ in self.data(cell).batches(batch_size):
            preds.append(_predict(model, defense(x.to(cell.device)), watch))
        return torch.cat(preds), watch.seconds

    def adversarial(self, cell: CellSpec, prep: Prepared) -> Adversarial:
        """The cell's adversarial images. Oblivious ones are crafted on the undefended model and
        reused across defenses; adaptive ones are crafted against this cell's defense."""
        key = (cell.model, cell.attack, cell.device, cell.precision)
        if cell.eval_mode != "oblivious":
            key += (cell.defense, cell.eval_mode)
        if key != self._adv_key:
            self._adv, self._adv_key = None, None  # free the previous group's images first
            self._adv = _shrink_on_oom(prep, lambda bs: self._craft(cell, prep.model, bs))
            self._adv_key = key
            if any(m.training for m in prep.model.modules()):  # dropout or batch statistics would now be live
                raise CellFailure("the attack left the model in training mode; its predictions cannot be trusted")
        return self._adv

    def _craft(self, cell: CellSpec, model: nn.Module, batch_size: int) -> Adversarial:
        counter = StepCounter(model)
        attacked = counter if cell.eval_mode == "oblivious" else Defended(counter, attack_path(cell.defense, cell.eval_mode))
        first = next(self.data(cell).batches(batch_size))[0].to(cell.device)
        zero_grad = not bool((input_gradient(attacked, first) != 0).any())  # untimed, not counted as steps
        counter.images = 0
        torch.manual_seed(cell.attack_seed)
        attack = attack_registry.build(cell.attack, attacked)
        watch = Stopwatch(cell.device)
        reset_peak_memory(cell.device)
        out = []
        for x, y in self.data(cell).batches(batch_size):
            x, y = x.to(cell.device), y.to(cell.device)
            with watch.region():
                adv = attack(x, y)
            out.append(defense_registry.to_uint8(adv).cpu())
            self.on_batch(1)
            if self.should_stop():
                raise Interrupted()
        return Adversarial(torch.cat(out), zero_grad, watch.seconds, counter.images, peak_memory_mb(cell.device), batch_size)


def _shrink_on_oom(prep: Prepared, run: Callable[[int], Any]) -> Any:
    """Run ``run(batch_size)``; on a GPU out-of-memory halve the batch and start over, giving up
    only at batch size 1. The smaller size sticks for the rest of the run."""
    while True:
        try:
            return run(prep.batch_size)
        except torch.cuda.OutOfMemoryError:
            if prep.batch_size == 1:
                raise CellFailure("GPU out of memory even at batch size 1") from None
            prep.batch_size = max(1, prep.batch_size // 2)
            log.warning("GPU out of memory: retrying with batch size %d", prep.batch_size)
            torch.cuda.empty_cache()


def _predict(model: nn.Module, x: torch.Tensor, watch: Stopwatch) -> torch.Tensor:
    with torch.no_grad(), watch.region():
        logits = model(x)
    if not torch.isfinite(logits).all():
        raise CellFailure("the model returned non-finite logits (NaN or inf); check the weights and the precision", flag="non-finite")
    return logits.argmax(1).cpu()


def run_cell(cell: CellSpec, ws: Workspace) -> dict[str, Any]:
    """Run one cell and return its result row (status ok, skipped or failed; never raises for
    a problem of the cell itself)."""
    row = base_row(cell, ws)
    try:
        prep = ws.model(cell)
        row.update(_measure(cell, ws, prep))
        row["status"] = "ok"
    except CellSkipped as exc:
        row.update(status="skipped", reason=str(exc))
    except CellFailure as exc:
        row.update(status="failed", reason=str(exc), flags=exc.flag)
    return row


def _measure(cell: CellSpec, ws: Workspace, prep: Prepared) -> dict[str, Any]:
    ds = ws.data(cell)
    n = len(ds)
    clean_pred, clean_seconds = ws.clean(cell, prep)
    undefended_pred, _ = ws.clean(replace(cell, defense=DefenseSpec("none")), prep)
    adv = ws.adversarial(cell, prep)
    defense = defense_registry.build(cell.defense)
    model_watch, defense_watch = Stopwatch(cell.device), Stopwatch(cell.device)
    robust_pred = []
    for i in range(0, n, adv.batch_size):
        x = adv.images[i : i + adv.batch_size].to(cell.device).float().div_(255)
        with defense_watch.region():
            x = defense(x)
        robust_pred.append(_predict(prep.model, x, model_watch))
    robust_pred = torch.cat(robust_pred)

    diff = adv.images.to(torch.int16) - ds.images.to(torch.int16)
    linf = diff.abs().amax().item() / 255
    l2 = (diff.float() / 255).flatten(1).norm(dim=1).mean().item()
    if cell.attack.eps is not None and linf > cell.attack.eps + QUANT_SLACK:
        raise CellFailure(
            f"measured L-inf perturbation {linf:.6f} exceeds eps {cell.attack.eps:.6f} + 1/510: the attack broke its budget"
        )
    defense_seconds = defense_watch.seconds
    flags = cell_flags(zero_grad=adv.zero_grad, linf=linf, eps=cell.attack.eps,
                       clean_changed=(clean_pred != undefended_pred).float().mean().item())
    return {
        "n": n,
        "batch_size": adv.batch_size,
        **rates(ds.labels, clean_pred, robust_pred, cell.attack.target),
        "flags": join_flags(flags),
        "linf_max": linf,
        "l2_mean": l2,
        "attack_seconds": adv.seconds,
        "attack_images_per_s": _per_s(n, adv.seconds),
        "attack_steps_per_s": _per_s(adv.steps, adv.seconds),
        "clean_images_per_s": _per_s(n, clean_seconds),
        # identity costs nothing: a throughput for "none" would only measure the timer
        "defense_images_per_s": _per_s(n, defense_seconds) if cell.defense.type != "none" else math.nan,
        "warmup_seconds": prep.warmup_seconds,
        "peak_mem_mb": adv.peak_mem_mb,
        # per-image predictions: not table columns, kept in predictions.parquet for per-class views
        PREDICTIONS_KEY: {"labels": ds.labels.tolist(), "clean": clean_pred.tolist(), "robust": robust_pred.tolist()},
    }


def _per_s(count: float, seconds: float) -> float:
    return count / seconds if seconds > 0 else math.nan


def rates(labels: torch.Tensor, clean_pred: torch.Tensor, robust_pred: torch.Tensor, target: int | None) -> dict[str, float]:
    """The accuracy metrics of one cell with their 95 % Wilson intervals (definitions in the README)."""
    clean_ok, robust_ok = clean_pred == labels, robust_pred == labels
    n, n_clean_ok = len(labels), int(clean_ok.sum())
    counts = {
        "clean_acc": (n_clean_ok, n),
        "robust_acc": (int(robust_ok.sum()), n),
        # among images the defended model got right without attack, the share the attack flips
        "attack_success_rate": (int((clean_ok & ~robust_ok).sum()), n_clean_ok),
        "targeted_success_rate": (int((robust_pred == target).sum()), n) if target is not None else (0, 0),
    }
    out: dict[str, float] = {}
    for name, (k, m) in counts.items():
        out[name] = k / m if m else math.nan
        out[f"{name}_ci_low"], out[f"{name}_ci_high"] = wilson(k, m)
    return out


def base_row(cell: CellSpec, ws: Workspace) -> dict[str, Any]:
    row: dict[str, Any] = {c: None for c in COLUMNS}
    row.update(
        suite=cell.suite,
        run_id=ws.run_id,
        cell_id=cell.cell_id,
        status="failed",
        reason="",
        model=cell.model.name,
        dataset=ws.data(cell).name,
        attack=cell.attack.name,
        eps=cell.attack.eps if cell.attack.eps is not None else math.nan,
        defense=cell.defense.label,
        eval_mode=cell.eval_mode,
        device=cell.device,
        precision=cell.precision,
        batch_size=cell.batch_size,
        n=len(ws.data(cell)),
        n_skipped=len(ws.data(cell).skipped),
        seed=cell.seed,
        git_sha=ws.env["git_sha"],
        torch_version=ws.env["torch"],
        device_name=_device_name(cell.device),
        started_at=_now(),
    )
    return row


def _device_name(device: str) -> str:
    from bench.results import device_name

    return device_name(device)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def new_run_id() -> str:
    return datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ") + "-" + secrets.token_hex(2)


@dataclass
class RunResult:
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


def load_datasets(suite: Suite) -> dict[DataSpec, Dataset]:
    """Every data source the suite uses (its own and any model's), decoded once."""
    specs = [suite.data, *(m.data for m in suite.models if m.data is not None)]
    return {spec: load_dataset(spec) for spec in dict.fromkeys(specs)}


def _describe(dataset: Dataset) -> dict[str, Any]:
    return {"name": dataset.name, "n": len(dataset), "ids": dataset.ids, "labels": dataset.labels.tolist(),
            "class_names": dataset.class_names if dataset.class_names and len(dataset.class_names) <= 100 else None,
            "skipped": dataset.skipped, "note": dataset.note}


class Interrupted(KeyboardInterrupt):
    """Stopped on request (Ctrl-C) at a safe point: between batches or cells."""


class ResumeError(ValueError):
    """A run that cannot be resumed with this suite; the message says why."""


def latest_run(results_root: str | Path, suite_name: str) -> Path | None:
    """The newest run folder of a suite (run ids start with a UTC timestamp, so names sort by time)."""
    folder = Path(results_root) / suite_name
    runs = sorted(p for p in folder.iterdir() if (p / RUN_FILE).is_file()) if folder.is_dir() else []
    return runs[-1] if runs else None


def run_suite(
    suite: Suite,
    results_root: str | Path = "results",
    reports_root: str | Path = "reports",
    progress: Any = None,
    datasets: dict[DataSpec, Dataset] | None = None,
    resume: str | Path | None = None,
    stop: Callable[[], bool] = lambda: False,
) -> RunResult:
    """Run every cell of ``suite`` and write the table, run.json and the report.

    Each finished row is appended to ``rows.jsonl`` and fsynced before the next cell starts, so a
    run killed at any moment loses at most the cell in progress. ``resume`` (a run folder of the
    same suite, unchanged) runs only the cells that have no row yet. ``stop()`` is polled between
    batches and cells; when it turns true the run stops there, keeps its rows, writes the table and
    report, and raises :class:`Interrupted`. ``progress`` is an optional object with
    ``start(total_cells, total_batches)``, ``cell(cell)``, ``cell_done()``, ``batch(n)``, ``stop()``.
    """
    from bench.report import write_report

    cells = suite.cells()
    done_rows: list[dict[str, Any]] = []
    if resume is not None:
        run_dir = Path(resume)
        if not (run_dir / RUN_FILE).is_file():
            raise ResumeError(f"{run_dir}: not a run folder (no {RUN_FILE})")
        meta = json.loads((run_dir / RUN_FILE).read_text())
        if meta.get("suite_digest") != suite.digest():
            raise ResumeError(f"{run_dir}: the suite changed since this run started (its resolved content differs); "
                              "resume needs the same suite: restore it, or start a new run")
        by_id = {r["cell_id"]: r for r in read_rows(run_dir)}  # a cell logged twice keeps its last row
        wanted = {c.cell_id for c in cells}
        done_rows = [r for cid, r in by_id.items() if cid in wanted]
        run_id = meta["run_id"]
        meta.setdefault("resumed_at", []).append(_now())
    datasets = datasets if datasets is not None else load_datasets(suite)
    if resume is None:
        run_id = new_run_id()
        run_dir = Path(results_root) / suite.name / run_id
        run_dir.mkdir(parents=True, exist_ok=False)
        meta = {
            "suite": suite.name,
            "run_id": run_id,
            "suite_file": suite.path,
            "suite_digest": suite.digest(),
            "resolved_suite": suite.raw,
            "dataset": _describe(datasets[suite.data]),
            "datasets": {d.name: _describe(d) for d in datasets.values()},
            "environment": environment(),
            "cells": len(cells),
            "started_at": _now(),
        }
    meta["status"] = "running"
    write_json(meta, run_dir / RUN_FILE)

    done = {r["cell_id"] for r in done_rows}
    todo = [c for c in cells if c.cell_id not in done]
    ws = Workspace(suite, datasets, run_id, meta["environment"], should_stop=stop)
    groups = {_group(c) for c in todo}
    batches_of = {g: math.ceil(len(datasets[g[0].data or suite.data]) / suite.batch_size) for g in groups}
    if progress is not None:
        progress.start(len(todo), sum(batches_of.values()))
        ws.on_batch = progress.batch
    rows: list[dict[str, Any]] = list(done_rows)
    rowlog = RowLog(run_dir / ROWS_FILE)
    t0 = time.perf_counter()
    complete = False
    seen_groups: set = set()
    seen_reasons: set = set()
    try:
        for cell in todo:
            if stop():
                raise Interrupted()
            if progress is not None:
                progress.cell(cell)
            row = run_cell(cell, ws)
            rowlog.append(row)
            rows.append(row)
            group = _group(cell)
            if progress is not None:
                progress.cell_done()
                if group not in seen_groups and row["status"] != "ok":
                    progress.batch(batches_of[group])  # nothing to craft for a group that cannot run
            seen_groups.add(group)
            if row["status"] != "ok" and (row["status"], row["reason"]) not in seen_reasons:
                seen_reasons.add((row["status"], row["reason"]))
                log.warning("%s %s: %s (same for the other cells with this reason)", cell.cell_id, row["status"], row["reason"])
        complete = True
    finally:
        rowlog.close()
        if progress is not None:
            progress.stop()
        order = {c.cell_id: i for i, c in enumerate(cells)}
        rows.sort(key=lambda r: order.get(r["cell_id"], len(order)))
        meta.update(status="complete" if complete else "interrupted", finished_at=_now(),
                    wall_seconds=meta.get("wall_seconds", 0.0) + time.perf_counter() - t0)
        apply_cross_cell(rows, to_frame(rows))
        write_table(to_frame(rows), run_dir / TABLE_FILE)
        write_table(predictions_frame(rows), run_dir / PREDICTIONS_FILE)
        write_json(meta, run_dir / RUN_FILE)
        report = write_report(run_dir, reports_root)
    return RunResult(run_dir, report, rows, complete)


def _group(cell: CellSpec) -> tuple:
    """The cells that share one crafting of adversarial images."""
    return (cell.model, cell.attack, cell.device, cell.precision,
            cell.defense if cell.eval_mode != "oblivious" else None, cell.eval_mode)
