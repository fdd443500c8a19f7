"""Running one grid cell: ``run_cell(cell, workspace)`` is a function from a cell spec to one result row.

The workspace holds what cells share and must not recompute: the decoded datasets, models (loaded
once per process), clean predictions per model and defense, and the latest adversarial batch.
Oblivious attacks are crafted on the undefended model, so the same adversarial images serve every
defense of a (model, attack, ε) and are crafted once; every cell of that group reports that one
crafting's time. Randomness is seeded per (model, attack, ε, device, precision), so a row does not
depend on which cells ran before it, nor on which process or machine ran it (executors rely on it).
"""

from __future__ import annotations

import json
import logging
import math
import os
import socket
import time
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn as nn

from bench import attacks as attack_registry
from bench import defenses as defense_registry
from bench.audit.cascade import Cascade
from bench.audit.indicators import is_softmax
from bench.crafting import Adversarial, craft, shrink_on_oom
from bench.data import Dataset, load_dataset
from bench.failures import CellFailure, CellSkipped, Interrupted, RunFolderUnwritable, failure
from bench.fastpath import Levers, PrecisionError, backend_flags, prepare
from bench.measure import assemble, measure_shard, predict
from bench.models import CheckpointError, ModelUnavailable
from bench.results import COLUMNS
from bench.seeding import seed_of
from bench.sources import create_model
from bench.specs import CellSpec, DataSpec, DefenseSpec, ModelSpec, Preprocess
from bench.suite import Suite
from bench.timing import Stopwatch

log = logging.getLogger(__name__)


@dataclass
class Prepared:
    model: nn.Module
    warmup_seconds: float  # building, fp16 calibration, compilation and warm-up passes; never in throughput
    warm: set[int] = field(default_factory=set)  # batch sizes already warmed up (grad and no-grad)


def worker_name() -> str:
    """This process as the ``worker`` column names it: host and process id."""
    return f"{socket.gethostname()}:{os.getpid()}"


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
    should_stop: Callable[[], bool] = lambda: False  # polled between shards (Ctrl-C)
    # shards that landed before (a resume): (cell id, shard) → its outcomes (bench/measure.py measure_shard)
    shard_parts: dict = field(default_factory=dict)
    on_shard: Callable[[str, int, dict], None] = lambda cell_id, shard, part: None  # a shard landed: the runner writes it
    worker: str = field(default_factory=lambda: worker_name())  # the rows' worker column
    _base: dict = field(default_factory=dict)
    _prepared: dict = field(default_factory=dict)
    _clean: dict = field(default_factory=dict)
    _adv_key: Any = None
    _adv: Adversarial | None = None
    cascade: Cascade = field(default_factory=Cascade)  # images still standing (used with `cascade: true`)
    _softmax: dict = field(default_factory=dict)
    stability_checks: dict = field(default_factory=dict)  # bench/audit/checks.py
    unconstrained_crafts: dict = field(default_factory=dict)  # bench/audit/checks.py
    _served: dict | None = None

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
                with torch.no_grad():  # AutoAttack's check: probabilities instead of logits
                    self._softmax[key] = is_softmax(model(sample[:8].to(cell.device)))
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

    def warm_up(self, cell: CellSpec, prep: Prepared, batch_size: int, n: int | None = None,
                sizes: set[int] | None = None) -> None:
        """Untimed passes at every shape the timed regions will see: the full batch and the last,
        shorter one (of ``n`` images, all of them by default), or the given ``sizes`` (a cascade's batches), each
        without and with gradients. First-call overheads, compilation (and recompilation for a new shape or grad
        mode) and cuDNN autotuning stay out of throughput."""
        n = len(self.data(cell)) if n is None else n
        if n == 0:
            return
        sizes = (sizes if sizes is not None else {min(batch_size, n), n % batch_size or min(batch_size, n)}) - prep.warm
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
            self._clean[key] = shrink_on_oom(cell.batch_size, lambda bs: self._clean_pass(cell, prep, defense, bs))
        return self._clean[key]

    def _clean_pass(self, cell: CellSpec, prep: Prepared, defense, batch_size: int) -> tuple[torch.Tensor, float]:
        self.warm_up(cell, prep, batch_size)
        watch = Stopwatch(cell.device)
        # a randomized defense: one seeded draw per image, the same for every attack of this model
        draws = defense_registry.generator(cell.device, seed_of(cell.seed, "clean", cell.model.name, cell.defense.label))
        preds = []
        for x, _ in self.data(cell).batches(batch_size):
            preds.append(predict(prep.model, defense(x.to(cell.device), draws), watch))
        return torch.cat(preds), watch.seconds

    def softmax(self, cell: CellSpec) -> bool:
        return self._softmax.get((cell.model, cell.device, cell.precision), False)

    def shards(self, cell: CellSpec) -> list[tuple[int, int]]:
        """The cell's shards: image ranges [lo, hi) of whole attack batches (the suite's ``shard_size``)."""
        return shard_plan(len(self.data(cell)), cell.batch_size, self.suite.shard_size)

    def adversarial(self, cell: CellSpec, prep: Prepared, lo: int, hi: int) -> Adversarial:
        """The cell's adversarial images on the shard [lo, hi). Oblivious ones are crafted on the undefended
        model and reused across defenses; adaptive ones are crafted against this cell's defense."""
        key = (cell.crafting_key, lo, hi)
        if key != self._adv_key:
            self._adv, self._adv_key = None, None  # free the previous shard's images first
            try:
                self._adv = shrink_on_oom(cell.batch_size, lambda bs: craft(self, cell, prep, bs, lo, hi))
                if any(m.training for m in prep.model.modules()):  # dropout or batch statistics would now be live
                    prep.model.eval()  # so that later craftings on this model are not affected
                    self._adv = CellFailure("the attack left the model in training mode; its predictions cannot be trusted")
            except Exception as exc:  # the attack's own error: every cell of this crafting fails alike
                self._adv = failure(exc, cell)
            self._adv_key = key
        if isinstance(self._adv, Exception):
            raise self._adv.with_traceback(None)
        return self._adv

    def served(self, cell: CellSpec) -> list[DefenseSpec]:
        """The defenses one crafting serves: every defense of the suite's cells that share it."""
        if self._served is None:
            self._served = {}
            for c in self.suite.cells():
                self._served.setdefault(c.crafting_key, []).append(c.defense)
        return self._served.get(cell.crafting_key, [cell.defense])

    def standing(self, cell: CellSpec, prep: Prepared) -> torch.Tensor:
        """The images this cell's crafting attacks: all, or with `cascade: true` those still standing."""
        labels = self.data(cell).labels
        if not self.suite.cascade:
            return torch.ones(len(labels), dtype=torch.bool)
        clean = {d.label: self.clean(replace(cell, defense=d), prep)[0] for d in self.served(cell)}
        return self.cascade.standing(cell, attack_registry.norm(cell.attack), labels, clean)



def run_cell(cell: CellSpec, ws: Workspace) -> dict[str, Any]:
    """Run one cell and return its result row (status ok, skipped or failed; never raises for
    a problem of the cell itself)."""
    try:
        row = base_row(cell, ws)
    except Exception as exc:  # even the row's own fields (a GPU that cannot say its name): fail this cell only
        return _bare_row(cell, ws, "failed", str(failure(exc, cell)))
    try:
        missing = attack_registry.unavailable(cell.attack)  # an optional attack library not installed here
        if missing:
            raise CellSkipped(missing)
        # process-wide backend flags (cudnn.benchmark) for this cell only, restored after it
        with backend_flags(Levers(compile=cell.model.compile)):
            prep = ws.model(cell)
            parts = []
            for shard, (lo, hi) in enumerate(ws.shards(cell)):
                part = ws.shard_parts.get((cell.cell_id, shard))
                if part is None or (part["lo"], part["hi"]) != (lo, hi):
                    if ws.should_stop():  # Ctrl-C: stop between shards; the ones that landed are kept
                        raise Interrupted()
                    part = measure_shard(cell, ws, prep, lo, hi)
                    try:
                        ws.on_shard(cell.cell_id, shard, part)
                    except OSError as exc:  # the run folder cannot be written: the run stops, not this cell
                        raise RunFolderUnwritable(exc) from exc
                parts.append(part)
            row.update(assemble(cell, ws, prep, parts))
        row["status"] = "ok"
    except RunFolderUnwritable:
        raise
    except CellSkipped as exc:
        row.update(status="skipped", reason=str(exc), weights=None)  # nothing was loaded
    except Exception as exc:  # anything a cell raises fails that cell alone; Ctrl-C is not an Exception
        exc = failure(exc, cell)
        row.update(status="failed", reason=str(exc), flags=exc.flag)
    for key in [k for k in ws.shard_parts if k[0] == cell.cell_id]:  # the row is made: its shards' memory goes back
        del ws.shard_parts[key]
    return row


def measure_shards(cells: list[CellSpec], ws: Workspace, shards: list[int] | None = None) -> None:
    """The outcomes of the given shards (default: all) of cells of one model's data (cells that share one crafting,
    or a cascade's chain in its order), shard by shard: each shard's adversarial images are crafted once and measured
    under every cell's defense before the next shard is crafted (cell by cell, a crafting of many shards would be made
    again for each defense); under a cascade each shard's outcomes are recorded as they come, so the chain's later
    attacks on that shard attack what the earlier ones left. Outcomes go to
    ``ws.on_shard`` and ``ws.shard_parts``; :func:`run_cell` then assembles each row from them. Best effort: a cell
    whose shard raises is left to its own :func:`run_cell`, which meets the problem again and reports it in the
    cell's row, as it would have unsharded."""
    if not cells:
        return
    plan = ws.shards(cells[0])
    live = [c for c in cells if not attack_registry.unavailable(c.attack)]
    labels = ws.data(cells[0]).labels

    def cascade(cell: CellSpec, lo: int, hi: int, part: dict) -> None:
        """A cascade's later attacks on this shard see what this one broke on it (a chain's cells come in order)."""
        if ws.suite.cascade:
            ws.cascade.record(cell, attack_registry.norm(cell.attack), labels[lo:hi],
                              torch.tensor(part["robust"], dtype=torch.int64), lo=lo, n=len(labels))

    for shard in range(len(plan)) if shards is None else shards:
        lo, hi = plan[shard]
        for cell in list(live):
            if (cell.cell_id, shard) in ws.shard_parts:
                cascade(cell, lo, hi, ws.shard_parts[(cell.cell_id, shard)])
                continue
            if ws.should_stop():  # Ctrl-C: the cells' own runs stop between shards and say so
                return
            try:
                with backend_flags(Levers(compile=cell.model.compile)):
                    part = measure_shard(cell, ws, ws.model(cell), lo, hi)
            except Exception as exc:  # noqa: BLE001 (the cell's row will say it)
                log.debug("cell %s: shard %d left to the cell's own run: %s", cell.cell_id, shard, exc)
                live.remove(cell)
                continue
            try:
                ws.on_shard(cell.cell_id, shard, part)
            except OSError as exc:  # the run folder cannot be written: the run stops, not this cell
                raise RunFolderUnwritable(exc) from exc
            ws.shard_parts[(cell.cell_id, shard)] = part
            cascade(cell, lo, hi, part)


def crafting_runs(cells: list[CellSpec]) -> list[list[CellSpec]]:
    """Consecutive cells that share one crafting (the order is kept: a cascade's depends on it)."""
    runs: list[list[CellSpec]] = []
    for cell in cells:
        if runs and runs[-1][0].crafting_key == cell.crafting_key:
            runs[-1].append(cell)
        else:
            runs.append([cell])
    return runs


def unrun_row(cell: CellSpec, ws: Workspace, status: str, reason: str) -> dict[str, Any]:
    """The row of a cell that did not run (``skipped``) or could not finish (``failed``) for a
    reason outside it: a lost worker, a file missing on a node, no GPU in the cluster."""
    try:
        row = base_row(cell, ws)
    except Exception:  # the row's own fields cannot be had here (a device name): the cell's identity is enough
        return _bare_row(cell, ws, status, reason)
    row.update(status=status, reason=reason, weights=None)
    return row


def _bare_row(cell: CellSpec, ws: Workspace, status: str, reason: str) -> dict[str, Any]:
    row = {c: None for c in COLUMNS}
    row.update(suite=cell.suite, run_id=ws.run_id, cell_id=cell.cell_id, model=cell.model.name, attack=cell.attack.name,
               defense=cell.defense.label, eval_mode=cell.eval_mode, device=cell.device, precision=cell.precision,
               status=status, reason=reason, flags="", worker=ws.worker)
    return row


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
                 # a module held in memory: its weights' digest, taken when it was handed over (bench/sources/memory.py)
                 else f"memory:{cell.model.arch.rpartition('@')[2]}" if cell.model.source == "memory"
                 else cell.model.weights or "random"),
        input_size=cell.model.input_size,
        dataset=ws.data(cell).name,
        attack=cell.attack.name,
        attack_type=cell.attack.type,
        attack_source=attack_registry.source_name(cell.attack.type),
        minimum_norm=_minimum_norm(cell),
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
        worker=ws.worker,
        started_at=_now(),
    )
    return row


def _minimum_norm(cell: CellSpec) -> str:
    try:
        return attack_registry.minimum_norm(cell.attack) or ""
    except Exception:  # its library is missing here: the cell is skipped, and the column stays empty
        return ""


def _eot_samples(cell: CellSpec) -> int | None:
    """Draws averaged per gradient: none for an oblivious attack (it never sees the defense), one
    for a deterministic defense."""
    if cell.eval_mode == "oblivious":
        return None
    return cell.eot_samples if defense_registry.randomized(cell.defense) else 1


def _device_name(device: str) -> str:
    from bench.results import device_name

    return device_name(device)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


DEFAULT_SHARD_SIZE = 1024  # images: minutes of an AutoAttack cell on a GPU, seconds of most others


def shard_plan(n: int, batch_size: int, shard_size: int | None) -> list[tuple[int, int]]:
    """The shards of n images: ranges [lo, hi) of whole batches, ``shard_size`` images rounded up to a whole
    number of batches (default :data:`DEFAULT_SHARD_SIZE`); the last one shorter."""
    per = max(1, -(-(shard_size or DEFAULT_SHARD_SIZE) // batch_size)) * batch_size
    return [(lo, min(n, lo + per)) for lo in range(0, n, per)] or [(0, 0)]


def data_key(suite: Suite, model: ModelSpec) -> tuple[DataSpec, Preprocess]:
    """Which decoded copy of which data a model reads: models with the same data and the same
    preprocessing (resize, crop, interpolation) share one."""
    return (model.data or suite.data, model.preprocess)


def load_datasets(suite: Suite) -> dict[tuple[DataSpec, Preprocess], Dataset]:
    """Every data source the suite uses (its own and any model's), decoded once per distinct preprocessing."""
    keys = dict.fromkeys(data_key(suite, m) for m in suite.models)
    return {key: load_dataset(*key) for key in keys}
