"""Indicators of attack failure: the automatic checks that say a robust-accuracy number is wrong.

After Pintor et al. 2022 ("Indicators of Attack Failure") and AutoAttack's ``checks.py``. Each
function here judges one indicator from what the harness saw (the attack's queries, recorded by
:class:`bench.audit.queries.QueryLog`; the model's outputs; the per-image predictions) and returns the
evidence, so a row can say how many images an indicator concerns. What each indicator suspects and
what to try is in :mod:`bench.audit.flags`; the thresholds are here, named:

- an indicator that counts images fires when it concerns at least :data:`MIN_SHARE` of the cell's
  images and at least one;
- ``incomplete-optimization``: an image the attack did not break whose best margin in the last
  :data:`LAST_STEPS` of its queries beats its best before them by more than :data:`STILL_IMPROVING`
  of its margin's range (Pintor et al.'s rule), judged on images queried at least
  :data:`MIN_QUERIES` times;
- ``unconstrained-fails``: the same attack with an unbounded budget breaks fewer than
  :data:`UNCONSTRAINED_SUCCESS` of :data:`UNCONSTRAINED_IMAGES` images;
- ``unstable-predictions``: two passes over the same input differ by more than :data:`REPEAT_TOLERANCE`
  of the logits' scale, or tiny noise (:data:`NOISE` per value) moves the margin by more than
  :data:`LOSS_SPREAD` of its size;
- ``shattered-gradients``: input gradients at an image and at that image plus the same tiny noise
  point different ways (median cosine below :data:`GRADIENT_COSINE`);
- ``softmax-output``: every row of the first clean batch is non-negative and sums to 1;
- ``clean-at-chance``: the clean accuracy's 95 % Wilson interval reaches down to the accuracy a
  guess that ignores the image would get (the chance agreement of labels and predictions).
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from bench.audit.queries import QueryLog, margins
from bench.audit.stats import wilson

MIN_SHARE = 0.01
LAST_STEPS = 0.10
STILL_IMPROVING = 0.05
MIN_QUERIES = 5
UNCONSTRAINED_IMAGES = 16
UNCONSTRAINED_SUCCESS = 0.9
REPEAT_TOLERANCE = 1e-4
NOISE = 1e-3  # ≈ a quarter of one 8-bit level: far below any budget, above float rounding
NOISE_DRAWS = 4
LOSS_SPREAD = 0.25
GRADIENT_COSINE = 0.5
STABILITY_IMAGES = 8


# Indicators about the attacked model rather than about particular images: they can only have cost
# robust accuracy where an image survived the attack.
MODEL_LEVEL = ("unavailable-gradients", "unstable-predictions", "shattered-gradients", "softmax-output", "unconstrained-fails")


def fires(count: int, n: int) -> bool:
    """Whether ``count`` of ``n`` images is enough for a counting indicator to fire."""
    return count >= 1 and count >= MIN_SHARE * n


def where_it_failed(flags: list[str], survivors: int) -> list[str]:
    """The flags that apply to a cell whose attack left ``survivors`` images classified correctly.
    Pintor et al. judge their indicators on the samples where the attack failed; with none (robust
    accuracy 0), a masked gradient or an unstable model cannot have made the number too high, so the
    model-level indicators do not fire there (their evidence is still in the row)."""
    return flags if survivors > 0 else [f for f in flags if f not in MODEL_LEVEL]


# -- from the attack's queries -------------------------------------------------------------------


def silent_successes(log: QueryLog, returned_reached: torch.Tensor, attacked: torch.Tensor) -> torch.Tensor:
    """Images for which some query inside the budget reached the attack's goal, while the point the
    attack returned does not (judged on the attacked model, before 8-bit rounding)."""
    return log.found & ~returned_reached & attacked


def still_improving(log: QueryLog, returned_reached: torch.Tensor, attacked: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(images still improving, images judged): for each attacked image the attack did not break,
    whether its best margin over the last :data:`LAST_STEPS` of its queries beats the best before
    them by more than :data:`STILL_IMPROVING` of the margin's range."""
    n = len(returned_reached)
    improving, judged = torch.zeros(n, dtype=torch.bool), torch.zeros(n, dtype=torch.bool)
    for i, trace in log.trajectories().items():
        if returned_reached[i] or not attacked[i] or len(trace) < MIN_QUERIES:
            continue
        trace = trace[torch.isfinite(trace)]
        if len(trace) < MIN_QUERIES:
            continue
        judged[i] = True
        span = (trace.max() - trace.min()).item()
        if span <= 0:
            continue
        last = max(1, math.ceil(LAST_STEPS * len(trace)))
        gain = (trace[:-last].min() - trace[-last:].min()).item() / span
        improving[i] = gain > STILL_IMPROVING
    return improving, judged


# -- from the model --------------------------------------------------------------------------------


def _with_generator_state(model: nn.Module):
    """The generators of randomness the model declares (a randomized defense's draws): their states,
    to replay the same draws."""
    gens = [m.generator for m in model.modules() if isinstance(getattr(m, "generator", None), torch.Generator)]
    return gens, [g.get_state() for g in gens]


def _replay(gens: list[torch.Generator], states: list[torch.Tensor]) -> None:
    for g, s in zip(gens, states):
        g.set_state(s)


@contextmanager
def replayed(model: nn.Module):
    """Run a check on the model without moving its declared random generators: after the block
    they are where they were before it."""
    gens, states = _with_generator_state(model)
    try:
        yield
    finally:
        _replay(gens, states)


def stability(model: nn.Module, x: torch.Tensor, labels: torch.Tensor, seed: int) -> dict[str, float]:
    """How the attacked model behaves around clean images ``x``: ``repeat`` (largest difference of two
    passes over the same input, declared randomness replayed, relative to the logits' scale),
    ``spread`` (median over images of the margin's change under tiny noise, relative to the median
    margin) and ``cosine`` (median cosine between the margin's input gradient at x and at x + that noise)."""
    x, labels = x[:STABILITY_IMAGES].detach(), labels[:STABILITY_IMAGES]
    gens, states = _with_generator_state(model)
    noise_g = torch.Generator(device="cpu").manual_seed(seed)
    with torch.no_grad():
        first = model(x).float()
        _replay(gens, states)
        second = model(x).float()
        scale = max(first.abs().max().item(), 1e-12)
        repeat = (first - second).abs().max().item() / scale
        base = margins(first, labels, False)
        changes = []
        for _ in range(NOISE_DRAWS):
            noise = (torch.rand(x.shape, generator=noise_g) * 2 - 1).mul_(NOISE).to(x.device)
            _replay(gens, states)
            changes.append((margins(model((x + noise).clamp(0, 1)).float(), labels, False) - base).abs())
    typical = base.abs().median().item()
    spread = torch.stack(changes).median().item() / max(typical, 1e-12)
    noise = (torch.rand(x.shape, generator=noise_g) * 2 - 1).mul_(NOISE).to(x.device)
    grads = []
    for point in (x, (x + noise).clamp(0, 1)):
        _replay(gens, states)
        p = point.clone().requires_grad_(True)
        # the margin, not the cross-entropy: on a confident model the cross-entropy's gradient is rounding noise
        (g,) = torch.autograd.grad(margins(model(p), labels, False).sum(), p)
        grads.append(g.flatten(1))
    cosine = F.cosine_similarity(grads[0], grads[1], dim=1, eps=1e-30)
    usable = (grads[0].abs().sum(1) > 0) & (grads[1].abs().sum(1) > 0)  # zero gradients are another indicator's
    _replay(gens, states)
    return {"repeat": repeat, "spread": spread,
            "cosine": cosine[usable].median().item() if bool(usable.any()) else math.nan}


def stability_flags(check: dict[str, float]) -> list[str]:
    out = []
    if check["repeat"] > REPEAT_TOLERANCE or check["spread"] > LOSS_SPREAD:
        out.append("unstable-predictions")
    if not math.isnan(check["cosine"]) and check["cosine"] < GRADIENT_COSINE:
        out.append("shattered-gradients")
    return out


def is_softmax(logits: torch.Tensor) -> bool:
    """Rows that are non-negative and sum to 1: probabilities, not logits (AutoAttack's check)."""
    logits = logits.detach().float()
    return bool(logits.shape[1] > 1 and (logits >= 0).all() and torch.allclose(logits.sum(1), torch.ones(len(logits)).to(logits), atol=1e-3))


def chance_accuracy(labels: torch.Tensor, predictions: torch.Tensor) -> float:
    """The accuracy of predictions made without looking at the images, as often as these were:
    Σ_k P(label = k) · P(prediction = k) (the chance agreement of Cohen's κ)."""
    k = int(max(labels.max().item(), predictions.max().item())) + 1
    p = torch.bincount(labels, minlength=k).double() / len(labels)
    q = torch.bincount(predictions, minlength=k).double() / len(predictions)
    return float((p * q).sum())


def at_chance(labels: torch.Tensor, predictions: torch.Tensor) -> bool:
    right = int((labels == predictions).sum())
    low, _ = wilson(right, len(labels))
    return low <= chance_accuracy(labels, predictions)


def json_values(counts: dict[str, Any]) -> dict[str, Any]:
    """The indicators' numbers as plain JSON values (a row's ``indicators`` column)."""
    out = {}
    for k, v in counts.items():
        if isinstance(v, float):
            v = None if math.isnan(v) else round(v, 4)
        out[k] = v
    return out
