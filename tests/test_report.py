"""The report: pivot tables at a glance, reasons for skipped cells, the environment."""

from __future__ import annotations

import re

import math

import pandas as pd

from bench.audit import worst_case
from bench.reporting.report import render
from bench.results import to_frame


def _row(**kw):
    base = dict(suite="s", run_id="r", status="ok", reason="", model="m", dataset="d", attack="pgd", eps=8 / 255,
                defense="none", eval_mode="oblivious", device="cpu", precision="fp32", batch_size=4, n=10,
                clean_acc=0.9, robust_acc=0.1, attack_success_rate=0.8, targeted_success_rate=math.nan, linf_max=8 / 255,
                l2_mean=1.0, attack_seconds=2.0, attack_images_per_s=5.0, clean_images_per_s=50.0, peak_mem_mb=100.0)
    base.update(kw)
    base["cell_id"] = f"{base['model']}/{base['attack']}/{base['defense']}"
    return base


META = {"suite": "s", "run_id": "r", "status": "complete", "cells": 3, "dataset": {"name": "d", "n": 10},
        "environment": {"torch": "2.x", "gpus": []}, "suite_file": "s.yaml", "suite_digest": "abc"}


def test_rate_tables_have_a_row_per_attack_defense_and_mode_and_a_column_per_eps():
    df = to_frame([_row(), _row(defense="jpeg-q75", robust_acc=0.6, clean_acc=0.8), _row(eps=4 / 255, robust_acc=0.3),
                   _row(model="r18", status="skipped", reason="put X at Y", robust_acc=math.nan)])
    text = render(df, META)
    robust = text.split("## Robust accuracy")[1].split("\n## ")[0]
    assert "| attack   | defense   | mode      | 4/255   | 8/255   |" in robust
    assert "| pgd      | none      | oblivious | 30.0 %  | 10.0 %  |" in robust
    assert "| pgd      | jpeg-q75  | oblivious | –       | 60.0 %  |" in robust
    assert "| defense   | m      |" in text.split("## Clean accuracy")[1]  # a row per defense, a column per model
    assert "**skipped**, 1 cells of `r18`" in text and "put X at Y" in text
    assert "Targeted success rate" not in text  # no targeted attack in this run


def test_an_interrupted_run_says_so():
    text = render(to_frame([_row()]), {**META, "status": "interrupted"})
    assert "This run is interrupted" in text


N = 20


def _defense_run():
    """Rows and per-image predictions of 20 images, all of class 0. Survivors by defense, mode and ε:
    none keeps {0, 1} at 2/255 and nothing at 4/255; 'squeeze' seems to keep 8 and 6 images against the
    oblivious attack and keeps what none keeps against the adaptive one; 'noise' keeps nested sets for
    each mode (oblivious 8/6, bpda 7/5, diff 6/4); 'blur' was never attacked adaptively (3/1)."""
    plan = {  # (defense, mode): (survivors at 2/255, at 4/255, images wrong without attack)
        ("none", "oblivious"): (2, 0, 0),
        ("squeeze", "oblivious"): (8, 6, 4), ("squeeze", "adaptive-bpda"): (2, 0, 4),
        ("noise", "oblivious"): (8, 6, 6), ("noise", "adaptive-bpda"): (7, 5, 6), ("noise", "adaptive-diff"): (6, 4, 6),
        ("blur", "oblivious"): (3, 1, 3),
    }
    rows, preds = [], []
    for (defense, mode), (k2, k4, wrong) in plan.items():
        for eps, k in ((2 / 255, k2), (4 / 255, k4)):
            r = _row(eps=eps, defense=defense, eval_mode=mode, n=N, robust_acc=k / N, clean_acc=1 - wrong / N,
                     norm="Linf", defense_images_per_s=900.0 if defense == "squeeze" else math.nan)
            r["cell_id"] += f"/{mode}/{eps}"
            rows.append(r)
            clean = [0 if i < N - wrong else 1 for i in range(N)]
            robust = [0 if i < k else 1 for i in range(N)]
            preds.append(pd.DataFrame({"cell_id": r["cell_id"], "image": range(N), "label": 0, "clean_pred": clean,
                                       "robust_pred": robust, "robust_all": [x == 0 for x in robust], "attacked": True}))
    return to_frame(rows), pd.concat(preds, ignore_index=True)


def _comparison(df, preds):
    worst, _ = worst_case.compute(df, preds)
    text = render(df, META, predictions=preds, worst=worst)
    section = text.split("## Defense comparison")[1].split("\n## ")[0]
    ranked, details = [t for t in section.split("\n\n") if t.startswith("|")][:2]
    rows = lambda t: [line for line in t.splitlines() if "---" not in line][1:]  # noqa: E731
    # a defense's line of the ranked table, and its lines per ε of the table below it
    return [main + " " + " ".join(d for d in rows(details) if d.split("|")[2] == main.split("|")[2]) for main in rows(ranked)]


def test_defenses_are_ranked_by_their_worst_case_over_every_attack_and_broken_ones_are_marked():
    rows = _comparison(*_defense_run())
    # squeeze's worst case ties with none's; the clean accuracy it costs puts it last
    assert [r.split("|")[2].strip() for r in rows] == ["noise", "blur", "none", "squeeze"]
    noise, blur, none, squeeze = rows
    # oblivious attacks alone → every attack and mode, with McNemar's p between the two (2 images: p = 0.5)
    assert "40.0 % → 30.0 % (0.500)" in noise and "30.0 % → 20.0 % (0.500)" in noise
    # +20 points over none's worst case on 4 images of 20, none the other way: p = 2/16
    assert "+20 (0.125)" in noise and "keeps up to +20 points against every attack, not significant (p 0.125)" in noise
    assert "**broken by adaptive attack**" in squeeze and "80.0 % (-20)" in squeeze and "900" in squeeze
    assert "not attacked adaptively" in blur and "baseline" in none


def test_a_defense_whose_oblivious_gain_is_small_is_not_called_broken():
    df, preds = _defense_run()
    # squeeze's oblivious survivors cut to one image more than none keeps at each ε: a gain of 5 points only
    for eps, keep in ((2 / 255, 3), (4 / 255, 1)):
        cell = df[(df["defense"] == "squeeze") & (df["eval_mode"] == "oblivious") & (df["eps"] == eps)]["cell_id"].iloc[0]
        preds.loc[(preds["cell_id"] == cell) & (preds["image"] >= keep), "robust_pred"] = 1
    squeeze = [line for line in _comparison(df, preds) if "| squeeze " in line]
    assert len(squeeze) == 1 and "no robust gain" in squeeze[0]


def test_the_report_opens_with_whether_its_numbers_can_be_trusted():
    ok = _row(flags="", verdict="reliable", indicators="{}")
    trusted = render(to_frame([ok]), META)
    assert trusted.index("## Can these numbers be trusted?") < trusted.index("## Models")
    assert "none fired on the 1 cells" in trusted
    bad = _row(attack="fgsm", flags="silent-success,eps-rise", verdict="unreliable",
               indicators='{"silent_success_images": 3}')
    text = render(to_frame([ok, bad]), META)
    section = text.split("## Can these numbers be trusted?")[1].split("\n## ")[0]
    assert "1 of 2 cells are unreliable" in section
    assert "m · fgsm · 8/255 · none · oblivious" in section and "**silent-success**: 3 image(s)" in section
    assert "- **silent-success** (1 cells):" in section and "Try: use an attack that keeps its best point" in section
    assert "m · pgd" not in section
    # a table written before the verdict column: its flags decide, and without one nothing is claimed
    old = render(to_frame([_row(flags="zero-grad")]), META)
    assert "1 of 1 cells are unreliable" in old.split("## Can these numbers be trusted?")[1].split("\n## ")[0]
    assert "made before the indicators of attack failure existed" in render(to_frame([_row(flags="")]), META)


def test_a_defense_that_lowers_the_worst_case_significantly_is_said_to_cost_robustness():
    from bench.reporting.defenses import _verdict

    # per ε: (oblivious gain, every attack's gain, its p, the oblivious gain's p)
    assert _verdict("jpeg-q50", True, [(-0.01, -0.21, 0.0001, 0.5), (0.0, -0.33, 0.0001, 1.0)]) == \
        "**costs robustness**: down to -33 points against every attack (p <0.001)"
    # a loss that is not significant, or beside a real gain at another ε, is not called a cost
    assert _verdict("jpeg-q50", True, [(0.0, -0.05, 0.2, 1.0)]) == "no robust gain"
    assert _verdict("median-3", True, [(0.0, -0.05, 0.01, 1.0), (0.1, 0.09, 0.001, 0.001)]).startswith("keeps up to +9")


def test_no_line_of_a_report_with_many_defenses_and_modes_is_wider_than_200_characters():
    from bench.audit import worst_case

    df, preds = _defense_run()
    worst, _ = worst_case.compute(df, preds)
    text = render(df, META, predictions=preds, worst=worst)
    assert "## Defense comparison" in text and "## Worst case over all attacks" in text
    widest = max(text.splitlines(), key=len)
    assert len(widest) <= 200, widest


def test_the_report_ends_with_what_to_do_next():
    df = to_frame([_row(defense="jpeg-q75"), _row(model="r18", status="skipped", reason="weights: put X at Y"),
                   _row(attack="fgsm", status="failed", reason="ValueError: boom", verdict="unreliable")])
    text = render(df, META)
    nxt = text.split("## What next")[1].split("\n## ")[0].replace("\n  ", " ")
    assert "1 cell(s) skipped (r18): weights: put X at Y" in nxt
    assert "--retry-failed" in nxt and "eval_mode: [oblivious, adaptive]" in nxt and "One attack per ε" in nxt
    assert "## What next" not in render(to_frame([_row(), _row(attack="fgsm")]), META)


def test_a_gain_resting_only_on_unreliable_adaptive_cells_is_not_established():
    from bench.reporting.defenses import _verdict

    gains = [(0.3, 0.38, 0.0001, 0.0001), (0.2, 0.25, 0.001, 0.001)]  # +38 and +25 points at two ε, significant
    unreliable = (2, 0, {"incomplete-optimization": 2}, True)  # both adaptive cells at an ε flagged
    text = _verdict("noise-0.05", True, gains, [unreliable, unreliable])
    assert text.startswith("**gain not established**") and "keeps" not in text
    assert "incomplete-optimization ×4" in text and "more steps" in text and "eot_samples" in text
    assert "other adaptive mode" in text
    # a reliable adaptive cell at the second ε only: the gain stated is the one it backs (+25), not +38
    assert _verdict("noise-0.05", True, gains, [unreliable, (2, 1, {"incomplete-optimization": 1}, True)]) == \
        "keeps up to +25 points against every attack (1 of 2 adaptive cells at that ε reliable)"
    # "broken" needs no reliable cell: an unreliable attack only left too much
    assert _verdict("jpeg-q50", True, [(0.2, 0.0, 0.5, 0.001)], [unreliable]) == "**broken by adaptive attack**"


def test_eps_reads_in_the_unit_the_suite_gave_it_in():
    from bench.specs import eps_axis, eps_key, format_eps

    assert [format_eps(e) for e in (0.2, 0.15, 1.0, 8 / 255, 0.5)] == ["0.2", "0.15", "1", "8/255", "0.5"]
    assert eps_key(0.2) == "51/255"  # ids keep their old form: runs of older versions still pair
    assert eps_axis([2 / 255, 8 / 255]) == (255.0, "ε (×1/255)") and eps_axis([0.1, 0.2]) == (1.0, "ε")


def test_a_digits_report_says_its_images_were_resized_whole_and_labels_decimal_eps_as_given(tmp_path):
    import yaml

    from bench.runner import run_suite
    from bench.suite import load_suite

    doc = {"name": "whole", "data": {"source": "digits", "limit": 8, "image_size": 16},
           "models": [{"name": "cnn", "arch": "small_cnn", "num_classes": 10}],
           "attacks": [{"name": "fgsm", "type": "fgsm", "eps": [0.1, 0.2]}], "unconstrained_check": False}
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(doc))
    report = run_suite(load_suite(tmp_path / "s.yaml"), tmp_path / "r", tmp_path / "p").report
    assert "resized whole" in report and "shorter side" not in report and "centre crop" not in report
    labels = re.sub(r"`[^`]*eps=[^`]*`", "", report)  # cell ids keep their fixed form (runs pair by them)
    assert "51/255" not in labels and "0.2" in labels


def test_an_unreliable_authors_autoattack_cell_is_shown_as_an_upper_bound():
    import pandas as pd

    from bench.reporting.autoattack import autoattack_section

    row = {"status": "ok", "attack_source": "autoattack", "attack_type": "autoattack/standard", "attack_args": "{}",
           "model": "m", "defense": "none", "eval_mode": "oblivious", "device": "cpu", "precision": "fp32", "eps": 0.1,
           "norm": "Linf", "robust_acc": 0.7, "robust_acc_ci_low": 0.6, "robust_acc_ci_high": 0.8, "cell_id": "c",
           "verdict": "unreliable", "flags": "ensemble-weaker"}
    text = autoattack_section(pd.DataFrame([row]), None)
    assert "≤ 70" in text and "unreliable (ensemble-weaker)" in text
    assert "≤ 70" not in autoattack_section(pd.DataFrame([{**row, "verdict": "reliable", "flags": ""}]), None)
