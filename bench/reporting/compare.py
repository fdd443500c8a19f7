"""``bench compare BASELINE CANDIDATE``: what changed between two runs, cell by cell.

Cells are matched by their spec (the cell id names model, attack, ε, defense, mode, device and
precision), and so is each worst case over all attacks (``bench.audit.worst_case``: its id reads
``model/worst-case/Linf/eps=8/255/defense/device/precision``). Both runs score the same images, so
a rate change is judged as paired data: McNemar's exact test on the per-image outcomes (right in
one run, wrong in the other) gives its p-value. A rate regresses when it moves the bad way, its
p-value is below ``alpha`` (default 0.05) and it moves by more than ``abs_threshold`` (default: any
amount); an improvement likewise the other way; every other change is noise, and each one is listed
with its p-value. Without per-image predictions for both runs (a bare results .parquet, runs made
on other images) the test falls back to the 95 % Wilson intervals no longer overlapping, and the
markdown says so. Cells missing from the candidate count as regressions (a nightly that silently
loses cells must shout); added cells are listed.

Throughput (``attack_images_per_s``, ``clean_images_per_s``) is judged so that machine noise does
not cry wolf while a real slowdown still does. Noise on a shared CPU is load from other processes:
it only ever slows a timed region, it comes in bursts that hit some cells of a run and not others,
and between identical runs of the tutorial suite on a busy 2-core CPU it moved single cells from
×0.16 to ×6 and whole groups' medians down to ×0.51. A real slowdown (code, build, environment)
moves every cell the same way. Hence, per device kind (``THROUGHPUT_RULES``):

- cells are judged per group, not one by one: the cells of one (model, device, precision) and
  metric; the group regresses when at least a *share* of its cells fall below the *threshold*
  ratio candidate / baseline. CUDA: half of them below ×0.85 (the median; CUDA events on a GPU
  the run has to itself are expected to repeat far more closely than CPU timers, an assumption the
  CPU measurements above do not test).
  CPU and any other device: three quarters below ×0.6 (a burst of load slows a few cells, or a
  single phase of a run, not three quarters of the group; a 2× slowdown, ×0.5, puts every cell
  below). Slow cells of a group that did not regress are listed, but do not count.
- a cell whose timed region is shorter than ``min_seconds`` in either run (``attack_seconds`` for
  attack throughput, n / throughput for clean throughput) is left out: there one preemption or
  timer tick is a large share of the time. A group with no cell left is reported as not judged.
- ``min_throughput_ratio`` (``--min-throughput-ratio``) replaces the threshold on every device;
  the share and the short-region rule stay.

Each run's ``run.json`` (in the run folder, or beside a results .parquet) records the resolved
suite and its digest. When the digests differ the markdown opens with a warning naming the keys
that changed (``attacks[2][0].params.steps: 10 → 20``): numbers across a suite change may not be
comparable. Without a run.json the markdown says the suite could not be checked.

**The model or the evaluation.** A rate measures a model under an evaluation (attacks and their arguments, ε grid,
images, defenses, seeds). Where the two runs' evaluations differ (everything in the resolved suite but the models,
the executor and the shard size, and the images' ids), no change is called an improvement or a regression of the
model: it is "evaluation changed", listed with what changed. A worst case that rises beyond noise while the models
are the same is the evaluation getting weaker (an attack dropped or made cheaper): "weaker evaluation", counted in
``weaker_evaluation`` (``bench compare`` exits 4 for it when nothing regressed).
"""

from __future__ import annotations

import json
import math
import re
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from bench.audit import worst_case
from bench.audit.stats import format_p, paired
from bench.results import COLUMNS, RUN_FILE, TABLE_FILE, TABLE_KEYS, load_run, read_json, read_table

# rate → +1 when higher is better for the defender, -1 when higher is worse
RATES = {"clean_acc": +1, "robust_acc": +1, "attack_success_rate": -1, "targeted_success_rate": -1}
THROUGHPUTS = ("attack_images_per_s", "clean_images_per_s")

MAX_LISTED = 10  # slow cells / changed suite keys listed before "… and N more"
MAX_NOISE_LISTED = 200  # rate changes judged noise, listed before "… and N more"


@dataclass(frozen=True)
class ThroughputRule:
    """A (model, device, precision) group's throughput regresses when at least ``share`` of its
    judged cells run below ``min_ratio`` × the baseline; cells timed under ``min_seconds`` are not judged."""

    min_ratio: float
    share: float
    min_seconds: float


# Per device kind: "cuda" = cuda and cuda:N, "cpu" = everything else. CUDA: tight, the median
# decides. CPU: five identical tutorial runs on a busy shared 2-core CPU never put more than 2/3 of
# a group below ×0.6 (their worst group median was ×0.51), and a 2× slowdown puts all of it there.
# A region under 0.2 s on a CPU is a few dozen scheduler ticks; CUDA events time 10 ms exactly.
THROUGHPUT_RULES = {
    "cuda": ThroughputRule(min_ratio=0.85, share=0.5, min_seconds=0.01),
    "cpu": ThroughputRule(min_ratio=0.6, share=0.75, min_seconds=0.2),
}


@dataclass
class Comparison:
    markdown: str
    regressions: int
    weaker_evaluation: int = 0  # worst cases that rose because the evaluation changed, the model did not


def _load(path: str | Path) -> tuple[pd.DataFrame, dict[str, Any] | None]:
    """The table and the run.json (None when there is none: a bare .parquet)."""
    path = Path(path)
    if path.is_dir() and (path / TABLE_FILE).exists():
        return load_run(path)
    if path.suffix == ".parquet" and path.exists():
        meta_path = path.parent / RUN_FILE
        meta = read_json(meta_path) if meta_path.is_file() else None
        return read_table(path, COLUMNS, TABLE_KEYS), meta
    raise FileNotFoundError(f"{path}: not a run folder (with {TABLE_FILE}) or a results .parquet file")


def _folder(path: str | Path) -> Path:
    path = Path(path)
    return path if path.is_dir() else path.parent


def _outcomes(path: str | Path, df: pd.DataFrame) -> tuple[dict[str, pd.DataFrame], pd.DataFrame]:
    """Per-image outcomes of a run (:func:`bench.audit.worst_case.per_image`, its cells' and worst cases'),
    and its worst cases shaped as cells; nothing for a bare .parquet (only a run folder's own table,
    or a copy named as one, has its predictions beside it)."""
    if not (Path(path).is_dir() or Path(path).name == TABLE_FILE):
        return {}, pd.DataFrame()
    folder = _folder(path)
    loaded = worst_case.load(folder)
    outcomes = worst_case.per_image(folder, loaded[1] if loaded is not None else None)
    targets = {}  # a targeted attack's success: the robust prediction is its target
    for cid, args in zip(df["cell_id"], df["attack_args"] if "attack_args" in df else [None] * len(df)):
        try:
            targets[cid] = json.loads(args).get("target") if isinstance(args, str) else None
        except ValueError:
            targets[cid] = None
    for cid, frame in outcomes.items():
        if targets.get(cid) is not None:
            frame["targeted"] = frame["robust_pred"] == targets[cid]
    return outcomes, worst_case.as_cells(loaded[0]) if loaded is not None else pd.DataFrame()


# rate → what it counts per image in worst_case.per_image's frames
_PER_IMAGE = {"clean_acc": "clean_right", "robust_acc": "right", "attack_success_rate": "right", "targeted_success_rate": "targeted"}


def _paired_p(base_out: dict, cand_out: dict, cell_id: str, rate: str) -> float | None:
    """McNemar's p-value of a rate change of one cell, or None when the runs' per-image outcomes
    cannot be paired (missing, or not the same images)."""
    a, b, column = base_out.get(cell_id), cand_out.get(cell_id), _PER_IMAGE[rate]
    if a is None or b is None or column not in a or column not in b or not a["label"].equals(b["label"]):
        return None
    if rate == "attack_success_rate":  # a rate among the images right without attack: those right in both runs
        both = a["clean_right"] & b["clean_right"]
        a, b = a[both], b[both]
    return paired(a[column].to_numpy(), b[column].to_numpy())[2]


def _fmt(x: float, pct: bool = True) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    return f"{100 * x:.1f} %" if pct else f"{x:.2f}"


def _num(x: Any) -> float:
    """A finite float, or NaN for missing / NA / non-numeric values."""
    try:
        x = float(x)
    except (TypeError, ValueError):
        return math.nan
    return x if math.isfinite(x) else math.nan


def device_kind(device: Any) -> str:
    return "cuda" if isinstance(device, str) and device.startswith("cuda") else "cpu"


# ---------------------------------------------------------------------------------------------
# Suite check


def _short(value: Any, width: int = 40) -> str:
    text = json.dumps(value, default=str)
    return text if len(text) <= width else text[: width - 1] + "…"


def _is_pairs(x: Any) -> bool:
    """A list of [name, value] pairs (how attack params are recorded): diffed by name, not position."""
    return (isinstance(x, list) and bool(x) and all(isinstance(p, list) and len(p) == 2 and isinstance(p[0], str) for p in x)
            and len({p[0] for p in x}) == len(x))


def suite_diff(a: Any, b: Any, path: str = "") -> list[tuple[str, str]]:
    """Recursive diff of two resolved suites: (key path, "old → new") for every leaf that differs,
    e.g. ``("attacks[2][0].params.steps", "10 → 20")``; added and removed keys say so."""
    if _is_pairs(a) and _is_pairs(b):
        a, b = dict(a), dict(b)
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for key in sorted(set(a) | set(b), key=str):
            sub = f"{path}.{key}" if path else str(key)
            if key not in a:
                out.append((sub, f"added: {_short(b[key])}"))
            elif key not in b:
                out.append((sub, f"removed (was {_short(a[key])})"))
            else:
                out += suite_diff(a[key], b[key], sub)
        return out
    if isinstance(a, list) and isinstance(b, list):
        out = []
        for i in range(max(len(a), len(b))):
            sub = f"{path}[{i}]"
            if i >= len(a):
                out.append((sub, f"added: {_short(b[i])}"))
            elif i >= len(b):
                out.append((sub, f"removed (was {_short(a[i])})"))
            else:
                out += suite_diff(a[i], b[i], sub)
        return out
    return [] if a == b else [(path or "(whole suite)", f"{_short(a)} → {_short(b)}")]


def model_changes(a: Any, b: Any) -> list[str]:
    """One line per model that kept its name but not its weights (a checkpoint file, pretrained weights, or a model
    held in memory, known by its weights' digest in its arch token): the same name, another model."""
    def models(suite: Any) -> dict[str, dict]:
        entries = suite.get("models") if isinstance(suite, dict) else None
        return {m["name"]: m for m in entries or [] if isinstance(m, dict) and isinstance(m.get("name"), str)}

    ma, mb = models(a), models(b)
    out = []
    for name in [n for n in ma if n in mb]:
        was = (ma[name].get("weights"), ma[name].get("checkpoint"), ma[name].get("file"), ma[name].get("arch"))
        now = (mb[name].get("weights"), mb[name].get("checkpoint"), mb[name].get("file"), mb[name].get("arch"))
        if was != now:
            old = next((v for v in was if v), "random")
            new = next((v for v in now if v), "random")
            if old == new:  # the arch alone changed (a memory model's digest is in it)
                old, new = was[3], now[3]
            out.append(f"**Model `{name}` has other weights** ({old} → {new}): the same name, another model.")
    return out


_NOT_EVALUATION = ("models", "name", "executor", "shard_size", "unconstrained_check")  # no number depends on them
# keys that change the numbers of a cell whose id matches (the id already pins the attack's arguments, ε, the defense,
# the mode, the device and the precision); every other evaluation key changes only the ensemble behind a worst case
_CELL_KEYS = ("data", "seed", "batch_size", "eval_draws", "eot_samples", "cascade", "images")


def _top(key: str) -> str:
    return re.split(r"[.\[]", key, maxsplit=1)[0]


def evaluation_changes(base_meta: dict | None, cand_meta: dict | None) -> list[tuple[str, str]]:
    """What evaluated the models differently in the two runs: (key, change) for the resolved suite's keys other
    than the models (and the executor, the shard size), and the images when their ids differ."""
    if not base_meta or not cand_meta:
        return []
    a, b = base_meta.get("resolved_suite") or {}, cand_meta.get("resolved_suite") or {}
    if not isinstance(a, dict) or not isinstance(b, dict):
        return []
    out = suite_diff({k: v for k, v in a.items() if k not in _NOT_EVALUATION},
                     {k: v for k, v in b.items() if k not in _NOT_EVALUATION})
    ids = [(m.get("dataset") or {}).get("ids") if isinstance(m.get("dataset"), dict) else None for m in (base_meta, cand_meta)]
    if ids[0] is not None and ids[1] is not None and ids[0] != ids[1]:
        same = len(set(map(str, ids[0])) & set(map(str, ids[1])))
        out.append(("images", f"{len(ids[0])} → {len(ids[1])} images, {same} in both"))
    return out


def _suite_check(baseline: Path, candidate: Path, base_meta: dict | None, cand_meta: dict | None) -> list[str]:
    """Markdown lines (empty when both runs ran the same suite)."""
    missing = [str(p) for p, m in ((baseline, base_meta), (candidate, cand_meta)) if m is None or not m.get("suite_digest")]
    if missing:
        return ["> **The suite could not be checked:** no run.json with a suite digest for "
                + ", ".join(f"`{p}`" for p in missing) + f" (a results .parquet is checked only with its run's {RUN_FILE} "
                "beside it). The two runs may come from different suites, whose numbers may not be comparable.", ""]
    if base_meta["suite_digest"] == cand_meta["suite_digest"]:
        return []
    lines = [f"> **Warning: the suites differ** (digest `{base_meta['suite_digest'][:12]}` → "
             f"`{cand_meta['suite_digest'][:12]}`). Numbers across a suite change may not be comparable; cells "
             "whose spec changed show up as missing and added."]
    a, b = base_meta.get("resolved_suite"), cand_meta.get("resolved_suite")
    lines += [f"> {line}" for line in model_changes(a, b)]
    if a is None or b is None:
        lines.append("> The resolved suite is not recorded in both run.json files, so the changed keys cannot be named.")
    else:
        diff = suite_diff(a, b)
        lines.append(f"> Changed keys ({len(diff)}):")
        lines += [f"> - `{key}`: {change}" for key, change in diff[:MAX_LISTED]]
        if len(diff) > MAX_LISTED:
            lines.append(f"> - … and {len(diff) - MAX_LISTED} more")
    return lines + [""]


# ---------------------------------------------------------------------------------------------
# Throughput


def _timed_seconds(row: pd.Series, tp: str) -> float:
    """Length of the timed region behind a throughput (NaN when the row cannot tell)."""
    if tp == "attack_images_per_s" and not math.isnan(_num(row.get("attack_seconds"))):
        return _num(row.get("attack_seconds"))
    per_s = _num(row.get(tp))
    return _num(row.get("n")) / per_s if per_s > 0 else math.nan


def _share_text(share: float) -> str:
    return {0.5: "half", 0.75: "3/4"}.get(share, f"{100 * share:.0f} %")


def _throughput(base: pd.DataFrame, cand: pd.DataFrame, matched: list, min_ratio: float | None) -> tuple[list[dict], list[str], int]:
    """Group verdicts (table rows), notes, and the number of regressed groups."""
    groups: dict[tuple, list[tuple[str, float, float]]] = {}
    for cell_id in matched:
        b, c = base.loc[cell_id], cand.loc[cell_id]
        device = c.get("device") if isinstance(c.get("device"), str) else b.get("device")
        key = tuple(str(v) if isinstance(v, str) else "–" for v in (c.get("model"), device, c.get("precision")))
        for tp in THROUGHPUTS:
            bv, cv = _num(b.get(tp)), _num(c.get(tp))
            if math.isnan(bv) or math.isnan(cv) or bv <= 0 or cv < 0:
                continue
            timed = min(_timed_seconds(b, tp), _timed_seconds(c, tp))  # NaN (unknown) compares False: judged
            groups.setdefault(key + (tp,), []).append((cell_id, cv / bv, timed))
    table, slow, regressions = [], [], 0
    for (model, device, precision, tp), cells in groups.items():
        rule = THROUGHPUT_RULES[device_kind(device)]
        threshold = min_ratio if min_ratio is not None else rule.min_ratio
        judged = [r for _, r, t in cells if not t < rule.min_seconds]
        row = {"model": model, "device": device, "precision": precision, "metric": tp,
               "cells judged": f"{len(judged)}/{len(cells)}", "median ratio": "–", "below threshold": "–",
               "worst cell": f"×{min(r for _, r, _ in cells):.2f}",
               "rule": f"{_share_text(rule.share)} below ×{threshold:.2f}"}
        if not judged:
            row["verdict"] = f"not judged (timed regions < {rule.min_seconds:g} s)"
        else:
            below = sum(r < threshold for r in judged)
            regressed = below >= rule.share * len(judged)
            row.update({"median ratio": f"×{statistics.median(judged):.2f}", "below threshold": f"{below}/{len(judged)}",
                        "verdict": "regression" if regressed else "ok"})
            regressions += regressed
        table.append(row)
        if row["verdict"] != "regression":  # slow cells of a regressed group are covered by its row
            slow += [(r, cid, tp) for cid, r, _ in cells if r < threshold]
    notes = []
    if slow:
        slow.sort()
        notes = ["", f"{len(slow)} cell throughput(s) below the threshold in groups that did not regress "
                 "(on their own they do not count: noise slows some cells, a real slowdown slows the group):", ""]
        notes += [f"- `{cid}` {tp} ×{r:.2f}" for r, cid, tp in slow[:MAX_LISTED]]
        if len(slow) > MAX_LISTED:
            notes.append(f"- … and {len(slow) - MAX_LISTED} more")
    return table, notes, regressions


def _threshold_text(min_ratio: float | None) -> str:
    rules = []
    for kind, rule in THROUGHPUT_RULES.items():
        threshold = min_ratio if min_ratio is not None else rule.min_ratio
        rules.append(f"{'CUDA' if kind == 'cuda' else 'CPU'}: {_share_text(rule.share)} of them below "
                     f"×{threshold:.2f}, cells timed under {rule.min_seconds:g} s not judged")
    return ("throughput regresses per model/device/precision group when enough of its cells are slower ("
            + "; ".join(rules) + ")" + (" — threshold set by the caller for every device" if min_ratio is not None else ""))


# ---------------------------------------------------------------------------------------------


def compare(baseline: str | Path, candidate: str | Path, abs_threshold: float | None = None,
            min_throughput_ratio: float | None = None, alpha: float = 0.05) -> Comparison:
    """Compare two runs. ``min_throughput_ratio`` None = the per-device default; a number applies
    to every device. ``alpha``: the significance level of a rate change (McNemar's exact test)."""
    (base, base_meta), (cand, cand_meta) = _load(baseline), _load(candidate)
    base_out, base_worst = _outcomes(baseline, base)
    cand_out, cand_worst = _outcomes(candidate, cand)
    worst_note = []
    if len(base_worst) and len(cand_worst):  # worst cases compared like cells
        base = pd.concat([base, base_worst], ignore_index=True)
        cand = pd.concat([cand, cand_worst], ignore_index=True)
    elif len(base_worst) or len(cand_worst):
        worst_note = [f"Worst cases are not compared: only the {'baseline' if len(base_worst) else 'candidate'} has "
                      "per-image predictions to make them from.", ""]
    base = base[base["status"] == "ok"].set_index("cell_id")
    cand_all = cand.set_index("cell_id")
    cand = cand_all[cand_all["status"] == "ok"]
    lines = ["# bench compare", "", f"Baseline `{baseline}`, candidate `{candidate}`.", ""]
    lines += _suite_check(Path(baseline), Path(candidate), base_meta, cand_meta) + worst_note
    matched = list(base.index.intersection(cand.index))
    evaluation = evaluation_changes(base_meta, cand_meta)
    cell_evaluation = [k for k in evaluation if _top(k[0]) in _CELL_KEYS]
    same_models = not model_changes((base_meta or {}).get("resolved_suite"), (cand_meta or {}).get("resolved_suite"))
    if evaluation:
        lines += [f"> **The evaluation changed** ({len(evaluation)}: "
                  + "; ".join(f"`{k}` {v}" for k, v in evaluation[:MAX_LISTED])
                  + (f"; … and {len(evaluation) - MAX_LISTED} more" if len(evaluation) > MAX_LISTED else "")
                  + "): a worst case that moved measures the evaluation as much as the model, so none is called an "
                  "improvement or a regression of the model" + ("; one that rose with the same models is a weaker evaluation"
                                                                if same_models else "")
                  + ("; so is every cell's change (these keys change every cell's numbers)" if cell_evaluation else
                     "; a cell whose id matches was evaluated the same way and is judged as usual") + ".", ""]
    rows, regressions, unpaired, weaker = [], 0, 0, 0
    for cell_id in matched:
        b, c = base.loc[cell_id], cand.loc[cell_id]
        for rate, good in RATES.items():
            if rate not in b.index or rate not in c.index or pd.isna(b[rate]) or pd.isna(c[rate]):
                continue
            delta = c[rate] - b[rate]
            if delta == 0:
                continue
            worse = delta * good < 0
            p = _paired_p(base_out, cand_out, cell_id, rate)
            if p is None:  # not pairable: do the 95 % intervals still overlap?
                unpaired += 1
                lo, hi = f"{rate}_ci_low", f"{rate}_ci_high"
                significant = bool((c[hi] < b[lo]) or (c[lo] > b[hi])) if lo in c.index and lo in b.index else False
            else:
                significant = p < alpha
            beyond = abs_threshold is None or abs(delta) > abs_threshold
            verdict = ("regression" if worse else "improvement") if significant and beyond else "noise"
            is_worst = "/worst-case/" in str(cell_id)
            if (evaluation if is_worst else cell_evaluation) and verdict != "noise":
                worst_rose = is_worst and not worse and rate == "robust_acc"
                verdict = "weaker evaluation" if worst_rose and same_models else "evaluation changed"
                weaker += verdict == "weaker evaluation"
            regressions += verdict == "regression"
            rows.append({"cell": cell_id, "metric": rate, "baseline": _fmt(b[rate]), "candidate": _fmt(c[rate]),
                         "Δ (points)": f"{100 * delta:+.1f}", "p (McNemar)": format_p(p, "– (intervals)"), "verdict": verdict})
    tp_table, tp_notes, tp_regressions = _throughput(base, cand, matched, min_throughput_ratio)
    regressions += tp_regressions
    missing = sorted(set(base.index) - set(cand.index))
    missing_ok = [m for m in missing if m in cand_all.index]  # ran but is no longer ok
    added = sorted(set(cand.index) - set(base.index))
    regressions += len(missing_ok)  # it ran and is no longer ok: always a regression
    gone = [m for m in missing if m not in missing_ok]
    if evaluation:  # a cell the evaluation no longer has (an attack dropped): the evaluation's loss; one whose
        # attack arguments changed (same name, another @hash in its id) is a changed evaluation, judged above by the worst case
        renamed = {re.sub(r"@[0-9a-f]+/", "/", str(a)) for a in added}
        weaker += sum(re.sub(r"@[0-9a-f]+/", "/", str(m)) not in renamed for m in gone)
    else:
        regressions += len(gone)
    changed = [r for r in rows if r["verdict"] != "noise"]
    if weaker:
        lines.append(f"**The evaluation is weaker in {weaker} place(s)** (worst cases that rose with the same models, "
                     "cells the candidate no longer has): the evaluation regressed, not the model improved.")
    lines.append(f"**{regressions} regression(s)** across {len(matched)} matched cells and worst cases; "
                 f"{len(missing)} missing, {len(added)} added. A rate regresses when it moves the bad way"
                 + (f" by more than {100 * abs_threshold:.1f} points" if abs_threshold is not None else "")
                 + f" and McNemar's exact test on the per-image outcomes gives p < {alpha:g}"
                 + (f" ({unpaired} change(s) without per-image outcomes for both runs: judged by their 95 % intervals separating)"
                    if unpaired else "") + f"; {_threshold_text(min_throughput_ratio)}.")
    if changed:
        lines += ["", "## Changes beyond noise", "", pd.DataFrame(changed).to_markdown(index=False)]
    noise = [r for r in rows if r["verdict"] == "noise"]
    if noise:
        shown = noise[:MAX_NOISE_LISTED]
        lines += ["", f"## Changes judged noise ({len(noise)})", "",
                  "Not significant at this level" + (" or within the points threshold" if abs_threshold is not None else "")
                  + ": listed so a change is never silent.", "", pd.DataFrame(shown).to_markdown(index=False)]
        if len(noise) > MAX_NOISE_LISTED:
            lines.append(f"\n… and {len(noise) - MAX_NOISE_LISTED} more")
    if tp_table:
        lines += ["", "## Throughput (candidate / baseline)", "", pd.DataFrame(tp_table).to_markdown(index=False)] + tp_notes
    if missing:
        lines += ["", "## Missing from the candidate", ""] + [
            f"- `{m}`" + (f" (now {cand_all.loc[m, 'status']}: {cand_all.loc[m, 'reason']})" if m in missing_ok else "") for m in missing]
    if added:
        lines += ["", "## Added in the candidate", ""] + [f"- `{a}`" for a in added]
    return Comparison("\n".join(lines) + "\n", regressions, weaker)
