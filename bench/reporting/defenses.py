""""Defense comparison": what each defense buys against oblivious and adaptive attacks, and its verdict."""

from __future__ import annotations

import pandas as pd

from bench.audit import worst_case
from bench.audit.stats import format_p, paired
from bench.reporting.text import pct
from bench.specs import format_eps

BROKEN_OBLIVIOUS_GAIN = 0.10  # a defense that seems to gain this much against oblivious attacks …


BROKEN_ADAPTIVE_GAIN = 0.02  # … but keeps no more than this against every attack is broken


SIGNIFICANCE = 0.05  # the level at which the report calls a paired difference significant


def defense_comparison(ok: pd.DataFrame, extra: list[str], predictions: pd.DataFrame | None,
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
    row = {"defense": defense, "clean acc (Δ)": f"{pct(clean)} ({100 * (clean - clean0) + 0.0:+.0f})"}
    adaptive = bool((d["eval_mode"] != "oblivious").any())
    strongest, gains, evidence = [], [], []
    for eps in epsilons:
        every = worst_case.survival(group, predictions, defense=defense, eps=eps, **where)
        oblivious = None if cascade else worst_case.survival(group, predictions, defense=defense, eps=eps,
                                                             modes=("oblivious",), **where)
        if every is None:
            row[f"ε {format_eps(eps)}: oblivious → worst case (p)"] = "–"
            row[f"ε {format_eps(eps)}: gain (p)"] = "–"
            strongest.append(None)
            continue
        text = pct(every.mean())
        if adaptive and oblivious is not None:
            text = f"{pct(oblivious.mean())} → {text} ({format_p(paired(oblivious, every)[2])})"
        row[f"ε {format_eps(eps)}: oblivious → worst case (p)"] = text
        none = base.get(eps)
        if none is not None and defense != "none":
            gain = every.mean() - none.mean()
            p = paired(every, none)[2]
            row[f"ε {format_eps(eps)}: gain (p)"] = f"{100 * gain:+.0f} ({format_p(p)})"
            gains.append((None if oblivious is None else oblivious.mean() - none.mean(), gain, p,
                          None if oblivious is None else paired(oblivious, none)[2]))
            evidence.append(_adaptive_evidence(d[(d["eps"] - eps).abs() < 1e-12]))  # the cells behind this ε's gain
        else:
            row[f"ε {format_eps(eps)}: gain (p)"] = "–"
        strongest.append(every.mean())
    speed = d["defense_images_per_s"].dropna()
    row["defense img/s"] = f"{speed.iloc[0]:.0f}" if len(speed) else "–"
    row["verdict"] = _verdict(defense, adaptive, gains, evidence)
    known = [x for x in strongest if x is not None]
    return (-(strongest[-1] or 0), -sum(known) / max(1, len(known)), -clean), row


def _adaptive_evidence(d: pd.DataFrame) -> tuple[int, int, dict[str, int], bool]:
    """A defense's adaptive cells: how many, how many reliable, the unreliable ones' flags (code → cells), and whether
    the defense is randomized (EOT applies)."""
    from bench.audit.flags import FLAGS, split, verdict

    cells = d[d["eval_mode"] != "oblivious"]
    verdicts = [v if isinstance(v, str) and v else verdict(split(f))
                for v, f in zip(cells["verdict"] if "verdict" in cells else [None] * len(cells), cells["flags"])]
    codes: dict[str, int] = {}
    for v, f in zip(verdicts, cells["flags"]):
        if v == "unreliable":
            for c in split(f):
                if c in FLAGS and FLAGS[c].unreliable:
                    codes[c] = codes.get(c, 0) + 1
    randomized = "eot_samples" in cells and bool((cells["eot_samples"].fillna(1) > 1).any())
    return len(cells), sum(v == "reliable" for v in verdicts), codes, randomized


def _not_established(evidence: tuple[int, int, dict[str, int], bool], modes: set[str] | None = None) -> str:
    """The words for a gain that rests only on unreliable adaptive cells, with what to run next."""
    n, _, codes, randomized = evidence
    flags = ", ".join(f"{c} ×{k}" for c, k in sorted(codes.items(), key=lambda kv: -kv[1])) or "unreliable"
    tries = ["more steps"]
    if randomized or "transfer-failure" in codes:
        tries.append("more eot_samples")
    tries.append("the other adaptive mode (adaptive-bpda / adaptive-diff)")
    return (f"**gain not established**: every adaptive cell on it is unreliable ({n}: {flags}), so its worst case is at "
            f"best an upper bound; try {', '.join(tries)}")


def _verdict(defense: str, adaptive: bool, gains: list[tuple[float | None, float, float, float | None]],
             evidence: list[tuple[int, int, dict[str, int], bool]] | None = None) -> str:
    """From per ε: (oblivious gain over none, every attack's gain, the latter's p, the former's p); ``evidence``, per
    the same ε: the defense's adaptive cells there (count, reliable, flags, randomized). A gain is stated only at an ε
    where at least one adaptive cell is reliable, with their count beside it; "broken" and "costs" stand on any cell
    (an unreliable attack can only have left too much, so the true gain is smaller still)."""
    evidence = evidence or [(0, 0, {}, False)] * len(gains)
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
    # the gains an adaptive attack that is known to have worked stands behind (or no adaptive cell at that ε at all)
    backed = [(g, e) for g, e in zip(gains, evidence) if g[1] > BROKEN_ADAPTIVE_GAIN and (e[1] or not e[0])]
    if not backed:
        shown = [e for g, e in zip(gains, evidence) if g[1] > BROKEN_ADAPTIVE_GAIN]
        codes: dict[str, int] = {}
        for e in shown:
            for c, k in e[2].items():
                codes[c] = codes.get(c, 0) + k
        return _not_established((sum(e[0] for e in shown), 0, codes, any(e[3] for e in shown)))
    best, (n, reliable, _, _) = max(backed, key=lambda ge: ge[0][1])
    note = "" if best[2] < SIGNIFICANCE else f", not significant (p {format_p(best[2])})"
    support = f" ({reliable} of {n} adaptive cells at that ε reliable)" if n else ""
    return f"keeps up to {100 * best[1]:+.0f} points against every attack{note}{support}"
