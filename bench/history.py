"""``bench history SUITE``: a suite's runs over time, and the runs where something changed.

``bench compare`` judges two runs; a nightly job makes one run a night, and a drift of a few
percent a night never trips a pairwise gate. Like airspeed velocity (asv), this reads every complete
run of a suite and looks at each series as a whole:

- **Rates** (robust accuracy per cell: model, attack, ε, defense, mode, device, precision). A step
  at run k: the median of the runs since the previous step and the median of the runs from k on
  have 95 % Wilson intervals (at the runs' n images) that do not overlap. Found by binary
  segmentation: the split whose two sides separate and whose means differ most, then each side
  again. Medians, so one odd run does not make a step; per-run intervals, not pooled ones, because
  every run scores the same images (pooling would count them again as new evidence).
- **Throughput** (attack img·steps/s, clean img/s, per device and precision). A drop at run k:
  from k on, every run is slow by the rule ``bench compare`` uses for machine noise
  (:data:`bench.compare.THROUGHPUT_RULES`: at least a share of the judged cells below a ratio of
  their median over the runs before k, cells timed under ``min_seconds`` left out), with at least
  :data:`SUSTAINED` runs on each side. A slow latest run alone is ``bench compare``'s to flag.
- A change of the suite's digest splits every series: numbers across a suite change are not
  comparable, so no step is looked for across it, and the plots break there. A cell missing from a
  run is a gap, never a zero.

Each change point names the first run after it and the commit range ``previous sha..sha``.
"""

from __future__ import annotations

import json
import math
import statistics
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import pandas as pd

from bench.compare import THROUGHPUT_RULES
from bench.results import RUN_FILE, load_run, write_atomic
from bench.specs import format_eps
from bench.stats import wilson

SUSTAINED = 2  # runs a throughput drop must last, and runs before it to judge it against
THROUGHPUTS = {"attack_steps_per_s": ("attack img·steps/s", "attack_seconds"), "clean_images_per_s": ("clean img/s", None)}
TABLE_RUNS = 12  # runs shown in the per-cell table (all are in the plots and the change points)
HISTORY_FILE = "history.md"


class HistoryError(ValueError):
    """Nothing to read (no complete run of the suite); the message says where it looked."""


@dataclass
class Run:
    run_dir: Path
    meta: dict[str, Any]
    df: pd.DataFrame

    @property
    def run_id(self) -> str:
        return self.meta["run_id"]

    @property
    def sha(self) -> str:
        return str(self.meta.get("environment", {}).get("git_sha") or "unknown")

    @property
    def digest(self) -> str:
        return str(self.meta.get("suite_digest") or "")

    @property
    def ok(self) -> pd.DataFrame:
        return self.df[self.df["status"] == "ok"]


@dataclass
class ChangePoint:
    series: str  # readable: "lite0 · pgd · 4/255 · jpeg-q50 · oblivious · cpu · fp32" or "cpu · fp32"
    metric: str  # robust_acc, attack_steps_per_s, clean_images_per_s
    run: int  # index of the first run after the step
    before: float
    after: float
    commits: str  # "sha_before..sha_after"


def load_runs(results_root: str | Path, suite: str, last: int | None = None) -> list[Run]:
    """Every complete run of ``suite`` under ``results_root``, oldest first (run ids start with a UTC
    timestamp); the ``last`` N of them when given. Interrupted and broken runs are left out."""
    folder = Path(results_root) / suite
    runs = []
    for run_dir in sorted(p for p in folder.iterdir() if (p / RUN_FILE).is_file()) if folder.is_dir() else []:
        try:
            meta = json.loads((run_dir / RUN_FILE).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if meta.get("status") == "complete":
            df, meta = load_run(run_dir)
            runs.append(Run(run_dir, meta, df))
    if not runs:
        raise HistoryError(f"no complete run of suite {suite!r} under {folder}")
    return runs[-last:] if last else runs


def segments(runs: list[Run]) -> list[range]:
    """Index ranges of consecutive runs with one suite digest."""
    out, start = [], 0
    for i in range(1, len(runs) + 1):
        if i == len(runs) or runs[i].digest != runs[start].digest:
            out.append(range(start, i))
            start = i
    return out


# ---------------------------------------------------------------------------------------------
# Series


def _long(runs: list[Run], columns: list[str], ok_only: bool = True) -> pd.DataFrame:
    """The given columns of every run's (ok) rows in one frame, with the run's index in ``run``."""
    parts = [(run.ok if ok_only else run.df)[columns].assign(run=i) for i, run in enumerate(runs)]
    return pd.concat(parts, ignore_index=True)


def rate_series(runs: list[Run], metric: str = "robust_acc") -> dict[str, list[tuple[int, int] | None]]:
    """cell id → per run (images right, images) of ``metric``, or None where the run has no ok row
    for the cell (a gap). Cells in suite order of their first appearance."""
    long = _long(runs, ["cell_id", metric, "n"]).dropna()
    long = long[long["n"] > 0]
    out: dict[str, list[tuple[int, int] | None]] = {}
    for cell_id, i, value, n in zip(long["cell_id"], long["run"], long[metric], long["n"]):
        out.setdefault(cell_id, [None] * len(runs))[i] = (round(value * int(n)), int(n))
    return out


def labels(runs: list[Run]) -> dict[str, str]:
    """cell id → "model · attack · ε · defense · mode · device · precision" (the cell id without the
    attack's argument digest)."""
    long = _long(runs, ["cell_id", "model", "attack", "eps", "defense", "eval_mode", "device", "precision"], ok_only=False)
    long = long.drop_duplicates("cell_id")
    return {row[0]: " · ".join([row[1], row[2], format_eps(row[3]), *row[4:8]])
            for row in zip(*(long[c] for c in long.columns[:8]))}


def throughput_series(runs: list[Run], metric: str) -> dict[tuple[str, str], list[dict[str, float]]]:
    """(device, precision) → per run {cell id: value} of a throughput column, over ok cells timed long
    enough to judge (``min_seconds`` of the device's rule)."""
    _, seconds_column = THROUGHPUTS[metric]
    long = _long(runs, ["cell_id", "device", "precision", metric, "n", *([seconds_column] if seconds_column else [])])
    long = long[long[metric].notna() & (long[metric] > 0)]
    seconds = long[seconds_column] if seconds_column else long["n"] / long[metric]
    minimum = long["device"].map(lambda d: _rule(d).min_seconds)
    long = long[seconds.notna() & (seconds >= minimum)]
    out: dict[tuple[str, str], list[dict[str, float]]] = {}
    for cell_id, device, precision, i, value in zip(long["cell_id"], long["device"], long["precision"], long["run"], long[metric]):
        out.setdefault((device, precision), [{} for _ in runs])[i][cell_id] = float(value)
    return out


def _rule(device: str):
    return THROUGHPUT_RULES["cuda" if str(device).startswith("cuda") else "cpu"]


# ---------------------------------------------------------------------------------------------
# Change points


def rate_steps(points: list[tuple[int, int] | None], spans: Iterable[range]) -> list[int]:
    """Runs where a rate series steps (see the module docstring), within each span (suite digest)."""
    found: list[int] = []
    for span in spans:
        present = [i for i in span if points[i] is not None]
        found += _split(points, present)
    return sorted(found)


def _split(points: list[tuple[int, int] | None], idx: list[int]) -> list[int]:
    rates = [points[i][0] / points[i][1] for i in idx]
    best, best_diff = None, 0.0
    # a step starts where the value changes: runs with the same rate on both sides of a split add nothing
    # (and a year of identical nightly rates costs no more than one)
    for j in (j for j in range(1, len(idx)) if rates[j] != rates[j - 1]):
        before, after = [points[i] for i in idx[:j]], [points[i] for i in idx[j:]]
        if not _separate(before, after):
            continue
        diff = abs(statistics.fmean(k / n for k, n in after) - statistics.fmean(k / n for k, n in before))
        if diff > best_diff:
            best, best_diff = j, diff
    if best is None:
        return []
    return _split(points, idx[:best]) + [idx[best]] + _split(points, idx[best:])


def _median_interval(side: list[tuple[int, int]]) -> tuple[float, float]:
    n = round(statistics.median(n for _, n in side))
    k = round(statistics.median(k / m for k, m in side) * n)
    return wilson(k, n)


def _separate(before: list[tuple[int, int]], after: list[tuple[int, int]]) -> bool:
    (lo_b, hi_b), (lo_a, hi_a) = _median_interval(before), _median_interval(after)
    return hi_b < lo_a or hi_a < lo_b


def throughput_drops(per_run: list[dict[str, float]], spans: Iterable[range], device: str) -> list[int]:
    """Runs from which a throughput series stays slow (see the module docstring), within each span."""
    rule = _rule(device)
    cells = sorted({c for run in per_run for c in run})
    values = np.array([[run.get(c, np.nan) for c in cells] for run in per_run], dtype=float).reshape(len(per_run), len(cells))
    found: list[int] = []
    for span in spans:
        start = span.start
        k = start + SUSTAINED  # a reference of one run would make one burst of load a "drop"
        while k <= span.stop - SUSTAINED:
            with warnings.catch_warnings():  # a cell absent from every reference run: NaN, not judged
                warnings.simplefilter("ignore", RuntimeWarning)
                reference = np.nanmedian(values[start:k], axis=0)
            if all(_slow(values[r], reference, rule) for r in range(k, span.stop)):
                found.append(k)
                start = k  # a later drop is judged against the runs after this one
                k = start + SUSTAINED
                continue
            k += 1
    return found


def _slow(run: np.ndarray, reference: np.ndarray, rule) -> bool:
    """At least ``share`` of the cells timed in both run and reference below ``min_ratio`` of the reference."""
    judged = ~np.isnan(run) & ~np.isnan(reference) & (reference > 0)
    if not judged.any():
        return False
    ratios = run[judged] / reference[judged]
    return bool((ratios < rule.min_ratio).sum() >= rule.share * len(ratios))


def change_points(runs: list[Run]) -> list[ChangePoint]:
    """Every step of every rate series and every sustained throughput drop, oldest first."""
    spans = segments(runs)
    names = labels(runs)
    found: list[ChangePoint] = []
    for cell_id, points in rate_series(runs).items():
        for k in rate_steps(points, spans):
            before = [p for p in points[_span_of(spans, k).start:k] if p is not None]
            after = [p for p in points[k:_span_of(spans, k).stop] if p is not None]
            found.append(ChangePoint(names.get(cell_id, cell_id), "robust_acc", k, _median_rate(before), _median_rate(after),
                                     _commits(runs, k, points)))
    for metric in THROUGHPUTS:
        for (device, precision), per_run in throughput_series(runs, metric).items():
            for k in throughput_drops(per_run, spans, device):
                span = _span_of(spans, k)
                before = _median_of_runs(per_run[span.start:k])
                after = _median_of_runs(per_run[k:span.stop])
                found.append(ChangePoint(f"{device} · {precision}", metric, k, before, after, _commits(runs, k)))
    return sorted(found, key=lambda c: (c.run, c.metric, c.series))


def _span_of(spans: list[range], k: int) -> range:
    return next(s for s in spans if k in s)


def _median_rate(side: list[tuple[int, int]]) -> float:
    return statistics.median(k / n for k, n in side) if side else math.nan


def _median_of_runs(runs: list[dict[str, float]]) -> float:
    """The median over runs of each run's median cell: one number for a throughput series."""
    medians = [statistics.median(r.values()) for r in runs if r]
    return statistics.median(medians) if medians else math.nan


def _commits(runs: list[Run], k: int, points: list | None = None) -> str:
    """previous sha..sha: the commits between the last run before the step (that has the series)
    and the first run after it."""
    prev = k - 1
    while points is not None and prev > 0 and points[prev] is None:
        prev -= 1
    return f"{runs[prev].sha[:12]}..{runs[k].sha[:12]}"


# ---------------------------------------------------------------------------------------------
# history.md and its plots


def write_history(runs: list[Run], out_dir: str | Path) -> Path:
    """Write ``history.md``, ``history-robust.png`` and ``history-throughput.png`` under ``out_dir``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    points = change_points(runs)
    plots = [p for p in (_plot_rates(runs, points, out_dir / "history-robust.png"),
                         _plot_throughput(runs, points, out_dir / "history-throughput.png")) if p]
    path = out_dir / HISTORY_FILE
    write_atomic(path, render(runs, points, [p.name for p in plots]).encode())
    return path


def render(runs: list[Run], points: list[ChangePoint], plot_names: list[str]) -> str:
    suite = runs[-1].meta.get("suite", "?")
    spans = segments(runs)
    lines = [f"# History — {suite}", "",
             f"{len(runs)} complete run(s), {_date(runs[0])} to {_date(runs[-1])}"
             + (f"; the suite changed {len(spans) - 1} time(s) (series break there: numbers across a suite change "
                "are not comparable)" if len(spans) > 1 else "") + ".", ""]
    lines += ["## Change points", ""]
    if points:
        rows = [{"first run after": f"#{c.run} {runs[c.run].run_id}", "series": c.series, "metric": _METRIC_NAMES[c.metric],
                 "before → after": _change_text(c), "commits": f"`{c.commits}`"} for c in points]
        lines += [pd.DataFrame(rows).to_markdown(index=False), ""]
    else:
        lines += ["None: every rate series stays inside its Wilson intervals, and no throughput stays below the "
                  "machine's noise threshold.", ""]
    lines += [_rules_text(), ""]
    for name in plot_names:
        title = "Robust accuracy over runs (bands: 95 % Wilson intervals)" if "robust" in name else \
            "Throughput over runs (median over cells)"
        lines += [f"## {title}", "", f"![{title}]({name})", ""]
    lines += ["## Robust accuracy by run", "", _rate_table(runs), ""]
    lines += ["## Runs", "", _runs_table(runs), ""]
    return "\n".join(lines)


_METRIC_NAMES = {"robust_acc": "robust accuracy", **{k: v for k, (v, _) in THROUGHPUTS.items()}}


def _change_text(c: ChangePoint) -> str:
    if c.metric == "robust_acc":
        return f"{100 * c.before:.1f} % → {100 * c.after:.1f} % ({100 * (c.after - c.before):+.1f} points)"
    return f"{c.before:.3g} → {c.after:.3g} (×{c.after / c.before:.2f})"


def _rules_text() -> str:
    rules = "; ".join(f"{kind}: {r.share:.0%} of the cells below ×{r.min_ratio} (cells timed under {r.min_seconds} s left out)"
                      for kind, r in THROUGHPUT_RULES.items())
    return ("A rate steps where the medians before and after have separate 95 % Wilson intervals; a throughput drops "
            f"where every run from there on is slow by `bench compare`'s noise rule ({rules}) against the median of the "
            f"runs before, with at least {SUSTAINED} runs on each side. "
            "Cells missing from a run are gaps (—), not zeros.")


def _date(run: Run) -> str:
    return str(run.meta.get("started_at") or run.run_id)[:19].replace("T", " ")


def _runs_table(runs: list[Run]) -> str:
    rows, previous = [], None
    for i, run in enumerate(runs):
        counts = run.df["status"].value_counts()
        wall = run.meta.get("wall_seconds")
        rows.append({"#": i, "run": run.run_id, "started": _date(run), "git sha": run.sha[:12],
                     "status": run.meta.get("status"),
                     "ok / skipped / failed": f"{counts.get('ok', 0)} / {counts.get('skipped', 0)} / {counts.get('failed', 0)}",
                     "wall time": f"{wall / 60:.1f} min" if isinstance(wall, (int, float)) else "–",
                     "suite digest": run.digest[:8] + (" **suite changed**" if previous is not None and run.digest != previous else "")})
        previous = run.digest
    return pd.DataFrame(rows).to_markdown(index=False)


def _rate_table(runs: list[Run]) -> str:
    series = rate_series(runs)
    if not series:
        return "No ok cells."
    shown = range(max(0, len(runs) - TABLE_RUNS), len(runs))
    names = labels(runs)
    rows = []
    for cell_id, points in series.items():
        row = {"cell": names.get(cell_id, cell_id)}
        for i in shown:
            row[f"#{i}"] = f"{100 * points[i][0] / points[i][1]:.1f}" if points[i] is not None else "—"
        rows.append(row)
    note = f"Robust accuracy (%) of each cell, the last {len(shown)} of {len(runs)} runs; — = no ok row in that run."
    return note + "\n\n" + pd.DataFrame(rows).to_markdown(index=False, disable_numparse=True)


def _plot_rates(runs: list[Run], points: list[ChangePoint], path: Path) -> Path | None:
    series = rate_series(runs)
    if not series:
        return None
    names = labels(runs)
    colours: dict[str, str] = {}  # a line name has one colour in every panel
    panels: dict[str, list[tuple[str, list]]] = {}
    for cell_id, pts in series.items():
        parts = names.get(cell_id, cell_id).split(" · ")
        panel = " · ".join(parts[:2]) if len(parts) > 2 else cell_id
        line = " · ".join(parts[2:]) if len(parts) > 2 else cell_id
        panels.setdefault(panel, []).append((line, pts))

    def draw(ax, lines):
        for name, pts in lines:
            colour = colours.setdefault(name, f"C{len(colours) % 10}")
            for span in segments(runs):  # one stroke per suite digest: no line across a suite change
                x = list(span)
                y = [100 * pts[i][0] / pts[i][1] if pts[i] else math.nan for i in span]  # NaN: a gap
                band = [wilson(*pts[i]) if pts[i] else (math.nan, math.nan) for i in span]
                ax.plot(x, y, marker="o", ms=3, color=colour, label=name if span.start == 0 else None)
                ax.fill_between(x, [100 * b[0] for b in band], [100 * b[1] for b in band], color=colour, alpha=0.08, linewidth=0)

    return _figure(runs, list(panels.items()), path, "robust accuracy (%)", draw, (-3, 103), points, "robust_acc")


def _plot_throughput(runs: list[Run], points: list[ChangePoint], path: Path) -> Path | None:
    colours: dict[str, str] = {}
    panels = []
    for metric, (title, _) in THROUGHPUTS.items():
        lines = []
        for (device, precision), per_run in throughput_series(runs, metric).items():
            lines.append((f"{device} · {precision}", [statistics.median(r.values()) if r else math.nan for r in per_run]))
        if lines:
            panels.append((title, lines))
    if not panels:
        return None

    def draw(ax, lines):
        for name, ys in lines:
            colour = colours.setdefault(name, f"C{len(colours) % 10}")
            for span in segments(runs):
                ax.plot(list(span), [ys[i] for i in span], marker="o", ms=3, color=colour, label=name if span.start == 0 else None)

    return _figure(runs, panels, path, "per second", draw, (0, None), points, None)


def _figure(runs: list[Run], panels: list[tuple[str, list]], path: Path, ylabel: str, draw, ylim, points, metric) -> Path:
    """Panels three to a row over the run index; a dashed line where the suite changed, a red one at
    each change point of the panel's metric."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    cols = min(3, len(panels))
    rows = -(-len(panels) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.6 * cols, 3.2 * rows), squeeze=False)
    legend: dict[str, Any] = {}
    breaks = [s.start - 0.5 for s in segments(runs)[1:]]
    for ax, (title, lines) in zip(axes.flat, panels):
        draw(ax, lines)
        for b in breaks:
            ax.axvline(b, color="0.3", linestyle="--", linewidth=1)
        wanted = metric or {"attack img·steps/s": "attack_steps_per_s", "clean img/s": "clean_images_per_s"}.get(title)
        for c in points:
            if c.metric == wanted and (metric is None or c.series.startswith(title)):
                ax.axvline(c.run - 0.5, color="red", alpha=0.5, linewidth=1)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("run #")
        ax.set_xlim(-0.5, len(runs) - 0.5)
        ax.set_ylim(*ylim)
        ax.grid(alpha=0.3)
        ax.set_ylabel(ylabel)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        for handle, label in zip(*ax.get_legend_handles_labels()):
            legend.setdefault(label, handle)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    fig.tight_layout()
    # one legend beside the panels (a line name has one colour in every panel), not over the lines
    fig.legend(list(legend.values()), list(legend), fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5))
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=110, bbox_inches="tight")
    plt.close(fig)
    tmp.replace(path)
    return path
