"""``bench compare BASELINE CANDIDATE``: what changed between two runs, cell by cell.

Cells are matched by their spec (the cell id names model, attack, ε, defense, mode, device and
precision). A rate regresses when it moves the bad way and its 95 % Wilson intervals no longer
overlap, or when it moves the bad way by more than an absolute threshold the user sets. A
throughput regresses when candidate / baseline falls below a ratio (default 0.9). Cells missing
from the candidate count as regressions (a nightly that silently loses cells must shout); added
cells are listed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from bench.results import TABLE_FILE, load_run

# rate → +1 when higher is better for the defender, -1 when higher is worse
RATES = {"clean_acc": +1, "robust_acc": +1, "attack_success_rate": -1, "targeted_success_rate": -1}
THROUGHPUTS = ("attack_images_per_s", "clean_images_per_s")


@dataclass
class Comparison:
    markdown: str
    regressions: int


def _load(path: str | Path) -> pd.DataFrame:
    path = Path(path)
    if path.is_dir() and (path / TABLE_FILE).exists():
        return load_run(path)[0]
    if path.suffix == ".parquet" and path.exists():
        return pd.read_parquet(path)
    raise FileNotFoundError(f"{path}: not a run folder (with {TABLE_FILE}) or a results .parquet file")


def _fmt(x: float, pct: bool = True) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    return f"{100 * x:.1f} %" if pct else f"{x:.2f}"


def compare(baseline: str | Path, candidate: str | Path, abs_threshold: float | None = None,
            min_throughput_ratio: float = 0.9) -> Comparison:
    base, cand = _load(baseline), _load(candidate)
    base = base[base["status"] == "ok"].set_index("cell_id")
    cand_all = cand.set_index("cell_id")
    cand = cand_all[cand_all["status"] == "ok"]
    lines = ["# bench compare", "", f"Baseline `{baseline}`, candidate `{candidate}`.", ""]
    rows, regressions = [], 0
    for cell_id in base.index.intersection(cand.index):
        b, c = base.loc[cell_id], cand.loc[cell_id]
        for rate, good in RATES.items():
            if pd.isna(b[rate]) or pd.isna(c[rate]):
                continue
            delta = c[rate] - b[rate]
            worse = delta * good < 0
            separated = (c[f"{rate}_ci_high"] < b[f"{rate}_ci_low"]) or (c[f"{rate}_ci_low"] > b[f"{rate}_ci_high"]) \
                if f"{rate}_ci_low" in c.index and f"{rate}_ci_low" in b.index else False
            beyond = abs_threshold is not None and abs(delta) > abs_threshold
            if delta == 0:
                continue
            verdict = "regression" if worse and (separated or beyond) else ("improvement" if not worse and (separated or beyond) else "noise")
            regressions += verdict == "regression"
            rows.append({"cell": cell_id, "metric": rate, "baseline": _fmt(b[rate]), "candidate": _fmt(c[rate]),
                         "Δ (points)": f"{100 * delta:+.1f}", "verdict": verdict})
        for tp in THROUGHPUTS:
            if pd.isna(b.get(tp)) or pd.isna(c.get(tp)) or b[tp] <= 0:
                continue
            ratio = c[tp] / b[tp]
            if ratio < min_throughput_ratio:
                regressions += 1
                rows.append({"cell": cell_id, "metric": tp, "baseline": _fmt(b[tp], False), "candidate": _fmt(c[tp], False),
                             "Δ (points)": f"×{ratio:.2f}", "verdict": "regression"})
    missing = sorted(set(base.index) - set(cand.index))
    missing_ok = [m for m in missing if m in cand_all.index]  # ran but is no longer ok
    added = sorted(set(cand.index) - set(base.index))
    regressions += len(missing)
    changed = [r for r in rows if r["verdict"] != "noise"]
    lines.append(f"**{regressions} regression(s)** across {len(base.index.intersection(cand.index))} matched cells; "
                 f"{len(missing)} missing, {len(added)} added. Rates regress when their 95 % intervals separate"
                 + (f" or they move the bad way by more than {100 * abs_threshold:.1f} points" if abs_threshold is not None else "")
                 + f"; throughput regresses below ×{min_throughput_ratio:.2f}.")
    if changed:
        lines += ["", "## Changes beyond noise", "", pd.DataFrame(changed).to_markdown(index=False)]
    noise = [r for r in rows if r["verdict"] == "noise"]
    if noise:
        lines += ["", f"{len(noise)} other rate change(s) stay inside the intervals (noise)."]
    if missing:
        lines += ["", "## Missing from the candidate", ""] + [
            f"- `{m}`" + (f" (now {cand_all.loc[m, 'status']}: {cand_all.loc[m, 'reason']})" if m in missing_ok else "") for m in missing]
    if added:
        lines += ["", "## Added in the candidate", ""] + [f"- `{a}`" for a in added]
    return Comparison("\n".join(lines) + "\n", regressions)
