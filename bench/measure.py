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
from bench.audit.checks import cell_indicators, crafting_indicators, goal
from bench.audit.flags import cell_flags
from bench.audit.flags import join as join_flags
from bench.audit.indicators import REPEAT_TOLERANCE, json_values, where_it_failed
from bench.audit.stats import wilson
from bench.failures import CellFailure
from bench.results import PREDICTIONS_KEY
from bench.seeding import seed_of
from bench.specs import CellSpec, DefenseSpec
from bench.timing import Stopwatch

if TYPE_CHECKING:
    from bench.cells import Prepared, Workspace

log = logging.getLogger(__name__)


def measure_shard(cell: CellSpec, ws: Workspace, prep: Prepared, lo: int, hi: int) -> dict[str, Any]:
    """One shard of a cell, the images [lo, hi): its crafting's images defended and classified (every draw of a
    randomized defense, seeded per batch of the data), the budget checked per image, and every per-image outcome
    and cost the cell's row is assembled from (:func:`assemble`). Plain values only: it is written to the run's
    shard log as it lands, so a resume runs only the shards without one."""
    ds = ws.data(cell)
    adv = ws.adversarial(cell, prep, lo, hi)
    defense = defense_registry.build(cell.defense)
    model_watch, defense_watch = Stopwatch(cell.device), Stopwatch(cell.device)
    labels = ds.labels[lo:hi]
    # draw 0 gives robust_acc (and the defense's throughput); a randomized defense is drawn
    # eval_draws times per image, and an image counts for robust_acc_all_draws only if it survives all
    draws = cell.eval_draws if defense.randomized else 1
    predictions = []
    for draw in range(draws):
        pred = []
        for i in range(0, hi - lo, adv.batch_size):
            g = defense_registry.generator(cell.device, seed_of(cell.seed, "eval", cell.cell_id, draw, (lo + i) // adv.batch_size))
            x = adv.images[i : i + adv.batch_size].to(cell.device).float().div_(255)
            with defense_watch.region() if draw == 0 else contextlib.nullcontext():
                x = defense(x, g)
            pred.append(predict(prep.model, x, model_watch))
        predictions.append(torch.cat(pred) if pred else torch.zeros(0, dtype=torch.int64))
    robust_pred = predictions[0]
    survived = torch.stack([p == labels for p in predictions]).all(0)
    norm = attack_registry.norm(cell.attack)
    norms = perturbation_norms(adv.images, ds.images[lo:hi])
    check_budget(norm, cell.attack.eps, norms, offset=lo)
    return {"lo": lo, "hi": hi, "robust": robust_pred.tolist(), "survived": survived.tolist(),
            "attacked": adv.attacked.tolist(), "reached": adv.reached.tolist(), "broken_by": adv.broken_by,
            **{k: norms[k].tolist() for k in ("linf", "l2", "l1", "l0")}, "signals": adv.signals,
            "attack_seconds": adv.seconds, "steps": adv.steps, "forward_passes": adv.forward_passes,
            "backward_passes": adv.backward_passes, "peak_mem_mb": adv.peak_mem_mb, "batch_size": adv.batch_size,
            "check_seconds": adv.check_seconds, "repaired": adv.repaired, "defense_seconds": defense_watch.seconds,
            "zero_grad": adv.zero_grad, "stability_flags": adv.stability_flags, "stability": _plain(adv.stability),
            "eval_draws": draws, "worker": ws.worker, "query_log_seconds": adv.query_log_seconds}


def assemble(cell: CellSpec, ws: Workspace, prep: Prepared, parts: list[dict[str, Any]]) -> dict[str, Any]:
    """A cell's row from its shards (in order, covering the data): rates, norms, times, queries and the
    indicators over every image, as if the cell had run in one piece (it computes the same numbers)."""
    ds = ws.data(cell)
    n = len(ds)
    clean_pred, clean_seconds = ws.clean(cell, prep)
    undefended_pred, _ = ws.clean(replace(cell, defense=DefenseSpec("none")), prep)

    def joined(key: str, dtype=None) -> torch.Tensor:
        return torch.tensor([v for part in parts for v in part[key]], dtype=dtype)

    robust_pred, survived = joined("robust", torch.int64), joined("survived", torch.bool)
    attacked, reached = joined("attacked", torch.bool), joined("reached", torch.bool)
    norms = {k: joined(k, torch.float32) for k in ("linf", "l2", "l1", "l0")}
    signals = {k: [v for part in parts for v in part["signals"][k]] for k in parts[0]["signals"]}
    broken_by = ([b for part in parts for b in (part["broken_by"] or [None] * (part["hi"] - part["lo"]))]
                 if any(part["broken_by"] is not None for part in parts) else None)
    first = parts[0]
    stability_flags_, stability = first["stability_flags"], first["stability"]
    attack_seconds = sum(part["attack_seconds"] for part in parts)
    steps = sum(part["steps"] for part in parts)
    forward, backward = sum(part["forward_passes"] for part in parts), sum(part["backward_passes"] for part in parts)
    defense_seconds = sum(part["defense_seconds"] for part in parts)
    check_seconds = sum(part["check_seconds"] for part in parts)

    norm = attack_registry.norm(cell.attack)
    # each image's measured perturbation in the norm a curve over ε is drawn in (bench/audit/curves.py)
    minimum = attack_registry.minimum_norm(cell.attack)
    curve_norm = minimum or (norm if norm != "none" else None)
    distance = norms[curve_norm.lower()] if curve_norm else None
    broke = goal(robust_pred, ds.labels, cell.attack.target) & (clean_pred == ds.labels) & attacked
    linf, l2 = norms["linf"].max().item(), norms["l2"]
    repeat = stability.get("repeat_difference")
    hidden_noise = isinstance(repeat, (int, float)) and repeat > REPEAT_TOLERANCE  # the same input, other outputs
    flags, evidence = crafting_indicators(cell, signals, first["zero_grad"], backward, n, hidden_noise)
    if cell.attack.eps is None:
        evidence["boundary_repaired_images"] = sum(part["repaired"] for part in parts)
    # inside attack_seconds: what recording every query cost (a shard from before this key: not known)
    query_log_seconds = sum(part.get("query_log_seconds", 0.0) for part in parts)
    flags += stability_flags_
    flags += cell_flags(delta=norms[norm.lower()].max().item() if norm != "none" else linf,
                        eps=cell.attack.eps if bool(attacked.any()) else None,  # nothing attacked: no budget to use
                        clean_changed=(clean_pred != undefended_pred).float().mean().item())
    t0 = time.perf_counter()
    extra_flags, more = cell_indicators(cell, ws, prep, reached, attacked, clean_pred, robust_pred, undefended_pred)
    check_seconds += time.perf_counter() - t0
    # survivors among the images attacked: a cascade's unattacked images keep their clean pixels
    survivors = int(((clean_pred == ds.labels) & (robust_pred == ds.labels) & attacked).sum())
    flags = where_it_failed(flags + extra_flags, survivors)
    n_attacked = int(attacked.sum())
    if ws.suite.cascade:  # the images this cell broke are not attacked again at this ε or a larger one
        ws.cascade.record(cell, norm, ds.labels, robust_pred)
    return {
        "n": n,
        "n_attacked": n_attacked,
        "batch_size": min(part["batch_size"] for part in parts),
        **rates(ds.labels, clean_pred, robust_pred, cell.attack.target),
        "robust_acc_all_draws": survived.float().mean().item(),
        "eval_draws": first["eval_draws"],
        "flags": join_flags(flags),
        "indicators": json.dumps(json_values({**evidence, **stability, **more}), sort_keys=True),
        "unconstrained_success": more.get("unconstrained_success", math.nan),
        "distance_median": (float(np.median(distance[broke].numpy())) if minimum and distance is not None
                            and bool(broke.any()) else math.nan),
        "linf_max": linf,
        "l2_mean": l2.mean().item(),
        "l2_max": l2.max().item(),
        "attack_seconds": attack_seconds,
        "attack_images_per_s": per_s(n_attacked, attack_seconds),
        "attack_steps_per_s": per_s(steps, attack_seconds),
        "forward_passes": forward / n_attacked if n_attacked else math.nan,
        "backward_passes": backward / n_attacked if n_attacked else math.nan,
        "clean_images_per_s": per_s(n, clean_seconds),
        # identity costs nothing: a throughput for "none" would only measure the timer
        "defense_images_per_s": per_s(n, defense_seconds) if cell.defense.type != "none" else math.nan,
        "warmup_seconds": prep.warmup_seconds,
        "check_seconds": check_seconds,
        "query_log_seconds": query_log_seconds,
        "peak_mem_mb": max(part["peak_mem_mb"] for part in parts),
        # per-image predictions: not table columns, kept in predictions.parquet (worst case, paired tests)
        PREDICTIONS_KEY: {"labels": ds.labels.tolist(), "clean": clean_pred.tolist(), "robust": robust_pred.tolist(),
                          "robust_all": survived.tolist(), "attacked": attacked.tolist(), "reached": reached.tolist(),
                          "distance": distance.tolist() if distance is not None else None,
                          # which attack of an ensemble broke each image the cell counts as broken (after 8 bits, the defense)
                          "broken_by": [b if ok else None for b, ok in zip(broken_by, broke.tolist())]
                          if broken_by is not None else None},
    }


def _plain(values: dict[str, Any]) -> dict[str, Any]:
    """Numbers as plain floats at full precision (the row rounds them for its indicators, not the shard log: a
    judgement made from the shard must see what the crafting measured)."""
    out = {}
    for k, v in values.items():
        if isinstance(v, (np.floating, np.integer)) or (isinstance(v, torch.Tensor) and v.numel() == 1):
            v = v.item()
        out[k] = v
    return out


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


def check_budget(norm: str, eps: float | None, norms: dict[str, torch.Tensor], offset: int = 0) -> None:
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
        raise CellFailure(f"measured {norm} perturbation {measured[i].item():.6f} of image {offset + i} exceeds eps {eps:.6f} "
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
