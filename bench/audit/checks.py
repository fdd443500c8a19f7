"""The indicators' checks a cell runs beside its measurement (bench/audit/indicators.py has the rules): on the
crafting's queries, on the model's stability, and the unconstrained attack (the same attack with an unbounded
budget on a few images). Their time is reported as ``check_seconds``, never in throughput."""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import torch
import torch.nn as nn

from bench import attacks as attack_registry
from bench import defenses as defense_registry
from bench.audit.indicators import (
    UNCONSTRAINED_IMAGES,
    UNCONSTRAINED_SUCCESS,
    at_chance,
    chance_accuracy,
    fires,
    silent_successes,
    stability,
    stability_flags,
    still_improving,
)
from bench.audit.queries import QueryLog
from bench.failures import one_line
from bench.seeding import seed_of, seeded
from bench.specs import CellSpec, DefenseSpec

if TYPE_CHECKING:
    from bench.cells import Prepared, Workspace

log = logging.getLogger(__name__)


def attacked_defense(cell: CellSpec) -> DefenseSpec:
    """The defense in the model an attack works on: none for an oblivious attack, the cell's for an adaptive one."""
    return cell.defense if cell.crafted_through else DefenseSpec("none")


def goal(pred: torch.Tensor, labels: torch.Tensor, target: int | None) -> torch.Tensor:
    """Per image, whether a prediction is where the attack wanted it: wrong, or the target class."""
    return pred == target if target is not None else pred != labels


def crafting_signals(log: QueryLog, reached: torch.Tensor, attacked: torch.Tensor, lo: int, hi: int) -> dict[str, list]:
    """Per image of [lo, hi), what the crafting indicators read from a crafting's queries: an input gradient that
    was dead, a query that reached the goal while the returned point does not (silent), a margin still falling at
    the end (improving, among the images judged for it). Per image, so shards of one crafting add up to the cell."""
    improving, judged = still_improving(log, reached, attacked)
    return {"dead": ((log.dead_gradients > 0) & attacked)[lo:hi].tolist(),
            "silent": silent_successes(log, reached, attacked)[lo:hi].tolist(),
            "improving": improving[lo:hi].tolist(), "judged": judged[lo:hi].tolist()}


def crafting_indicators(cell: CellSpec, signals: dict[str, list], zero_grad: bool, backward_rows: int, n: int,
                        hidden_noise: bool = False) -> tuple[list[str], dict[str, Any]]:
    """The indicators judged on a crafting's queries over the whole cell (its shards' :func:`crafting_signals`
    joined; bench/audit/indicators.py has the rules). On a model that answers the same input differently
    (``hidden_noise``: unstable-predictions says so) a query's success or a falling margin is luck, so those
    two are not judged there."""
    flags, evidence = [], {}
    dead = sum(signals["dead"])
    evidence["dead_gradient_images"] = dead
    evidence["first_batch_zero_gradient"] = zero_grad
    if (zero_grad and backward_rows > 0) or fires(dead, n):  # only for attacks that take gradients
        flags.append("unavailable-gradients")
    # a randomized attacked model (EOT, a random defense) reaches a goal on one draw and not the next:
    # a query's success there is luck, not a point the attack could have returned
    random_path = hidden_noise or (cell.eval_mode != "oblivious" and defense_registry.randomized(cell.defense))
    if random_path:
        evidence["silent_success_images"] = None
    else:
        silent = sum(signals["silent"])
        evidence["silent_success_images"] = silent
        if fires(silent, n):
            flags.append("silent-success")
    if hidden_noise:
        evidence["still_improving_images"] = evidence["judged_for_improvement"] = None
        return flags, evidence
    improving, judged = sum(signals["improving"]), sum(signals["judged"])
    evidence["still_improving_images"], evidence["judged_for_improvement"] = improving, judged
    if fires(improving, n):
        flags.append("incomplete-optimization")
    return flags, evidence


def model_checks(ws: "Workspace", cell: CellSpec, target: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[list[str], dict]:
    """Stability of the model the attack works on (once per attacked model: the bare model for
    every oblivious crafting, model ∘ defense for each adaptive one)."""
    key = (cell.model, cell.device, cell.precision, *cell.crafted_through)
    if key not in ws.stability_checks:
        with seeded(seed_of(cell.seed, "stability", cell.model.name, cell.device), cell.device):
            check = stability(target, x, y, seed_of(cell.seed, "stability-noise", cell.model.name))
        ws.stability_checks[key] = (stability_flags(check), {"repeat_difference": check["repeat"],
                                                         "loss_spread": check["spread"], "gradient_cosine": check["cosine"]})
    return ws.stability_checks[key]


def unconstrained(ws: "Workspace", cell: CellSpec, prep: Prepared) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The unconstrained-attack indicator's crafting: the cell's attack (its largest ε's arguments)
    with an unbounded budget on up to 16 images the attacked model classifies correctly, crafted
    once per (model, attack, device, precision, and defense and mode for adaptive attacks).
    Returns (image indices, their adversarial uint8 images), or None when not checked."""
    norm = attack_registry.norm(cell.attack)
    if not ws.suite.unconstrained_check or norm == "none" or cell.attack.eps is None:
        return None
    if attack_registry.source_name(cell.attack.type) == "python":
        return None  # the harness cannot unbound a user's function: which arguments are step sizes, or a start, is its own
    key = (cell.model, cell.attack.name, cell.device, cell.precision, *cell.crafted_through)
    if key not in ws.unconstrained_crafts:
        ws.unconstrained_crafts[key] = _unconstrained_craft(ws, cell, prep)
    return ws.unconstrained_crafts[key]


def _unconstrained_craft(ws: "Workspace", cell: CellSpec, prep: Prepared):
    ds = ws.data(cell)
    variants = next((v for v in ws.suite.attacks if cell.attack in v), (cell.attack,))
    template = max((a for a in variants if a.eps is not None), key=lambda a: a.eps)
    spec = attack_registry.unbounded(template, tuple(ds.images.shape[1:]))
    clean, _ = ws.clean(replace(cell, defense=attacked_defense(cell)), prep)
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


def cell_indicators(cell: CellSpec, ws: Workspace, prep: Prepared, reached: torch.Tensor, attacked: torch.Tensor,
                    clean_pred: torch.Tensor, robust_pred: torch.Tensor,
                    undefended_pred: torch.Tensor) -> tuple[list[str], dict[str, Any]]:
    """The indicators judged on one cell: on its real evaluation, its clean accuracy, and the
    unconstrained attack's images through this cell's defense (bench/audit/indicators.py has the rules)."""
    ds = ws.data(cell)
    labels, n, target = ds.labels, len(ds.labels), cell.attack.target
    flags, evidence = [], {}
    if cell.eval_mode != "oblivious":  # the surrogate was fooled, the real defended model was not
        lost = int((reached & ~goal(robust_pred, labels, target) & attacked).sum())
        evidence["transfer_failure_images"] = lost
        if fires(lost, n):
            flags.append("transfer-failure")
    if ws.softmax(cell):
        flags.append("softmax-output")
    # the model's own clean accuracy: a defense that wrecks it is defense-breaks-clean, not a wrong model
    evidence["chance_accuracy"] = chance_accuracy(labels, undefended_pred)
    if at_chance(labels, undefended_pred):
        flags.append("clean-at-chance")
    judged = unconstrained_success(cell, ws, prep, attacked, clean_pred, robust_pred)
    if judged is not None:
        broken, count = judged
        evidence["unconstrained_success"] = broken / count
        evidence["unconstrained_images"] = count
        if broken < UNCONSTRAINED_SUCCESS * count:
            flags.append("unconstrained-fails")
    return flags, evidence


def unconstrained_success(cell: CellSpec, ws: Workspace, prep: Prepared, attacked: torch.Tensor, clean_pred: torch.Tensor,
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
        right = (clean_pred == labels) & attacked
        return (int((right & goal(robust_pred, labels, target)).sum()), int(right.sum())) if bool(right.any()) else None
    crafted = unconstrained(ws, cell, prep)
    if crafted is None or len(crafted[0]) == 0:
        return None
    pick, images = crafted  # images the attacked model classifies correctly, and their unbounded adversarials
    defense = defense_registry.build(attacked_defense(cell))
    g = defense_registry.generator(cell.device, seed_of(cell.seed, "unconstrained-eval", cell.cell_id))
    with torch.no_grad():
        pred = prep.model(defense(images.to(cell.device).float().div_(255), g)).argmax(1).cpu()
    return int(goal(pred, labels[pick], target).sum()), len(pick)
