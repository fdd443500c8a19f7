"""Worst case per image: the share of images that no attack of the suite broke.

AutoAttack and RobustBench define robust accuracy this way: an image counts only if it is classified
correctly without attack and every attack of the ensemble leaves it classified correctly. Here, for
each (model, defense, device, precision, norm) and each ε the suite ran, the ensemble is every ok
cell of that group at that ε or a smaller one of the same norm (an image broken at ε is broken at
every larger ε): every attack, every mode (oblivious and each adaptive method). A minimum-norm attack
run without a budget (``minimum_norm``: FMN, DDN, CW, DeepFool, …) joins at every ε of the norm it
minimises, with the images it broke within that ε (its measured perturbation ≤ ε). Other attacks
without a budget (``norm: none``) belong to no ε and are left out.

Two tables come out of a run's rows and per-image predictions:

- ``worst_case.parquet``: one row per (group, ε) with the worst-case accuracy and its 95 % Wilson
  interval, the same over every draw of a randomized defense, the single strongest cell at that ε,
  which attack broke each image first (attacks in the order ε ascending, then the suite's attack
  order, then mode) and each attack's unique contribution (images only it broke);
- ``worst_case_images.parquet``: per (group, ε) and image, whether it survived and what broke it first.

Each row carries a ``worst_case_id`` shaped like a cell id (``model/worst-case/Linf/eps=8/255/none/
cpu/fp32``), so ``bench compare`` and ``bench history`` track it as they track cells.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bench.results import WORST_CASE_FILE, WORST_CASE_IMAGES_FILE, load_predictions, read_table, write_table
from bench.specs import eps_key, format_eps
from bench.audit.stats import wilson

GROUP = ["model", "defense", "device", "precision", "norm"]
MODE_ORDER = {"oblivious": 0, "adaptive-bpda": 1, "adaptive-diff": 2}

COLUMNS = {
    "suite": "string",
    "run_id": "string",
    "worst_case_id": "string",
    "model": "string",
    "dataset": "string",
    "defense": "string",
    "device": "string",
    "precision": "string",
    "norm": "string",
    "eps": "float64",
    "n": "Int64",
    "clean_acc": "float64",
    "worst_case_acc": "float64",
    "worst_case_acc_ci_low": "float64",
    "worst_case_acc_ci_high": "float64",
    "worst_case_acc_all_draws": "float64",  # an image counts only if it survives every draw of a randomized defense
    "cells": "Int64",  # attacks × modes × ε (≤ this one) in the ensemble
    "cells_not_ok": "Int64",  # cells of the ensemble that failed or were skipped: the worst case misses them
    "unreliable_cells": "Int64",  # cells of the ensemble an indicator of attack failure flagged
    # every cell of the ensemble unreliable: no attack is known to have worked, the worst case is at best an upper
    # bound and no gain computed from it is established (the report's verdicts follow the same rule)
    "upper_bound": "boolean",
    "strongest": "string",  # the single cell at this ε with the lowest robust accuracy (empty under a cascade)
    "strongest_acc": "float64",
    "broke_first": "string",  # JSON: attack label → images it broke first (order in the module docstring)
    "only_broken_by": "string",  # JSON: attack label → images no other attack of the ensemble broke
    "ensemble": "string",  # JSON list of the attack labels in the ensemble
}
IMAGE_COLUMNS = {"worst_case_id": "string", "image": "int64", "label": "int64", "survived": "bool",
                 "survived_all_draws": "bool", "broken_first_by": "string"}


def worst_case_id(model: str, norm: str, eps: float, defense: str, device: str, precision: str) -> str:
    return "/".join([model, "worst-case", norm, f"eps={eps_key(eps)}", defense, device, precision])


def curve_label(row: Any) -> str:
    """``fmn (minimum-norm)``: a minimum-norm attack, which counts at every ε up to what it found."""
    mode = "" if row["eval_mode"] == "oblivious" else f", {row['eval_mode']}"
    return f"{row['attack']} (minimum-norm{mode})"


def attack_label(row: Any) -> str:
    """``pgd ε=8/255`` for an oblivious attack, ``pgd (adaptive-bpda) ε=8/255`` for an adaptive one."""
    mode = "" if row["eval_mode"] == "oblivious" else f" ({row['eval_mode']})"
    return f"{row['attack']}{mode} ε={format_eps(row['eps'])}"


def compute(df: pd.DataFrame, predictions: pd.DataFrame | None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The worst-case table and its per-image table from a run's results and predictions."""
    empty = (pd.DataFrame({c: pd.Series(dtype=t) for c, t in COLUMNS.items()}),
             pd.DataFrame({c: pd.Series(dtype=t) for c, t in IMAGE_COLUMNS.items()}))
    if predictions is None or predictions.empty or df.empty:
        return empty
    minimum = df["minimum_norm"].fillna("").astype(str) if "minimum_norm" in df else pd.Series("", index=df.index)
    # a minimum-norm attack joins at every ε of its norm: an image it broke with perturbation d is broken at ε ≥ d
    unbounded = (minimum != "") & df["eps"].isna()  # with an ε it is a bounded attack like any other
    curves = df[unbounded & (df["status"] == "ok")].assign(norm=minimum[unbounded])
    bounded = df[df["eps"].notna() & (df["norm"].fillna("none") != "none")].copy()
    if bounded.empty:
        return empty
    bounded["_order"] = range(len(bounded))  # suite order: attack order within an ε
    attack_rank = {a: i for i, a in enumerate(dict.fromkeys(bounded["attack"]))}
    by_cell = {cid: g.sort_values("image") for cid, g in _complete(predictions).groupby("cell_id")}
    rows, images = [], []
    for key, group in bounded.groupby(GROUP, sort=False, dropna=False):
        ok = group[(group["status"] == "ok") & group["cell_id"].isin(list(by_cell))]
        if ok.empty:
            continue
        ok = ok.assign(_rank=[(e, attack_rank[a], MODE_ORDER.get(m, 9), o) for e, a, m, o in
                              zip(ok["eps"], ok["attack"], ok["eval_mode"], ok["_order"])]).sort_values("_rank")
        first = by_cell[ok["cell_id"].iloc[0]]
        labels = first["label"].to_numpy()
        clean_ok = first["clean_pred"].to_numpy() == labels
        broken = {cid: by_cell[cid]["robust_pred"].to_numpy() != labels for cid in ok["cell_id"]}
        broken_all = {cid: ~by_cell[cid]["robust_all"].to_numpy().astype(bool) for cid in ok["cell_id"]}
        names = {cid: attack_label(r) for cid, r in ok.set_index("cell_id").iterrows()}
        model, defense, device, precision, norm = key
        extra = curves[(curves["model"] == model) & (curves["defense"] == defense) & (curves["device"] == device)
                       & (curves["precision"] == precision) & (curves["norm"] == norm) & curves["cell_id"].isin(list(by_cell))]
        wrong = {cid: by_cell[cid]["robust_pred"].to_numpy() != labels for cid in extra["cell_id"]}
        wrong_all = {cid: ~by_cell[cid]["robust_all"].to_numpy().astype(bool) for cid in extra["cell_id"]}
        distance = {cid: by_cell[cid]["distance"].to_numpy(dtype=float) for cid in extra["cell_id"]}
        names.update({cid: curve_label(r) for cid, r in extra.set_index("cell_id").iterrows()})
        for eps in sorted(ok["eps"].unique()):
            ensemble = ok[ok["eps"] <= eps + 1e-12]
            at_eps = ensemble[(ensemble["eps"] - eps).abs() <= 1e-12]
            if at_eps.empty:
                continue
            for cid, d in distance.items():  # within ε: what the minimum-norm attack broke at this budget
                within = np.nan_to_num(d, nan=np.inf) <= eps + 1e-6
                broken[cid], broken_all[cid] = wrong[cid] & within, wrong_all[cid] & within
            ids = list(ensemble["cell_id"]) + list(distance)
            hit = [broken[c] for c in ids]
            survived = clean_ok.copy()
            survived_all = clean_ok.copy()
            for c in ids:
                survived &= ~broken[c]
                survived_all &= ~broken_all[c]
            stacked = np.stack(hit)  # cells (in the order above) × images
            first = np.array([names[c] for c in ids], dtype=object)[stacked.argmax(0)]
            first_by = np.where(~clean_ok, "clean", np.where(stacked.any(0), first, "")).tolist()
            counts = pd.Series([f for f in first_by if f]).value_counts()
            broke_first = {names[c]: int(counts.get(names[c], 0)) for c in ids}
            if "clean" in counts:
                broke_first["clean"] = int(counts["clean"])
            only = {}
            total = sum(h.astype(int) for h in hit)
            for c, h in zip(ids, hit):
                only[names[c]] = int((h & clean_ok & (total == 1)).sum())
            n = len(labels)
            k = int(survived.sum())
            # under a cascade a row's robust accuracy counts images its attack never ran on: no single cell to name
            full = "n_attacked" not in at_eps or bool((at_eps["n_attacked"].isna() | (at_eps["n_attacked"] >= at_eps["n"])).all())
            strongest = at_eps.sort_values(["robust_acc", "_rank"]).iloc[0] if full else None
            wid = worst_case_id(model, norm, eps, defense, device, precision)
            all_cells = group[(group["eps"] <= eps + 1e-12)]
            rows.append({
                "suite": first_value(group, "suite"), "run_id": first_value(group, "run_id"), "worst_case_id": wid,
                "model": model, "dataset": first_value(group, "dataset"), "defense": defense, "device": device,
                "precision": precision, "norm": norm, "eps": eps, "n": n, "clean_acc": float(clean_ok.mean()),
                "worst_case_acc": k / n, **dict(zip(("worst_case_acc_ci_low", "worst_case_acc_ci_high"), wilson(k, n))),
                "worst_case_acc_all_draws": float(survived_all.mean()), "cells": len(ids),
                "cells_not_ok": int((all_cells["status"] != "ok").sum()),
                "unreliable_cells": int((ensemble.get("verdict", pd.Series(dtype=str)) == "unreliable").sum()),
                "upper_bound": bool(len(ids)) and int((ensemble.get("verdict", pd.Series(dtype=str)) == "unreliable").sum()) == len(ids),
                "strongest": names[strongest["cell_id"]] if strongest is not None else None,
                "strongest_acc": float(strongest["robust_acc"]) if strongest is not None else math.nan,
                "broke_first": json.dumps(broke_first, ensure_ascii=False), "only_broken_by": json.dumps(only, ensure_ascii=False),
                "ensemble": json.dumps([names[c] for c in ids], ensure_ascii=False),
            })
            images.append(pd.DataFrame({"worst_case_id": wid, "image": range(n), "label": labels, "survived": survived,
                                        "survived_all_draws": survived_all, "broken_first_by": first_by}))
    if not rows:
        return empty
    table = pd.DataFrame(rows, columns=list(COLUMNS)).astype(COLUMNS)
    return table, pd.concat(images, ignore_index=True).astype(IMAGE_COLUMNS)


def _complete(predictions: pd.DataFrame) -> pd.DataFrame:
    """Predictions with the columns runs made before the worst case existed lack: ``robust_all``
    (one draw per image then) and ``attacked`` (no cascade then)."""
    if "robust_all" not in predictions:
        predictions = predictions.assign(robust_all=predictions["robust_pred"] == predictions["label"])
    if "attacked" not in predictions:
        predictions = predictions.assign(attacked=True)
    if "distance" not in predictions:
        predictions = predictions.assign(distance=np.nan)
    return predictions


def survival(df: pd.DataFrame, predictions: pd.DataFrame, *, model: str, defense: str, device: str, precision: str,
             norm: str, eps: float, modes: tuple[str, ...] | None = None) -> pd.Series | None:
    """Per image (indexed by image), whether it is classified correctly without attack and survived
    every ok cell of the group at ≤ ε (only the cells of ``modes``, when given: e.g. the oblivious
    ones alone), as :func:`compute` counts it; None when no such cell has predictions."""
    cells = df[(df["status"] == "ok") & (df["model"] == model) & (df["defense"] == defense) & (df["device"] == device)
               & (df["precision"] == precision) & (df["norm"] == norm) & (df["eps"] <= eps + 1e-12)]
    if modes is not None:
        cells = cells[cells["eval_mode"].isin(modes)]
    preds = predictions[predictions["cell_id"].isin(list(cells["cell_id"]))]
    if preds.empty:
        return None
    # the clean prediction is the (model, defense)'s, the same in every cell of the group: take one
    clean = preds[preds["cell_id"] == preds["cell_id"].iloc[0]].set_index("image")
    robust = (preds["robust_pred"] == preds["label"]).groupby(preds["image"]).all()
    return (clean["clean_pred"] == clean["label"]).reindex(robust.index) & robust


def first_value(df: pd.DataFrame, column: str) -> Any:
    values = df[column].dropna() if column in df else []
    return values.iloc[0] if len(values) else None


def write(df: pd.DataFrame, predictions: pd.DataFrame | None, run_dir: Path) -> pd.DataFrame:
    """Write both tables into the run folder; return the worst-case table."""
    table, images = compute(df, predictions)
    write_table(table, Path(run_dir) / WORST_CASE_FILE)
    write_table(images, Path(run_dir) / WORST_CASE_IMAGES_FILE)
    return table


def load(run_dir: Path) -> tuple[pd.DataFrame, pd.DataFrame] | None:
    """A run's worst-case tables: read when written, else computed from its results and predictions
    (runs made before the worst case existed); None when the run has no per-image predictions."""
    from bench.results import TABLE_FILE

    run_dir = Path(run_dir)
    if (run_dir / WORST_CASE_FILE).exists() and (run_dir / WORST_CASE_IMAGES_FILE).exists():
        return (read_table(run_dir / WORST_CASE_FILE, COLUMNS, ("worst_case_id", "model", "eps", "worst_case_acc")),
                read_table(run_dir / WORST_CASE_IMAGES_FILE, IMAGE_COLUMNS, ("worst_case_id", "image", "label", "survived")))
    predictions = load_predictions(run_dir)
    if predictions is None or not (run_dir / TABLE_FILE).exists():
        return None
    from bench.results import COLUMNS as RESULT_COLUMNS, TABLE_KEYS

    return compute(read_table(run_dir / TABLE_FILE, RESULT_COLUMNS, TABLE_KEYS), predictions)


def per_image(run_dir: Path, worst_images: pd.DataFrame | None = None) -> dict[str, pd.DataFrame]:
    """A run's per-image outcomes, for paired tests: cell id → a frame indexed by image with
    ``label``, ``right`` (the robust prediction is), ``clean_right`` and ``robust_pred``; and, from
    ``worst_images`` (:func:`load`'s second table), worst-case id → ``label`` and ``right`` (the image
    survived every attack). Empty for a run without per-image predictions."""
    predictions = load_predictions(Path(run_dir))
    out: dict[str, pd.DataFrame] = {}
    if predictions is not None:
        for cid, g in predictions.groupby("cell_id"):
            g = g.set_index("image").sort_index()
            out[cid] = pd.DataFrame({"label": g["label"], "right": g["robust_pred"] == g["label"],
                                     "clean_right": g["clean_pred"] == g["label"], "robust_pred": g["robust_pred"]})
    if worst_images is not None:
        for wid, g in worst_images.groupby("worst_case_id"):
            g = g.set_index("image").sort_index()
            out[wid] = pd.DataFrame({"label": g["label"], "right": g["survived"].astype(bool)})
    return out


def as_cells(table: pd.DataFrame) -> pd.DataFrame:
    """The worst-case rows shaped as result rows (cell_id, robust_acc and its interval, n, …), so
    tools that compare cells compare them too."""
    if table is None or table.empty:
        return pd.DataFrame()
    return pd.DataFrame({
        "cell_id": table["worst_case_id"], "status": "ok", "model": table["model"], "attack": "worst-case",
        "eps": table["eps"], "norm": table["norm"], "defense": table["defense"], "eval_mode": "worst-case",
        "device": table["device"], "precision": table["precision"], "n": table["n"],
        "robust_acc": table["worst_case_acc"], "robust_acc_ci_low": table["worst_case_acc_ci_low"],
        "robust_acc_ci_high": table["worst_case_acc_ci_high"],
    })
