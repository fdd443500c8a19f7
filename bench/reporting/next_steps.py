""""What next": cells to enable, attacks to add, indicators to act on."""

from __future__ import annotations

from typing import Any

import pandas as pd


def what_next(df: pd.DataFrame, meta: dict[str, Any]) -> list[str]:
    """A few bullets on what would make this run say more: cells to enable, attacks to add, indicators to act on."""
    from bench.audit.flags import split

    suite_file = meta.get("suite_file") or f"suites/{meta.get('suite', 'SUITE')}.yaml"
    out = []
    for reason, group in df[df["status"] == "skipped"].groupby("reason", sort=False):
        out.append(f"- {len(group)} cell(s) skipped ({', '.join(dict.fromkeys(group['model']))}): {reason}")
    failed = df[df["status"] == "failed"]
    if len(failed):
        out.append(f"- {len(failed)} cell(s) failed (reasons above, tracebacks in the run folder's run.log): fix, then "
                   f"`bench run {suite_file} --retry-failed` runs only those again.")
    ok = df[df["status"] == "ok"]
    defended = ok[ok["defense"] != "none"]
    if len(defended) and (defended["eval_mode"] == "oblivious").all():
        out.append("- The defenses were attacked obliviously only (the attack never saw them): add `eval_mode: [oblivious, "
                   "adaptive]` (as suites/tutorial-adaptive.yaml does) before trusting what a defense seems to buy.")
    bounded = ok[ok["eps"].notna()]
    if len(bounded) and bounded.groupby(["model", "eps"])["attack"].nunique().max() < 2:
        out.append("- One attack per ε: add a second family (apgd with loss: dlr, square) for a worst case over attacks.")
    unreliable = int((ok.get("verdict", pd.Series(dtype=str)) == "unreliable").sum()) if "verdict" in ok else 0
    if unreliable:
        out.append(f"- {unreliable} cell(s) unreliable: \"Can these numbers be trusted?\" above says what each indicator saw "
                   "and what to try.")
    if any("implementations-disagree" in split(f) for f in ok["flags"]):
        out.append("- Two libraries disagree on the same attack (Implementations side by side): trust the stronger, and "
                   "compare their defaults.")
    return out
