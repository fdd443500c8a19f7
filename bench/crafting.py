"""Crafting: a cell's adversarial images, batch by batch, seeded, timed and logged for the indicators.

Oblivious attacks are crafted on the undefended model, so the same images serve every defense of a (model,
attack, ε) and are crafted once (the workspace keeps the latest crafting); adaptive ones through the defense.
Each batch's float output is checked against the attack's goal on the attacked model (``reached``), then
quantised to 8 bits; an attack without a budget has its boundary points pushed outward so they stay
adversarial in 8 bits (:func:`round_outward`).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

import torch
import torch.nn as nn

from bench import attacks as attack_registry
from bench import defenses as defense_registry
from bench.audit.indicators import (
    replayed,
)
from bench.audit.queries import QueryLog, margins
from bench.failures import CellFailure
from bench.fastpath import Wrapper, input_gradient
from bench.seeding import seed_of, seeded
from bench.specs import CellSpec
from bench.timing import Stopwatch, peak_memory_mb, reset_peak_memory

if TYPE_CHECKING:
    from bench.cells import Prepared, Workspace
    from bench.crafting import Adversarial

log = logging.getLogger(__name__)
from bench.audit.checks import crafting_signals, model_checks


@dataclass
class Adversarial:
    """One shard of a crafting: the images [lo, hi) of the data, every per-image array over those images."""

    lo: int
    hi: int
    images: torch.Tensor  # uint8, the shard's images (those not attacked keep their clean pixels)
    attacked: torch.Tensor  # bool per image: the attack ran on it (all, unless a cascade skipped it)
    reached: torch.Tensor  # bool per image: the returned point reaches the attack's goal on the attacked model
    seconds: float
    steps: int  # images × gradient steps: forward passes with autograd on, summed over images
    peak_mem_mb: float
    batch_size: int  # the batch size actually used (smaller than asked after a GPU out-of-memory)
    forward_passes: int = 0  # query rows the attack sent through the model
    backward_passes: int = 0  # rows whose input gradient it took
    check_seconds: float = 0.0  # the indicators' checks of this crafting (untimed in the throughput)
    broken_by: list[str | None] | None = None  # per image, the part of an ensemble whose output it is (AutoAttack)
    # per image, what the indicators of attack failure read (bench/audit/checks.py judges them over the whole cell)
    signals: dict[str, list] = field(default_factory=dict)
    zero_grad: bool = False  # the data's first batch has an all-zero input gradient
    stability_flags: list[str] = field(default_factory=list)  # the attacked model's stability (checks on the first batch)
    stability: dict[str, Any] = field(default_factory=dict)
    repaired: int = 0  # boundary points pushed outward to stay adversarial in 8 bits
    query_log_seconds: float = 0.0  # the query log's share of ``seconds`` (bench/audit/queries.py)


class StepCounter(Wrapper):
    """Counts the images the attack pushes through the model with autograd on (its steps)."""

    def __init__(self, model: nn.Module):
        super().__init__(model)
        self.images = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled():
            self.images += x.shape[0]
        return self.model(x)


def craft(ws: "Workspace", cell: CellSpec, prep: Prepared, batch_size: int, lo: int, hi: int) -> Adversarial:
    """The cell's crafting on the images [lo, hi) (whole batches of the data: a shard, or all of it)."""
    ws.warm_up(cell, prep, batch_size)
    ds = ws.data(cell)
    attacked_mask = ws.standing(cell, prep)
    counter = StepCounter(prep.model)
    # a randomized defense's draws while crafting (EOT averages eot_samples of them per gradient)
    draws = defense_registry.generator(cell.device, seed_of(cell.attack_seed, "craft"))
    target = defense_registry.attack_model(counter, cell.defense, cell.eval_mode, cell.eot_samples, draws)
    # the indicators' model checks, on the data's first batch whatever the shard: untimed, not counted as steps
    first_x, first_y = (t.to(cell.device) for t in next(ds.batches(batch_size)))
    t0 = time.perf_counter()
    zero_grad = not bool((input_gradient(target, first_x) != 0).any())
    stability_flags_, stability = model_checks(ws, cell, target, first_x, first_y)
    check_seconds = time.perf_counter() - t0
    counter.images = 0
    norm = attack_registry.norm(cell.attack)
    log = QueryLog(target, len(ds), norm, cell.attack.eps, cell.attack.targeted, device=cell.device)
    images, reached = ds.images[lo:hi].clone(), torch.zeros(len(ds), dtype=torch.bool)
    broken_by: list[str | None] | None = None
    chosen = attacked_mask.nonzero().squeeze(1)
    watch = Stopwatch(cell.device)
    reset_peak_memory(cell.device)
    repaired = 0
    # Batch k is the images [k·B, (k+1)·B) of the data that the crafting attacks (all, or a cascade's standing ones),
    # seeded by k alone: an image's batch and every draw it sees follow from its index in the data, never from the
    # batches before it, so any subset of batches (a shard, on any worker, in any order) gives the same images.
    with seeded(seed_of(cell.attack_seed, "build"), cell.device):
        attack = attack_registry.build(cell.attack, log, seed=cell.attack_seed, num_classes=cell.model.num_classes)
    for k in range(lo // batch_size, -(-hi // batch_size)):
        index = chosen[(chosen >= max(lo, k * batch_size)) & (chosen < min(hi, (k + 1) * batch_size))]
        if len(index) == 0:  # a cascade broke every image of this batch already
            ws.on_batch(1)
            continue
        ws.warm_up(cell, prep, batch_size, sizes={len(index)})  # a cascade's batches may be shorter: warmed, untimed
        draws.manual_seed(seed_of(cell.attack_seed, "craft", k))
        with seeded(seed_of(cell.attack_seed, "batch", k), cell.device):
            x = ds.images[index].float().div_(255).to(cell.device)
            y = ds.labels[index].to(cell.device)
            goal = torch.full_like(y, cell.attack.target) if cell.attack.targeted else y
            log.begin(x, goal, index)
            with watch.region():
                adv = attack(x, y)
            log.end()
            if getattr(attack, "broken_by", None) is not None:  # an ensemble says which of its attacks made each image
                broken_by = broken_by or [None] * (hi - lo)
                for i, name in zip(index.tolist(), attack.broken_by):
                    broken_by[i - lo] = name
            if cell.attack.eps is None:  # a point on the decision boundary: keep it adversarial in 8 bits
                with watch.region():
                    adv, moved = round_outward(target, x, adv, goal, cell.attack.targeted)
                repaired += moved
            t0 = time.perf_counter()
            reached[index] = reaches(target, adv, goal, cell.attack.targeted)
            check_seconds += time.perf_counter() - t0
            images[index - lo] = defense_registry.to_uint8(adv).cpu()
        ws.on_batch(1)
    t0 = time.perf_counter()
    signals = crafting_signals(log, reached, attacked_mask, lo, hi)
    check_seconds += time.perf_counter() - t0
    # the query log's bookkeeping runs inside the attack's timed region and stays in its time (a harness that records
    # every query costs that much; throughput is never flattered): its share is kept beside it
    seconds, logged = watch.seconds, log.watch.seconds
    # a score-based attack: gradients, masked or not, do not steer it; BPDA: its gradient is the model's own
    # at the defended point, which jumps with the defense's discrete forward (what BPDA already bypasses)
    if log.backward_rows == 0 or cell.eval_mode == "adaptive-bpda":
        stability_flags_ = [f for f in stability_flags_ if f != "shattered-gradients"]
    return Adversarial(lo, hi, images, attacked_mask[lo:hi].clone(), reached[lo:hi].clone(), seconds,
                       counter.images, peak_memory_mb(cell.device), batch_size, log.forward_rows, log.backward_rows,
                       check_seconds, broken_by, signals, zero_grad, stability_flags_, stability, repaired, logged)


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


def reaches(target: nn.Module, adv: torch.Tensor, goal: torch.Tensor, targeted: bool) -> torch.Tensor:
    """Whether the attacked model, on the returned (float) points, is where the attack wanted it; a
    randomized defense's declared draws are replayed, so the attack's next batch sees the same ones."""
    with torch.no_grad(), replayed(target):
        return (margins(target(adv.detach()), goal, targeted) < 0).cpu()


def shrink_on_oom(batch_size: int, run: Callable[[int], Any]) -> Any:
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
