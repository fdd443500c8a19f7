"""Markdown report of one run: the hub that writes it from the run folder and puts the sections in order.

Built only from the run's table and run.json, so ``bench report RUN_DIR`` rebuilds exactly what the run wrote."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pandas as pd

from bench import files
from bench.audit import worst_case
from bench.faces import fakes_accepted
from bench.reporting.autoattack import autoattack_section
from bench.reporting.defenses import defense_comparison
from bench.reporting.header import dataset_lines, environment_line
from bench.reporting.implementations import implementations_section
from bench.reporting.minimum_norm import curves_section
from bench.reporting.next_steps import what_next
from bench.reporting.plots import PLOT_TITLES, plot_curves, plot_defenses, plot_quality, plot_rates
from bench.reporting.tables import CASCADE_NOTE, RATE_COLUMNS, cost_table, draws_table, models_table
from bench.reporting.text import long_table, pivot, wrap
from bench.reporting.trust import flags_section, trust_section
from bench.reporting.worst import worst_case_section
from bench.results import load_predictions, load_run
from bench.specs import format_eps

_SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]*")  # fullmatch


def write_report(run_dir: str | Path, reports_root: str | Path = "reports", meta: dict[str, Any] | None = None) -> Path:
    """Write ``reports/<suite>/<run_id>.md`` (+ plot) and refresh ``reports/<suite>/latest.md``.
    ``meta``: the run's record when the caller holds a newer one than its run.json (the runner
    writes run.json's final status only once the report is on disk)."""
    df, on_disk = load_run(Path(run_dir))
    meta = meta if meta is not None else on_disk
    for key in ("suite", "run_id"):  # these name files: a doctored run.json must not write elsewhere
        if not isinstance(meta.get(key), str) or not _SAFE_NAME.fullmatch(meta[key]):
            raise ValueError(f"{Path(run_dir) / 'run.json'}: {key} {meta.get(key)!r} is not a plain name")
    out_dir = Path(reports_root) / meta["suite"]
    run_id = meta["run_id"]
    # every file this may write, checked before any is written: a link among them writes none
    kinds = [t for t in PLOT_TITLES]
    for target in [out_dir / f"{run_id}.md", out_dir / "latest.md", *(out_dir / f"{run_id}-{k}.png" for k in kinds),
                   *(out_dir / f"latest-{k}.png" for k in kinds)]:
        files.check_target(target)
    if out_dir.is_symlink():
        raise files.LinkError(out_dir, "is a symbolic link; bench never writes through a link (remove it and run again)")
    out_dir.mkdir(parents=True, exist_ok=True)
    loaded = worst_case.load(Path(run_dir))
    worst = loaded[0] if loaded is not None else None
    by_defense = plot_defenses(df, out_dir / f"{meta['run_id']}-defenses.png", worst)
    predictions = load_predictions(Path(run_dir))
    plots = [p for p in (by_defense or plot_rates(df, out_dir / f"{meta['run_id']}-robust.png", worst),
                         plot_quality(df, out_dir / f"{meta['run_id']}-quality.png"),
                         plot_curves(df, predictions, out_dir / f"{meta['run_id']}-curves.png")) if p]
    text = render(df, meta, [p.name for p in plots], predictions, worst)
    path = out_dir / f"{meta['run_id']}.md"
    files.write_atomic(path, text.encode())
    # latest.md points at latest-*.png copies: a committed latest report keeps stable file names
    latest = {p: out_dir / f"latest-{p.name.removeprefix(meta['run_id'] + '-')}" for p in plots}
    for old in out_dir.glob("latest-*.png"):
        if old not in latest.values():
            old.unlink(missing_ok=True)  # another process writing this suite's reports may have removed it
    for src, dst in latest.items():
        files.write_atomic(dst, src.read_bytes())
        text = text.replace(f"]({src.name})", f"]({dst.name})")
    files.write_atomic(out_dir / "latest.md", text.encode())
    return path


def render(df: pd.DataFrame, meta: dict[str, Any], plot_names: list[str] | None = None, predictions: pd.DataFrame | None = None,
           worst: pd.DataFrame | None = None) -> str:
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
        dataset_lines(meta),
        "",
        "Oblivious attacks are crafted on the undefended model; adaptive ones through the defense (bpda: the real "
        "defense forward, identity backward; diff: a differentiable version of it, kornia's JPEG for jpeg; for "
        "randomized defenses both average the gradient over eot_samples draws). Adversarial images are "
        "quantised to 8 bits, then defended (always the real defense) and classified. ε is the L∞ budget in pixel "
        "space of images in [0, 1]. Rates are shares of the n images, with 95 % Wilson intervals in brackets; p-values "
        "compare two rates on the same images (McNemar's exact test on the per-image outcomes).",
    ]
    if meta.get("status") == "error":
        lines += ["", f"**This run stopped on an error ({meta.get('error', 'see run.log')}): tables show only the cells "
                  "that finished.**"]
    elif meta.get("status") != "complete":
        lines += ["", f"**This run is {meta.get('status', 'incomplete')}: tables show only the cells that finished.**"]
    partial = meta.get("partial_cells") or {}
    if partial and meta.get("status") != "complete":
        lines += ["", "Partial cells (their finished shards are on disk; `bench run --resume` runs only the rest): "
                  + "; ".join(f"`{cell}` ({done})" for cell, done in partial.items()) + "."]
    cascade = bool((meta.get("resolved_suite") or {}).get("cascade"))
    lines += ["", "## Can these numbers be trusted?", "", trust_section(df)]
    if worst is not None and len(worst):
        lines += ["", "## Worst case over all attacks", "", worst_case_section(worst)]
    autoattack = autoattack_section(df, predictions)
    if autoattack:
        lines += ["", "## AutoAttack: the authors' code, the number to cite", "", autoattack]
    models = models_table(df)
    if models:
        lines += ["", "## Models", "", models]
    if len(ok):
        ok["ε"] = ok["eps"].map(format_eps)
        ok["column"] = [d if m == "oblivious" else f"{d} ({m.removeprefix('adaptive-')})" for d, m in zip(ok["defense"], ok["eval_mode"])]
        extra = [c for c in ("device", "precision") if ok[c].nunique() > 1]
        clean = ok[ok["eval_mode"] == "oblivious"].drop_duplicates(["model", "defense", *extra])
        clean = clean.assign(column=[" ".join([m, *(str(r[c]) for c in extra)]) for m, (_, r) in zip(clean["model"], clean.iterrows())])
        lines += ["", "## Clean accuracy (defense applied, no attack)", "", pivot(clean, ["defense"], "clean_acc")]
        for col, title in RATE_COLUMNS.items():
            part = ok[ok[col].notna()]
            if len(part):
                lines += ["", f"## {title}", ""]
                if cascade:
                    lines += [CASCADE_NOTE, ""]
                lines += [long_table(part, ["model", "attack", *extra], col)]
        accepted = fakes_accepted(ok, meta, predictions, ["model", "attack", "ε", *extra])
        if accepted:
            lines += ["", "## Fakes accepted as real (share of fake images the detector calls real)", "", accepted]
        side = implementations_section(df, predictions)
        if side:
            lines += ["", "## Implementations side by side", "", side]
        minimum = curves_section(df, predictions)
        if minimum:
            lines += ["", "## Minimum-norm attacks", "", minimum]
        comparison = defense_comparison(ok, extra, predictions, cascade)
        if comparison:
            lines += ["", "## Defense comparison", "", comparison]
        draws = draws_table(ok, extra)
        if draws:
            lines += ["", "## Randomized defenses over several draws", "", draws]
        for name in plot_names or []:
            title = PLOT_TITLES[name.rsplit("-", 1)[-1].removesuffix(".png")]
            lines += ["", f"## {title}", "", f"![{title.lower()}]({name})"]
        lines += ["", "## Perturbation and cost", "", cost_table(ok, extra)]
    lines += ["", "## Flags", "", flags_section(df)]
    not_ok = df[df["status"] != "ok"]
    if len(not_ok):
        lines += ["", "## Skipped and failed cells", ""]
        for (status, reason), group in not_ok.groupby(["status", "reason"], sort=False):
            models = ", ".join(f"`{m}`" for m in dict.fromkeys(group["model"]))
            cells = ", ".join(f"`{c}`" for c in group["cell_id"].head(3))
            more = f", … {len(group) - 3} more" if len(group) > 3 else ""
            lines.append(f"- **{status}**, {len(group)} cells of {models} ({cells}{more}): {reason}")
    nxt = what_next(df, meta)
    if nxt:
        lines += ["", "## What next", "", *nxt]
    lines += ["", "## Environment", "", environment_line(meta), ""]
    return wrap("\n".join(lines))
