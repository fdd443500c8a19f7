"""Formatting shared by the report's sections: percentages with intervals, long and pivot tables, prose wrapped at
120 columns."""

from __future__ import annotations

import pandas as pd

from bench.specs import format_eps

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


def pct(x: float) -> str:
    return "–" if pd.isna(x) else f"{100 * x:.1f} %"


def with_ci(df: pd.DataFrame, value: str) -> pd.Series:
    lo, hi = f"{value}_ci_low", f"{value}_ci_high"
    if lo not in df:
        return df[value].map(pct)
    return pd.Series([pct(v) if pd.isna(v) or pd.isna(a) else f"{100 * v:.1f} % [{100 * a:.0f}–{100 * b:.0f}]"
                      for v, a, b in zip(df[value], df[lo], df[hi])], index=df.index)


def long_table(df: pd.DataFrame, index: list[str], value: str) -> str:
    """A row per ``index`` (defense and mode included), a column per ε: narrow however many defenses there are;
    a section per model when there are several."""
    df = df.assign(_cell=with_ci(df, value), mode=df["eval_mode"].map(lambda m: m.removeprefix("adaptive-")),
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


def pivot(df: pd.DataFrame, index: list[str], value: str) -> str:
    df = df.assign(_cell=with_ci(df, value))
    column = "column" if "column" in df else "defense"
    order = list(dict.fromkeys(df.sort_values("eval_mode", key=lambda m: m != "oblivious", kind="stable")[column])) if "eval_mode" in df else list(dict.fromkeys(df[column]))
    order = group_by_defense(order)
    table = df.pivot_table(index=index, columns=column, values="_cell", aggfunc="first", sort=False)
    table = table[[d for d in order if d in table.columns]].fillna("–").reset_index()
    table.columns.name = None
    return table.to_markdown(index=False)


def group_by_defense(columns: list[str]) -> list[str]:
    """Each defense's oblivious column followed by its adaptive ones."""
    bases = list(dict.fromkeys(c.split(" (")[0] for c in columns))
    return [c for b in bases for c in columns if c.split(" (")[0] == b]
