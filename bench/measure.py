"""Measuring a cell: its adversarial images quantised, defended and classified (every draw of a randomized
defense), the budget checked per image, the rates with their intervals, the norms, times and queries of its row."""

from __future__ import annotations

import contextlib
import json
import logging
import math
import time
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn as nn

from bench import attacks as attack_registry
from bench import defenses as defense_registry
from bench.audit.flags import cell_flags
from bench.audit.flags import join as join_flags
from bench.audit.indicators import (
    json_values,
    where_it_failed,
)
from bench.audit.stats import wilson
from bench.failures import CellFailure
from bench.results import PREDICTIONS_KEY
from bench.seeding import seed_of
from bench.specs import CellSpec, DefenseSpec
from bench.timing import Stopwatch

if TYPE_CHECKING:
    from bench.cells import Prepared, Workspace

log = logging.getLogger(__name__)
from bench.audit.checks import cell_indicators, goal


def measure(cell: CellSpec, ws: Workspace, prep: Prepared) -> dict[str, Any]:
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
            pred.append(predict(prep.model, x, model_watch))
        predictions.append(torch.cat(pred))
    robust_pred = predictions[0]
    survived = torch.stack([p == ds.labels for p in predictions]).all(0)

    norm = attack_registry.norm(cell.attack)
    norms = perturbation_norms(adv.images, ds.images)
    check_budget(norm, cell.attack.eps, norms)
    # each image's measured perturbation in the norm a curve over ε is drawn in (bench/audit/curves.py)
    minimum = attack_registry.minimum_norm(cell.attack)
    curve_norm = minimum or (norm if norm != "none" else None)
    distance = norms[curve_norm.lower()] if curve_norm else None
    broke = goal(robust_pred, ds.labels, cell.attack.target) & (clean_pred == ds.labels) & adv.attacked
    linf, l2 = norms["linf"].max().item(), norms["l2"]
    defense_seconds = defense_watch.seconds
    flags = list(adv.flags)
    flags += cell_flags(delta=norms[norm.lower()].max().item() if norm != "none" else linf,
                        eps=cell.attack.eps if bool(adv.attacked.any()) else None,  # nothing attacked: no budget to use
                        clean_changed=(clean_pred != undefended_pred).float().mean().item())
    t0 = time.perf_counter()
    extra_flags, evidence = cell_indicators(cell, ws, prep, adv, clean_pred, robust_pred, undefended_pred)
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
        "attack_images_per_s": per_s(n_attacked, adv.seconds),
        "attack_steps_per_s": per_s(adv.steps, adv.seconds),
        "forward_passes": adv.forward_passes / n_attacked if n_attacked else math.nan,
        "backward_passes": adv.backward_passes / n_attacked if n_attacked else math.nan,
        "clean_images_per_s": per_s(n, clean_seconds),
        # identity costs nothing: a throughput for "none" would only measure the timer
        "defense_images_per_s": per_s(n, defense_seconds) if cell.defense.type != "none" else math.nan,
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


def predict(model: nn.Module, x: torch.Tensor, watch: Stopwatch) -> torch.Tensor:
    with torch.no_grad(), watch.region():
        logits = model(x)
    if not torch.isfinite(logits).all():
        raise CellFailure("the model returned non-finite logits (NaN or inf); check the weights and the precision", flag="non-finite")
    return logits.argmax(1).cpu()


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


def per_s(count: float, seconds: float) -> float:
    return count / seconds if seconds > 0 else math.nan


def rates(labels: torch.Tensor, clean_pred: torch.Tensor, robust_pred: torch.Tensor, target: int | None) -> dict[str, float]:
    """The accuracy metrics of one cell with their 95 % Wilson intervals (definitions in docs/results.md)."""
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
