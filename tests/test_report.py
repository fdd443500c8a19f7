"""The report: pivot tables at a glance, reasons for skipped cells, the environment."""

from __future__ import annotations

import math

from bench.report import render
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


def test_rows_are_model_attack_eps_and_columns_are_defenses():
    df = to_frame([_row(), _row(defense="jpeg-q75", robust_acc=0.6, clean_acc=0.8),
                   _row(model="r18", status="skipped", reason="put X at Y", robust_acc=math.nan)])
    text = render(df, META)
    assert "| model   | attack   | ε     | none   | jpeg-q75   |" in text
    assert "| m       | pgd      | 8/255 | 10.0 % | 60.0 %     |" in text
    assert "**skipped**, 1 cells of `r18`" in text and "put X at Y" in text
    assert "Targeted success rate" not in text  # no targeted attack in this run


def test_an_interrupted_run_says_so():
    text = render(to_frame([_row()]), {**META, "status": "interrupted"})
    assert "This run is interrupted" in text


def _defense_rows():
    """none; 'squeeze' gains 30 points against the oblivious attack and none against the adaptive one;
    'noise' gains 30 and keeps 20; 'blur' was never attacked adaptively."""
    rows = []
    for eps, base in ((2 / 255, 0.1), (4 / 255, 0.0)):
        rows += [_row(eps=eps, robust_acc=base),
                 _row(eps=eps, defense="squeeze", robust_acc=base + 0.3, clean_acc=0.8, defense_images_per_s=900.0),
                 _row(eps=eps, defense="squeeze", eval_mode="adaptive-bpda", robust_acc=base, clean_acc=0.8),
                 _row(eps=eps, defense="noise", robust_acc=base + 0.3, clean_acc=0.7),
                 _row(eps=eps, defense="noise", eval_mode="adaptive-bpda", robust_acc=base + 0.25, clean_acc=0.7),
                 _row(eps=eps, defense="noise", eval_mode="adaptive-diff", robust_acc=base + 0.2, clean_acc=0.7),
                 _row(eps=eps, defense="blur", robust_acc=base + 0.05, clean_acc=0.85)]
    for r in rows:
        r["cell_id"] += f"/{r['eval_mode']}/{r['eps']}"
    return to_frame(rows)


def test_defenses_are_ranked_by_their_best_adaptive_attack_and_broken_ones_are_marked():
    text = render(_defense_rows(), META)
    table = text.split("## Defense comparison")[1].split("\n## ")[0]
    rows = [line for line in table.splitlines() if line.startswith("|") and "---" not in line][1:]
    # squeeze ties with none against its adaptive attack; the clean accuracy it costs puts it last
    assert [r.split("|")[2].strip() for r in rows] == ["noise", "blur", "none", "squeeze"]
    noise, blur, none, squeeze = rows
    assert "40.0 % → 30.0 % (diff)" in noise and "30.0 % → 20.0 % (diff)" in noise  # the best adaptive method
    assert "keeps up to +20 points adaptively" in noise
    assert "**broken by adaptive attack**" in squeeze and "80.0 % (-10)" in squeeze and "900" in squeeze
    assert "not attacked adaptively" in blur and "baseline" in none


def test_a_defense_whose_oblivious_gain_is_small_is_not_called_broken():
    df = _defense_rows()
    df.loc[(df["defense"] == "squeeze") & (df["eval_mode"] == "oblivious"), "robust_acc"] -= 0.21  # gains 9 points only
    table = render(df, META).split("## Defense comparison")[1].split("\n## ")[0]
    squeeze = [line for line in table.splitlines() if "| squeeze " in line]
    assert len(squeeze) == 1 and "no robust gain" in squeeze[0]
