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

import contextlib
import hashlib
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
from bench.fastpath import Levers, PrecisionError, Wrapper, backend_flags, input_gradient, prepare
from bench.flags import apply_cross_cell, cell_flags
from bench.flags import join as join_flags
from bench.stats import wilson
from bench.models import CheckpointError, ModelUnavailable
from bench.sources import create_model
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
from bench.specs import CellSpec, DataSpec, DefenseSpec, ModelSpec, Preprocess
from bench.suite import Suite
from bench.timing import Stopwatch, peak_memory_mb, reset_peak_memory

log = logging.getLogger(__name__)
# Tracebacks of failed cells go to the run's log file only (run_suite attaches it), not the terminal.
_trace = logging.getLogger("bench.trace")
_trace.propagate = False
_trace.addHandler(logging.NullHandler())  # outside a run (tests, the API) tracebacks go nowhere
LOG_FILE = "run.log"

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
    warmup_seconds: float  # building, fp16 calibration, compilation and warm-up passes; never in throughput
    warm: set[int] = field(default_factory=set)  # batch sizes already warmed up (grad and no-grad)


def failure(exc: BaseException, cell: CellSpec | None = None) -> "CellFailure":
    """A foreign exception as a cell failure: the reason names its type and message; the full
    traceback goes to the run's log file."""
    if isinstance(exc, CellFailure):
        return exc
    _trace.error("%s failed", cell.cell_id if cell else "cell", exc_info=(type(exc), exc, exc.__traceback__))
    text = str(exc).strip().splitlines()
    return CellFailure(f"{type(exc).__name__}: {text[0][:300]}" if text else type(exc).__name__)


def cuda_unavailable(device: str) -> str | None:
    """Why a CUDA device cannot be used here, or None when it can (always None for the CPU)."""
    if not device.startswith("cuda"):
        return None
    if not torch.cuda.is_available():
        return "CUDA is not available on this machine"
    index, count = torch.device(device).index or 0, torch.cuda.device_count()
    if index >= count:
        return f"{device} does not exist: this machine has {count} GPU(s) (cuda:0 to cuda:{count - 1})"
    return None


@dataclass
class Workspace:
    suite: Suite
    datasets: dict[tuple[DataSpec, Preprocess], Dataset]  # decoded once per source and preprocessing
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
        return self.datasets[data_key(self.suite, cell.model)]

    def model(self, cell: CellSpec) -> Prepared:
        """The cell's model on its device and precision with the fast-path levers; built once per
        run. A model that cannot be built or prepared fails (or skips) each of its cells alike."""
        reason = cuda_unavailable(cell.device)
        if reason:
            raise CellSkipped(reason)
        if cell.model not in self._base:
            try:
                self._base[cell.model] = create_model(cell.model, seed=self.suite.seed)
            except ModelUnavailable as exc:
                self._base[cell.model] = CellSkipped(str(exc))
            except CheckpointError as exc:
                self._base[cell.model] = CellFailure(str(exc))
            except Exception as exc:
                self._base[cell.model] = failure(exc, cell)
        base = self._base[cell.model]
        if isinstance(base, Exception):
            raise base.with_traceback(None)  # a cached failure: no frames piling up cell after cell
        key = (cell.model, cell.device, cell.precision)
        if key not in self._prepared:
            t0 = time.perf_counter()
            sample = next(self.data(cell).batches(cell.batch_size))[0]
            try:
                # lever check and fp16 calibration on a few images; the warm-up happens at the sizes
                # each pass really uses (after any out-of-memory shrink), in _clean_pass and _craft
                model = prepare(base, cell.device, cell.precision, Levers(compile=cell.model.compile), sample=sample[:8])
                self._prepared[key] = Prepared(model, time.perf_counter() - t0)
            except PrecisionError as exc:  # fp16 gradients that cannot be trusted: the reason says what to use
                self._prepared[key] = CellFailure(str(exc))
            except torch.cuda.OutOfMemoryError as exc:  # not cached: a later cell may find the memory free
                raise failure(exc, cell) from None
            except Exception as exc:  # a compile error, a broken network …
                self._prepared[key] = failure(exc, cell)
        prepared = self._prepared[key]
        if isinstance(prepared, Exception):
            raise prepared.with_traceback(None)
        return prepared

    def warm_up(self, cell: CellSpec, prep: Prepared, batch_size: int) -> None:
        """Untimed passes at every shape the timed regions will see: the full batch and the last,
        shorter one, each without and with gradients. First-call overheads, compilation (and
        recompilation for a new shape or grad mode) and cuDNN autotuning stay out of throughput."""
        n = len(self.data(cell))
        sizes = {min(batch_size, n), n % batch_size or min(batch_size, n)} - prep.warm
        if not sizes:
            return
        t0 = time.perf_counter()
        images = next(self.data(cell).batches(batch_size))[0].to(cell.device)
        for size in sorted(sizes, reverse=True):
            x = images[:size]
            with torch.no_grad():
                prep.model(x)
            xg = x.clone().requires_grad_(True)
            torch.autograd.grad(prep.model(xg).sum(), xg)
            prep.warm.add(size)
        if images.is_cuda:
            torch.cuda.synchronize(images.device)
        prep.warmup_seconds += time.perf_counter() - t0

    def clean(self, cell: CellSpec, prep: Prepared) -> tuple[torch.Tensor, float]:
        """Predictions on defended clean images, and the model's clean-inference seconds."""
        key = (cell.model, cell.device, cell.precision, cell.defense)
        if key not in self._clean:
            defense = defense_registry.build(cell.defense)
            self._clean[key] = _shrink_on_oom(cell.batch_size, lambda bs: self._clean_pass(cell, prep, defense, bs))
        return self._clean[key]

    def _clean_pass(self, cell: CellSpec, prep: Prepared, defense, batch_size: int) -> tuple[torch.Tensor, float]:
        self.warm_up(cell, prep, batch_size)
        watch = Stopwatch(cell.device)
        # a randomized defense: one seeded draw per image, the same for every attack of this model
        draws = defense_registry.generator(cell.device, seed_of(cell.seed, "clean", cell.model.name, cell.defense.label))
        preds = []
        for x, _ in self.data(cell).batches(batch_size):
            preds.append(_predict(prep.model, defense(x.to(cell.device), draws), watch))
        return torch.cat(preds), watch.seconds

    def adversarial(self, cell: CellSpec, prep: Prepared) -> Adversarial:
        """The cell's adversarial images. Oblivious ones are crafted on the undefended model and
        reused across defenses; adaptive ones are crafted against this cell's defense."""
        key = (cell.model, cell.attack, cell.device, cell.precision)
        if cell.eval_mode != "oblivious":
            key += (cell.defense, cell.eval_mode)
        if key != self._adv_key:
            self._adv, self._adv_key = None, None  # free the previous group's images first
            try:
                self._adv = _shrink_on_oom(cell.batch_size, lambda bs: self._craft(cell, prep, bs))
                if any(m.training for m in prep.model.modules()):  # dropout or batch statistics would now be live
                    prep.model.eval()  # so that later craftings on this model are not affected
                    self._adv = CellFailure("the attack left the model in training mode; its predictions cannot be trusted")
            except Exception as exc:  # the attack's own error: every cell of this crafting fails alike
                self._adv = failure(exc, cell)
            self._adv_key = key
        if isinstance(self._adv, Exception):
            raise self._adv.with_traceback(None)
        return self._adv

    def _craft(self, cell: CellSpec, prep: Prepared, batch_size: int) -> Adversarial:
        self.warm_up(cell, prep, batch_size)
        model = prep.model
        counter = StepCounter(model)
        # a randomized defense's draws while crafting (EOT averages eot_samples of them per gradient)
        draws = defense_registry.generator(cell.device, seed_of(cell.attack_seed, "craft"))
        attacked = defense_registry.attack_model(counter, cell.defense, cell.eval_mode, cell.eot_samples, draws)
        first = next(self.data(cell).batches(batch_size))[0].to(cell.device)
        zero_grad = not bool((input_gradient(attacked, first) != 0).any())  # untimed, not counted as steps
        counter.images = 0
        draws.manual_seed(seed_of(cell.attack_seed, "craft"))  # the check's draws do not shift the attack's
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


def _shrink_on_oom(batch_size: int, run: Callable[[int], Any]) -> Any:
    """Run ``run(batch_size)``; on a GPU out-of-memory halve the batch and start over, giving up
    only at batch size 1. The smaller size holds for this crafting (or clean pass) only: one
    greedy attack must not shrink every later cell."""
    while True:
        try:
            return run(batch_size)
        except torch.cuda.OutOfMemoryError:
            if batch_size == 1:
                raise CellFailure("GPU out of memory even at batch size 1") from None
            batch_size = max(1, batch_size // 2)
        # outside the except block, so the failed attempt's tensors (held by the traceback) are freed
        log.warning("GPU out of memory: retrying with batch size %d", batch_size)
        if torch.cuda.is_available():
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
    try:
        row = base_row(cell, ws)
    except Exception as exc:  # even the row's own fields (a GPU that cannot say its name): fail this cell only
        row = {c: None for c in COLUMNS}
        row.update(suite=cell.suite, run_id=ws.run_id, cell_id=cell.cell_id, model=cell.model.name, attack=cell.attack.name,
                   defense=cell.defense.label, eval_mode=cell.eval_mode, device=cell.device, precision=cell.precision,
                   status="failed", reason=str(failure(exc, cell)), flags="")
        return row
    try:
        # process-wide backend flags (cudnn.benchmark) for this cell only, restored after it
        with backend_flags(Levers(compile=cell.model.compile)):
            prep = ws.model(cell)
            row.update(_measure(cell, ws, prep))
        row["status"] = "ok"
    except CellSkipped as exc:
        row.update(status="skipped", reason=str(exc), weights=None)  # nothing was loaded
    except Exception as exc:  # anything a cell raises fails that cell alone; Ctrl-C is not an Exception
        exc = failure(exc, cell)
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
    # draw 0 gives robust_acc (and the defense's throughput); a randomized defense is drawn
    # eval_draws times per image, and an image counts for robust_acc_all_draws only if it survives all
    draws = cell.eval_draws if defense.randomized else 1
    predictions = []
    for draw in range(draws):
        g = defense_registry.generator(cell.device, seed_of(cell.seed, "eval", cell.cell_id, draw))
        pred = []
        for i in range(0, n, adv.batch_size):
            x = adv.images[i : i + adv.batch_size].to(cell.device).float().div_(255)
            with defense_watch.region() if draw == 0 else contextlib.nullcontext():
                x = defense(x, g)
            pred.append(_predict(prep.model, x, model_watch))
        predictions.append(torch.cat(pred))
    robust_pred = predictions[0]
    survived = torch.stack([p == ds.labels for p in predictions]).all(0)

    norm = attack_registry.norm(cell.attack)
    norms = perturbation_norms(adv.images, ds.images)
    check_budget(norm, cell.attack.eps, norms)
    linf, l2 = norms["linf"].max().item(), norms["l2"]
    defense_seconds = defense_watch.seconds
    flags = cell_flags(zero_grad=adv.zero_grad, delta=norms[norm.lower()].max().item() if norm != "none" else linf,
                       eps=cell.attack.eps, clean_changed=(clean_pred != undefended_pred).float().mean().item())
    return {
        "n": n,
        "batch_size": adv.batch_size,
        **rates(ds.labels, clean_pred, robust_pred, cell.attack.target),
        "robust_acc_all_draws": survived.float().mean().item(),
        "eval_draws": draws,
        "flags": join_flags(flags),
        "linf_max": linf,
        "l2_mean": l2.mean().item(),
        "l2_max": l2.max().item(),
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


def perturbation_norms(adv: torch.Tensor, clean: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-image ‖x_adv − x‖ (L∞, L2, L1, pixel space of [0, 1] images) of 8-bit images, and the
    number of values the attack changed (what quantisation can have moved)."""
    diff = (adv.to(torch.int16) - clean.to(torch.int16)).flatten(1).float() / 255
    return {"linf": diff.abs().amax(1), "l2": diff.norm(dim=1), "l1": diff.abs().sum(1), "changed": (diff != 0).sum(1).float()}


def check_budget(norm: str, eps: float | None, norms: dict[str, torch.Tensor]) -> None:
    """Fail the cell if any image's measured perturbation breaks the attack's budget. Rounding to
    8 bits moves each changed value by at most 1/510, so with k changed values the quantised
    perturbation may exceed ε by 1/510 (L∞), √k/510 (L2) or k/510 (L1), and by no more."""
    if eps is None or norm == "none":
        return
    slack = {"Linf": torch.ones_like(norms["changed"]) / 510, "L2": norms["changed"].sqrt() / 510,
             "L1": norms["changed"] / 510}[norm]
    measured = norms[norm.lower()]
    over = measured > eps + slack + 1e-6
    if over.any():
        i = int(over.nonzero()[0])
        raise CellFailure(f"measured {norm} perturbation {measured[i].item():.6f} of image {i} exceeds eps {eps:.6f} "
                          f"+ quantisation slack {slack[i].item():.6f}: the attack broke its budget")


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
        model_source=cell.model.source,
        weights=(f"checkpoint:{Path(cell.model.checkpoint).name}" if cell.model.checkpoint
                 else cell.model.weights or "random"),
        input_size=cell.model.input_size,
        dataset=ws.data(cell).name,
        attack=cell.attack.name,
        attack_args=json.dumps(cell.attack.resolved(), sort_keys=True, default=str),
        eps=cell.attack.eps if cell.attack.eps is not None else math.nan,
        norm=attack_registry.norm(cell.attack),
        defense=cell.defense.label,
        eval_mode=cell.eval_mode,
        eot_samples=_eot_samples(cell),
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


def _eot_samples(cell: CellSpec) -> int | None:
    """Draws averaged per gradient: none for an oblivious attack (it never sees the defense), one
    for a deterministic defense."""
    if cell.eval_mode == "oblivious":
        return None
    return cell.eot_samples if defense_registry.randomized(cell.defense) else 1


def seed_of(*parts: Any) -> int:
    """A 63-bit seed from the parts (the suite seed first): stable across processes and runs."""
    digest = hashlib.sha256("/".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


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


def data_key(suite: Suite, model: ModelSpec) -> tuple[DataSpec, Preprocess]:
    """Which decoded copy of which data a model reads: models with the same data and the same
    preprocessing (resize, crop, interpolation) share one."""
    return (model.data or suite.data, model.preprocess)


def load_datasets(suite: Suite) -> dict[tuple[DataSpec, Preprocess], Dataset]:
    """Every data source the suite uses (its own and any model's), decoded once per distinct preprocessing."""
    keys = dict.fromkeys(data_key(suite, m) for m in suite.models)
    return {key: load_dataset(*key) for key in keys}


def _describe(dataset: Dataset, key: tuple[DataSpec, Preprocess] | None = None, models: list[str] | None = None) -> dict[str, Any]:
    out = {"name": dataset.name, "n": len(dataset), "ids": dataset.ids, "labels": dataset.labels.tolist(),
           "class_names": dataset.class_names if dataset.class_names and len(dataset.class_names) <= 100 else None,
           "skipped": dataset.skipped, "note": dataset.note}
    if key is not None:
        out["preprocess"] = {"input_size": key[1].input_size, "resize_size": key[1].resize, "interpolation": key[1].interpolation}
        out["models"] = models or []
    return out


class Interrupted(KeyboardInterrupt):
    """Stopped on request (Ctrl-C) at a safe point: between batches or cells."""


class ResumeError(ValueError):
    """A run that cannot be resumed with this suite; the message says why."""


class RunError(RuntimeError):
    """The run itself stopped (its results folder could not be written, say): not a cell's
    problem. Rows that landed are kept; run.json says ``status: error`` and why."""

    def __init__(self, run_dir: Path, reason: str):
        super().__init__(f"the run stopped: {reason}; the rows that finished are kept in {run_dir}")
        self.run_dir, self.reason = run_dir, reason


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
    datasets: dict[tuple[DataSpec, Preprocess], Dataset] | None = None,
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
        try:
            meta = json.loads((run_dir / RUN_FILE).read_text())
            meta["run_id"]  # noqa: B018  (a run.json without it cannot be resumed)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ResumeError(f"{run_dir}: its {RUN_FILE} cannot be read ({type(exc).__name__}: {exc})") from None
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
        try:
            run_dir.mkdir(parents=True, exist_ok=False)
        except OSError as exc:
            raise RunError(run_dir, f"cannot create the run folder ({exc})") from None
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
    try:
        write_json(meta, run_dir / RUN_FILE)
    except OSError as exc:
        raise RunError(run_dir, f"cannot write {RUN_FILE} ({exc})") from None

    done = {r["cell_id"] for r in done_rows}
    todo = [c for c in cells if c.cell_id not in done]
    ws = Workspace(suite, datasets, run_id, meta["environment"], should_stop=stop)
    groups = {_group(c) for c in todo}
    batches_of = {g: math.ceil(len(datasets[data_key(suite, g[0])]) / suite.batch_size) for g in groups}
    if progress is not None:
        progress.start(len(todo), sum(batches_of.values()))
        ws.on_batch = progress.batch
    rows: list[dict[str, Any]] = list(done_rows)
    handler = logging.FileHandler(run_dir / LOG_FILE, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    for logger in (logging.getLogger("bench"), _trace):
        logger.addHandler(handler)
    t0 = time.perf_counter()
    status, error = "interrupted", None
    seen_groups: set = set()
    seen_reasons: set = set()
    try:
        rowlog = RowLog(run_dir / ROWS_FILE)
    except OSError as exc:
        for logger in (logging.getLogger("bench"), _trace):
            logger.removeHandler(handler)
        handler.close()
        raise RunError(run_dir, f"cannot open {ROWS_FILE} ({exc})") from exc
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
        status = "complete"
    except KeyboardInterrupt:  # Ctrl-C (Interrupted included): the only stop that is "interrupted"
        raise
    except Exception as exc:  # the run itself broke (a cell's own errors never get here): say so
        status, error = "error", f"{type(exc).__name__}: {exc}"
        _trace.error("the run stopped", exc_info=True)
        raise RunError(run_dir, error) from exc
    finally:
        try:
            rowlog.close()
            if progress is not None:
                progress.stop()
            order = {c.cell_id: i for i, c in enumerate(cells)}
            rows.sort(key=lambda r: order.get(r["cell_id"], len(order)))
            meta.update(status=status, finished_at=_now(), wall_seconds=meta.get("wall_seconds", 0.0) + time.perf_counter() - t0)
            if error:
                meta["error"] = error
            else:
                meta.pop("error", None)
            apply_cross_cell(rows, to_frame(rows))
            write_table(to_frame(rows), run_dir / TABLE_FILE)
            write_table(predictions_frame(rows), run_dir / PREDICTIONS_FILE)
            write_json(meta, run_dir / RUN_FILE)
            report = write_report(run_dir, reports_root)
        except Exception as exc:  # a results folder that cannot be written
            if status == "error":  # already stopping with the first error: keep that one
                _trace.error("writing the table and report failed too", exc_info=True)
            else:
                raise RunError(run_dir, f"cannot write the table and report ({type(exc).__name__}: {exc})") from exc
        finally:
            for logger in (logging.getLogger("bench"), _trace):
                logger.removeHandler(handler)
            handler.close()
    return RunResult(run_dir, report, rows, status == "complete")


def _group(cell: CellSpec) -> tuple:
    """The cells that share one crafting of adversarial images."""
    return (cell.model, cell.attack, cell.device, cell.precision,
            cell.defense if cell.eval_mode != "oblivious" else None, cell.eval_mode)
