"""The rate tables: clean and robust accuracy per model, attack, defense and ε; models; cost; randomized defenses' draws."""

from __future__ import annotations

import pandas as pd

from bench.reporting.text import pct

RATE_COLUMNS = {
    "robust_acc": "Robust accuracy (attacked, then defended)",
    "attack_success_rate": "Attack success rate (among images the defended model got right)",
    "targeted_success_rate": "Targeted success rate (share classified as the target)",
}


CASCADE_NOTE = ("This run used `cascade: true`: each attack ran only on the images still standing (column n_attacked), and "
                "a row counts the images its attack never ran on as they are without attack. Read the worst case over all "
                "attacks above; a single row is not that attack's robust accuracy.")


def models_table(df: pd.DataFrame) -> str | None:
    """Where each model came from, which weights it ran with, and its input size."""
    cols = ["model", "model_source", "weights", "input_size", "dataset"]
    if df.empty or not set(cols) <= set(df.columns):
        return None
    table = df[cols].drop_duplicates("model").rename(columns={"model_source": "source", "input_size": "input px"})
    return table.astype(object).where(table.notna(), "–").to_markdown(index=False)


def cost_table(ok: pd.DataFrame, extra: list[str]) -> str:
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


def draws_table(ok: pd.DataFrame, extra: list[str]) -> str | None:
    """Randomized defenses evaluated over several draws: one seeded draw against every draw."""
    part = ok[(ok["eval_draws"].fillna(1) > 1)] if "eval_draws" in ok else ok.iloc[:0]
    if part.empty:
        return None
    part = part.assign(cell=[f"{pct(r)} / {pct(a)}" for r, a in zip(part["robust_acc"], part["robust_acc_all_draws"])])
    table = part.pivot_table(index=["model", "attack", "defense", "eval_mode", *extra], columns="ε", values="cell", aggfunc="first", sort=False)
    draws = int(part["eval_draws"].max())
    return (table.reset_index().to_markdown(index=False) + f"\n\nRobust accuracy on one seeded draw of the defense per "
            f"image (robust_acc) / on every one of {draws} draws (robust_acc_all_draws: an image counts only if it "
            "survives them all). A randomized defense that looks robust on one draw but not on all is luck, not robustness.")
