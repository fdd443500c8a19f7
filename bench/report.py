"""Markdown report of one run: pivot tables a person reads at a glance, a plot, skipped cells
with their reasons, and the environment. Built only from the run's table and run.json, so
``bench report RUN_DIR`` rebuilds exactly what the run wrote."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pandas as pd

from bench import files, worst_case
from bench.results import load_predictions, load_run
from bench.specs import format_eps
from bench.stats import format_p, paired

_SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]*")  # fullmatch

PLOT_TITLES = {
    "robust": "Robust accuracy against ε",
    "defenses": "Robust accuracy against ε, per defense (adaptive dashed, no defense dotted)",
    "quality": "Accuracy against JPEG quality",
    "curves": "Minimum-norm curves: robust accuracy over ε from one run per attack",
}
CASCADE_NOTE = ("This run used `cascade: true`: each attack ran only on the images still standing (column n_attacked), and "
                "a row counts the images its attack never ran on as they are without attack. Read the worst case over all "
                "attacks above; a single row is not that attack's robust accuracy.")
RATE_COLUMNS = {
    "robust_acc": "Robust accuracy (attacked, then defended)",
    "attack_success_rate": "Attack success rate (among images the defended model got right)",
    "targeted_success_rate": "Targeted success rate (share classified as the target)",
}


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
    out_dir.mkdir(parents=True, exist_ok=True)
    loaded = worst_case.load(Path(run_dir))
    worst = loaded[0] if loaded is not None else None
    by_defense = _plot_defenses(df, out_dir / f"{meta['run_id']}-defenses.png", worst)
    predictions = load_predictions(Path(run_dir))
    plots = [p for p in (by_defense or _plot(df, out_dir / f"{meta['run_id']}-robust.png", worst),
                         _plot_quality(df, out_dir / f"{meta['run_id']}-quality.png"),
                         _plot_curves(df, predictions, out_dir / f"{meta['run_id']}-curves.png")) if p]
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
        _dataset_lines(meta),
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
    cascade = bool((meta.get("resolved_suite") or {}).get("cascade"))
    lines += ["", "## Can these numbers be trusted?", "", _trust_section(df)]
    if worst is not None and len(worst):
        lines += ["", "## Worst case over all attacks", "", _worst_case_section(worst)]
    autoattack = _autoattack_section(df, predictions)
    if autoattack:
        lines += ["", "## AutoAttack: the authors' code, the number to cite", "", autoattack]
    models = _models_table(df)
    if models:
        lines += ["", "## Models", "", models]
    if len(ok):
        ok["ε"] = ok["eps"].map(format_eps)
        ok["column"] = [d if m == "oblivious" else f"{d} ({m.removeprefix('adaptive-')})" for d, m in zip(ok["defense"], ok["eval_mode"])]
        extra = [c for c in ("device", "precision") if ok[c].nunique() > 1]
        clean = ok[ok["eval_mode"] == "oblivious"].drop_duplicates(["model", "defense", *extra])
        clean = clean.assign(column=[" ".join([m, *(str(r[c]) for c in extra)]) for m, (_, r) in zip(clean["model"], clean.iterrows())])
        lines += ["", "## Clean accuracy (defense applied, no attack)", "", _pivot(clean, ["defense"], "clean_acc")]
        for col, title in RATE_COLUMNS.items():
            part = ok[ok[col].notna()]
            if len(part):
                lines += ["", f"## {title}", ""]
                if cascade:
                    lines += [CASCADE_NOTE, ""]
                lines += [_long(part, ["model", "attack", *extra], col)]
        accepted = _fakes_accepted(ok, meta, predictions, ["model", "attack", "ε", *extra])
        if accepted:
            lines += ["", "## Fakes accepted as real (share of fake images the detector calls real)", "", accepted]
        side = _implementations_section(df, predictions)
        if side:
            lines += ["", "## Implementations side by side", "", side]
        minimum = _curves_section(df, predictions)
        if minimum:
            lines += ["", "## Minimum-norm attacks", "", minimum]
        comparison = _defense_comparison(ok, extra, predictions, cascade)
        if comparison:
            lines += ["", "## Defense comparison", "", comparison]
        draws = _draws_table(ok, extra)
        if draws:
            lines += ["", "## Randomized defenses over several draws", "", draws]
        for name in plot_names or []:
            title = PLOT_TITLES[name.rsplit("-", 1)[-1].removesuffix(".png")]
            lines += ["", f"## {title}", "", f"![{title.lower()}]({name})"]
        lines += ["", "## Perturbation and cost", "", _cost_table(ok, extra)]
    lines += ["", "## Flags", "", _flags_section(df)]
    not_ok = df[df["status"] != "ok"]
    if len(not_ok):
        lines += ["", "## Skipped and failed cells", ""]
        for (status, reason), group in not_ok.groupby(["status", "reason"], sort=False):
            models = ", ".join(f"`{m}`" for m in dict.fromkeys(group["model"]))
            cells = ", ".join(f"`{c}`" for c in group["cell_id"].head(3))
            more = f", … {len(group) - 3} more" if len(group) > 3 else ""
            lines.append(f"- **{status}**, {len(group)} cells of {models} ({cells}{more}): {reason}")
    nxt = _what_next(df, meta)
    if nxt:
        lines += ["", "## What next", "", *nxt]
    lines += ["", "## Environment", "", _environment(meta), ""]
    return wrap("\n".join(lines))


def _what_next(df: pd.DataFrame, meta: dict[str, Any]) -> list[str]:
    """A few bullets on what would make this run say more: cells to enable, attacks to add, indicators to act on."""
    from bench.flags import split

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


WIDTH = 120  # prose is wrapped here; markdown joins the lines of a paragraph again


def wrap(text: str, width: int = WIDTH) -> str:
    """Paragraphs and bullets wrapped at ``width`` (tables, headings, images and code left alone), so a report reads in
    a terminal and a diff as well as on GitHub."""
    import textwrap

    out, fenced = [], False
    for line in text.split("\n"):
        if line.startswith("```"):
            fenced = not fenced
        if fenced or len(line) <= width or line.lstrip().startswith(("|", "#", "![", "```")):
            out.append(line)
            continue
        bullet = line.startswith("- ")
        out.append(textwrap.fill(line, width, subsequent_indent="  " if bullet else "", break_long_words=False,
                                 break_on_hyphens=False))
    return "\n".join(out)


def _fakes_accepted(ok: pd.DataFrame, meta: dict[str, Any], predictions: pd.DataFrame | None, index: list[str]) -> str | None:
    """For a real-vs-fake data set: per detector, attack and defense, the share of fakes the
    attacker gets accepted as real; the "no attack" rows are the detector's own miss rate."""
    datasets = meta.get("datasets") or {meta.get("dataset", {}).get("name"): meta.get("dataset", {})}
    faces = {d.get("name", name): d["class_names"] for name, d in datasets.items() if {"fake", "real"} <= set(d.get("class_names") or [])}
    if predictions is None or not faces:
        return None
    ok = ok[ok["dataset"].isin(list(faces))]
    names = next(iter(faces.values()))  # `bench data faces` always orders the classes fake, real
    fake, real = names.index("fake"), names.index("real")
    fakes = predictions[(predictions["label"] == fake) & predictions["cell_id"].isin(ok["cell_id"])]
    if fakes.empty:
        return None
    rates = fakes.assign(r=fakes["robust_pred"] == real, c=fakes["clean_pred"] == real).groupby("cell_id")[["r", "c"]].mean()
    merged = ok.merge(rates, left_on="cell_id", right_index=True)
    clean = merged[merged["eval_mode"] == "oblivious"].drop_duplicates(["model", "defense", *index[3:]])
    clean = clean.assign(attack="(no attack)", r=clean["c"], column=clean["defense"])
    clean["ε"] = "-"
    both = pd.concat([clean, merged])
    order = _group_by_defense(list(dict.fromkeys(merged["column"])))
    table = both.pivot_table(index=index, columns="column", values="r", aggfunc="first", sort=False)
    table = table[[d for d in order if d in table.columns]].map(_pct).reset_index()
    table.columns.name = None
    models = {m: i for i, m in enumerate(dict.fromkeys(merged["model"]))}
    table = table.sort_values("model", key=lambda col: col.map(models), kind="stable")
    return table.to_markdown(index=False)


def _dataset_lines(meta: dict[str, Any]) -> str:
    datasets = list((meta.get("datasets") or {}).values()) or [meta.get("dataset", {})]
    return "\n\n".join(_dataset_line(ds) for ds in datasets)


def _dataset_line(ds: dict[str, Any]) -> str:
    line = f"Dataset: `{ds.get('name', '?')}`, n = {ds.get('n', '?')} images."
    pre = ds.get("preprocess")
    if pre:  # one decoded copy per distinct preprocessing; say which models read this one
        models = ", ".join(f"`{m}`" for m in ds.get("models") or [])
        line += (f" Decoded once at {pre['input_size']} px (shorter side resized to {pre['resize_size']} px, "
                 f"{pre['interpolation']}, centre crop) for {models}.")
    if ds.get("name") == "samples":
        # describe the images this run used (a `limit` keeps fewer photos or views)
        ids = [str(i) for i in ds.get("ids") or []]
        photos = list(dict.fromkeys(i.split(":")[0] for i in ids))
        views = list(dict.fromkeys(i.split(":", 1)[1] for i in ids if ":" in i))
        line += (f" These are {len(photos)} real photo(s) ({', '.join(photos)}; bundled with scikit-image and matplotlib)"
                 f" with their true ImageNet class, in {len(views)} view(s) ({', '.join(views)}; crops are centre crops)")
        line += (": views of one photo are not independent samples, so read the rates as a demonstration, not an"
                 " estimate of population accuracy." if len(ids) > len(photos) else
                 ": read the rates as a demonstration, not an estimate of population accuracy.")
    if ds.get("note"):
        line += f" **{ds['note']}**"
    if ds.get("skipped"):
        line += f" {len(ds['skipped'])} unreadable image(s) were skipped: " + ", ".join(f"`{p}`" for p, _ in ds["skipped"][:10])
    return line


def _pct(x: float) -> str:
    return "–" if pd.isna(x) else f"{100 * x:.1f} %"


def _with_ci(df: pd.DataFrame, value: str) -> pd.Series:
    lo, hi = f"{value}_ci_low", f"{value}_ci_high"
    if lo not in df:
        return df[value].map(_pct)
    return pd.Series([_pct(v) if pd.isna(v) or pd.isna(a) else f"{100 * v:.1f} % [{100 * a:.0f}–{100 * b:.0f}]"
                      for v, a, b in zip(df[value], df[lo], df[hi])], index=df.index)


def _long(df: pd.DataFrame, index: list[str], value: str) -> str:
    """A row per ``index`` (defense and mode included), a column per ε: narrow however many defenses there are;
    a section per model when there are several."""
    df = df.assign(_cell=_with_ci(df, value), mode=df["eval_mode"].map(lambda m: m.removeprefix("adaptive-")),
                   _order=range(len(df)))
    epsilons = [format_eps(e) for e in sorted(df["eps"].dropna().unique())] + (["–"] if df["eps"].isna().any() else [])
    parts = []
    models = list(dict.fromkeys(df["model"]))
    for model in models:
        part = df[df["model"] == model]
        rows = [c for c in index if c != "model"] + ["defense", "mode"]
        table = part.pivot_table(index=rows, columns="ε", values="_cell", aggfunc="first", sort=False)
        table = table[[e for e in epsilons if e in table.columns]].fillna("–").reset_index()
        table.columns.name = None
        text = table.to_markdown(index=False)
        parts.append(f"**{model}**\n\n{text}" if len(models) > 1 else text)
    return "\n\n".join(parts)


def _pivot(df: pd.DataFrame, index: list[str], value: str) -> str:
    df = df.assign(_cell=_with_ci(df, value))
    column = "column" if "column" in df else "defense"
    order = list(dict.fromkeys(df.sort_values("eval_mode", key=lambda m: m != "oblivious", kind="stable")[column])) if "eval_mode" in df else list(dict.fromkeys(df[column]))
    order = _group_by_defense(order)
    table = df.pivot_table(index=index, columns=column, values="_cell", aggfunc="first", sort=False)
    table = table[[d for d in order if d in table.columns]].fillna("–").reset_index()
    table.columns.name = None
    return table.to_markdown(index=False)


def _group_by_defense(columns: list[str]) -> list[str]:
    """Each defense's oblivious column followed by its adaptive ones."""
    bases = list(dict.fromkeys(c.split(" (")[0] for c in columns))
    return [c for b in bases for c in columns if c.split(" (")[0] == b]


BROKEN_OBLIVIOUS_GAIN = 0.10  # a defense that seems to gain this much against oblivious attacks …
BROKEN_ADAPTIVE_GAIN = 0.02  # … but keeps no more than this against every attack is broken
SIGNIFICANCE = 0.05  # the level at which the report calls a paired difference significant


def _defense_comparison(ok: pd.DataFrame, extra: list[str], predictions: pd.DataFrame | None,
                        cascade: bool = False) -> str | None:
    """Per model (and norm): every defense ranked by its worst case over all attacks and modes, beside
    what it costs on clean images, what the oblivious attacks alone leave, its gain over no defense
    with McNemar's p-value on the same images, and a verdict on whether the oblivious gain survives
    an attacker who knows the defense."""
    if predictions is None or predictions.empty:
        return None
    parts = []
    bounded = ok[ok["eps"].notna() & (ok["norm"] != "none")]
    for key, group in bounded.groupby(["model", *extra, "norm"], sort=False):
        if group["defense"].nunique() < 2 or not (group["defense"] == "none").any():
            continue
        spec = dict(zip(["model", *extra, "norm"], key if isinstance(key, tuple) else (key,)))
        device = spec.get("device", group["device"].iloc[0])
        precision = spec.get("precision", group["precision"].iloc[0])
        where = dict(model=spec["model"], device=device, precision=precision, norm=spec["norm"])
        epsilons = sorted(group["eps"].unique())
        base = {e: worst_case.survival(group, predictions, defense="none", eps=e, **where) for e in epsilons}
        clean0 = group[group["defense"] == "none"]["clean_acc"].iloc[0]
        rows = [_defense_row(defense, d, epsilons, base, clean0, group, predictions, where, cascade)
                for defense, d in group.groupby("defense", sort=False)]
        ranked = [row for _, row in sorted(rows, key=lambda r: r[0])]
        per_eps = [k for k in ranked[0] if k.startswith("ε ")]
        main = [{"rank": i, **{k: v for k, v in row.items() if k not in per_eps}} for i, row in enumerate(ranked, 1)]
        detail = [{"rank": i, "defense": row["defense"], "ε": format_eps(eps),
                   "oblivious → worst case (p)": row[f"ε {format_eps(eps)}: oblivious → worst case (p)"],
                   "gain (p)": row[f"ε {format_eps(eps)}: gain (p)"]}
                  for i, row in enumerate(ranked, 1) for eps in epsilons]
        title = " · ".join(str(v) for v in spec.values())
        parts.append(f"### {title}\n\n" + pd.DataFrame(main).to_markdown(index=False) + "\n\n"
                     + pd.DataFrame(detail).to_markdown(index=False))
    if not parts:
        return None
    return "\n\n".join(parts) + (
        "\n\nRanked by the worst case over every attack and mode at the largest ε (the share of images no attack broke: "
        "the number that counts), then over all ε, then clean accuracy. Each ε shows the worst case over the oblivious "
        "attacks alone → over every attack and mode (p: McNemar's exact test between the two, on the same images), and "
        "the worst case's gain over no defense in points (p: the same test against no defense's worst case). "
        "Δ: clean accuracy points against no defense. "
        f"**broken by adaptive attack**: at some ε the oblivious attacks leave ≥ {100 * BROKEN_OBLIVIOUS_GAIN:.0f} points "
        f"more than without the defense, and every attack together ≤ {100 * BROKEN_ADAPTIVE_GAIN:.0f} points more. "
        f"**costs robustness**: at no ε does it keep more than {100 * BROKEN_ADAPTIVE_GAIN:.0f} points, and at some ε every "
        f"attack together leaves more than {100 * BROKEN_ADAPTIVE_GAIN:.0f} points less than without it (p < {SIGNIFICANCE}). "
        f"A gain with p ≥ {SIGNIFICANCE} is not significant on these images."
        + (" With `cascade: true` the oblivious attacks alone were not run on every image (images already broken, by "
           "any attack, were skipped), so their worst case is not shown and no defense is called broken on it."
           if cascade else "")
    )


def _defense_row(defense: str, d: pd.DataFrame, epsilons: list[float], base: dict, clean0: float, group: pd.DataFrame,
                 predictions: pd.DataFrame, where: dict, cascade: bool = False) -> tuple[tuple, dict]:
    """One defense's row of the comparison and its sort key."""
    clean = d["clean_acc"].iloc[0]
    row = {"defense": defense, "clean acc (Δ)": f"{_pct(clean)} ({100 * (clean - clean0) + 0.0:+.0f})"}
    adaptive = bool((d["eval_mode"] != "oblivious").any())
    strongest, gains = [], []
    for eps in epsilons:
        every = worst_case.survival(group, predictions, defense=defense, eps=eps, **where)
        oblivious = None if cascade else worst_case.survival(group, predictions, defense=defense, eps=eps,
                                                             modes=("oblivious",), **where)
        if every is None:
            row[f"ε {format_eps(eps)}: oblivious → worst case (p)"] = "–"
            row[f"ε {format_eps(eps)}: gain (p)"] = "–"
            strongest.append(None)
            continue
        text = _pct(every.mean())
        if adaptive and oblivious is not None:
            text = f"{_pct(oblivious.mean())} → {text} ({format_p(paired(oblivious, every)[2])})"
        row[f"ε {format_eps(eps)}: oblivious → worst case (p)"] = text
        none = base.get(eps)
        if none is not None and defense != "none":
            gain = every.mean() - none.mean()
            p = paired(every, none)[2]
            row[f"ε {format_eps(eps)}: gain (p)"] = f"{100 * gain:+.0f} ({format_p(p)})"
            gains.append((None if oblivious is None else oblivious.mean() - none.mean(), gain, p,
                          None if oblivious is None else paired(oblivious, none)[2]))
        else:
            row[f"ε {format_eps(eps)}: gain (p)"] = "–"
        strongest.append(every.mean())
    speed = d["defense_images_per_s"].dropna()
    row["defense img/s"] = f"{speed.iloc[0]:.0f}" if len(speed) else "–"
    row["verdict"] = _verdict(defense, adaptive, gains)
    known = [x for x in strongest if x is not None]
    return (-(strongest[-1] or 0), -sum(known) / max(1, len(known)), -clean), row


def _verdict(defense: str, adaptive: bool, gains: list[tuple[float | None, float, float, float | None]]) -> str:
    """From per ε: (oblivious gain over none, every attack's gain, the latter's p, the former's p)."""
    if defense == "none":
        return "baseline"
    if not adaptive:
        return "not attacked adaptively"
    broken = [g for g in gains if g[0] is not None and g[0] >= BROKEN_OBLIVIOUS_GAIN - 1e-9 and g[1] <= BROKEN_ADAPTIVE_GAIN + 1e-9]
    if broken:
        p = min(g[3] for g in broken)
        return "**broken by adaptive attack**" + ("" if p < SIGNIFICANCE else f" (its oblivious gain is not significant: p {format_p(p)})")
    best = max(gains, key=lambda g: g[1], default=None)
    worst = min(gains, key=lambda g: g[1], default=None)
    if worst is not None and worst[1] < -BROKEN_ADAPTIVE_GAIN and worst[2] < SIGNIFICANCE and (best is None or best[1] <= BROKEN_ADAPTIVE_GAIN):
        # the defended model falls further than the bare one: the transform helps the attack (seen on
        # adversarially trained models, whose robustness does not survive a change of input distribution)
        return f"**costs robustness**: down to {100 * worst[1]:+.0f} points against every attack (p {format_p(worst[2])})"
    if best is None or best[1] <= BROKEN_ADAPTIVE_GAIN:
        return "no robust gain"
    note = "" if best[2] < SIGNIFICANCE else f", not significant (p {format_p(best[2])})"
    return f"keeps up to {100 * best[1]:+.0f} points against every attack{note}"


def _draws_table(ok: pd.DataFrame, extra: list[str]) -> str | None:
    """Randomized defenses evaluated over several draws: one seeded draw against every draw."""
    part = ok[(ok["eval_draws"].fillna(1) > 1)] if "eval_draws" in ok else ok.iloc[:0]
    if part.empty:
        return None
    part = part.assign(cell=[f"{_pct(r)} / {_pct(a)}" for r, a in zip(part["robust_acc"], part["robust_acc_all_draws"])])
    table = part.pivot_table(index=["model", "attack", "defense", "eval_mode", *extra], columns="ε", values="cell", aggfunc="first", sort=False)
    draws = int(part["eval_draws"].max())
    return (table.reset_index().to_markdown(index=False) + f"\n\nRobust accuracy on one seeded draw of the defense per "
            f"image (robust_acc) / on every one of {draws} draws (robust_acc_all_draws: an image counts only if it "
            "survives them all). A randomized defense that looks robust on one draw but not on all is luck, not robustness.")


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
        "unconstrained-fails": (f"unbounded attack broke {_pct(get('unconstrained_success'))} of {get('unconstrained_images')}"
                                if get("unconstrained_success") is not None else f"broke {_pct(row.get('attack_success_rate'))}"),
        "softmax-output": "outputs are probabilities",
        "clean-at-chance": f"chance {_pct(get('chance_accuracy'))} (the model without defense)",
        "eps-rise": (f"{_pct(get('eps_rise', {}).get('accuracy_here'))} here, {_pct(get('eps_rise', {}).get('accuracy_there'))} "
                     f"at ε {format_eps(get('eps_rise', {}).get('smaller_eps'))}" if get("eps_rise") else "more accuracy at a larger ε"),
        "adaptive-weaker": (f"{_pct(get('adaptive_weaker', {}).get('adaptive_accuracy'))} against the oblivious attack's "
                            f"{_pct(get('adaptive_weaker', {}).get('oblivious_accuracy'))}" if get("adaptive_weaker")
                            else "more accuracy than the oblivious attack"),
        "black-box-stronger": (f"{get('black_box_only_images')} image(s) only a black-box attack broke"
                               if get("black_box_only_images") else "a black-box attack broke images it left standing"),
        "implementations-disagree": "; ".join(
            f"{_pct(d.get('robust_acc'))} here, {_pct(d.get('other_robust_acc'))} with {d.get('other')} "
            f"({d.get('only_other_broke')} image(s) only it broke, {d.get('only_this_broke')} only this one; p {format_p(d.get('p'))})"
            for d in (get("implementations_disagree") or [])) or "another library's implementation broke more images",
        "short-delta": f"max ‖δ‖∞ {255 * row.get('linf_max', float('nan')):.1f}/255",
        "non-finite": "NaN or inf logits",
    }.get(code, "")


def _trust_section(df: pd.DataFrame) -> str:
    """Each unreliable cell, its indicators with what they saw, and what to try; or why the numbers
    can be trusted as far as the indicators tell."""
    import json

    from bench.flags import FLAGS, split

    from bench.flags import verdict

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
        rows.append(f"- `{cell}`, robust accuracy {_pct(r['robust_acc'])}: "
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


def _worst_case_section(worst: pd.DataFrame) -> str:
    """The worst case per (model, defense) and ε, then which attack broke images first and what each
    attack broke alone."""
    import json

    w = worst.copy()
    w["ε"] = [f"{n} {format_eps(e)}" if w["norm"].nunique() > 1 else format_eps(e) for n, e in zip(w["norm"], w["eps"])]
    extra = [c for c in ("device", "precision") if w[c].nunique() > 1]
    w["cell"] = [f"{100 * v:.1f} % [{100 * a:.0f}–{100 * b:.0f}]" for v, a, b in
                 zip(w["worst_case_acc"], w["worst_case_acc_ci_low"], w["worst_case_acc_ci_high"])]
    table = w.pivot_table(index=["model", "defense", *extra], columns="ε", values="cell", aggfunc="first", sort=False)
    table = table[list(dict.fromkeys(w["ε"]))].fillna("–").reset_index()
    table.columns.name = None
    strongest, contributions = [], []
    for _, r in w.iterrows():
        where = {"model": r["model"], "defense": r["defense"], **{c: r[c] for c in extra}, "ε": r["ε"]}
        strongest.append({**where, "worst case": _pct(r["worst_case_acc"]),
                          "strongest single cell": f"{r['strongest']}: {_pct(r['strongest_acc'])}" if isinstance(r["strongest"], str) else "–"})
        first, only = json.loads(r["broke_first"]), json.loads(r["only_broken_by"])
        for attack in dict.fromkeys([*first, *only]):
            if first.get(attack) or only.get(attack):
                contributions.append({**where, "attack": attack, "broke first": first.get(attack, 0) or "–",
                                      "only it broke": only.get(attack, 0) or "–"})
    notes = []
    if (w["cells_not_ok"] > 0).any():
        notes.append("Some attacks failed or were skipped: their worst case misses them (column cells_not_ok in worst_case.parquet).")
    if (w["unreliable_cells"] > 0).any():
        notes.append("Cells flagged unreliable are part of these ensembles: where every attack fails the same way, the worst case is too high as well.")
    if (w["worst_case_acc_all_draws"] != w["worst_case_acc"]).any():
        notes.append("With a randomized defense drawn several times per image, worst_case_acc_all_draws in worst_case.parquet "
                     "counts an image only if it survives every draw of every attack.")
    return "\n\n".join([
        table.to_markdown(index=False),
        "Share of the n images classified correctly without attack and left correctly classified by every attack of the suite "
        "— every attack, every mode (oblivious and adaptive) and every smaller ε of the same norm — with its 95 % Wilson "
        "interval (AutoAttack's and RobustBench's robust accuracy). A minimum-norm attack counts at every ε of its norm with the images it broke within that ε; other attacks without a budget are not part of it. "
        "Written to worst_case.parquet (per image: worst_case_images.parquet).",
        pd.DataFrame(strongest).to_markdown(index=False),
        "What each attack added (images; an attack that broke none first and none alone is left out):",
        pd.DataFrame(contributions).to_markdown(index=False) if contributions else "No attack broke an image.",
        "'broke first': the first attack that broke each image, in the order ε ascending, then the suite's attack order, "
        "then oblivious, bpda, diff ('clean': misclassified without attack). 'only it broke': images no other attack of "
        "the ensemble broke (with `cascade: true` an image is attacked until one attack breaks it, so there this is "
        "'broke first' again; 'strongest single cell' is not shown, as a cascaded row counts images it never attacked).",
        *notes])


def _flags_section(df: pd.DataFrame) -> str:
    from bench.flags import FLAGS, split

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


def _models_table(df: pd.DataFrame) -> str | None:
    """Where each model came from, which weights it ran with, and its input size."""
    cols = ["model", "model_source", "weights", "input_size", "dataset"]
    if df.empty or not set(cols) <= set(df.columns):
        return None
    table = df[cols].drop_duplicates("model").rename(columns={"model_source": "source", "input_size": "input px"})
    return table.astype(object).where(table.notna(), "–").to_markdown(index=False)


def _cost_table(ok: pd.DataFrame, extra: list[str]) -> str:
    ok = ok.assign(crafted=[("–" if m == "oblivious" else c) for m, c in zip(ok["eval_mode"], ok["column"])])
    keys = ["model", "attack", "ε", "crafted", *extra]
    rows = ok.drop_duplicates(keys)  # an oblivious crafting is shared by all defenses of a (model, attack, ε)
    table = pd.DataFrame(
        {
            **{k: rows[k] for k in keys},
            "‖δ‖∞ ×255": (rows["linf_max"] * 255).round(2),
            "‖δ‖₂ mean": rows["l2_mean"].round(3),
            "batch": rows["batch_size"],
            "attack s": rows["attack_seconds"].round(2),
            "img/s": rows["attack_images_per_s"].round(1),
            "img·steps/s": rows["attack_steps_per_s"].round(1),
            "clean img/s": rows["clean_images_per_s"].round(1),
            "warm-up s": rows["warmup_seconds"].round(1),
            "peak MB": rows["peak_mem_mb"].round(0),
        }
    )
    if table["model"].nunique() == 1:  # said in the Models table; a column of one value only widens the lines
        table = table.drop(columns="model")
    note = (
        "\n\n'crafted' is the defense an adaptive attack was crafted through (– for oblivious). ‖δ‖∞ ×255 is the largest "
        "measured L∞ perturbation, ‖δ‖₂ mean the mean L2 one. Attack time covers "
        "crafting for all n images (one oblivious crafting serves every defense); img/s is attacked images per second, img·steps/s counts "
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


def _autoattack_section(df: pd.DataFrame, predictions: pd.DataFrame | None) -> str | None:
    """Each cell of the authors' AutoAttack (bench/attacks/autoattack_attacks.py): its robust accuracy, beside
    torchattacks' re-implementation of the same version, norm and ε on the same cell where the run has it
    (paired: the images only one of them broke, McNemar's p), and the ensemble's own log, robust accuracy
    after each of its attacks, read off the per-image record of which attack broke which image."""
    import json

    from bench.attacks import family
    from bench.attacks.autoattack_attacks import ORDER
    from bench.stats import mcnemar

    ok = df[df["status"] == "ok"]
    if "attack_source" not in ok or not (ok["attack_source"] == "autoattack").any():
        return None

    def key(r) -> tuple:
        args = json.loads(r["attack_args"]) if isinstance(r.get("attack_args"), str) else {}
        return (r["model"], r["defense"], r["eval_mode"], r["device"], r["precision"], family(str(r["attack_type"]), args))

    by_cell = ({cid: g.set_index("image").sort_index() for cid, g in predictions.groupby("cell_id")}
               if predictions is not None and not predictions.empty else {})
    theirs = {key(r): r for r in ok[(ok["attack_source"] == "torchattacks") & (ok["attack_type"] == "autoattack")].to_dict("records")}
    rows, logs = [], []
    for r in ok[ok["attack_source"] == "autoattack"].to_dict("records"):
        where = r["defense"] + ("" if r["eval_mode"] == "oblivious" else f" ({r['eval_mode'].removeprefix('adaptive-')})")
        other = theirs.get(key(r))
        row = {"model": r["model"], "defense": where, "ε": format_eps(r["eps"]), "norm": r["norm"],
               "version": str(r["attack_type"]).split("/", 1)[1], "authors'": _with_ci(pd.DataFrame([r]), "robust_acc").iloc[0],
               "torchattacks'": _pct(other["robust_acc"]) if other else "–", "only authors' broke": "–",
               "only torchattacks' broke": "–", "p": "–"}
        mine = by_cell.get(r["cell_id"])
        if other and mine is not None and other["cell_id"] in by_cell:
            theirs_p = by_cell[other["cell_id"]]
            right = (mine["clean_pred"] == mine["label"]) & mine["attacked"] & theirs_p["attacked"]
            a, b = right & (mine["robust_pred"] != mine["label"]), right & (theirs_p["robust_pred"] != theirs_p["label"])
            row.update({"only authors' broke": int((a & ~b).sum()), "only torchattacks' broke": int((b & ~a).sum()),
                        "p": format_p(mcnemar(int((a & ~b).sum()), int((b & ~a).sum())))})
        rows.append(row)
        if mine is not None and "broken_by" in mine:
            version = str(r["attack_type"]).split("/", 1)[1]
            args = json.loads(r["attack_args"]) if isinstance(r.get("attack_args"), str) else {}
            order = ORDER.get(version) or tuple(args.get("attacks") or ())
            standing, n, done, steps = (mine["clean_pred"] == mine["label"]), len(mine), set(), []
            for name in order:
                done.add(name)
                steps.append(f"after {name.upper()} {_pct((standing & ~mine['broken_by'].isin(done).fillna(False)).sum() / n)}")
            logs.append(f"- `{r['cell_id']}`: initial accuracy {_pct(standing.sum() / n)}; robust accuracy " + ", ".join(steps))
    text = ("The authors' AutoAttack (Croce & Hein; `autoattack/<version>`, their code from `pyautoattack`) is the one "
            "RobustBench's leaderboard and the papers that cite it run: read this figure. torchattacks' `autoattack` re-implements "
            "it with 10 iterations where the authors' APGD-CE, APGD-T and FAB-T take 100 (and another Square schedule), and "
            "leaves standing images the authors' code breaks; where the run has both on the same cell, it stands beside it, "
            "with the images only one of them broke and McNemar's exact p.\n\n" + pd.DataFrame(rows).to_markdown(index=False))
    if logs:
        text += ("\n\nAutoAttack's own log, per cell (images broken after 8-bit quantisation and the defense, by the "
                 "attack of the ensemble whose output they are):\n\n" + "\n".join(logs))
    return text


def _implementations_section(df: pd.DataFrame, predictions: pd.DataFrame | None) -> str | None:
    """The same attack from two libraries on the same images (bench/crosscheck.py), a row per pair."""
    from bench.crosscheck import DISAGREE_P, comparisons

    table = comparisons(df, predictions)
    if table.empty:
        return None
    rows = []
    for _, r in table.iterrows():
        where = r["defense"] + ("" if r["eval_mode"] == "oblivious" else f" ({r['eval_mode'].removeprefix('adaptive-')})")
        rows.append({"model": r["model"], "defense": where, "attack": r["family"],
                     "A": f"{r['attack_a']} ({r['source_a']}) {_pct(r['robust_acc_a'])}",
                     "B": f"{r['attack_b']} ({r['source_b']}) {_pct(r['robust_acc_b'])}",
                     "both broke": int(r["both_broke"]), "only A": int(r["only_a"]), "only B": int(r["only_b"]),
                     "p": format_p(r["p"]), "": "agree" if r["agree"] else "**disagree**"})
    text = pd.DataFrame(rows).to_markdown(index=False)
    return (f"Each pair runs the same attack family and budget (same ε, steps, step size and random start) from two "
            f"libraries, on the same images of the same model: robust accuracy of each, the images both broke and those "
            f"only one broke, and McNemar's exact test on those. p < {DISAGREE_P} is a disagreement: the weaker one is "
            f"flagged `implementations-disagree`.\n\n" + text)


def _curves_section(df: pd.DataFrame, predictions: pd.DataFrame | None) -> str | None:
    """Each minimum-norm attack: what it broke, its median smallest perturbation, robust accuracy at a few ε read
    off its one run, and its optimality against the per-image best of every attack (bench/curves.py)."""
    from bench import curves

    table = curves.table(df, predictions)
    if table.empty:
        return None
    rows = []
    for _, r in table.iterrows():
        clean, d = curves.per_image(predictions, r["cell_id"])
        grid = [r["reach"] * f for f in (0.25, 0.5, 1.0)]
        unit = (lambda e: f"{255 * e:.1f}/255") if r["norm"] == "Linf" else (lambda e: f"{e:.3g}")
        where = r["defense"] + ("" if r["eval_mode"] == "oblivious" else f" ({r['eval_mode'].removeprefix('adaptive-')})")
        rows.append({"model": r["model"], "defense": where, "attack": r["attack"], "norm": r["norm"],
                     "broken": f"{r['broken']} of {r['n']}",
                     "median ‖δ‖": unit(r["median_distance"]) if r["median_distance"] == r["median_distance"] else "–",
                     **{f"ε = {f}·E": f"{_pct(curves.robust_at(clean, d, e))} (ε {unit(e)})" for f, e in zip(("¼", "½", "1"), grid)},
                     "optimality": f"{r['optimality']:.2f}"})
    return ("An attack that searches the smallest perturbation gives robust accuracy at every ε from one run (an image "
            "broken with perturbation d is broken at every ε ≥ d; d measured on the 8-bit image that was evaluated). "
            "E is the largest smallest perturbation the per-image best of every attack of the same norm found; "
            "**optimality** (AttackBench's sense) is 1 when an attack's curve is that best one, 0 when it breaks "
            "nothing: (area of clean accuracy − area of its curve) / (area of clean accuracy − area of the best curve) "
            "on [0, E]. Minimum-norm attacks also join the worst case at every ε of their norm.\n\n"
            + pd.DataFrame(rows).to_markdown(index=False))


def _plot_curves(df: pd.DataFrame, predictions: pd.DataFrame | None, path: Path) -> Path | None:
    """Robust accuracy over ε from each minimum-norm attack's one run, and the per-image best over every
    attack of the same norm (thick): a panel per model, defense, mode and norm."""
    import numpy as np

    from bench import curves

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


def _plot(df: pd.DataFrame, path: Path, worst: pd.DataFrame | None = None) -> Path | None:
    """Robust accuracy against ε: a panel per (model, attack), a line per defense and mode
    (adaptive dashed); then a panel per model and norm with the worst case over all attacks per
    defense (thick), the envelope below every attack's line."""
    ok = df[(df["status"] == "ok") & df["eps"].notna()]
    if ok.empty:
        return None
    many = ok[["device", "precision"]].drop_duplicates().shape[0] > 1

    def lines(part):
        for label, g in part.groupby(["defense", "eval_mode", "device", "precision"], sort=False):
            g = g.sort_values("eps")
            name = label[0] if label[1] == "oblivious" else f"{label[0]} ({label[1].removeprefix('adaptive-')})"
            name += f" {label[2]} {label[3]}" if many else ""
            yield g["eps"] * 255, g["robust_acc"], name, "--" if label[1] != "oblivious" else "-"

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
                envelope.append((g["eps"] * 255, g["worst_case_acc"], f"{base}: worst case", "-",
                                 {"width": 3.5, "colour_of": base}))
            panels.append((f"{model} · worst case over all attacks ({norm}, thick)", envelope))
    return _draw(panels, path, "ε (×1/255)", "robust accuracy (%)")


def _plot_defenses(df: pd.DataFrame, path: Path, worst: pd.DataFrame | None = None) -> Path | None:
    """Robust accuracy against ε, a panel per (model, attack, defense): the oblivious attack solid,
    each adaptive method dashed, no defense dotted. Only when adaptive attacks ran on at least two
    defenses; otherwise one panel per (model, attack) reads better."""
    ok = df[(df["status"] == "ok") & df["eps"].notna()]
    adaptive = ok[ok["eval_mode"] != "oblivious"]
    if adaptive["defense"].nunique() < 2 or not (ok["defense"] == "none").any():
        return None
    many = ok[["device", "precision"]].drop_duplicates().shape[0] > 1
    panels = []
    for (model, attack), group in ok.groupby(["model", "attack"], sort=False):
        base = group[(group["defense"] == "none") & (group["eval_mode"] == "oblivious")]
        for defense in dict.fromkeys(group.loc[group["defense"] != "none", "defense"]):
            lines = []
            for (dev, prec), b in base.groupby(["device", "precision"], sort=False):
                b = b.sort_values("eps")
                lines.append((b["eps"] * 255, b["robust_acc"], "no defense" + (f" {dev} {prec}" if many else ""), ":"))
            for (mode, dev, prec), g in group[group["defense"] == defense].groupby(["eval_mode", "device", "precision"], sort=False):
                g = g.sort_values("eps")
                name = mode.removeprefix("adaptive-") + (f" {dev} {prec}" if many else "")
                lines.append((g["eps"] * 255, g["robust_acc"], name, "-" if mode == "oblivious" else "--"))
            if worst is not None and len(worst):  # the envelope: what no attack of the suite (any mode) broke
                norm = group["norm"].iloc[0]
                w = worst[(worst["model"] == model) & (worst["defense"] == defense) & (worst["norm"] == norm)]
                for (dev, prec), g in w.groupby(["device", "precision"], sort=False):
                    g = g.sort_values("eps")
                    lines.append((g["eps"] * 255, g["worst_case_acc"], "worst case, all attacks" + (f" {dev} {prec}" if many else ""),
                                  "-", {"width": 4.0, "colour": "black", "alpha": 0.3}))  # under the lines it bounds
            panels.append((f"{model} · {attack} · {defense}", lines))
    return _draw(panels, path, "ε (×1/255)", "robust accuracy (%)")


def _plot_quality(df: pd.DataFrame, path: Path) -> Path | None:
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
