"""The report's plots: robust accuracy against ε (per defense), accuracy against JPEG quality, minimum-norm curves."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from bench import files
from bench.specs import eps_axis, format_eps

PLOT_TITLES = {
    "robust": "Robust accuracy against ε",
    "defenses": "Robust accuracy against ε, per defense (adaptive dashed, no defense dotted)",
    "quality": "Accuracy against JPEG quality",
    "curves": "Minimum-norm curves: robust accuracy over ε from one run per attack",
}


def plot_curves(df: pd.DataFrame, predictions: pd.DataFrame | None, path: Path) -> Path | None:
    """Robust accuracy over ε from each minimum-norm attack's one run, and the per-image best over every
    attack of the same norm (thick): a panel per model, defense, mode and norm."""
    import numpy as np

    from bench.audit import curves

    table = curves.table(df, predictions)
    if table.empty:
        return None
    panels = []
    for key, group in table.groupby([*curves.GROUP[:-1], "norm"], sort=False):
        model, defense, mode, device, precision, norm = key
        top = float(group["reach"].max()) or 1.0
        grid = np.linspace(0, 1.15 * top, 120)
        scale = 255 if norm == "Linf" else 1
        lines = [(grid * scale, curves.curve(predictions, [r["cell_id"]], grid), f"{r['attack']} (optimality {r['optimality']:.2f})",
                  "-", {"marker": ""}) for _, r in group.iterrows()]
        everyone = group["best_of"].iloc[0]
        lines.append((grid * scale, curves.curve(predictions, everyone, grid), f"best of all {len(everyone)} attacks ({norm})",
                      "-", {"marker": "", "width": 4.0, "colour": "black", "alpha": 0.3}))
        where = defense + ("" if mode == "oblivious" else f" ({mode.removeprefix('adaptive-')})")
        panels.append((f"{model} · {where} · {norm}", lines))
    norms = set(table["norm"])
    xlabel = "ε (×1/255)" if norms == {"Linf"} else "ε (L∞ ×1/255; L2, L1: pixel units)" if "Linf" in norms else "ε"
    return _draw(panels, path, xlabel, "robust accuracy (%)")


def plot_rates(df: pd.DataFrame, path: Path, worst: pd.DataFrame | None = None) -> Path | None:
    """Robust accuracy against ε: a panel per (model, attack), a line per defense and mode
    (adaptive dashed); then a panel per model and norm with the worst case over all attacks per
    defense (thick), the envelope below every attack's line."""
    ok = df[(df["status"] == "ok") & df["eps"].notna()]
    if ok.empty:
        return None
    many = ok[["device", "precision"]].drop_duplicates().shape[0] > 1
    scale, xlabel = eps_axis(ok["eps"])  # in the unit the suite gave ε in

    def lines(part):
        for label, g in part.groupby(["defense", "eval_mode", "device", "precision"], sort=False):
            g = g.sort_values("eps")
            name = label[0] if label[1] == "oblivious" else f"{label[0]} ({label[1].removeprefix('adaptive-')})"
            name += f" {label[2]} {label[3]}" if many else ""
            yield g["eps"] * scale, g["robust_acc"], name, "--" if label[1] != "oblivious" else "-"

    panels = [(f"{model} · {attack}", list(lines(ok[(ok["model"] == model) & (ok["attack"] == attack)])))
              for model, attack in dict.fromkeys(zip(ok["model"], ok["attack"]))]
    if worst is not None and len(worst):
        for (model, norm), w in worst.groupby(["model", "norm"], sort=False):
            # every attack's line, thin, and under them the worst case per defense, thick, in the defense's colour
            part = ok[(ok["model"] == model) & (ok["norm"] == norm)]
            envelope = [(*line[:4], {"alpha": 0.35}) for attack in dict.fromkeys(part["attack"])
                        for line in lines(part[part["attack"] == attack])]
            for (defense, dev, prec), g in w.groupby(["defense", "device", "precision"], sort=False):
                g = g.sort_values("eps")
                base = defense + (f" {dev} {prec}" if many else "")
                envelope.append((g["eps"] * scale, g["worst_case_acc"], f"{base}: worst case", "-",
                                 {"width": 3.5, "colour_of": base}))
            panels.append((f"{model} · worst case over all attacks ({norm}, thick)", envelope))
    return _draw(panels, path, xlabel, "robust accuracy (%)")


def plot_defenses(df: pd.DataFrame, path: Path, worst: pd.DataFrame | None = None) -> Path | None:
    """Robust accuracy against ε, a panel per (model, attack, defense): the oblivious attack solid,
    each adaptive method dashed, no defense dotted. Only when adaptive attacks ran on at least two
    defenses; otherwise one panel per (model, attack) reads better."""
    ok = df[(df["status"] == "ok") & df["eps"].notna()]
    adaptive = ok[ok["eval_mode"] != "oblivious"]
    if adaptive["defense"].nunique() < 2 or not (ok["defense"] == "none").any():
        return None
    many = ok[["device", "precision"]].drop_duplicates().shape[0] > 1
    scale, xlabel = eps_axis(ok["eps"])
    panels = []
    for (model, attack), group in ok.groupby(["model", "attack"], sort=False):
        base = group[(group["defense"] == "none") & (group["eval_mode"] == "oblivious")]
        for defense in dict.fromkeys(group.loc[group["defense"] != "none", "defense"]):
            lines = []
            for (dev, prec), b in base.groupby(["device", "precision"], sort=False):
                b = b.sort_values("eps")
                lines.append((b["eps"] * scale, b["robust_acc"], "no defense" + (f" {dev} {prec}" if many else ""), ":"))
            for (mode, dev, prec), g in group[group["defense"] == defense].groupby(["eval_mode", "device", "precision"], sort=False):
                g = g.sort_values("eps")
                name = mode.removeprefix("adaptive-") + (f" {dev} {prec}" if many else "")
                lines.append((g["eps"] * scale, g["robust_acc"], name, "-" if mode == "oblivious" else "--"))
            if worst is not None and len(worst):  # the envelope: what no attack of the suite (any mode) broke
                norm = group["norm"].iloc[0]
                w = worst[(worst["model"] == model) & (worst["defense"] == defense) & (worst["norm"] == norm)]
                for (dev, prec), g in w.groupby(["device", "precision"], sort=False):
                    g = g.sort_values("eps")
                    lines.append((g["eps"] * scale, g["worst_case_acc"], "worst case, all attacks" + (f" {dev} {prec}" if many else ""),
                                  "-", {"width": 4.0, "colour": "black", "alpha": 0.3}))  # under the lines it bounds
            panels.append((f"{model} · {attack} · {defense}", lines))
    return _draw(panels, path, xlabel, "robust accuracy (%)")


def plot_quality(df: pd.DataFrame, path: Path) -> Path | None:
    """Accuracy against JPEG quality: a panel per (model, attack), a line per ε and mode, and the
    clean accuracy for reference."""
    label = df["defense"].str.extract(r"^jpeg-q(\d+)(?:-(\d+))?$")  # jpeg-q75 (4:2:0) or jpeg-q75-444
    ok = df[(df["status"] == "ok") & label[0].notna()].copy()
    if ok.empty or ok["defense"].nunique() < 2:
        return None
    ok["quality"] = label.loc[ok.index, 0].astype(int)
    ok["chroma"] = label.loc[ok.index, 1].fillna("420")
    several = ok["chroma"].nunique() > 1

    def lines(part):
        for chroma, by_chroma in part.groupby("chroma", sort=True):
            tag = f" {chroma}" if several else ""
            clean = by_chroma[by_chroma["eval_mode"] == "oblivious"].drop_duplicates("quality").sort_values("quality")
            yield clean["quality"], clean["clean_acc"], f"clean{tag}", ":"
            for (eps, mode), g in by_chroma.groupby(["eps", "eval_mode"], sort=False):
                g = g.sort_values("quality")
                name = f"ε {format_eps(eps)}" + ("" if mode == "oblivious" else f" ({mode.removeprefix('adaptive-')})") + tag
                yield g["quality"], g["robust_acc"], name, "--" if mode != "oblivious" else "-"

    return _panels(ok, path, "JPEG quality", "accuracy (%)", lines)


def _panels(ok: pd.DataFrame, path: Path, xlabel: str, ylabel: str, lines) -> Path:
    """A panel per (model, attack); ``lines(part)`` yields (x, y, name, style) for each line."""
    panels = [(f"{model} · {attack}", list(lines(ok[(ok["model"] == model) & (ok["attack"] == attack)])))
              for model, attack in dict.fromkeys(zip(ok["model"], ok["attack"]))]
    return _draw(panels, path, xlabel, ylabel)


def _draw(panels: list[tuple[str, list]], path: Path, xlabel: str, ylabel: str) -> Path:
    """Panels of (title, [(x, y, name, style[, options]), …]), three to a row, one legend beside them;
    a line name has one colour in every panel. Options: ``width``, ``alpha``, ``colour``, and
    ``colour_of`` (take another line name's colour: a defense's worst case in the defense's colour)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = min(3, len(panels))
    rows = -(-len(panels) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.2 * rows), squeeze=False, sharey=True)
    colours: dict[str, str] = {}
    legend: dict[str, Any] = {}
    for ax, (title, lines) in zip(axes.flat, panels):
        for x, y, name, style, *more in lines:
            opts = more[0] if more else {}
            reference = name.startswith("no defense")  # grey and on top: the other lines often lie on it
            if "colour" in opts:
                colour = opts["colour"]
            else:
                key = opts.get("colour_of", name)
                colour = colours.setdefault(key, "0.35" if reference else f"C{len(colours) % 10}")
            (handle,) = ax.plot(x, 100 * y, marker=opts.get("marker", "o"), linestyle=style, color=colour, label=name,
                                linewidth=opts.get("width", 1.5), alpha=opts.get("alpha", 1.0),
                                zorder=5 if reference else 1 if "width" in opts else 2)
            legend.setdefault(name, handle)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel(xlabel)
        ax.set_ylim(-3, 103)
        ax.grid(alpha=0.3)
    for ax in axes[:, 0]:
        ax.set_ylabel(ylabel)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    fig.tight_layout()
    fig.legend(list(legend.values()), list(legend), fontsize=8, loc="center left", bbox_to_anchor=(1.0, 0.5))  # beside, not over, the lines
    try:
        files.write_with(path, lambda f: fig.savefig(f, format="png", dpi=110, bbox_inches="tight"))
    finally:
        plt.close(fig)
    return path
