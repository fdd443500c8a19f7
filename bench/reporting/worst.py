""""Worst case over all attacks": per model, defense and ε, the images no attack broke."""

from __future__ import annotations

import json

import pandas as pd

from bench.reporting.text import pct
from bench.specs import format_eps


def worst_case_section(worst: pd.DataFrame) -> str:
    """The worst case per (model, defense) and ε, then which attack broke images first and what each
    attack broke alone."""

    w = worst.copy()
    w["ε"] = [f"{n} {format_eps(e)}" if w["norm"].nunique() > 1 else format_eps(e) for n, e in zip(w["norm"], w["eps"])]
    extra = [c for c in ("device", "precision") if w[c].nunique() > 1]
    # every cell behind it flagged unreliable: no attack of the ensemble is known to have worked, an upper bound
    bound = [bool(n) and u == n for u, n in zip(w["unreliable_cells"].fillna(0), w["cells"].fillna(0))]
    w["cell"] = [f"{'≤ ' if b else ''}{100 * v:.1f} % [{100 * a:.0f}–{100 * c:.0f}]" for v, a, c, b in
                 zip(w["worst_case_acc"], w["worst_case_acc_ci_low"], w["worst_case_acc_ci_high"], bound)]
    table = w.pivot_table(index=["model", "defense", *extra], columns="ε", values="cell", aggfunc="first", sort=False)
    table = table[list(dict.fromkeys(w["ε"]))].fillna("–").reset_index()
    table.columns.name = None
    strongest, contributions = [], []
    for _, r in w.iterrows():
        where = {"model": r["model"], "defense": r["defense"], **{c: r[c] for c in extra}, "ε": r["ε"]}
        strongest.append({**where, "worst case": pct(r["worst_case_acc"]),
                          "strongest single cell": f"{r['strongest']}: {pct(r['strongest_acc'])}" if isinstance(r["strongest"], str) else "–"})
        first, only = json.loads(r["broke_first"]), json.loads(r["only_broken_by"])
        for attack in dict.fromkeys([*first, *only]):
            if first.get(attack) or only.get(attack):
                contributions.append({**where, "attack": attack, "broke first": first.get(attack, 0) or "–",
                                      "only it broke": only.get(attack, 0) or "–"})
    notes = []
    if (w["cells_not_ok"] > 0).any():
        notes.append("Some attacks failed or were skipped: their worst case misses them (column cells_not_ok in worst_case.parquet).")
    if any(bound):
        notes.append("≤: every attack behind this worst case is flagged unreliable (Can these numbers be trusted?): "
                     "it is at best an upper bound, and no gain computed from it is established.")
    elif (w["unreliable_cells"] > 0).any():
        notes.append("Cells flagged unreliable are part of these ensembles: where every attack fails the same way, the worst case is too high as well.")
    if (w["worst_case_acc_all_draws"] != w["worst_case_acc"]).any():
        notes.append("With a randomized defense drawn several times per image, worst_case_acc_all_draws in worst_case.parquet "
                     "counts an image only if it survives every draw of every attack.")
    return "\n\n".join([
        table.to_markdown(index=False),
        "Share of the n images classified correctly without attack and left correctly classified by every attack of the suite "
        "— every attack, every mode (oblivious and adaptive) and every smaller ε of the same norm — with its 95 % Wilson "
        "interval (AutoAttack's and RobustBench's robust accuracy). A minimum-norm attack counts at every ε of its norm with the images it broke within that ε; other attacks without a budget are not part of it. "
        "Written to worst_case.parquet (per image: worst_case_images.parquet).",
        pd.DataFrame(strongest).to_markdown(index=False),
        "What each attack added (images; an attack that broke none first and none alone is left out):",
        pd.DataFrame(contributions).to_markdown(index=False) if contributions else "No attack broke an image.",
        "'broke first': the first attack that broke each image, in the order ε ascending, then the suite's attack order, "
        "then oblivious, bpda, diff ('clean': misclassified without attack). 'only it broke': images no other attack of "
        "the ensemble broke (with `cascade: true` an image is attacked until one attack breaks it, so there this is "
        "'broke first' again; 'strongest single cell' is not shown, as a cascaded row counts images it never attacked).",
        *notes])
