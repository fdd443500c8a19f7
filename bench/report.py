"""Markdown report of one run: pivot tables a person reads at a glance, a plot, skipped cells
with their reasons, and the environment. Built only from the run's table and run.json, so
``bench report RUN_DIR`` rebuilds exactly what the run wrote."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from bench.results import load_predictions, load_run, write_atomic
from bench.suite import format_eps

RATE_COLUMNS = {
    "robust_acc": "Robust accuracy (attacked, then defended)",
    "attack_success_rate": "Attack success rate (among images the defended model got right)",
    "targeted_success_rate": "Targeted success rate (share classified as the target)",
}


def write_report(run_dir: str | Path, reports_root: str | Path = "reports") -> Path:
    """Write ``reports/<suite>/<run_id>.md`` (+ plot) and refresh ``reports/<suite>/latest.md``."""
    df, meta = load_run(Path(run_dir))
    out_dir = Path(reports_root) / meta["suite"]
    out_dir.mkdir(parents=True, exist_ok=True)
    plot = _plot(df, out_dir / f"{meta['run_id']}-robust.png")
    text = render(df, meta, plot.name if plot else None, load_predictions(Path(run_dir)))
    path = out_dir / f"{meta['run_id']}.md"
    write_atomic(path, text.encode())
    write_atomic(out_dir / "latest.md", text.encode())
    return path


def render(df: pd.DataFrame, meta: dict[str, Any], plot_name: str | None = None, predictions: pd.DataFrame | None = None) -> str:
    ok = df[df["status"] == "ok"].copy()
    counts = df["status"].value_counts().to_dict()
    lines = [
        f"# Robustness report: `{meta['suite']}`",
        "",
        f"Run `{meta['run_id']}`, started {meta.get('started_at', '?')}, finished {meta.get('finished_at', '?')}"
        f" ({meta.get('status', '?')}). Cells: {len(df)} of {meta.get('cells', len(df))} ran: "
        + ", ".join(f"{counts.get(s, 0)} {s}" for s in ("ok", "skipped", "failed"))
        + ".",
        "",
        _dataset_line(meta),
        "",
        "Attacks are crafted on the undefended model (oblivious), quantised to 8 bits, then defended and classified. "
        "ε is the L∞ budget in pixel space of images in [0, 1]. Rates are shares of the n images.",
    ]
    if meta.get("status") != "complete":
        lines += ["", f"**This run is {meta.get('status', 'incomplete')}: tables show only the cells that finished.**"]
    if len(ok):
        ok["ε"] = ok["eps"].map(format_eps)
        extra = [c for c in ("device", "precision") if ok[c].nunique() > 1]
        lines += ["", "## Clean accuracy (defense applied, no attack)", "", _pivot(ok.drop_duplicates(["model", "defense", *extra]), ["model", *extra], "clean_acc")]
        for col, title in RATE_COLUMNS.items():
            part = ok[ok[col].notna()]
            if len(part):
                lines += ["", f"## {title}", "", _pivot(part, ["model", "attack", "ε", *extra], col)]
        accepted = _fakes_accepted(ok, meta, predictions, ["model", "attack", "ε", *extra])
        if accepted:
            lines += ["", "## Fakes accepted as real (share of fake images the detector calls real)", "", accepted]
        if plot_name:
            lines += ["", "## Robust accuracy against ε", "", f"![robust accuracy against ε]({plot_name})"]
        lines += ["", "## Perturbation and cost", "", _cost_table(ok, extra)]
    not_ok = df[df["status"] != "ok"]
    if len(not_ok):
        lines += ["", "## Skipped and failed cells", ""]
        for (status, reason), group in not_ok.groupby(["status", "reason"], sort=False):
            models = ", ".join(f"`{m}`" for m in dict.fromkeys(group["model"]))
            cells = ", ".join(f"`{c}`" for c in group["cell_id"].head(3))
            more = f", … {len(group) - 3} more" if len(group) > 3 else ""
            lines.append(f"- **{status}**, {len(group)} cells of {models} ({cells}{more}): {reason}")
    lines += ["", "## Environment", "", _environment(meta), ""]
    return "\n".join(lines)


def _fakes_accepted(ok: pd.DataFrame, meta: dict[str, Any], predictions: pd.DataFrame | None, index: list[str]) -> str | None:
    """For a real-vs-fake data set: per detector, attack and defense, the share of fakes the
    attacker gets accepted as real; the "no attack" rows are the detector's own miss rate."""
    names = (meta.get("dataset") or {}).get("class_names") or []
    if predictions is None or not {"fake", "real"} <= set(names):
        return None
    fake, real = names.index("fake"), names.index("real")
    fakes = predictions[predictions["label"] == fake]
    if fakes.empty:
        return None
    rates = fakes.assign(r=fakes["robust_pred"] == real, c=fakes["clean_pred"] == real).groupby("cell_id")[["r", "c"]].mean()
    merged = ok.merge(rates, left_on="cell_id", right_index=True)
    clean = merged.drop_duplicates(["model", "defense", *index[3:]]).assign(attack="(no attack)", r=lambda d: d["c"])
    clean["ε"] = "-"
    both = pd.concat([clean, merged])
    order = list(dict.fromkeys(merged["defense"]))
    table = both.pivot_table(index=index, columns="defense", values="r", aggfunc="first", sort=False)
    table = table[[d for d in order if d in table.columns]].map(_pct).reset_index()
    table.columns.name = None
    models = {m: i for i, m in enumerate(dict.fromkeys(merged["model"]))}
    table = table.sort_values("model", key=lambda col: col.map(models), kind="stable")
    return table.to_markdown(index=False)


def _dataset_line(meta: dict[str, Any]) -> str:
    ds = meta.get("dataset", {})
    line = f"Dataset: `{ds.get('name', '?')}`, n = {ds.get('n', '?')} images."
    if ds.get("name") == "samples":
        line += (" These are 4 real photos (scikit-image, matplotlib) with their true ImageNet class, 4 views each"
                 " (full, flipped, two centre crops): views of one photo are not independent samples, so read"
                 " the rates as a demonstration, not an estimate of population accuracy.")
    if ds.get("note"):
        line += f" **{ds['note']}**"
    if ds.get("skipped"):
        line += f" {len(ds['skipped'])} unreadable image(s) were skipped: " + ", ".join(f"`{p}`" for p, _ in ds["skipped"][:10])
    return line


def _pct(x: float) -> str:
    return "–" if pd.isna(x) else f"{100 * x:.1f} %"


def _pivot(df: pd.DataFrame, index: list[str], value: str) -> str:
    order = list(dict.fromkeys(df["defense"]))
    table = df.pivot_table(index=index, columns="defense", values=value, aggfunc="first", sort=False)
    table = table[[d for d in order if d in table.columns]]
    table = table.map(_pct).reset_index()
    table.columns.name = None
    return table.to_markdown(index=False)


def _cost_table(ok: pd.DataFrame, extra: list[str]) -> str:
    keys = ["model", "attack", "ε", *extra]
    rows = ok.drop_duplicates(keys)  # crafting is shared by all defenses of a (model, attack, ε)
    table = pd.DataFrame(
        {
            **{k: rows[k] for k in keys},
            "max ‖δ‖∞ (×255)": (rows["linf_max"] * 255).round(2),
            "mean ‖δ‖₂": rows["l2_mean"].round(3),
            "batch": rows["batch_size"],
            "attack s": rows["attack_seconds"].round(2),
            "attack img/s": rows["attack_images_per_s"].round(2),
            "img·steps/s": rows["attack_steps_per_s"].round(1),
            "clean img/s": rows["clean_images_per_s"].round(1),
            "warm-up s": rows["warmup_seconds"].round(1),
            "peak mem MB": rows["peak_mem_mb"].round(0),
        }
    )
    note = (
        "\n\nAttack time covers crafting for all n images (one crafting serves every defense); img·steps/s counts "
        "images × gradient steps; clean img/s is the model's forward pass on clean images; warm-up (model preparation, "
        "compilation, first pass) is never part of a throughput; batch is the size actually used (halved after a GPU "
        "out-of-memory); peak memory is CUDA allocated memory on GPU, the process's peak resident set so far on CPU."
    )
    defense = ok[ok["defense_images_per_s"].notna()].drop_duplicates(["defense", "device", "precision"])
    if len(defense):
        cost = pd.DataFrame({"defense": defense["defense"], "device": defense["device"],
                             "defense img/s": defense["defense_images_per_s"].round(1)})
        note += "\n\nDefense cost (first measurement per defense and device):\n\n" + cost.to_markdown(index=False)
    return table.to_markdown(index=False) + note


def _environment(meta: dict[str, Any]) -> str:
    env = meta.get("environment", {})
    rows = [(k, v if not isinstance(v, list) else ", ".join(map(str, v)) or "none") for k, v in env.items()]
    rows += [("suite file", meta.get("suite_file")), ("suite digest", meta.get("suite_digest", "")[:16]),
             ("wall time", f"{meta['wall_seconds']:.1f} s" if "wall_seconds" in meta else "?")]
    return pd.DataFrame(rows, columns=["", "value"]).to_markdown(index=False)


def _plot(df: pd.DataFrame, path: Path) -> Path | None:
    ok = df[(df["status"] == "ok") & df["eps"].notna()]
    if ok.empty:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = list(dict.fromkeys(zip(ok["model"], ok["attack"])))
    cols = min(3, len(panels))
    rows = -(-len(panels) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.2 * rows), squeeze=False, sharey=True)
    for ax, (model, attack) in zip(axes.flat, panels):
        part = ok[(ok["model"] == model) & (ok["attack"] == attack)]
        for label, g in part.groupby(["defense", "device", "precision"], sort=False):
            g = g.sort_values("eps")
            name = label[0] if part[["device", "precision"]].drop_duplicates().shape[0] == 1 else " ".join(label)
            ax.plot(g["eps"] * 255, 100 * g["robust_acc"], marker="o", label=name)
        ax.set_title(f"{model} · {attack}", fontsize=10)
        ax.set_xlabel("ε (×1/255)")
        ax.set_ylim(-3, 103)
        ax.grid(alpha=0.3)
    for ax in axes[:, 0]:
        ax.set_ylabel("robust accuracy (%)")
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=8)
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(path)
    return path
