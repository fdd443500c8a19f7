"""Running one grid cell: ``run_cell(cell, workspace)`` is a function from a cell spec to one result row.

The workspace holds what cells share and must not recompute: the decoded datasets, models (loaded
once per process), clean predictions per model and defense, and the latest adversarial batch.
Oblivious attacks are crafted on the undefended model, so the same adversarial images serve every
defense of a (model, attack, ε) and are crafted once; every cell of that group reports that one
crafting's time. Randomness is seeded per (model, attack, ε, device, precision), so a row does not
depend on which cells ran before it, nor on which process or machine ran it (executors rely on it).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import random
import socket
import time
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn as nn

from bench import attacks as attack_registry
from bench import defenses as defense_registry
from bench.data import Dataset, load_dataset
from bench.fastpath import Levers, PrecisionError, Wrapper, backend_flags, input_gradient, prepare
from bench.cascade import Cascade
from bench.flags import cell_flags
from bench.flags import join as join_flags
from bench.indicators import (
    REPEAT_TOLERANCE,
    UNCONSTRAINED_IMAGES,
    UNCONSTRAINED_SUCCESS,
    at_chance,
    chance_accuracy,
    fires,
    is_softmax,
    json_values,
    replayed,
    silent_successes,
    stability,
    stability_flags,
    still_improving,
    where_it_failed,
)
from bench.queries import QueryLog, margins
from bench.stats import wilson
from bench.models import CheckpointError, ModelUnavailable
from bench.sources import create_model
from bench.results import COLUMNS, PREDICTIONS_KEY
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
        self.flag = flag  # a flag (bench/flags.py) the failure also raises


class CellSkipped(RuntimeError):
    """The cell cannot run on this machine; the message says why and how to fix it."""


@dataclass
class Adversarial:
    images: torch.Tensor  # uint8, every image of the data (those not attacked keep their clean pixels)
    attacked: torch.Tensor  # bool per image: the attack ran on it (all, unless a cascade skipped it)
    reached: torch.Tensor  # bool per image: the returned point reaches the attack's goal on the attacked model
    seconds: float
    steps: int  # images × gradient steps: forward passes with autograd on, summed over images
    peak_mem_mb: float
    batch_size: int  # the batch size actually used (smaller than asked after a GPU out-of-memory)
    forward_passes: int = 0  # query rows the attack sent through the model
    backward_passes: int = 0  # rows whose input gradient it took
    flags: list[str] = field(default_factory=list)  # indicators judged on the crafting (bench/indicators.py)
    evidence: dict[str, Any] = field(default_factory=dict)
    check_seconds: float = 0.0  # the indicators' checks of this crafting (untimed in the throughput)
    broken_by: list[str | None] | None = None  # per image, the part of an ensemble whose output it is (AutoAttack)


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
    return CellFailure(one_line(exc))


def one_line(exc: BaseException) -> str:
    """An exception as one line of a row's reason: its type and the first line of its message."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:300]}" if text else type(exc).__name__


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
    should_stop: Callable[[], bool] = lambda: False  # polled between batches (Ctrl-C)
    worker: str = field(default_factory=lambda: worker_name())  # the rows' worker column
    _base: dict = field(default_factory=dict)
    _prepared: dict = field(default_factory=dict)
    _clean: dict = field(default_factory=dict)
    _adv_key: Any = None
    _adv: Adversarial | None = None
    cascade: Cascade = field(default_factory=Cascade)  # images still standing (used with `cascade: true`)
    _softmax: dict = field(default_factory=dict)
    _stability: dict = field(default_factory=dict)
    _unconstrained: dict = field(default_factory=dict)
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

    def warm_up(self, cell: CellSpec, prep: Prepared, batch_size: int, n: int | None = None) -> None:
        """Untimed passes at every shape the timed regions will see: the full batch and the last,
        shorter one (of ``n`` images: all of them, or those a cascade attacks), each without and with
        gradients. First-call overheads, compilation (and recompilation for a new shape or grad mode)
        and cuDNN autotuning stay out of throughput."""
        n = len(self.data(cell)) if n is None else n
        if n == 0:
            return
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

    def softmax(self, cell: CellSpec) -> bool:
        return self._softmax.get((cell.model, cell.device, cell.precision), False)

    def adversarial(self, cell: CellSpec, prep: Prepared) -> Adversarial:
        """The cell's adversarial images. Oblivious ones are crafted on the undefended model and
        reused across defenses; adaptive ones are crafted against this cell's defense."""
        key = cell.crafting_key
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

    def _craft(self, cell: CellSpec, prep: Prepared, batch_size: int) -> Adversarial:
        self.warm_up(cell, prep, batch_size)
        ds = self.data(cell)
        attacked_mask = self.standing(cell, prep)
        self.warm_up(cell, prep, batch_size, int(attacked_mask.sum()))  # a cascade's last batch may be shorter
        counter = StepCounter(prep.model)
        # a randomized defense's draws while crafting (EOT averages eot_samples of them per gradient)
        draws = defense_registry.generator(cell.device, seed_of(cell.attack_seed, "craft"))
        target = defense_registry.attack_model(counter, cell.defense, cell.eval_mode, cell.eot_samples, draws)
        first_x, first_y = (t.to(cell.device) for t in next(ds.batches(batch_size)))
        t0 = time.perf_counter()
        # the indicators' model checks: untimed, not counted as steps, draws replayed
        zero_grad = not bool((input_gradient(target, first_x) != 0).any())
        stability_flags_, stability = self._model_checks(cell, target, first_x, first_y)
        check_seconds = time.perf_counter() - t0
        counter.images = 0
        draws.manual_seed(seed_of(cell.attack_seed, "craft"))  # the checks' draws do not shift the attack's
        norm = attack_registry.norm(cell.attack)
        log = QueryLog(target, len(ds), norm, cell.attack.eps, cell.attack.targeted, device=cell.device)
        images, reached = ds.images.clone(), torch.zeros(len(ds), dtype=torch.bool)
        broken_by: list[str | None] | None = None
        chosen = attacked_mask.nonzero().squeeze(1)
        watch = Stopwatch(cell.device)
        reset_peak_memory(cell.device)
        batches, repaired = 0, 0
        with seeded(cell.attack_seed, cell.device):
            attack = attack_registry.build(cell.attack, log, seed=cell.attack_seed, num_classes=cell.model.num_classes)
            for start in range(0, len(chosen), batch_size):
                index = chosen[start : start + batch_size]
                x = ds.images[index].float().div_(255).to(cell.device)
                y = ds.labels[index].to(cell.device)
                goal = torch.full_like(y, cell.attack.target) if cell.attack.targeted else y
                log.begin(x, goal, index)
                with watch.region():
                    adv = attack(x, y)
                log.end()
                if getattr(attack, "broken_by", None) is not None:  # an ensemble says which of its attacks made each image
                    broken_by = broken_by or [None] * len(ds)
                    for i, name in zip(index.tolist(), attack.broken_by):
                        broken_by[i] = name
                if cell.attack.eps is None:  # a point on the decision boundary: keep it adversarial in 8 bits
                    with watch.region():
                        adv, moved = round_outward(target, x, adv, goal, cell.attack.targeted)
                    repaired += moved
                t0 = time.perf_counter()
                reached[index] = _reaches(target, adv, goal, cell.attack.targeted)
                check_seconds += time.perf_counter() - t0
                images[index] = defense_registry.to_uint8(adv).cpu()
                batches += 1
                self.on_batch(1)
                if self.should_stop():
                    raise Interrupted()
        self.on_batch(max(0, -(-len(ds) // batch_size) - batches))  # batches a cascade did not need
        hidden_noise = stability.get("repeat_difference", 0.0) > REPEAT_TOLERANCE  # the same input, other outputs
        flags, evidence = _crafting_indicators(cell, log, reached, attacked_mask, zero_grad, len(ds), hidden_noise)
        if cell.attack.eps is None:
            evidence["boundary_repaired_images"] = repaired
        # the query log's bookkeeping ran inside the attack's timed region: it is not the attack's time
        seconds, logged = watch.seconds, log.watch.seconds
        check_seconds += logged
        # a score-based attack: gradients, masked or not, do not steer it; BPDA: its gradient is the model's own
        # at the defended point, which jumps with the defense's discrete forward (what BPDA already bypasses)
        if log.backward_rows == 0 or cell.eval_mode == "adaptive-bpda":
            stability_flags_ = [f for f in stability_flags_ if f != "shattered-gradients"]
        return Adversarial(images, attacked_mask, reached, max(0.0, seconds - logged), counter.images, peak_memory_mb(cell.device),
                           batch_size, log.forward_rows, log.backward_rows, flags + stability_flags_,
                           {**evidence, **stability}, check_seconds, broken_by)

    def _model_checks(self, cell: CellSpec, target: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[list[str], dict]:
        """Stability of the model the attack works on (once per attacked model: the bare model for
        every oblivious crafting, model ∘ defense for each adaptive one)."""
        key = (cell.model, cell.device, cell.precision, *cell.crafted_through)
        if key not in self._stability:
            with seeded(seed_of(cell.seed, "stability", cell.model.name, cell.device), cell.device):
                check = stability(target, x, y, seed_of(cell.seed, "stability-noise", cell.model.name))
            self._stability[key] = (stability_flags(check), {"repeat_difference": check["repeat"],
                                                             "loss_spread": check["spread"], "gradient_cosine": check["cosine"]})
        return self._stability[key]

    def unconstrained(self, cell: CellSpec, prep: Prepared) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The unconstrained-attack indicator's crafting: the cell's attack (its largest ε's arguments)
        with an unbounded budget on up to 16 images the attacked model classifies correctly, crafted
        once per (model, attack, device, precision, and defense and mode for adaptive attacks).
        Returns (image indices, their adversarial uint8 images), or None when not checked."""
        norm = attack_registry.norm(cell.attack)
        if not self.suite.unconstrained_check or norm == "none" or cell.attack.eps is None:
            return None
        if attack_registry.source_name(cell.attack.type) == "python":
            return None  # the harness cannot unbound a user's function: which arguments are step sizes, or a start, is its own
        key = (cell.model, cell.attack.name, cell.device, cell.precision, *cell.crafted_through)
        if key not in self._unconstrained:
            self._unconstrained[key] = self._unconstrained_craft(cell, prep)
        return self._unconstrained[key]

    def _unconstrained_craft(self, cell: CellSpec, prep: Prepared):
        ds = self.data(cell)
        variants = next((v for v in self.suite.attacks if cell.attack in v), (cell.attack,))
        template = max((a for a in variants if a.eps is not None), key=lambda a: a.eps)
        spec = attack_registry.unbounded(template, tuple(ds.images.shape[1:]))
        clean, _ = self.clean(replace(cell, defense=_attacked_defense(cell)), prep)
        pick = (clean == ds.labels).nonzero().squeeze(1)[:UNCONSTRAINED_IMAGES]
        if len(pick) == 0:
            return pick, ds.images[:0]
        # names only: a seed must not depend on where the files live (a factory's path is in its spec)
        seed = seed_of(cell.seed, "unconstrained", cell.model.name, cell.attack.name, cell.device, cell.precision,
                       *((cell.defense.label, cell.eval_mode) if cell.crafted_through else ()))
        draws = defense_registry.generator(cell.device, seed)
        target = defense_registry.attack_model(prep.model, cell.defense, cell.eval_mode, cell.eot_samples, draws)
        x = ds.images[pick].float().div_(255).to(cell.device)
        y = ds.labels[pick].to(cell.device)
        try:
            with seeded(seed, cell.device):
                attack = attack_registry.build(spec, target, seed=seed % 2**31, num_classes=cell.model.num_classes)
                adv = torch.cat([attack(x[i : i + cell.batch_size], y[i : i + cell.batch_size])
                                 for i in range(0, len(pick), cell.batch_size)])
        except Exception as exc:  # the check's own failure must not fail the cell: say so in the log
            log.warning("%s: the unconstrained-attack check failed (%s); not judged", cell.cell_id, one_line(exc))
            return None
        finally:
            if any(m.training for m in prep.model.modules()):  # as after any crafting: later passes stay in eval mode
                prep.model.eval()
        return pick, defense_registry.to_uint8(adv).cpu()


OUTWARD_SCALES = (1.02, 1.05, 1.1, 1.2, 1.35, 1.5)


def round_outward(model: nn.Module, x: torch.Tensor, adv: torch.Tensor, goal: torch.Tensor,
                  targeted: bool) -> tuple[torch.Tensor, int]:
    """An attack without a budget (a minimum-norm attack, CW, DeepFool) returns points on the decision
    boundary, and rounding them to 8 bits brings about half back across it (measured: foolbox's DDN and FMN-L∞
    on the PGD-trained digits model lose 40–50 % of their adversarial examples). For each image whose float
    point reaches the goal and whose 8-bit image does not, push the perturbation outward along itself
    (× 1.02, 1.05, … 1.5) and keep the first 8-bit image that reaches the goal. Returns the images (the
    repaired ones already on the 8-bit grid) and how many were repaired; the measured perturbation is that
    of the repaired image, so a minimum-norm curve stays honest about what was evaluated."""
    from bench.defenses import quantize

    with torch.no_grad(), replayed(model):
        reached = margins(model(adv.detach()), goal, targeted) < 0
    with torch.no_grad(), replayed(model):
        lost = reached & ~(margins(model(quantize(adv)), goal, targeted) < 0)
    if not bool(lost.any()):
        return adv, 0
    adv, delta, moved = adv.detach().clone(), (adv - x).detach(), 0
    for scale in OUTWARD_SCALES:
        index = lost.nonzero().squeeze(1)
        if len(index) == 0:
            break
        candidate = quantize((x[index] + scale * delta[index]).clamp(0, 1))
        with torch.no_grad(), replayed(model):
            ok = (margins(model(candidate), goal[index], targeted) < 0)
        adv[index[ok]] = candidate[ok]
        lost[index[ok]] = False
        moved += int(ok.sum())
    return adv, moved


def _attacked_defense(cell: CellSpec) -> DefenseSpec:
    """The defense in the model an attack works on: none for an oblivious attack, the cell's for an adaptive one."""
    return cell.defense if cell.crafted_through else DefenseSpec("none")


def _reaches(target: nn.Module, adv: torch.Tensor, goal: torch.Tensor, targeted: bool) -> torch.Tensor:
    """Whether the attacked model, on the returned (float) points, is where the attack wanted it; a
    randomized defense's declared draws are replayed, so the attack's next batch sees the same ones."""
    with torch.no_grad(), replayed(target):
        return (margins(target(adv.detach()), goal, targeted) < 0).cpu()


def _crafting_indicators(cell: CellSpec, log: QueryLog, reached: torch.Tensor, attacked: torch.Tensor, zero_grad: bool,
                         n: int, hidden_noise: bool = False) -> tuple[list[str], dict[str, Any]]:
    """The indicators judged on one crafting's queries (bench/indicators.py has the rules). On a
    model that answers the same input differently (``hidden_noise``: unstable-predictions says so)
    a query's success or a falling margin is luck, so those two are not judged there."""
    flags, evidence = [], {}
    dead = int(((log.dead_gradients > 0) & attacked).sum())
    evidence["dead_gradient_images"] = dead
    evidence["first_batch_zero_gradient"] = zero_grad
    if (zero_grad and log.backward_rows > 0) or fires(dead, n):  # only for attacks that take gradients
        flags.append("unavailable-gradients")
    # a randomized attacked model (EOT, a random defense) reaches a goal on one draw and not the next:
    # a query's success there is luck, not a point the attack could have returned
    random_path = hidden_noise or (cell.eval_mode != "oblivious" and defense_registry.randomized(cell.defense))
    if random_path:
        evidence["silent_success_images"] = None
    else:
        silent = int(silent_successes(log, reached, attacked).sum())
        evidence["silent_success_images"] = silent
        if fires(silent, n):
            flags.append("silent-success")
    if hidden_noise:
        evidence["still_improving_images"] = evidence["judged_for_improvement"] = None
        return flags, evidence
    improving, judged = still_improving(log, reached, attacked)
    evidence["still_improving_images"], evidence["judged_for_improvement"] = int(improving.sum()), int(judged.sum())
    if fires(int(improving.sum()), n):
        flags.append("incomplete-optimization")
    return flags, evidence


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
        return _bare_row(cell, ws, "failed", str(failure(exc, cell)))
    try:
        missing = attack_registry.unavailable(cell.attack)  # an optional attack library not installed here
        if missing:
            raise CellSkipped(missing)
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
    # each image's measured perturbation in the norm a curve over ε is drawn in (bench/curves.py)
    minimum = attack_registry.minimum_norm(cell.attack)
    curve_norm = minimum or (norm if norm != "none" else None)
    distance = norms[curve_norm.lower()] if curve_norm else None
    broke = _goal(robust_pred, ds.labels, cell.attack.target) & (clean_pred == ds.labels) & adv.attacked
    linf, l2 = norms["linf"].max().item(), norms["l2"]
    defense_seconds = defense_watch.seconds
    flags = list(adv.flags)
    flags += cell_flags(delta=norms[norm.lower()].max().item() if norm != "none" else linf,
                        eps=cell.attack.eps if bool(adv.attacked.any()) else None,  # nothing attacked: no budget to use
                        clean_changed=(clean_pred != undefended_pred).float().mean().item())
    t0 = time.perf_counter()
    extra_flags, evidence = _cell_indicators(cell, ws, prep, adv, clean_pred, robust_pred, undefended_pred)
    check_seconds = adv.check_seconds + time.perf_counter() - t0
    # survivors among the images attacked: a cascade's unattacked images keep their clean pixels
    survivors = int(((clean_pred == ds.labels) & (robust_pred == ds.labels) & adv.attacked).sum())
    flags = where_it_failed(flags + extra_flags, survivors)
    n_attacked = int(adv.attacked.sum())
    if ws.suite.cascade:  # the images this cell broke are not attacked again at this ε or a larger one
        ws.cascade.record(cell, norm, ds.labels, robust_pred)
    return {
        "n": n,
        "n_attacked": n_attacked,
        "batch_size": adv.batch_size,
        **rates(ds.labels, clean_pred, robust_pred, cell.attack.target),
        "robust_acc_all_draws": survived.float().mean().item(),
        "eval_draws": draws,
        "flags": join_flags(flags),
        "indicators": json.dumps(json_values({**adv.evidence, **evidence}), sort_keys=True),
        "unconstrained_success": evidence.get("unconstrained_success", math.nan),
        "distance_median": (float(np.median(distance[broke].numpy())) if minimum and distance is not None
                            and bool(broke.any()) else math.nan),
        "linf_max": linf,
        "l2_mean": l2.mean().item(),
        "l2_max": l2.max().item(),
        "attack_seconds": adv.seconds,
        "attack_images_per_s": _per_s(n_attacked, adv.seconds),
        "attack_steps_per_s": _per_s(adv.steps, adv.seconds),
        "forward_passes": adv.forward_passes / n_attacked if n_attacked else math.nan,
        "backward_passes": adv.backward_passes / n_attacked if n_attacked else math.nan,
        "clean_images_per_s": _per_s(n, clean_seconds),
        # identity costs nothing: a throughput for "none" would only measure the timer
        "defense_images_per_s": _per_s(n, defense_seconds) if cell.defense.type != "none" else math.nan,
        "warmup_seconds": prep.warmup_seconds,
        "check_seconds": check_seconds,
        "peak_mem_mb": adv.peak_mem_mb,
        # per-image predictions: not table columns, kept in predictions.parquet (worst case, paired tests)
        PREDICTIONS_KEY: {"labels": ds.labels.tolist(), "clean": clean_pred.tolist(), "robust": robust_pred.tolist(),
                          "robust_all": survived.tolist(), "attacked": adv.attacked.tolist(), "reached": adv.reached.tolist(),
                          "distance": distance.tolist() if distance is not None else None,
                          # which attack of an ensemble broke each image the cell counts as broken (after 8 bits, the defense)
                          "broken_by": [b if ok else None for b, ok in zip(adv.broken_by, broke.tolist())]
                          if adv.broken_by is not None else None},
    }


def _goal(pred: torch.Tensor, labels: torch.Tensor, target: int | None) -> torch.Tensor:
    """Per image, whether a prediction is where the attack wanted it: wrong, or the target class."""
    return pred == target if target is not None else pred != labels


def _cell_indicators(cell: CellSpec, ws: Workspace, prep: Prepared, adv: Adversarial, clean_pred: torch.Tensor,
                     robust_pred: torch.Tensor, undefended_pred: torch.Tensor) -> tuple[list[str], dict[str, Any]]:
    """The indicators judged on one cell: on its real evaluation, its clean accuracy, and the
    unconstrained attack's images through this cell's defense (bench/indicators.py has the rules)."""
    ds = ws.data(cell)
    labels, n, target = ds.labels, len(ds.labels), cell.attack.target
    flags, evidence = [], {}
    if cell.eval_mode != "oblivious":  # the surrogate was fooled, the real defended model was not
        lost = int((adv.reached & ~_goal(robust_pred, labels, target) & adv.attacked).sum())
        evidence["transfer_failure_images"] = lost
        if fires(lost, n):
            flags.append("transfer-failure")
    if ws.softmax(cell):
        flags.append("softmax-output")
    # the model's own clean accuracy: a defense that wrecks it is defense-breaks-clean, not a wrong model
    evidence["chance_accuracy"] = chance_accuracy(labels, undefended_pred)
    if at_chance(labels, undefended_pred):
        flags.append("clean-at-chance")
    judged = _unconstrained_success(cell, ws, prep, adv, clean_pred, robust_pred)
    if judged is not None:
        broken, count = judged
        evidence["unconstrained_success"] = broken / count
        evidence["unconstrained_images"] = count
        if broken < UNCONSTRAINED_SUCCESS * count:
            flags.append("unconstrained-fails")
    return flags, evidence


def _unconstrained_success(cell: CellSpec, ws: Workspace, prep: Prepared, adv: Adversarial, clean_pred: torch.Tensor,
                           robust_pred: torch.Tensor) -> tuple[int, int] | None:
    """(images broken, images judged) by the attack with an unbounded budget on the model it attacks
    (the bare model for an oblivious attack: what a defense does to a transfer attack is the cell's
    measurement, not an attack failure; model ∘ defense for an adaptive one), among images that model
    classifies correctly; None when not judged. An attack without a budget is its own unconstrained
    attack, judged where it saw the model it is evaluated on."""
    labels, target = ws.data(cell).labels, cell.attack.target
    if attack_registry.norm(cell.attack) == "none":
        if cell.eval_mode == "oblivious" and cell.defense.type != "none":
            return None  # crafted without the defense: a minimal perturbation is not meant to survive it
        right = (clean_pred == labels) & adv.attacked
        return (int((right & _goal(robust_pred, labels, target)).sum()), int(right.sum())) if bool(right.any()) else None
    crafted = ws.unconstrained(cell, prep)
    if crafted is None or len(crafted[0]) == 0:
        return None
    pick, images = crafted  # images the attacked model classifies correctly, and their unbounded adversarials
    defense = defense_registry.build(_attacked_defense(cell))
    g = defense_registry.generator(cell.device, seed_of(cell.seed, "unconstrained-eval", cell.cell_id))
    with torch.no_grad():
        pred = prep.model(defense(images.to(cell.device).float().div_(255), g)).argmax(1).cpu()
    return int(_goal(pred, labels[pick], target).sum()), len(pick)


def perturbation_norms(adv: torch.Tensor, clean: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-image ‖x_adv − x‖ (L∞, L2, L1, pixel space of [0, 1] images) of 8-bit images, and the
    number of values the attack changed (what quantisation can have moved)."""
    diff = (adv.to(torch.int16) - clean.to(torch.int16)).flatten(1).float() / 255
    changed = (diff != 0).sum(1).float()
    return {"linf": diff.abs().amax(1), "l2": diff.norm(dim=1), "l1": diff.abs().sum(1), "l0": changed, "changed": changed}


def check_budget(norm: str, eps: float | None, norms: dict[str, torch.Tensor]) -> None:
    """Fail the cell if any image's measured perturbation breaks the attack's budget. Rounding to
    8 bits moves each changed value by at most 1/510, so with k changed values the quantised
    perturbation may exceed ε by 1/510 (L∞), √k/510 (L2) or k/510 (L1), and by no more."""
    if eps is None or norm == "none":
        return
    slack = {"Linf": torch.ones_like(norms["changed"]) / 510, "L2": norms["changed"].sqrt() / 510,
             "L1": norms["changed"] / 510, "L0": torch.zeros_like(norms["changed"])}[norm]  # rounding adds no change
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


def seed_of(*parts: Any) -> int:
    """A 63-bit seed from the parts (the suite seed first): stable across processes and runs."""
    digest = hashlib.sha256("/".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


@contextlib.contextmanager
def seeded(seed: int, device: str = "cpu"):
    """Every global random generator an attack may draw from (torch's on the CPU and on the cell's
    GPU, NumPy's, Python's) seeded for the block, and put back as it was after it: an attack's
    randomness depends on its crafting's seed only, and no state leaks into what runs next."""
    devices = [torch.device(device).index or 0] if device.startswith("cuda") and torch.cuda.is_available() else []
    np_state, py_state = np.random.get_state(), random.getstate()
    with torch.random.fork_rng(devices=devices):
        torch.random.default_generator.manual_seed(seed)
        for index in devices:
            with torch.cuda.device(index):
                torch.cuda.manual_seed(seed)
        np.random.seed(seed % 2**32)
        random.seed(seed)
        try:
            yield
        finally:
            np.random.set_state(np_state)
            random.setstate(py_state)


def _device_name(device: str) -> str:
    from bench.results import device_name

    return device_name(device)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def data_key(suite: Suite, model: ModelSpec) -> tuple[DataSpec, Preprocess]:
    """Which decoded copy of which data a model reads: models with the same data and the same
    preprocessing (resize, crop, interpolation) share one."""
    return (model.data or suite.data, model.preprocess)


def load_datasets(suite: Suite) -> dict[tuple[DataSpec, Preprocess], Dataset]:
    """Every data source the suite uses (its own and any model's), decoded once per distinct preprocessing."""
    keys = dict.fromkeys(data_key(suite, m) for m in suite.models)
    return {key: load_dataset(*key) for key in keys}


class Interrupted(KeyboardInterrupt):
    """Stopped on request (Ctrl-C) at a safe point: between batches or cells."""

