""""Can these numbers be trusted?": the cells an indicator of attack failure flagged, with its evidence and what to
try; and the flags section."""

from __future__ import annotations

import json
from typing import Any

import pandas as pd

from bench.audit.stats import format_p
from bench.reporting.text import pct
from bench.specs import format_eps

TRUST_ROWS = 40  # unreliable cells listed in the trust section before "… and N more"


def _evidence(code: str, ev: dict[str, Any], row: Any) -> str:
    """A few words of what an indicator saw in this cell, from the row's ``indicators`` JSON."""
    get = ev.get
    return {
        "silent-success": f"{get('silent_success_images')} image(s) reached the goal at a query, not at the returned point",
        "incomplete-optimization": f"{get('still_improving_images')} of {get('judged_for_improvement')} unbroken image(s) still improving",
        "transfer-failure": f"{get('transfer_failure_images')} image(s) fool the surrogate only",
        "unavailable-gradients": ("all-zero gradients on the first batch" if get("first_batch_zero_gradient") else
                                  f"zero or non-finite gradients on {get('dead_gradient_images')} image(s)"),
        "unstable-predictions": f"repeat difference {get('repeat_difference')}, loss spread {get('loss_spread')}",
        "shattered-gradients": f"gradient cosine {get('gradient_cosine')}",
        "unconstrained-fails": (f"unbounded attack broke {pct(get('unconstrained_success'))} of {get('unconstrained_images')}"
                                if get("unconstrained_success") is not None else f"broke {pct(row.get('attack_success_rate'))}"),
        "softmax-output": "outputs are probabilities",
        "clean-at-chance": f"chance {pct(get('chance_accuracy'))} (the model without defense)",
        "eps-rise": (f"{pct(get('eps_rise', {}).get('accuracy_here'))} here, {pct(get('eps_rise', {}).get('accuracy_there'))} "
                     f"at ε {format_eps(get('eps_rise', {}).get('smaller_eps'))}" if get("eps_rise") else "more accuracy at a larger ε"),
        "adaptive-weaker": (f"{pct(get('adaptive_weaker', {}).get('adaptive_accuracy'))} against the oblivious attack's "
                            f"{pct(get('adaptive_weaker', {}).get('oblivious_accuracy'))}" if get("adaptive_weaker")
                            else "more accuracy than the oblivious attack"),
        "black-box-stronger": (f"{get('black_box_only_images')} image(s) only a black-box attack broke"
                               if get("black_box_only_images") else "a black-box attack broke images it left standing"),
        "implementations-disagree": "; ".join(
            f"{pct(d.get('robust_acc'))} here, {pct(d.get('other_robust_acc'))} with {d.get('other')} "
            f"({d.get('only_other_broke')} image(s) only it broke, {d.get('only_this_broke')} only this one; p {format_p(d.get('p'))})"
            for d in (get("implementations_disagree") or [])) or "another library's implementation broke more images",
        "ensemble-weaker": "; ".join(f"`{name}` broke {n} image(s) it left standing"
                                     for name, n in (get("weaker_than") or {}).items()) or "another attack broke more",
        "weaker-than-another": "; ".join(f"`{name}` broke {n} image(s) it left standing"
                                         for name, n in (get("weaker_than") or {}).items()) or "another attack broke more",
        "short-delta": f"max ‖δ‖∞ {255 * row.get('linf_max', float('nan')):.1f}/255",
        "non-finite": "NaN or inf logits",
    }.get(code, "")


def trust_section(df: pd.DataFrame) -> str:
    """Each unreliable cell, its indicators with what they saw, and what to try; or why the numbers
    can be trusted as far as the indicators tell."""

    from bench.audit.flags import FLAGS, split, verdict

    ok = df[df["status"] == "ok"]
    if ok.empty:
        return "No cell ran, so there is nothing to trust yet."
    # a table written before the verdict column (or rebuilt without it): the verdict its flags give
    given = ok["verdict"] if "verdict" in ok else pd.Series([None] * len(ok), index=ok.index, dtype=object)
    attacked = ok["n_attacked"] if "n_attacked" in ok else pd.Series([None] * len(ok), index=ok.index)
    verdicts = ["" if not pd.isna(a) and a == 0 else v if isinstance(v, str) and v else verdict(split(f))
                for v, f, a in zip(given, ok["flags"], attacked)]  # a cell that attacked nothing: nothing to judge
    bad = ok[[v == "unreliable" for v in verdicts]]
    checked = [c for c, f in FLAGS.items() if f.unreliable and c != "zero-grad"]
    judged = "indicators" in ok and bool(ok["indicators"].notna().any())
    if bad.empty and not judged:
        return ("Not known: this run was made before the indicators of attack failure existed, and none of its flags "
                "marks a cell unreliable. Run the suite again to have its numbers checked.")
    idle = int((ok["n_attacked"].fillna(-1) == 0).sum()) if "n_attacked" in ok else 0
    idle_note = (f" {idle} of them attacked no image (a cascade: every image was already broken or misclassified), so "
                 "there was nothing to judge there." if idle else "")
    if bad.empty:
        return (f"As far as the indicators of attack failure can tell, yes: none fired on the {len(ok)} cells that ran "
                f"({', '.join(checked)}). They catch the known ways an attack fails; they do not prove robustness.{idle_note}")
    rows, fired = [], {}
    for _, r in bad.head(TRUST_ROWS).iterrows():
        try:
            ev = json.loads(r["indicators"]) if isinstance(r.get("indicators"), str) else {}
        except ValueError:
            ev = {}
        codes = [c for c in split(r["flags"]) if c in FLAGS and FLAGS[c].unreliable]
        for c in codes:
            fired.setdefault(c, 0)
        cell = " · ".join([r["model"], r["attack"], format_eps(r["eps"]), r["defense"], r["eval_mode"]])
        rows.append(f"- `{cell}`, robust accuracy {pct(r['robust_acc'])}: "
                    + "; ".join(f"**{c}**: {_evidence(c, ev, r)}".rstrip(": ") for c in codes))
    for codes in bad["flags"]:
        for c in split(codes):
            if c in FLAGS and FLAGS[c].unreliable:
                fired[c] = fired.get(c, 0) + 1
    lines = [f"**No, not all of them: {len(bad)} of {len(ok)} cells are unreliable** — an indicator of attack failure "
             "fired, so their robust accuracy is at best an upper bound. The worst case over all attacks (next section) "
             f"is the number to read; where every attack fails the same way, it is too high as well.{idle_note}", "", *rows]
    if len(bad) > TRUST_ROWS:
        lines.append(f"\n… and {len(bad) - TRUST_ROWS} more (results.parquet: columns verdict, flags, indicators).")
    lines += ["", "What each indicator suspects, and what to try:", ""]
    lines += [f"- **{c}** ({fired[c]} cells): {FLAGS[c].suspects}. Try: {FLAGS[c].remedy}." for c in fired]
    return "\n".join(lines)


def flags_section(df: pd.DataFrame) -> str:
    from bench.audit.flags import FLAGS, split

    found: dict[str, list[str]] = {}
    for cell_id, text in zip(df["cell_id"], df["flags"] if "flags" in df else []):
        for code in split(text if isinstance(text, str) else None):
            found.setdefault(code, []).append(cell_id)
    if not found:
        return "No flag was raised."
    lines = []
    for code, cells in found.items():
        flag = FLAGS[code]
        shown = ", ".join(f"`{c}`" for c in cells[:3]) + (f", … {len(cells) - 3} more" if len(cells) > 3 else "")
        lines.append(f"- **{code}** ({len(cells)} cells: {shown}). Suspect: {flag.suspects}. Try: {flag.remedy}.")
    return "\n".join(lines)
