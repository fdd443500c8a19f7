"""Minimum-norm attacks give a whole curve from one run, and each attack an optimality score.

An attack that searches the smallest perturbation (foolbox's FMN and DDN, torchattacks' FAB, DeepFool and
CW, ART's HopSkipJump, …) records each image's measured perturbation ``d`` (in the norm it minimises, from
the 8-bit image that was evaluated). An image it broke is broken at every ε ≥ d, so one run gives robust
accuracy at every ε: ``robust(ε) = share of images right without attack and not (broken with d ≤ ε)``.

Every other attack of the same norm adds points: an image a bounded attack broke is broken at every ε at
or above its measured perturbation. The per-image best over every attack of the run (the smallest
perturbation any of them found) is the curve no single attack can beat; an attack's **optimality** (in
AttackBench's sense, Cinà et al. 2024) says how close its curve comes to it over [0, E], E the largest
smallest perturbation of the best curve:

    optimality = (A_clean − A_attack) / (A_clean − A_best)

with A the area under a curve on [0, E] and A_clean the area of the curve of an attack that breaks
nothing (the clean accuracy, flat). 1: it finds the smallest perturbation of every image any attack found;
0: it finds nothing. The areas of these step functions are exact sums over images.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

GROUP = ["model", "defense", "eval_mode", "device", "precision", "curve_norm"]
TOLERANCE = 1e-6  # a distance this far above ε still counts as within it (float error of the measurement)


def _cells(df: pd.DataFrame, predictions: pd.DataFrame | None) -> pd.DataFrame:
    """Ok untargeted cells with per-image distances, each with the norm of its curve (``curve_norm``) and
    whether it is a minimum-norm attack (``minimum``)."""
    if predictions is None or predictions.empty or df.empty or "distance" not in predictions:
        return df.iloc[0:0]
    ok = df[(df["status"] == "ok")].copy()
    if "minimum_norm" not in ok:
        ok["minimum_norm"] = ""
    ok["minimum"] = ok["minimum_norm"].fillna("").astype(str) != ""
    ok["curve_norm"] = np.where(ok["minimum"], ok["minimum_norm"].fillna(""), ok["norm"].fillna("none"))
    targeted = ok["attack_args"].fillna("").str.contains('"target": [0-9]', regex=True) if "attack_args" in ok else False
    ok = ok[(ok["curve_norm"] != "none") & ~targeted]
    has = predictions.groupby("cell_id")["distance"].apply(lambda d: bool(d.notna().any()))
    return ok[ok["cell_id"].map(has).fillna(False).astype(bool)]


def per_image(predictions: pd.DataFrame, cell_id: str) -> tuple[np.ndarray, np.ndarray]:
    """(clean right, smallest perturbation that broke the image: inf where the cell did not break it)."""
    p = predictions[predictions["cell_id"] == cell_id].sort_values("image")
    clean = (p["clean_pred"] == p["label"]).to_numpy()
    broke = clean & (p["robust_pred"] != p["label"]).to_numpy() & p["attacked"].to_numpy().astype(bool)
    d = p["distance"].to_numpy(dtype=float)
    return clean, np.where(broke & np.isfinite(d), d, np.inf)


def robust_at(clean: np.ndarray, d: np.ndarray, eps: float) -> float:
    """Robust accuracy at ε of images with these smallest perturbations (inf: never broken)."""
    return float((clean & ~(d <= eps + TOLERANCE)).mean()) if len(clean) else math.nan


def area(clean: np.ndarray, d: np.ndarray, top: float) -> float:
    """∫₀^top robust(ε) dε, exactly: each image right without attack counts until it is broken."""
    if not len(clean) or top <= 0:
        return 0.0
    return float(np.where(clean, np.minimum(d, top), 0.0).sum() / len(clean))


def table(df: pd.DataFrame, predictions: pd.DataFrame | None) -> pd.DataFrame:
    """One row per minimum-norm cell: its group, median smallest perturbation over the images it broke, how
    many it broke, its optimality against the per-image best over every attack of its group, and the
    best curve's reach E; with ``eps_grid`` (JSON-free lists) for plotting."""
    cells = _cells(df, predictions)
    rows = []
    if cells.empty:
        return pd.DataFrame(rows)
    for key, group in cells.groupby(GROUP, sort=False):
        minimum = group[group["minimum"]]
        if minimum.empty:
            continue
        per = {cid: per_image(predictions, cid) for cid in group["cell_id"]}
        clean = per[group["cell_id"].iloc[0]][0]
        best = np.minimum.reduce([d for _, d in per.values()])
        finite = best[np.isfinite(best) & clean]
        top = float(finite.max()) if finite.size else 0.0
        a_clean, a_best = area(clean, np.full_like(best, np.inf), top), area(clean, best, top)
        for _, row in minimum.iterrows():
            c, d = per[row["cell_id"]]
            broken = d[np.isfinite(d)]
            a = area(c, d, top)
            rows.append({**dict(zip(GROUP[:-1], key)), "norm": key[-1], "attack": row["attack"], "attack_type": row["attack_type"],
                         "cell_id": row["cell_id"], "n": len(c), "clean_acc": float(c.mean()),
                         "broken": int(broken.size), "median_distance": float(np.median(broken)) if broken.size else math.nan,
                         "optimality": (a_clean - a) / (a_clean - a_best) if a_clean > a_best else 1.0,
                         "reach": top, "best_of": list(per)})
    return pd.DataFrame(rows)


def curve(predictions: pd.DataFrame, cell_ids: list[str], grid: np.ndarray) -> np.ndarray:
    """Robust accuracy on ``grid`` of the per-image best over ``cell_ids`` (one id: that attack's own curve)."""
    per = [per_image(predictions, c) for c in cell_ids]
    clean = per[0][0]
    best = np.minimum.reduce([d for _, d in per])
    return np.array([robust_at(clean, best, e) for e in grid])
