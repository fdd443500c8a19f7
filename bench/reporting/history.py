"""``bench history SUITE``: a suite's runs over time, and the runs where something changed.

``bench compare`` judges two runs; a nightly job makes one run a night, and a drift of a few
percent a night never trips a pairwise gate. Like airspeed velocity (asv), this reads every complete
run of a suite and looks at each series as a whole. At every run k of a series, the up to
:data:`WINDOW` runs before k are compared with the up to WINDOW runs from k on (at least
:data:`MIN_SIDE` runs with data on each side, so one odd run — first, last or anywhere — is never a
change point, and a change is judged against its neighbourhood, so a dip that recovers shows both
edges). A change makes its neighbours candidates too; of each stretch of candidates the one with the
largest effect on the windows' means is kept.

- **Rates** (robust accuracy per cell: model, attack, ε, defense, mode, device, precision; and each
  worst case over all attacks, ``bench.audit.worst_case``): every run scores the same images, so a step is
  judged on paired data. Each window's per-image outcome is the majority over its runs; a step at k
  when McNemar's exact test between the two windows' outcomes gives p < :data:`ALPHA`. Where a run
  of the windows has no per-image predictions (older runs), the rule falls back to the medians of
  the two windows having 95 % Wilson intervals (at one run's n images) that do not overlap.
- **Throughput** (attack img·steps/s, clean img/s) per (model, device, precision) group, as
  ``bench compare`` groups cells (and per device name, so a new GPU is a new series): a drop at k
  when, per cell, the median of the window from k over the median of the window before is below the
  ratio of ``bench compare``'s noise rule for at least its share of the cells
  (:data:`bench.reporting.compare.THROUGHPUT_RULES`; cells timed under ``min_seconds`` left out). Drops only:
  a recovery is not a regression.
- A change of the suite's digest splits every series: numbers across a suite change are not
  comparable, so no change is looked for across it, and the plots break there. A cell missing from
  a run is a gap, never a zero; a run without data in a series is skipped, not counted as unchanged.

Each change point names the first run after it and the commit range ``previous sha..sha`` (the
previous run that has the series).
"""

from __future__ import annotations

import logging
import math
import statistics
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import pandas as pd

from bench import files
from bench.audit import worst_case
from bench.audit.stats import format_p, paired, wilson
from bench.reporting.compare import THROUGHPUT_RULES
from bench.results import RUN_FILE, RunFolderError, load_run, read_json
from bench.reporting.text import wrap
from bench.specs import format_eps

ALPHA = 0.05  # significance of a rate step (McNemar's exact test on the windows' per-image outcomes)
MIN_SIDE = 3  # runs (with data) on each side of a change point: their median outvotes one odd run, first, last or anywhere
WINDOW = 5  # runs on each side whose medians are compared: a change is judged against its neighbourhood
THROUGHPUTS = {"attack_steps_per_s": ("attack img·steps/s", "attack_seconds"), "clean_images_per_s": ("clean img/s", None)}
TABLE_RUNS = 12  # runs shown in the per-cell table (all are in the plots and the change points)
HISTORY_FILE = "history.md"
log = logging.getLogger(__name__)


class HistoryError(ValueError):
    """Nothing to read (no complete run of the suite); the message says where it looked."""


@dataclass
class Run:
    run_dir: Path
    meta: dict[str, Any]
    df: pd.DataFrame  # its rows
    worst: pd.DataFrame = field(default_factory=pd.DataFrame)  # its worst cases shaped as rows (worst_case.as_cells)
    worst_images: pd.DataFrame | None = None  # and per image (worst_case.load's second table)
    _outcomes: dict[str, tuple[np.ndarray, np.ndarray]] | None = None

    def outcomes(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """cell id (or worst-case id) → (per image right or wrong, the images' labels), in image
        order; empty for a run without per-image predictions."""
        if self._outcomes is None:
            self._outcomes = {cid: (f["right"].to_numpy(dtype=bool), f["label"].to_numpy())
                              for cid, f in worst_case.per_image(self.run_dir, self.worst_images).items()}
        return self._outcomes

    @property
    def run_id(self) -> str:
        return self.meta["run_id"]

    @property
    def sha(self) -> str:
        return str((self.meta.get("environment") or {}).get("git_sha") or "unknown")

    @property
    def digest(self) -> str:
        return str(self.meta.get("suite_digest") or "")

    @property
    def ok(self) -> pd.DataFrame:
        return self.df[self.df["status"] == "ok"]

    @property
    def series(self) -> pd.DataFrame:
        """Its ok rows and its worst cases: every rate series of the run."""
        return pd.concat([self.ok, self.worst], ignore_index=True) if len(self.worst) else self.ok


@dataclass
class ChangePoint:
    series: str  # readable: "lite0 · pgd · 4/255 · jpeg-q50 · oblivious · cpu · fp32" or "cpu · fp32"
    metric: str  # robust_acc, attack_steps_per_s, clean_images_per_s
    run: int  # index of the first run after the step
    before: float
    after: float
    commits: str  # "sha_before..sha_after"
    p: float | None = None  # McNemar's p-value of a rate step (None: judged by intervals, or a throughput)


def load_runs(results_root: str | Path, suite: str, last: int | None = None) -> list[Run]:
    """Every complete run of ``suite`` under ``results_root``, oldest first (run ids start with a UTC
    timestamp); the ``last`` N of them when given. Interrupted and broken runs are left out."""
    folder = Path(results_root) / suite
    runs = []
    for run_dir in sorted(p for p in folder.iterdir() if (p / RUN_FILE).is_file()) if folder.is_dir() else []:
        try:
            if read_json(run_dir / RUN_FILE).get("status") != "complete":
                continue
            df, meta = load_run(run_dir)
            loaded = worst_case.load(run_dir)
            worst, images = (worst_case.as_cells(loaded[0]), loaded[1]) if loaded is not None else (pd.DataFrame(), None)
            run = Run(run_dir, meta, df, worst, images)
            run.outcomes()  # its per-image predictions read now, so a damaged file leaves the run out here
        except RunFolderError as exc:  # a damaged file (it names itself): the run is left out, said once
            log.warning("left out of the history: %s", exc)
            continue
        except Exception as exc:  # a run folder that cannot be read in another way: left out, said once
            log.warning("%s: left out of the history, cannot be read (%s: %s)", run_dir, type(exc).__name__, exc)
            continue
        runs.append(run)
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


def _long(runs: list[Run], columns: list[str], ok_only: bool = True, worst: bool = False) -> pd.DataFrame:
    """The given columns of every run's (ok) rows in one frame, with the run's index in ``run``; with
    ``worst``, its worst cases too."""
    parts = [(run.series if worst else run.ok if ok_only else run.df).reindex(columns=columns).assign(run=i)
             for i, run in enumerate(runs)]
    return pd.concat(parts, ignore_index=True)


def rate_series(runs: list[Run], metric: str = "robust_acc") -> dict[str, list[tuple[int, int] | None]]:
    """cell id → per run (images right, images) of ``metric``, or None where the run has no ok row
    for the cell (a gap). Cells in suite order of their first appearance."""
    long = _long(runs, ["cell_id", metric, "n"], worst=True).dropna()
    long = long[long["n"] > 0]
    out: dict[str, list[tuple[int, int] | None]] = {}
    for cell_id, i, value, n in zip(long["cell_id"], long["run"], long[metric], long["n"]):
        out.setdefault(cell_id, [None] * len(runs))[i] = (round(value * int(n)), int(n))
    return out


def labels(runs: list[Run]) -> dict[str, str]:
    """cell id → "model · attack · ε · defense · mode · device · precision" (the cell id without the
    attack's argument digest)."""
    columns = ["cell_id", "model", "attack", "eps", "defense", "eval_mode", "device", "precision"]
    long = pd.concat([_long(runs, columns, ok_only=False), _long(runs, columns, worst=True)], ignore_index=True)
    long = long.drop_duplicates("cell_id")
    # a worst case: "lite0 · worst case · 4/255 · none · cpu · fp32" (no attack, no mode)
    out = {row[0]: " · ".join([row[1], "worst case", format_eps(row[3]), row[4], *row[6:8]] if row[5] == "worst-case"
                              else [row[1], row[2], format_eps(row[3]), *row[4:8]])
           for row in zip(*(long[c] for c in long.columns[:8]))}
    # two evaluations under one attack name (its arguments changed between runs) keep apart: the attack's digest
    seen: dict[str, list[str]] = {}
    for cell_id, label in out.items():
        seen.setdefault(label, []).append(cell_id)
    for label, ids in seen.items():
        if len(ids) > 1:
            for cell_id in ids:
                parts = str(cell_id).split("/")
                attack = parts[1] if len(parts) > 1 else cell_id
                out[cell_id] = label.replace(" · ", f" · {attack} · ", 1) if "@" in attack else f"{label} · {cell_id}"
    return out


def throughput_series(runs: list[Run], metric: str) -> dict[tuple[str, ...], np.ndarray]:
    """(model, device, precision, device name) → a runs × cells array of a throughput column (NaN
    where a run has no ok row for the cell, or timed it under the device rule's ``min_seconds``).
    Grouped as ``bench compare`` groups cells; the device name keeps a new GPU from reading as a drop."""
    _, seconds_column = THROUGHPUTS[metric]
    columns = ["cell_id", "model", "device", "precision", "device_name", metric, "n", *([seconds_column] if seconds_column else [])]
    long = _long(runs, columns)
    long = long[long[metric].notna() & (long[metric].astype(float) > 0)]
    if long.empty:
        return {}
    values = long[metric].astype(float)
    seconds = long[seconds_column].astype(float) if seconds_column else long["n"].astype(float) / values
    minimum = np.array([_rule(d).min_seconds for d in long["device"]], dtype=float)
    long = long[(seconds.notna() & (seconds.to_numpy() >= minimum)).to_numpy()]
    out: dict[tuple[str, ...], np.ndarray] = {}
    for key, group in long.groupby(["model", "device", "precision", "device_name"], sort=False, dropna=False):
        cells = list(dict.fromkeys(group["cell_id"]))
        array = np.full((len(runs), len(cells)), np.nan)
        column = {c: j for j, c in enumerate(cells)}
        for cell_id, i, value in zip(group["cell_id"], group["run"], group[metric].astype(float)):
            array[i, column[cell_id]] = value
        out[tuple("" if pd.isna(k) else str(k) for k in key)] = array
    return out


def _rule(device: str):
    return THROUGHPUT_RULES["cuda" if str(device).startswith("cuda") else "cpu"]


# ---------------------------------------------------------------------------------------------
# Change points: a two-sided window at every run, the best run of each stretch of candidates


def _segment(count: int, judge) -> list[tuple[int, float, float]]:
    """Positions of change points among ``count`` runs with data: ``judge(before, after)`` (two
    ranges of positions) gives (effect, before value, after value) when they differ, else None. The
    strongest change over the whole range first, then each side again, windows never reaching across
    a change already found (two steps a few runs apart are both found, and a dip shows both edges)."""
    def search(lo: int, hi: int) -> list[tuple[int, float, float]]:  # (effects compare as tuples)
        best = None
        for j in range(lo + MIN_SIDE, hi - MIN_SIDE + 1):
            verdict = judge(range(max(lo, j - WINDOW), j), range(j, min(hi, j + WINDOW)))
            if verdict is not None and (best is None or verdict[0] > best[1][0]):
                best = (j, verdict)
        if best is None:
            return []
        j, (_, before, after) = best
        return search(lo, j) + [(j, before, after)] + search(j, hi)

    return search(0, count)


def rate_steps(points: list[tuple[int, int] | None], spans: Iterable[range],
               outcomes: list[tuple[np.ndarray, np.ndarray] | None] | None = None) -> list[tuple[int, float, float, float | None]]:
    """(run, median rate before, median rate after, p-value or None) of each step of a rate series
    (module docstring); ``outcomes`` are the runs' per-image outcomes of the series, where known."""
    found = []
    for span in spans:
        present = [i for i in span if points[i] is not None]
        if len({points[i][0] / points[i][1] for i in present}) <= 1:  # constant (the usual nightly series)
            continue

        def judge(b: range, a: range, present=present):
            before, after = [points[present[i]] for i in b], [points[present[i]] for i in a]
            p = _paired_windows(outcomes, [present[i] for i in b], [present[i] for i in a])
            if p is None and not _separate(before, after):
                return None
            if p is not None and p >= ALPHA:
                return None
            effect = _widest_effect(before, after, lambda x, y: abs(statistics.fmean(k / n for k, n in y)
                                                                     - statistics.fmean(k / n for k, n in x)))
            return effect, _median_rate(before), (_median_rate(after), p)

        found += [(present[j], before, after, p) for j, before, (after, p) in _segment(len(present), judge)]
    return found


def _paired_windows(outcomes: list[tuple[np.ndarray, np.ndarray] | None] | None, before: list[int],
                    after: list[int]) -> float | None:
    """McNemar's p-value between the per-image majority outcomes of two windows of runs, or None
    when a run of them has no per-image outcomes or the runs did not score the same images (labels)."""
    if outcomes is None:
        return None
    sides = [[outcomes[i] for i in side] for side in (before, after)]
    if any(o is None for side in sides for o in side):
        return None
    labels = sides[0][0][1]
    if any(len(o[1]) != len(labels) or not np.array_equal(o[1], labels) for side in sides for o in side):
        return None
    majority = [np.mean(np.stack([o[0] for o in side]), axis=0) >= 0.5 for side in sides]
    return paired(majority[0], majority[1])[2]


def _widest_effect(before, after, effect) -> tuple[float, float]:
    """How strongly two windows differ: first over the MIN_SIDE runs nearest the change (at the true
    change those differ most; wider windows reach past a short dip or into the next step), then over
    the whole windows (a tie-break)."""
    return effect(before[len(before) - MIN_SIDE:], after[:MIN_SIDE]), effect(before, after)


def _median_interval(side: list[tuple[int, int]]) -> tuple[float, float]:
    n = statistics.median(n for _, n in side)
    return wilson(statistics.median(k / m for k, m in side) * n, n)  # Wilson's formula takes a fractional count


def _separate(before: list[tuple[int, int]], after: list[tuple[int, int]]) -> bool:
    (lo_b, hi_b), (lo_a, hi_a) = _median_interval(before), _median_interval(after)
    return hi_b < lo_a or hi_a < lo_b


def throughput_drops(values: np.ndarray, spans: Iterable[range], device: str) -> list[tuple[int, float, float]]:
    """(run, median before, median after) of each drop of a runs × cells throughput array (module
    docstring); runs without a judged cell are skipped, not counted as fast."""
    rule = _rule(device)
    found = []
    for span in spans:
        present = [i for i in span if not np.isnan(values[i]).all()]

        def judge(b: range, a: range, present=present):
            before, after = values[[present[i] for i in b]], values[[present[i] for i in a]]
            with warnings.catch_warnings():  # a cell absent from one side: NaN, not judged
                warnings.simplefilter("ignore", RuntimeWarning)
                ref, now = np.nanmedian(before, axis=0), np.nanmedian(after, axis=0)
                judged = ~np.isnan(ref) & ~np.isnan(now) & (ref > 0)
                if not judged.any() or (now[judged] / ref[judged] < rule.min_ratio).sum() < rule.share * judged.sum():
                    return None
                drop = _widest_effect(before[:, judged], after[:, judged],
                                      lambda x, y: 1 - float(np.nanmean(np.nanmean(y, axis=0) / np.nanmean(x, axis=0))))
            return drop, float(np.median(ref[judged])), float(np.median(now[judged]))

        found += [(present[j], before, after) for j, before, after in _segment(len(present), judge)]
    return found


def change_points(runs: list[Run]) -> list[ChangePoint]:
    """Every step of every rate series and every throughput drop, oldest first."""
    spans = segments(runs)
    names = labels(runs)
    found: list[ChangePoint] = []
    for cell_id, points in rate_series(runs).items():
        outcomes = [run.outcomes().get(cell_id) if points[i] is not None else None for i, run in enumerate(runs)]
        for k, before, after, p in rate_steps(points, spans, outcomes):
            found.append(ChangePoint(names.get(cell_id, cell_id), "robust_acc", k, before, after, _commits(runs, k, points), p))
    for metric in THROUGHPUTS:
        series = throughput_series(runs, metric)
        for key, values in series.items():
            for k, before, after in throughput_drops(values, spans, key[1]):
                present = [None if np.isnan(row).all() else 1 for row in values]
                found.append(ChangePoint(_group_label(key, series), metric, k, before, after, _commits(runs, k, present)))
    return sorted(found, key=lambda c: (c.run, c.metric, c.series))


def _group_label(key: tuple[str, ...], series: dict) -> str:
    """model · device · precision, with the device's name when the runs saw more than one."""
    names = {k[3] for k in series if k[:3] == key[:3]}
    return " · ".join(key[:3]) + (f" · {key[3]}" if len(names) > 1 else "")


def _median_rate(side: list[tuple[int, int]]) -> float:
    return statistics.median(k / n for k, n in side) if side else math.nan


def _commits(runs: list[Run], k: int, points: list | None = None) -> str:
    """previous sha..sha: the commits between the last run before the step that has the series and
    the first run after it."""
    prev = k - 1
    while points is not None and prev > 0 and points[prev] is None:
        prev -= 1
    return f"{runs[prev].sha[:12]}..{runs[k].sha[:12]}"


# ---------------------------------------------------------------------------------------------
# history.md and its plots


def write_history(runs: list[Run], out_dir: str | Path) -> Path:
    """Write ``history.md``, ``history-robust.png`` and ``history-throughput.png`` under ``out_dir``."""
    out_dir = Path(out_dir)
    for target in (out_dir / HISTORY_FILE, out_dir / "history-robust.png", out_dir / "history-throughput.png"):
        files.check_target(target)  # a link among them: nothing written
    out_dir.mkdir(parents=True, exist_ok=True)
    points = change_points(runs)
    plots = [p for p in (_plot_rates(runs, points, out_dir / "history-robust.png"),
                         _plot_throughput(runs, points, out_dir / "history-throughput.png")) if p]
    path = out_dir / HISTORY_FILE
    files.write_atomic(path, render(runs, points, [p.name for p in plots]).encode())
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
                 "before → after": _change_text(c), "p (McNemar)": _p_text(c), "commits": f"`{c.commits}`"} for c in points]
        lines += [pd.DataFrame(rows).to_markdown(index=False), ""]
    elif max(len(span) for span in spans) < 2 * MIN_SIDE:
        lines += [f"Not looked for yet: a change point needs {MIN_SIDE} runs of one suite on each side, so at least "
                  f"{2 * MIN_SIDE} runs ({len(runs)} so far); until then `bench compare` judges pairs of runs.", ""]
    else:
        lines += ["None: every rate series stays inside its Wilson intervals, and no throughput stays below the "
                  "machine's noise threshold.", ""]
    lines += [_rules_text(), ""]
    for name in plot_names:
        title = "Robust accuracy over runs (bands: 95 % Wilson intervals)" if "robust" in name else \
            "Throughput over runs (each cell relative to its usual; median over a group's cells)"
        lines += [f"## {title}", "", f"![{title}]({name})", ""]
    lines += ["## Robust accuracy by run", "", _rate_table(runs), ""]
    lines += ["## Runs", "", _runs_table(runs), ""]
    return wrap("\n".join(lines))  # prose at 120 columns, as the report's: a terminal and a diff read it too


_METRIC_NAMES = {"robust_acc": "robust accuracy", **{k: v for k, (v, _) in THROUGHPUTS.items()}}


def _p_text(c: ChangePoint) -> str:
    return format_p(c.p, "– (intervals)") if c.metric == "robust_acc" else "–"


def _change_text(c: ChangePoint) -> str:
    if c.metric == "robust_acc":
        return f"{100 * c.before:.1f} % → {100 * c.after:.1f} % ({100 * (c.after - c.before):+.1f} points)"
    return f"{c.before:.3g} → {c.after:.3g} (×{c.after / c.before:.2f})"


def _rules_text() -> str:
    rules = "; ".join(f"{kind}: {r.share:.0%} of the cells below ×{r.min_ratio} (cells timed under {r.min_seconds} s left out)"
                      for kind, r in THROUGHPUT_RULES.items())
    return (f"At every run, the up to {WINDOW} runs before it are compared with the up to {WINDOW} from it on (at least "
            f"{MIN_SIDE} with data on each side): a rate steps where McNemar's exact test between the two windows' per-image "
            f"majority outcomes (the runs score the same images) gives p < {ALPHA} — where a run has no per-image "
            "predictions, where the two medians have separate 95 % Wilson intervals; worst cases over all attacks are "
            "series like any cell; "
            f"a throughput group (model · device · precision) drops where the cells' medians fall by `bench compare`'s "
            f"noise rule ({rules}). Before → after are those medians. Cells missing from a run are gaps (—), not zeros.")


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
            colour = colours.setdefault(name, _colour(len(colours)))
            for span in segments(runs):  # one stroke per suite digest: no line across a suite change
                x = list(span)
                y = [100 * pts[i][0] / pts[i][1] if pts[i] else math.nan for i in span]  # NaN: a gap
                band = [wilson(*pts[i]) if pts[i] else (math.nan, math.nan) for i in span]
                ax.plot(x, y, marker="o", ms=3, color=colour, label=name if span.start == 0 else None)
                ax.fill_between(x, [100 * b[0] for b in band], [100 * b[1] for b in band], color=colour, alpha=0.08, linewidth=0)

    return _figure(runs, list(panels.items()), path, "robust accuracy (%)", draw, (-3, 103), points, "robust_acc")


def _plot_throughput(runs: list[Run], points: list[ChangePoint], path: Path) -> Path | None:
    """Per group, the median over its cells of each cell's throughput relative to that cell's median
    in the span (1 = as usual): cells of very different speeds share one line, and a missing cell
    does not move it."""
    panels = []
    for metric, (title, _) in THROUGHPUTS.items():
        series = throughput_series(runs, metric)
        lines = []
        for key, values in series.items():
            index = np.full(len(runs), np.nan)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                for span in segments(runs):
                    rows = values[span.start:span.stop]
                    index[span.start:span.stop] = np.nanmedian(rows / np.nanmedian(rows, axis=0), axis=1)
            lines.append((_group_label(key, series), list(index)))
        if lines:
            panels.append((title, lines))
    if not panels:
        return None
    colours: dict[str, str] = {}

    def draw(ax, lines):
        for name, ys in lines:
            colour = colours.setdefault(name, _colour(len(colours)))
            for span in segments(runs):
                ax.plot(list(span), [ys[i] for i in span], marker="o", ms=3, color=colour, label=name if span.start == 0 else None)

    return _figure(runs, panels, path, "× the cell's usual (median over cells)", draw, (0, None), points, None)


def _colour(i: int):
    import matplotlib

    return matplotlib.colormaps["tab20"](i % 20)


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
            if c.metric == wanted and (metric is None or c.series.startswith(title + " · ")):
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
    try:
        files.write_with(path, lambda f: fig.savefig(f, format="png", dpi=110, bbox_inches="tight"))
    finally:
        plt.close(fig)
    return path
