""""Implementations side by side": the same attack from two libraries on the same images."""

from __future__ import annotations

import pandas as pd

from bench.audit.stats import format_p
from bench.reporting.text import pct


def implementations_section(df: pd.DataFrame, predictions: pd.DataFrame | None) -> str | None:
    """The same attack from two libraries on the same images (bench/audit/crosscheck.py), a row per pair."""
    from bench.audit.crosscheck import DISAGREE_P, comparisons

    table = comparisons(df, predictions)
    if table.empty:
        return None
    rows = []
    for _, r in table.iterrows():
        where = r["defense"] + ("" if r["eval_mode"] == "oblivious" else f" ({r['eval_mode'].removeprefix('adaptive-')})")
        rows.append({"model": r["model"], "defense": where, "attack": r["family"],
                     "A": f"{r['attack_a']} ({r['source_a']}) {pct(r['robust_acc_a'])}",
                     "B": f"{r['attack_b']} ({r['source_b']}) {pct(r['robust_acc_b'])}",
                     "both broke": int(r["both_broke"]), "only A": int(r["only_a"]), "only B": int(r["only_b"]),
                     "p": format_p(r["p"]), "": "agree" if r["agree"] else "**disagree**"})
    text = pd.DataFrame(rows).to_markdown(index=False)
    return (f"Each pair runs the same attack family and budget (same ε, steps, step size and random start) from two "
            f"libraries, on the same images of the same model: robust accuracy of each, the images both broke and those "
            f"only one broke, and McNemar's exact test on those. p < {DISAGREE_P} is a disagreement: the weaker one is "
            f"flagged `implementations-disagree`.\n\n" + text)
