"""Implementations cross-checked: the same attack from different libraries, image by image.

Libraries' attacks of the same name disagree (torchattacks' AutoAttack does not reproduce the original's
numbers; foolbox's PGD is not everyone's PGD; AttackBench found many library attacks that miss what the
best ones find). When a run holds the same attack family and budget from two sources (PGD L∞ from
torchattacks, foolbox and ART with the same ε, steps, step size, random starts and restarts; FGSM with the same ε:
:func:`bench.attacks.family` says what counts as the same), every pair of their cells on the same model,
defense, mode, device and precision is compared on the same images: robust accuracy of each, images both
broke, images only one broke, and McNemar's exact test on those discordant images. A pair whose p-value
is below :data:`DISAGREE_P` disagrees: the weaker implementation (the higher robust accuracy) gets the
flag ``implementations-disagree`` with both numbers, because its robust accuracy is an overestimate that
the other library shows.
"""

from __future__ import annotations

import itertools
import json
from typing import Any, Callable

import pandas as pd

from bench.audit.stats import mcnemar

DISAGREE_P = 0.01  # McNemar's exact p below this: the two implementations break different images, clearly
GROUP = ["model", "defense", "eval_mode", "device", "precision"]
COLUMNS = ["model", "defense", "eval_mode", "device", "precision", "family", "eps", "attack_a", "source_a", "cell_a",
           "robust_acc_a", "attack_b", "source_b", "cell_b", "robust_acc_b", "n", "both_broke", "only_a", "only_b", "p",
           "agree"]


def _family(row: Any) -> tuple | None:
    from bench.attacks import family

    try:
        args = json.loads(row["attack_args"]) if isinstance(row.get("attack_args"), str) else {}
    except ValueError:
        return None
    return family(str(row["attack_type"]), args)


def describe(family: tuple) -> str:
    """``PGD Linf ε=0.15, 20 steps of 0.01, random start`` for a family key."""
    from bench.specs import format_eps

    kind, norm, eps, *rest = family
    text = f"{kind.upper()} {norm} ε={format_eps(eps)}"
    target, restarts = rest[-2], rest[-1]
    if kind == "autoattack":
        text = f"AutoAttack ({rest[0]}) {norm} ε={format_eps(eps)}"
    if kind == "pgd":
        steps, step, starts = rest[:3]
        text += f", {steps} steps of {step:.4g}" + (", no random start" if not starts else ", random start" if starts == 1
                                                       else f", best of {starts} random starts")
    if restarts > 1:
        text += f", {restarts} restarts"
    return text + (f", target {target}" if target is not None else "")


def comparisons(df: pd.DataFrame, predictions: pd.DataFrame | None,
                family_of: Callable[[Any], tuple | None] = _family) -> pd.DataFrame:
    """Every pair of ok cells from different sources that run the same attack family and budget, compared
    image by image (module docstring); empty when there is no such pair or no per-image predictions."""
    empty = pd.DataFrame(columns=COLUMNS)
    if predictions is None or predictions.empty or df.empty or "attack_args" not in df:
        return empty
    ok = df[(df["status"] == "ok")].copy()
    # where each attack saw the model it is evaluated on (no defense, or an adaptive attack: through a defense an
    # oblivious attack measures transfer), and on every image (a cascaded cell attacked only what others left)
    ok = ok[(ok["defense"] == "none") | (ok["eval_mode"] != "oblivious")]
    if "n_attacked" in ok:
        ok = ok[ok["n_attacked"].isna() | (ok["n_attacked"] >= ok["n"])]
    if ok.empty:
        return empty
    ok["_family"] = [family_of(r) for r in ok.to_dict("records")]
    from_type = ok["attack_type"].map(lambda t: t.split("/", 1)[0] if "/" in str(t) and str(t) != "python" else
                                      "python" if str(t) == "python" else "torchattacks")
    ok["_source"] = ok["attack_source"].fillna(from_type) if "attack_source" in ok else from_type
    ok = ok[ok["_family"].notna()]
    by_cell = {cid: g.set_index("image").sort_index() for cid, g in predictions[predictions["cell_id"].isin(list(ok["cell_id"]))].groupby("cell_id")}
    rows = []
    for key, group in ok.groupby([*GROUP, "_family"], sort=False, dropna=False):
        if group["_source"].nunique() < 2:
            continue
        for (_, a), (_, b) in itertools.combinations(group.iterrows(), 2):
            if a["_source"] == b["_source"] or a["cell_id"] not in by_cell or b["cell_id"] not in by_cell:
                continue
            pa, pb = by_cell[a["cell_id"]], by_cell[b["cell_id"]]
            both = pa["attacked"] & pb["attacked"]
            clean = (pa["clean_pred"] == pa["label"]) & both
            broke_a = clean & (pa["robust_pred"] != pa["label"])
            broke_b = clean & (pb["robust_pred"] != pb["label"])
            only_a, only_b = int((broke_a & ~broke_b).sum()), int((broke_b & ~broke_a).sum())
            n = int(both.sum())
            p = mcnemar(only_a, only_b)
            rows.append({**dict(zip(GROUP, key[:-1])), "family": describe(key[-1]), "eps": a["eps"],
                         "attack_a": a["attack"], "source_a": a["_source"], "cell_a": a["cell_id"],
                         "robust_acc_a": float(((pa["robust_pred"] == pa["label"]) & both).sum() / n) if n else float("nan"),
                         "attack_b": b["attack"], "source_b": b["_source"], "cell_b": b["cell_id"],
                         "robust_acc_b": float(((pb["robust_pred"] == pb["label"]) & both).sum() / n) if n else float("nan"),
                         "n": n, "both_broke": int((broke_a & broke_b).sum()), "only_a": only_a, "only_b": only_b,
                         "p": p, "agree": bool(p >= DISAGREE_P)})
    return pd.DataFrame(rows, columns=COLUMNS) if rows else empty


def disagreements(table: pd.DataFrame) -> dict[str, list[dict[str, Any]]]:
    """The weaker cell of each disagreeing pair → the numbers behind its flag (both accuracies, the other
    implementation, the discordant images, p)."""
    out: dict[str, list[dict[str, Any]]] = {}
    for _, r in table[~table["agree"].astype(bool)].iterrows() if not table.empty else []:
        weak, strong = ("a", "b") if r["robust_acc_a"] > r["robust_acc_b"] else ("b", "a")
        out.setdefault(r[f"cell_{weak}"], []).append({
            "other": f"{r[f'attack_{strong}']} ({r[f'source_{strong}']})", "robust_acc": r[f"robust_acc_{weak}"],
            "other_robust_acc": r[f"robust_acc_{strong}"], "only_this_broke": int(r[f"only_{weak}"]),
            "only_other_broke": int(r[f"only_{strong}"]), "p": float(r["p"])})
    return out
