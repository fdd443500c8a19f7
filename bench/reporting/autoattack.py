""""AutoAttack: the authors' code, the number to cite": the authors' figure, torchattacks' beside it, AutoAttack's log."""

from __future__ import annotations

import json

import pandas as pd

from bench.audit.stats import format_p
from bench.reporting.text import pct, with_ci
from bench.specs import format_eps


def autoattack_section(df: pd.DataFrame, predictions: pd.DataFrame | None) -> str | None:
    """Each cell of the authors' AutoAttack (bench/attacks/autoattack_attacks.py): its robust accuracy, beside
    torchattacks' re-implementation of the same version, norm and ε on the same cell where the run has it
    (paired: the images only one of them broke, McNemar's p), and the ensemble's own log, robust accuracy
    after each of its attacks, read off the per-image record of which attack broke which image."""

    from bench.attacks import family
    from bench.attacks.autoattack_attacks import ORDER
    from bench.audit.stats import mcnemar

    ok = df[df["status"] == "ok"]
    if "attack_source" not in ok or not (ok["attack_source"] == "autoattack").any():
        return None

    def key(r) -> tuple:
        args = json.loads(r["attack_args"]) if isinstance(r.get("attack_args"), str) else {}
        return (r["model"], r["defense"], r["eval_mode"], r["device"], r["precision"], family(str(r["attack_type"]), args))

    by_cell = ({cid: g.set_index("image").sort_index() for cid, g in predictions.groupby("cell_id")}
               if predictions is not None and not predictions.empty else {})
    theirs = {key(r): r for r in ok[(ok["attack_source"] == "torchattacks") & (ok["attack_type"] == "autoattack")].to_dict("records")}
    rows, logs = [], []
    for r in ok[ok["attack_source"] == "autoattack"].to_dict("records"):
        where = r["defense"] + ("" if r["eval_mode"] == "oblivious" else f" ({r['eval_mode'].removeprefix('adaptive-')})")
        other = theirs.get(key(r))
        bound = r.get("verdict") == "unreliable"  # an indicator fired: no figure to cite, an upper bound
        row = {"model": r["model"], "defense": where, "ε": format_eps(r["eps"]), "norm": r["norm"],
               "version": str(r["attack_type"]).split("/", 1)[1],
               "authors'": ("≤ " if bound else "") + with_ci(pd.DataFrame([r]), "robust_acc").iloc[0],
               "torchattacks'": pct(other["robust_acc"]) if other else "–", "only authors' broke": "–",
               "only torchattacks' broke": "–", "p": "–"}
        mine = by_cell.get(r["cell_id"])
        if other and mine is not None and other["cell_id"] in by_cell:
            theirs_p = by_cell[other["cell_id"]]
            right = (mine["clean_pred"] == mine["label"]) & mine["attacked"] & theirs_p["attacked"]
            a, b = right & (mine["robust_pred"] != mine["label"]), right & (theirs_p["robust_pred"] != theirs_p["label"])
            row.update({"only authors' broke": int((a & ~b).sum()), "only torchattacks' broke": int((b & ~a).sum()),
                        "p": format_p(mcnemar(int((a & ~b).sum()), int((b & ~a).sum())))})
        row["verdict"] = (f"unreliable ({r.get('flags')})" if bound else r.get("verdict") or "–")
        rows.append(row)
        if mine is not None and "broken_by" in mine:
            version = str(r["attack_type"]).split("/", 1)[1]
            args = json.loads(r["attack_args"]) if isinstance(r.get("attack_args"), str) else {}
            order = ORDER.get(version) or tuple(args.get("attacks") or ())
            standing, n, done, steps = (mine["clean_pred"] == mine["label"]), len(mine), set(), []
            for name in order:
                done.add(name)
                steps.append(f"after {name.upper()} {pct((standing & ~mine['broken_by'].isin(done).fillna(False)).sum() / n)}")
            logs.append(f"- `{r['cell_id']}`: initial accuracy {pct(standing.sum() / n)}; robust accuracy " + ", ".join(steps))
    text = ("The authors' AutoAttack (Croce & Hein; `autoattack/<version>`, their code from `pyautoattack`) is the one "
            "RobustBench's leaderboard and the papers that cite it run: read this figure. torchattacks' `autoattack` re-implements "
            "it with 10 iterations where the authors' APGD-CE, APGD-T and FAB-T take 100, and "
            "leaves standing images the authors' code breaks; where the run has both on the same cell, it stands beside it, "
            "with the images only one of them broke and McNemar's exact p. ≤: an indicator of attack failure fired on the "
            "cell (verdict column; e.g. `ensemble-weaker`: another attack of the suite broke images it left), so the "
            "figure is at best an upper bound — cite the worst case over all attacks instead."
            "\n\n" + pd.DataFrame(rows).to_markdown(index=False))
    if logs:
        text += ("\n\nAutoAttack's own log, per cell (images broken after 8-bit quantisation and the defense, by the "
                 "attack of the ensemble whose output they are):\n\n" + "\n".join(logs))
    return text
