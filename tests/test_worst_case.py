"""The worst case per image: an image counts only if it is right without attack and no attack of the
suite (any mode, any smaller ε of the same norm) broke it."""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest

from bench.audit import worst_case
from bench.results import to_frame

N = 6


def _cell(attack, eps, mode="oblivious", defense="none", norm="Linf", status="ok", verdict="reliable"):
    cid = f"m/{attack}/{norm}/{eps}/{defense}/{mode}"
    return {"cell_id": cid, "suite": "s", "run_id": "r", "status": status, "model": "m", "dataset": "d", "attack": attack,
            "eps": eps, "norm": norm, "defense": defense, "eval_mode": mode, "device": "cpu", "precision": "fp32",
            "n": N, "robust_acc": math.nan, "verdict": verdict}


def _preds(cell, broken, clean_wrong=(), not_all_draws=()):
    """Images 0..N-1 of class 0; ``broken`` wrong after the attack, ``clean_wrong`` wrong without it."""
    return pd.DataFrame({"cell_id": cell["cell_id"], "image": range(N), "label": 0,
                         "clean_pred": [1 if i in clean_wrong else 0 for i in range(N)],
                         "robust_pred": [1 if i in broken or i in clean_wrong else 0 for i in range(N)],
                         "robust_all": [not (i in broken or i in clean_wrong or i in not_all_draws) for i in range(N)],
                         "attacked": True})


def _run(spec):
    """spec: list of (cell kwargs, broken images[, images wrong on some draw]); image 5 is wrong without attack."""
    rows, preds = [], []
    for kwargs, broken, *more in spec:
        row = _cell(**kwargs)
        rows.append(row)
        preds.append(_preds(row, set(broken), clean_wrong={5}, not_all_draws=set(more[0]) if more else set()))
    df = to_frame(rows)
    df["robust_acc"] = [1 - p["robust_pred"].astype(bool).mean() for p in preds]
    return df, pd.concat(preds, ignore_index=True)


def test_an_image_survives_only_if_it_is_right_without_attack_and_no_attack_broke_it():
    df, preds = _run([({"attack": "pgd", "eps": 2 / 255}, {0}),
                      ({"attack": "square", "eps": 2 / 255}, {1}),
                      ({"attack": "pgd", "eps": 4 / 255}, {2}),
                      ({"attack": "pgd", "eps": 4 / 255, "norm": "L2"}, {3}),  # another norm: its own worst case
                      ({"attack": "cw", "eps": math.nan, "norm": "none"}, {4})])  # no budget: not part of any
    table, images = worst_case.compute(df, preds)
    linf = table[table["norm"] == "Linf"].set_index("eps")
    # at 2/255: 0 (pgd), 1 (square), 5 (clean) broken; at 4/255 also 2 — and 0, 1 still count (smaller ε)
    assert linf.loc[2 / 255, "worst_case_acc"] == pytest.approx(3 / N)
    assert linf.loc[4 / 255, "worst_case_acc"] == pytest.approx(2 / N)
    assert table[table["norm"] == "L2"]["worst_case_acc"].tolist() == [pytest.approx(4 / N)]
    assert linf.loc[4 / 255, "cells"] == 3 and set(table["norm"]) == {"Linf", "L2"}
    low, high = linf.loc[4 / 255, ["worst_case_acc_ci_low", "worst_case_acc_ci_high"]]
    assert low < 2 / N < high
    wid = worst_case.worst_case_id("m", "Linf", 4 / 255, "none", "cpu", "fp32")
    survived = images[images["worst_case_id"] == wid].set_index("image")["survived"]
    assert survived.tolist() == [False, False, False, True, True, False]


def test_it_says_which_attack_broke_each_image_first_and_what_only_one_attack_broke():
    df, preds = _run([({"attack": "pgd", "eps": 4 / 255}, {0, 1}),
                      ({"attack": "square", "eps": 4 / 255}, {1, 2}),
                      ({"attack": "pgd", "eps": 4 / 255, "mode": "adaptive-bpda", "defense": "jpeg"}, {3}),
                      ({"attack": "pgd", "eps": 2 / 255}, {1})])
    table, images = worst_case.compute(df, preds)
    row = table[(table["defense"] == "none") & (table["eps"] == 4 / 255)].iloc[0]
    # order: ε ascending, then the suite's attack order; image 1 was first broken by pgd at 2/255
    assert json.loads(row["broke_first"]) == {"pgd ε=2/255": 1, "pgd ε=4/255": 1, "square ε=4/255": 1, "clean": 1}
    assert json.loads(row["only_broken_by"]) == {"pgd ε=2/255": 0, "pgd ε=4/255": 1, "square ε=4/255": 1}
    assert row["strongest"] in ("pgd ε=4/255", "square ε=4/255") and row["strongest_acc"] == pytest.approx(3 / N)
    first = images[images["worst_case_id"] == row["worst_case_id"]]["broken_first_by"].tolist()
    assert first == ["pgd ε=4/255", "pgd ε=2/255", "square ε=4/255", "", "", "clean"]
    # the adaptive cell belongs to its own defense's worst case, where every mode counts
    jpeg = table[table["defense"] == "jpeg"].iloc[0]
    assert jpeg["worst_case_acc"] == pytest.approx(4 / N) and "pgd (adaptive-bpda) ε=4/255" in jpeg["ensemble"]


def test_every_draw_counts_for_the_all_draws_worst_case():
    df, preds = _run([({"attack": "pgd", "eps": 4 / 255}, {0}, {1, 2})])
    row = worst_case.compute(df, preds)[0].iloc[0]
    assert row["worst_case_acc"] == pytest.approx(4 / N) and row["worst_case_acc_all_draws"] == pytest.approx(2 / N)


def test_failed_and_unreliable_cells_are_counted_beside_the_number():
    df, preds = _run([({"attack": "pgd", "eps": 4 / 255, "verdict": "unreliable"}, {0}),
                      ({"attack": "fgsm", "eps": 4 / 255}, {1})])
    failed = to_frame([_cell("apgd", 4 / 255, status="failed", verdict=None)])
    row = worst_case.compute(pd.concat([df, failed], ignore_index=True), preds)[0].iloc[0]
    assert row["cells"] == 2 and row["cells_not_ok"] == 1 and row["unreliable_cells"] == 1


def test_predictions_of_runs_made_before_the_worst_case_still_give_one():
    df, preds = _run([({"attack": "pgd", "eps": 4 / 255}, {0})])
    old = preds.drop(columns=["robust_all", "attacked"])
    table, _ = worst_case.compute(df, old)
    assert table["worst_case_acc"].tolist() == [pytest.approx(4 / N)]
    assert table["worst_case_acc_all_draws"].tolist() == [pytest.approx(4 / N)]
    assert worst_case.survival(df, old, model="m", defense="none", device="cpu", precision="fp32", norm="Linf",
                               eps=4 / 255).tolist() == [False, True, True, True, True, False]


def test_worst_cases_read_like_cells_for_compare_and_history():
    df, preds = _run([({"attack": "pgd", "eps": 4 / 255}, {0})])
    cells = worst_case.as_cells(worst_case.compute(df, preds)[0])
    assert cells["cell_id"].tolist() == ["m/worst-case/Linf/eps=4/255/none/cpu/fp32"]
    assert cells["robust_acc"].tolist() == [pytest.approx(4 / N)] and (cells["status"] == "ok").all()


def test_no_predictions_no_worst_case():
    df, _ = _run([({"attack": "pgd", "eps": 4 / 255}, {0})])
    table, images = worst_case.compute(df, None)
    assert table.empty and images.empty and list(table.columns) == list(worst_case.COLUMNS)


def test_a_worst_case_whose_every_attack_is_unreliable_is_marked_an_upper_bound():
    df, preds = _run([({"attack": "pgd", "eps": 2 / 255, "verdict": "unreliable"}, {0}),
                      ({"attack": "square", "eps": 2 / 255, "verdict": "unreliable"}, {1}),
                      ({"attack": "pgd", "eps": 4 / 255}, {2})])
    table = worst_case.compute(df, preds)[0].set_index("eps")
    assert bool(table.loc[2 / 255, "upper_bound"]) is True  # no attack known to have worked
    assert bool(table.loc[4 / 255, "upper_bound"]) is False  # one reliable attack in its ensemble
