"""Flags: signs that a number in the table should not be trusted, and the row's verdict.

Each flag names what it suspects and what to try. Most are indicators of attack failure (Pintor et
al. 2022; AutoAttack's ``checks.py``): they say the attack did not find what it should have, so the
robust accuracy is too high, and they make the row's ``verdict`` ``unreliable``. A few are notes
about the setting (a defense that breaks the classifier itself) that do not. How each indicator is
judged, with its thresholds, is in :mod:`bench.audit.indicators`.

Per-cell flags are raised while a cell runs; cross-cell flags (``eps-rise``, ``adaptive-weaker``,
``black-box-stronger``, ``implementations-disagree``, ``ensemble-weaker``, ``weaker-than-another``) once every row
is in.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any, Iterable

import pandas as pd


@dataclass(frozen=True)
class Flag:
    code: str
    suspects: str
    remedy: str
    unreliable: bool = True  # raised, it makes the row's verdict `unreliable`


FLAGS: dict[str, Flag] = {f.code: f for f in (
    Flag("silent-success", "the attack queried a point inside its budget that reached its goal (misclassified, or "
         "the target class) but returned a point that does not: it found an adversarial example and threw it away "
         "(PGD returns its last iterate, not its best)",
         "use an attack that keeps its best point (apgd), a smaller step size, or more steps"),
    Flag("incomplete-optimization", "on images it did not break, the attack's margin was still falling over its last "
         "10 % of queries: it stopped before it converged",
         "raise steps (or n_queries for score-based attacks) until the margin stops falling"),
    Flag("transfer-failure", "the adaptive attack fooled the model it attacked (the BPDA or differentiable surrogate, "
         "the EOT average) but not the real defended model: the surrogate, the averaging or the 8-bit rounding lost it",
         "use more eot_samples, the other adaptive method, or a surrogate closer to the real defense"),
    Flag("unavailable-gradients", "input gradients were all zero or not finite on some query (or the whole first "
         "batch) at points the attack had not yet won: gradient masking (a saturated softmax, a non-differentiable "
         "step, a quantiser) or a broken backward pass",
         "attack through BPDA (adaptive-bpda), a margin loss (apgd with loss: dlr), or a score-based attack (square)"),
    Flag("unstable-predictions", "the attacked model gives different outputs for the same input, or its loss jumps "
         "under tiny random noise: randomness the suite does not declare, which gradient attacks cannot average",
         "declare the randomness (a randomized defense, EOT with eot_samples), or remove it from the model"),
    Flag("shattered-gradients", "input gradients at an image and at the same image plus tiny noise point different "
         "ways: shattered gradients (Athalye et al. 2018), so gradient steps are noise",
         "attack through BPDA or a smooth surrogate of the shattering part, or with a score-based attack (square)"),
    Flag("unconstrained-fails", "the same attack with an unbounded budget (ε = 1 for L∞, the largest possible "
         "radius for L2) could not break nearly every image: it cannot find adversarial examples on this model at all",
         "fix the attack (steps or n_queries, step size, loss) or the gradients before trusting any bounded number"),
    Flag("black-box-stronger", "a score-based black-box attack broke images that every gradient attack at the same ε "
         "left standing: the gradients mislead (gradient masking)",
         "trust the worst case over all attacks; attack through BPDA or with a margin loss"),
    Flag("implementations-disagree", "another library's implementation of the same attack (same family, budget, "
         "steps and step size) broke clearly more images of this model (McNemar's exact p < 0.01 on the images only "
         "one of them broke): this implementation is weaker, its robust accuracy an overestimate",
         "trust the stronger implementation and the worst case over all attacks; compare the two libraries' "
         "defaults (step size, random start, loss) with the report's side-by-side table"),
    Flag("ensemble-weaker", "an ensemble sold as the strongest attack (AutoAttack) left standing images that another "
         "attack of the suite, at the same ε and norm, broke: it is not the worst case of this suite, and its robust "
         "accuracy is an overestimate",
         "trust the worst case over all attacks; add the stronger attack to the ensemble (autoattack/custom) or run "
         "more restarts (autoattack/plus)"),
    Flag("weaker-than-another", "another attack of the suite, at the same ε and norm, broke images this one attacked "
         "and left standing: on its own it overestimates robust accuracy (the worst case over all attacks does not)",
         "read the worst case over all attacks; strengthen this attack (steps, restarts) if it is meant to stand alone",
         unreliable=False),
    Flag("softmax-output", "the model returns probabilities (non-negative rows summing to 1), not logits: "
         "cross-entropy on them saturates and its gradients vanish",
         "return logits (drop the final softmax), or use a margin loss (apgd with loss: dlr)"),
    Flag("clean-at-chance", "the model's clean accuracy (without defense) is within the 95 % interval of chance (what "
         "guessing without looking at the image gets): wrong preprocessing, labels or weights; nothing else in the row "
         "means anything",
         "check the model's mean/std, input size and class order against its weights, and the data's labels"),
    Flag("eps-rise", "robust accuracy rises with ε for this model, attack, defense and mode: the attack is not "
         "finding the worst case (gradient masking, or a step size that overshoots)",
         "use more steps or PGD with random restarts; check that ε and the step size fit together"),
    Flag("adaptive-weaker", "the adaptive attack leaves more accuracy than the oblivious one: its gradient through the "
         "defense is wrong or masked", "the other adaptive method (bpda / diff), more steps, or more eot_samples"),
    Flag("short-delta", "the largest measured ‖δ‖ (in the attack's norm: L∞ or L2) is far below ε (under half): the "
         "attack did not use its budget (vanishing gradients, saturated softmax, or too small a step)",
         "raise the step size (alpha / lr) or the number of steps"),
    Flag("defense-breaks-clean", "the defense changes the clean prediction of most images: its robust accuracy "
         "measures a broken classifier, not a defended one", "use a milder setting (higher JPEG quality)",
         unreliable=False),
    Flag("non-finite", "the model returned NaN or inf logits", "check the weights and the precision (fp16 overflow)"),
    # runs made before the indicators of attack failure: `unavailable-gradients` covers it now
    Flag("zero-grad", "the attacked model returns all-zero input gradients on the first batch: gradient masking or a "
         "non-differentiable step in the attack path", "attack through BPDA (adaptive-bpda) or a smooth surrogate"),
)}


def join(codes: Iterable[str]) -> str:
    return ",".join(dict.fromkeys(c for c in codes if c))


def split(text: Any) -> list[str]:
    return [c for c in str(text).split(",") if c] if isinstance(text, str) else []


def verdict(codes: Iterable[str]) -> str:
    """``unreliable`` when any flag that marks an attack failure is raised, else ``reliable``."""
    return "unreliable" if any(FLAGS[c].unreliable for c in codes if c in FLAGS) else "reliable"


def cell_flags(*, delta: float, eps: float | None, clean_changed: float) -> list[str]:
    """The setting's own flags of one cell. ``delta`` is the largest measured perturbation in the
    norm ``eps`` bounds."""
    out = []
    if eps is not None and not math.isnan(eps) and delta < 0.5 * eps:
        out.append("short-delta")
    if clean_changed > 0.5:
        out.append("defense-breaks-clean")
    return out


def cross_cell_flags(df: pd.DataFrame, predictions: pd.DataFrame | None = None, black_box: Iterable[str] = (),
                     randomized: Iterable[str] = (), evidence: dict[str, dict[str, Any]] | None = None) -> dict[str, list[str]]:
    """Flags that need several cells: cell_id → codes. With ``predictions`` (per image) two cells are
    compared on the images both attacked (all of them, unless a cascade skipped some: a cascaded
    row's robust accuracy counts images it never attacked), and the score-based attacks named in
    ``black_box`` are compared with the gradient attacks; ``randomized`` names the defenses whose
    evaluation draws differ from cell to cell (there one attack beating another can be luck).
    ``evidence``, when given, receives cell_id → the numbers behind each flag."""
    out: dict[str, list[str]] = {}
    evidence = {} if evidence is None else evidence
    ok = df[df["status"] == "ok"]
    right = _per_image(predictions)

    def accuracies(a: str, b: str, fallback: tuple[float, float]) -> tuple[float, float]:
        """Robust accuracy of cells a and b on the images both attacked."""
        if a not in right or b not in right:
            return fallback
        both = right[a]["attacked"] & right[b]["attacked"]
        if not both.any():
            return 0.0, 0.0
        return float(right[a]["right"][both].mean()), float(right[b]["right"][both].mean())

    keys = ["model", "attack", "defense", "eval_mode", "device", "precision"]
    for _, group in ok[ok["eps"].notna()].groupby(keys):
        group = group.sort_values("eps")
        ids, acc = group["cell_id"].tolist(), group["robust_acc"].tolist()
        for i in range(1, len(ids)):
            before, now = accuracies(ids[i - 1], ids[i], (acc[i - 1], acc[i]))
            if now > before:
                out.setdefault(ids[i], []).append("eps-rise")
                evidence.setdefault(ids[i], {})["eps_rise"] = {"smaller_eps": float(group["eps"].iloc[i - 1]),
                                                               "accuracy_there": before, "accuracy_here": now}
    oblivious = ok[ok["eval_mode"] == "oblivious"].set_index(["model", "attack", "eps", "defense", "device", "precision"])
    for _, row in ok[ok["eval_mode"] != "oblivious"].iterrows():
        key = (row["model"], row["attack"], row["eps"], row["defense"], row["device"], row["precision"])
        if key in oblivious.index:
            base = oblivious.loc[key]
            obl, adaptive = accuracies(base["cell_id"], row["cell_id"], (base["robust_acc"], row["robust_acc"]))
            if adaptive > obl:
                out.setdefault(row["cell_id"], []).append("adaptive-weaker")
                evidence.setdefault(row["cell_id"], {})["adaptive_weaker"] = {"oblivious_accuracy": obl, "adaptive_accuracy": adaptive}
    if right and "attack_type" in ok:
        for cell_id, images in _black_box_stronger(ok, right, set(black_box), set(randomized)):
            out.setdefault(cell_id, []).append("black-box-stronger")
            evidence.setdefault(cell_id, {})["black_box_only_images"] = images
    if predictions is not None and not predictions.empty:
        from bench.audit.crosscheck import comparisons, disagreements

        table = comparisons(df, predictions)  # through a randomized defense each cell's draws differ: no verdict there
        for cell_id, pairs in disagreements(table[~table["defense"].isin(list(randomized))]).items():
            out.setdefault(cell_id, []).append("implementations-disagree")
            evidence.setdefault(cell_id, {})["implementations_disagree"] = pairs
        # two implementations of one attack are judged by the cross-check, with its significance: not here again
        compared = {*zip(table["cell_a"], table["cell_b"]), *zip(table["cell_b"], table["cell_a"])}
    else:
        compared = set()
    if right and "attack_type" in ok:
        for cell_id, stronger in _dominated(ok, right, set(randomized), compared).items():
            ensemble = _is_ensemble(ok.loc[ok["cell_id"] == cell_id, "attack_type"].iloc[0])
            if not ensemble and {"black-box-stronger", "implementations-disagree"} & set(out.get(cell_id, [])):
                continue  # said already, and more precisely
            out.setdefault(cell_id, []).append("ensemble-weaker" if ensemble else "weaker-than-another")
            evidence.setdefault(cell_id, {})["weaker_than"] = stronger
    return out


def _per_image(predictions: pd.DataFrame | None) -> dict[str, pd.DataFrame]:
    """cell id → per image (index): ``right`` (robust prediction correct), ``attacked``."""
    if predictions is None or predictions.empty:
        return {}
    p = predictions.assign(right=predictions["robust_pred"] == predictions["label"])
    if "attacked" not in p:
        p = p.assign(attacked=True)
    return {cid: g.set_index("image")[["right", "attacked"]].astype(bool) for cid, g in p.groupby("cell_id")}


def _black_box_stronger(ok: pd.DataFrame, right: dict[str, pd.DataFrame], black_box: set[str],
                        randomized: set[str]) -> list[tuple[str, int]]:
    """Gradient-attack cells that attacked an image a black-box attack broke at the same (model,
    defense, device, precision, norm, ε), and left it standing, as every gradient attack that
    attacked it did. Only where the attacks saw the model they are evaluated on (no defense, or an
    adaptive attack: through a defense an oblivious attack measures transfer, not failure), and not
    through a randomized defense (each cell's evaluation draws differ)."""
    cells = ok[ok["eps"].notna() & (ok["norm"] != "none") & ~ok["defense"].isin(randomized)]
    cells = cells[(cells["defense"] == "none") | (cells["eval_mode"] != "oblivious")]
    cells = cells[cells["cell_id"].isin(list(right))]
    out = []
    for _, group in cells.groupby(["model", "defense", "device", "precision", "norm", "eps"]):
        is_bb = group["attack_type"].isin(black_box)
        if not is_bb.any() or is_bb.all():
            continue
        broken_bb = pd.concat([~right[c]["right"] for c in group.loc[is_bb, "cell_id"]], axis=1).any(axis=1)
        grad = list(group.loc[~is_bb, "cell_id"])
        attacked = pd.concat([right[c]["attacked"] for c in grad], axis=1)
        broken = pd.concat([~right[c]["right"] & right[c]["attacked"] for c in grad], axis=1)
        missed = broken_bb & attacked.any(axis=1) & ~broken.any(axis=1)  # the gradient attacks had their chance
        if missed.any():
            out += [(c, int(a[missed.to_numpy()].sum())) for c, a in zip(grad, attacked.T.values) if a[missed.to_numpy()].any()]
    return out


def _is_ensemble(attack_type: Any) -> bool:
    """AutoAttack, torchattacks' or its authors' (autoattack/standard, …): an ensemble offered as the strongest."""
    kind = attack_type.lower().rpartition("torchattacks/")[2] if isinstance(attack_type, str) else ""
    return kind == "autoattack" or kind.startswith("autoattack/")


def _dominated(ok: pd.DataFrame, right: dict[str, pd.DataFrame], randomized: set[str],
               compared: set[tuple[str, str]] = frozenset()) -> dict[str, dict[str, int]]:
    """cell id → {another attack's name: images it broke that this cell attacked and left standing}, among the cells
    of one (model, defense, mode, device, precision, norm, ε), where the attacks saw the model they are judged on (no
    defense, or an adaptive attack). Not through a randomized defense (each cell's draws differ) and not under a cascade (a later attack only attacks what the earlier ones left, by design)."""
    cells = ok[ok["eps"].notna() & (ok["norm"] != "none") & ~ok["defense"].isin(randomized) & ok["cell_id"].isin(list(right))]
    cells = cells[(cells["defense"] == "none") | (cells["eval_mode"] != "oblivious")]  # through a defense: transfer
    out: dict[str, dict[str, int]] = {}
    from bench.audit.indicators import fires

    # a targeted attack aims elsewhere: it is compared with targeted attacks only (they have a targeted success rate)
    cells = cells.assign(targeted=cells["targeted_success_rate"].notna() if "targeted_success_rate" in cells else False)
    for _, group in cells.groupby(["model", "defense", "eval_mode", "device", "precision", "norm", "eps", "targeted"]):
        if len(group) < 2 or not all(bool(right[c]["attacked"].all()) for c in group["cell_id"]):
            continue
        for a, attack_a in zip(group["cell_id"], group["attack"]):
            for b, attack_b in zip(group["cell_id"], group["attack"]):
                if a == b or (a, b) in compared:
                    continue
                both = right[a].index.intersection(right[b].index)
                count = int((right[a]["right"].loc[both] & ~right[b]["right"].loc[both]).sum())
                if fires(count, len(both)):  # as many images as any counting indicator needs
                    out.setdefault(a, {})[attack_b] = count
    return out


def apply_cross_cell(rows: list[dict[str, Any]], df: pd.DataFrame, predictions: pd.DataFrame | None = None,
                     black_box: Iterable[str] = (), randomized: Iterable[str] = ()) -> None:
    """Add the cross-cell flags (and their numbers, to ``indicators``) to the rows and set every ok
    row's verdict, in place: empty for a cell whose attack ran on no image (a cascade found every
    image already broken), where there is nothing to judge."""
    numbers: dict[str, dict[str, Any]] = {}
    extra = cross_cell_flags(df, predictions, black_box, randomized, numbers)
    for row in rows:
        if row["cell_id"] in extra:
            row["flags"] = join(split(row.get("flags")) + extra[row["cell_id"]])
        if row["cell_id"] in numbers:
            try:
                ev = json.loads(row["indicators"]) if isinstance(row.get("indicators"), str) else {}
            except ValueError:
                ev = {}
            row["indicators"] = json.dumps({**ev, **numbers[row["cell_id"]]}, sort_keys=True)
        if row.get("status") == "ok":
            row["verdict"] = "" if row.get("n_attacked") == 0 else verdict(split(row.get("flags")))
