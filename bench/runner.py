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

import logging
import math
import secrets
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn as nn

from bench import attacks as attack_registry
from bench import defenses as defense_registry
from bench.data import Dataset, load_dataset
from bench.models import Autocast, CheckpointError, ModelUnavailable, create_model
from bench.results import COLUMNS, ROWS_FILE, RUN_FILE, TABLE_FILE, RowLog, environment, to_frame, write_json, write_table
from bench.suite import CellSpec, Suite
from bench.timing import Stopwatch, peak_memory_mb, reset_peak_memory

log = logging.getLogger(__name__)

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
# |q(x_adv) - x|∞ can exceed ε by at most half a quantisation step; allow float round-off on top.
QUANT_SLACK = 1 / 510 + 1e-6


class CellFailure(RuntimeError):
    """The cell ran but its result cannot be trusted (non-finite logits, a budget violation)."""


class CellSkipped(RuntimeError):
    """The cell cannot run on this machine; the message says why and how to fix it."""


@dataclass
class Adversarial:
    images: torch.Tensor  # uint8, quantised as a saved image would be
    seconds: float
    peak_mem_mb: float


@dataclass
class Workspace:
    suite: Suite
    dataset: Dataset
    run_id: str
    env: dict[str, Any]
    on_batch: Callable[[int], None] = lambda n: None  # progress hook: n batches done
    _models: dict = field(default_factory=dict)
    _clean: dict = field(default_factory=dict)
    _adv_key: Any = None
    _adv: Adversarial | None = None

    def model(self, cell: CellSpec) -> nn.Module:
        """The cell's model on its device and precision; built once per run."""
        if cell.device.startswith("cuda") and not torch.cuda.is_available():
            raise CellSkipped("CUDA is not available on this machine")
        key = (cell.model, cell.device, cell.precision)
        if key not in self._models:
            base_key = (cell.model, None, None)
            if base_key not in self._models:
                try:
                    self._models[base_key] = create_model(cell.model, seed=self.suite.seed)
                except (ModelUnavailable, CheckpointError) as exc:
                    self._models[base_key] = exc
            base = self._models[base_key]
            if isinstance(base, Exception):
                self._models[key] = base
            else:
                model = base.to(cell.device)
                if cell.precision != "fp32":
                    model = Autocast(model, torch.device(cell.device).type, DTYPES[cell.precision])
                self._warm_up(model, cell.device)
                self._models[key] = model
        model = self._models[key]
        if isinstance(model, ModelUnavailable):
            raise CellSkipped(str(model))
        if isinstance(model, Exception):
            raise CellFailure(str(model))
        return model

    def _warm_up(self, model: nn.Module, device: str) -> None:
        """One untimed forward and backward, so first-call overheads stay out of throughput."""
        x = next(self.dataset.batches(self.suite.batch_size))[0].to(device).requires_grad_(True)
        torch.autograd.grad(model(x).sum(), x)
        if device.startswith("cuda"):
            torch.cuda.synchronize(device)

    def clean(self, cell: CellSpec, model: nn.Module) -> tuple[torch.Tensor, float]:
        """Predictions on defended clean images, and the model's clean-inference seconds."""
        key = (cell.model, cell.device, cell.precision, cell.defense)
        if key not in self._clean:
            defense = defense_registry.build(cell.defense)
            watch = Stopwatch(cell.device)
            preds = []
            for x, _ in self.dataset.batches(cell.batch_size):
                x = defense(x.to(cell.device))
                preds.append(_predict(model, x, watch))
            self._clean[key] = (torch.cat(preds), watch.seconds)
        return self._clean[key]

    def adversarial(self, cell: CellSpec, model: nn.Module) -> Adversarial:
        """The cell's adversarial images (crafted on the undefended model), reused across defenses."""
        key = (cell.model, cell.attack, cell.device, cell.precision)
        if key != self._adv_key:
            self._adv, self._adv_key = None, None  # free the previous group's images first
            torch.manual_seed(cell.attack_seed)
            attack = attack_registry.build(cell.attack, model)
            watch = Stopwatch(cell.device)
            reset_peak_memory(cell.device)
            out = []
            for x, y in self.dataset.batches(cell.batch_size):
                x, y = x.to(cell.device), y.to(cell.device)
                with watch.region():
                    adv = attack(x, y)
                out.append(defense_registry.to_uint8(adv).cpu())
                self.on_batch(1)
            self._adv = Adversarial(torch.cat(out), watch.seconds, peak_memory_mb(cell.device))
            self._adv_key = key
        return self._adv


def _predict(model: nn.Module, x: torch.Tensor, watch: Stopwatch) -> torch.Tensor:
    with torch.no_grad(), watch.region():
        logits = model(x)
    if not torch.isfinite(logits).all():
        raise CellFailure("the model returned non-finite logits (NaN or inf); check the weights and the precision")
    return logits.argmax(1).cpu()


def run_cell(cell: CellSpec, ws: Workspace) -> dict[str, Any]:
    """Run one cell and return its result row (status ok, skipped or failed; never raises for
    a problem of the cell itself)."""
    row = base_row(cell, ws)
    try:
        model = ws.model(cell)
        row.update(_measure(cell, ws, model))
        row["status"] = "ok"
    except CellSkipped as exc:
        row.update(status="skipped", reason=str(exc))
    except CellFailure as exc:
        row.update(status="failed", reason=str(exc))
    except torch.cuda.OutOfMemoryError as exc:
        row.update(status="failed", reason=f"GPU out of memory at batch size {cell.batch_size}: {str(exc).splitlines()[0]}")
    return row


def _measure(cell: CellSpec, ws: Workspace, model: nn.Module) -> dict[str, Any]:
    ds = ws.dataset
    n = len(ds)
    clean_pred, clean_seconds = ws.clean(cell, model)
    adv = ws.adversarial(cell, model)
    defense = defense_registry.build(cell.defense)
    watch = Stopwatch(cell.device)
    robust_pred = []
    for i in range(0, n, cell.batch_size):
        x = adv.images[i : i + cell.batch_size].to(cell.device).float().div_(255)
        robust_pred.append(_predict(model, defense(x), watch))
    robust_pred = torch.cat(robust_pred)

    diff = adv.images.to(torch.int16) - ds.images.to(torch.int16)
    linf = diff.abs().amax().item() / 255
    l2 = (diff.float() / 255).flatten(1).norm(dim=1).mean().item()
    if cell.attack.eps is not None and linf > cell.attack.eps + QUANT_SLACK:
        raise CellFailure(
            f"measured L-inf perturbation {linf:.6f} exceeds eps {cell.attack.eps:.6f} + 1/510: the attack broke its budget"
        )
    return {
        "n": n,
        **rates(ds.labels, clean_pred, robust_pred, cell.attack.target),
        "linf_max": linf,
        "l2_mean": l2,
        "attack_seconds": adv.seconds,
        "attack_images_per_s": n / adv.seconds if adv.seconds > 0 else math.nan,
        "clean_images_per_s": n / clean_seconds if clean_seconds > 0 else math.nan,
        "peak_mem_mb": adv.peak_mem_mb,
    }


def rates(labels: torch.Tensor, clean_pred: torch.Tensor, robust_pred: torch.Tensor, target: int | None) -> dict[str, float]:
    """The accuracy metrics of one cell (definitions in the README)."""
    clean_ok, robust_ok = clean_pred == labels, robust_pred == labels
    n_clean_ok = int(clean_ok.sum())
    return {
        "clean_acc": clean_ok.float().mean().item(),
        "robust_acc": robust_ok.float().mean().item(),
        # among images the defended model got right without attack, the share the attack flips
        "attack_success_rate": float((clean_ok & ~robust_ok).sum()) / n_clean_ok if n_clean_ok else math.nan,
        "targeted_success_rate": (robust_pred == target).float().mean().item() if target is not None else math.nan,
    }


def base_row(cell: CellSpec, ws: Workspace) -> dict[str, Any]:
    row: dict[str, Any] = {c: None for c in COLUMNS}
    row.update(
        suite=cell.suite,
        run_id=ws.run_id,
        cell_id=cell.cell_id,
        status="failed",
        reason="",
        model=cell.model.name,
        dataset=ws.dataset.name,
        attack=cell.attack.name,
        eps=cell.attack.eps if cell.attack.eps is not None else math.nan,
        defense=cell.defense.label,
        eval_mode=cell.eval_mode,
        device=cell.device,
        precision=cell.precision,
        batch_size=cell.batch_size,
        n=len(ws.dataset),
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


def run_suite(
    suite: Suite,
    results_root: str | Path = "results",
    reports_root: str | Path = "reports",
    progress: Any = None,
    dataset: Dataset | None = None,
) -> RunResult:
    """Run every cell of ``suite`` and write the table, run.json and the report.

    ``progress`` is an optional object with ``start(total_cells, total_batches)``, ``cell(cell)``,
    ``cell_done()``, ``batch(n)`` and ``stop()`` (the CLI passes a rich progress bar). On Ctrl-C the rows finished so
    far are kept and written, and KeyboardInterrupt propagates.
    """
    from bench.report import write_report

    dataset = dataset if dataset is not None else load_dataset(suite.data)
    cells = suite.cells()
    run_id = new_run_id()
    run_dir = Path(results_root) / suite.name / run_id
    run_dir.mkdir(parents=True, exist_ok=False)
    env = environment()
    meta = {
        "suite": suite.name,
        "run_id": run_id,
        "suite_file": suite.path,
        "suite_digest": suite.digest(),
        "resolved_suite": suite.raw,
        "dataset": {"name": dataset.name, "n": len(dataset), "ids": dataset.ids, "skipped": dataset.skipped},
        "environment": env,
        "cells": len(cells),
        "started_at": _now(),
        "status": "running",
    }
    write_json(meta, run_dir / RUN_FILE)

    ws = Workspace(suite, dataset, run_id, env)
    n_batches = math.ceil(len(dataset) / suite.batch_size)
    groups = {(c.model, c.attack, c.device, c.precision) for c in cells}
    if progress is not None:
        progress.start(len(cells), len(groups) * n_batches)
        ws.on_batch = progress.batch
    rows: list[dict[str, Any]] = []
    rowlog = RowLog(run_dir / ROWS_FILE)
    t0 = time.perf_counter()
    complete = False
    seen_groups: set = set()
    seen_reasons: set = set()
    try:
        for cell in cells:
            if progress is not None:
                progress.cell(cell)
            row = run_cell(cell, ws)
            rowlog.append(row)
            rows.append(row)
            group = (cell.model, cell.attack, cell.device, cell.precision)
            if progress is not None:
                progress.cell_done()
                if group not in seen_groups and row["status"] != "ok":
                    progress.batch(n_batches)  # nothing to craft for a group that cannot run
            seen_groups.add(group)
            if row["status"] != "ok" and (row["status"], row["reason"]) not in seen_reasons:
                seen_reasons.add((row["status"], row["reason"]))
                log.warning("%s %s: %s (same for the other cells with this reason)", cell.cell_id, row["status"], row["reason"])
        complete = True
    finally:
        rowlog.close()
        if progress is not None:
            progress.stop()
        meta.update(status="complete" if complete else "interrupted", finished_at=_now(), wall_seconds=time.perf_counter() - t0)
        write_table(to_frame(rows), run_dir / TABLE_FILE)
        write_json(meta, run_dir / RUN_FILE)
        report = write_report(run_dir, reports_root)
    return RunResult(run_dir, report, rows, complete)
