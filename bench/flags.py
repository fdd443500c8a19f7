"""Sanity flags: signs that a number in the table should not be trusted.

Each flag names what it suspects and what to try (AutoAttack's checks in the same spirit:
zero gradients, an attack weaker than it should be, a defense that only breaks the model).
Per-cell flags are raised while a cell runs; cross-cell flags once every row is in.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Iterable

import pandas as pd


@dataclass(frozen=True)
class Flag:
    code: str
    suspects: str
    remedy: str


FLAGS: dict[str, Flag] = {f.code: f for f in (
    Flag("eps-rise", "robust accuracy rises with ε for this model, attack, defense and mode: the attack is not "
         "finding the worst case (gradient masking, or a step size that overshoots)",
         "use more steps or PGD with random restarts; check that ε and the step size fit together"),
    Flag("adaptive-weaker", "the adaptive attack leaves more accuracy than the oblivious one: its gradient through the "
         "defense is wrong or masked", "try the other adaptive method (bpda / diff), more steps, or more eot_samples"),
    Flag("zero-grad", "the attacked model returns all-zero input gradients on the first batch: gradient masking or a "
         "non-differentiable step in the attack path", "attack through BPDA (adaptive-bpda) or a smooth surrogate"),
    Flag("short-delta", "the largest measured ‖δ‖ (in the attack's norm: L∞ or L2) is far below ε (under half): the "
         "attack did not use its budget (vanishing gradients, saturated softmax, or too small a step)",
         "raise the step size (alpha / lr) or the number of steps"),
    Flag("defense-breaks-clean", "the defense changes the clean prediction of most images: its robust accuracy "
         "measures a broken classifier, not a defended one", "use a milder setting (higher JPEG quality)"),
    Flag("non-finite", "the model returned NaN or inf logits", "check the weights and the precision (fp16 overflow)"),
)}


def join(codes: Iterable[str]) -> str:
    return ",".join(dict.fromkeys(c for c in codes if c))


def split(text: Any) -> list[str]:
    return [c for c in str(text).split(",") if c] if isinstance(text, str) else []


def cell_flags(*, zero_grad: bool, delta: float, eps: float | None, clean_changed: float) -> list[str]:
    """Flags one cell can raise on its own. ``delta`` is the largest measured perturbation in the
    norm ``eps`` bounds."""
    out = []
    if zero_grad:
        out.append("zero-grad")
    if eps is not None and not math.isnan(eps) and delta < 0.5 * eps:
        out.append("short-delta")
    if clean_changed > 0.5:
        out.append("defense-breaks-clean")
    return out


def cross_cell_flags(df: pd.DataFrame) -> dict[str, list[str]]:
    """Flags that need several cells: cell_id → codes."""
    out: dict[str, list[str]] = {}
    ok = df[df["status"] == "ok"]
    keys = ["model", "attack", "defense", "eval_mode", "device", "precision"]
    for _, group in ok[ok["eps"].notna()].groupby(keys):
        group = group.sort_values("eps")
        acc = group["robust_acc"].tolist()
        for i in range(1, len(acc)):
            if acc[i] > acc[i - 1]:
                out.setdefault(group["cell_id"].iloc[i], []).append("eps-rise")
    oblivious = ok[ok["eval_mode"] == "oblivious"].set_index(["model", "attack", "eps", "defense", "device", "precision"])
    for _, row in ok[ok["eval_mode"] != "oblivious"].iterrows():
        key = (row["model"], row["attack"], row["eps"], row["defense"], row["device"], row["precision"])
        if key in oblivious.index and row["robust_acc"] > oblivious.loc[key, "robust_acc"]:
            out.setdefault(row["cell_id"], []).append("adaptive-weaker")
    return out


def apply_cross_cell(rows: list[dict[str, Any]], df: pd.DataFrame) -> None:
    """Add the cross-cell flags to the rows, in place."""
    extra = cross_cell_flags(df)
    for row in rows:
        if row["cell_id"] in extra:
            row["flags"] = join(split(row.get("flags")) + extra[row["cell_id"]])
