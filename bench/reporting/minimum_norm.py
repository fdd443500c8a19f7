""""Minimum-norm attacks": each curve read at a few ε, and its optimality."""

from __future__ import annotations

import pandas as pd

from bench.reporting.text import pct


def curves_section(df: pd.DataFrame, predictions: pd.DataFrame | None) -> str | None:
    """Each minimum-norm attack: what it broke, its median smallest perturbation, robust accuracy at a few ε read
    off its one run, and its optimality against the per-image best of every attack (bench/audit/curves.py)."""
    from bench.audit import curves

    table = curves.table(df, predictions)
    if table.empty:
        return None
    rows = []
    for _, r in table.iterrows():
        clean, d = curves.per_image(predictions, r["cell_id"])
        grid = [r["reach"] * f for f in (0.25, 0.5, 1.0)]
        unit = (lambda e: f"{255 * e:.1f}/255") if r["norm"] == "Linf" else (lambda e: f"{e:.3g}")
        where = r["defense"] + ("" if r["eval_mode"] == "oblivious" else f" ({r['eval_mode'].removeprefix('adaptive-')})")
        rows.append({"model": r["model"], "defense": where, "attack": r["attack"], "norm": r["norm"],
                     "broken": f"{r['broken']} of {r['n']}",
                     "median ‖δ‖": unit(r["median_distance"]) if r["median_distance"] == r["median_distance"] else "–",
                     **{f"ε = {f}·E": f"{pct(curves.robust_at(clean, d, e))} (ε {unit(e)})" for f, e in zip(("¼", "½", "1"), grid)},
                     "optimality": f"{r['optimality']:.2f}"})
    return ("An attack that searches the smallest perturbation gives robust accuracy at every ε from one run (an image "
            "broken with perturbation d is broken at every ε ≥ d; d measured on the 8-bit image that was evaluated). "
            "E is the largest smallest perturbation the per-image best of every attack of the same norm found; "
            "**optimality** (AttackBench's sense) is 1 when an attack's curve is that best one, 0 when it breaks "
            "nothing: (area of clean accuracy − area of its curve) / (area of clean accuracy − area of the best curve) "
            "on [0, E]. Minimum-norm attacks also join the worst case at every ε of their norm.\n\n"
            + pd.DataFrame(rows).to_markdown(index=False))
