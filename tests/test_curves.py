"""Minimum-norm curves: robust accuracy at every ε from one run, and optimality against the per-image best."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn as nn

from bench.audit import curves, worst_case


def _row(cell_id: str, attack: str, minimum: str, eps: float = math.nan, norm: str = "none") -> dict:
    return {"cell_id": cell_id, "status": "ok", "model": "m", "attack": attack, "attack_type": attack,
            "attack_args": "{}", "minimum_norm": minimum, "eps": eps, "norm": norm, "defense": "none",
            "eval_mode": "oblivious", "device": "cpu", "precision": "fp32", "robust_acc": 0.0, "n": 4, "suite": "s",
            "run_id": "r", "dataset": "d", "verdict": "reliable"}


def _preds(cell_id: str, broken: list[bool], distance: list[float], clean: list[bool] = (True,) * 4) -> pd.DataFrame:
    return pd.DataFrame({"cell_id": cell_id, "image": range(4), "label": 0, "clean_pred": [0 if c else 1 for c in clean],
                         "robust_pred": [1 if b else 0 for b in broken], "robust_all": [not b for b in broken],
                         "attacked": True, "distance": distance})


def test_robust_accuracy_at_eps_counts_an_image_broken_at_d_as_broken_at_every_eps_from_d():
    clean, d = np.array([True, True, True, False]), np.array([0.1, 0.3, np.inf, 0.0])
    assert [curves.robust_at(clean, d, e) for e in (0.0, 0.1, 0.2, 0.3, 9.0)] == [0.75, 0.5, 0.5, 0.25, 0.25]
    assert curves.area(clean, d, 0.4) == pytest.approx((0.1 + 0.3 + 0.4) / 4)


def test_optimality_is_one_for_the_best_attack_and_zero_for_one_that_breaks_nothing():
    df = pd.DataFrame([_row("best", "ddn", "L2"), _row("half", "fmn", "L2"), _row("none", "cw", "L2")])
    predictions = pd.concat([
        _preds("best", [True] * 4, [1.0, 1.0, 2.0, 2.0]),
        _preds("half", [True, True, False, False], [1.0, 2.0, 0.5, 0.5]),
        _preds("none", [False] * 4, [0.2] * 4),
    ], ignore_index=True)
    table = curves.table(df, predictions).set_index("attack")
    assert table.loc["ddn", "optimality"] == 1.0 and table.loc["cw", "optimality"] == 0.0
    # best area on [0, 2]: (1 + 1 + 2 + 2) / 4 = 1.5; clean: 2; fmn: (1 + 2 + 2 + 2) / 4 = 1.75 → (2 − 1.75) / (2 − 1.5)
    assert table.loc["fmn", "optimality"] == pytest.approx(0.5)
    assert table.loc["ddn", "median_distance"] == 1.5 and table.loc["ddn", "reach"] == 2.0


def test_a_minimum_norm_attack_joins_the_worst_case_with_what_it_broke_within_each_eps():
    df = pd.DataFrame([_row("pgd1", "pgd", "", eps=0.5, norm="L2"), _row("pgd2", "pgd", "", eps=1.0, norm="L2"),
                       _row("ddn", "ddn", "L2")])
    predictions = pd.concat([
        _preds("pgd1", [True, False, False, False], [0.5] * 4),
        _preds("pgd2", [True, False, False, False], [1.0] * 4),
        _preds("ddn", [True, True, True, False], [0.2, 0.7, 3.0, 0.0]),
    ], ignore_index=True)
    table, _ = worst_case.compute(df, predictions)
    assert table.set_index("eps")["worst_case_acc"].to_dict() == {0.5: 0.75, 1.0: 0.5}  # image 2 needs 3.0: standing
    assert "ddn (minimum-norm)" in table["ensemble"].iloc[1]


def test_a_point_on_the_boundary_is_pushed_outward_until_its_8_bit_image_stays_adversarial():
    from bench.crafting import round_outward

    class Threshold(nn.Module):  # class 1 once the mean pixel passes 0.503, between the 8-bit levels 128 and 129
        def forward(self, x):
            m = x.flatten(1).mean(1, keepdim=True) - 0.503
            return torch.cat([-m, m], 1) * 100

    from bench.defenses import quantize

    model = Threshold()
    x = torch.full((2, 3, 4, 4), 127 / 255)  # class 0
    adv = torch.full((2, 3, 4, 4), 0.5035)  # just across in float; 8 bits round it to 128/255 = 0.50196, back across
    adv[1] = 0.52  # far enough: its 8-bit image stays adversarial and is left alone
    goal = torch.zeros(2, dtype=torch.long)
    assert (model(adv).argmax(1) == 1).all() and model(quantize(adv)).argmax(1).tolist() == [0, 1]
    repaired, moved = round_outward(model, x, adv, goal, targeted=False)
    assert moved == 1 and (model(quantize(repaired)).argmax(1) == 1).all()
    assert torch.equal(repaired[1], adv[1])
    assert (repaired[0] - x[0]).abs().max() <= 1.5 * (adv[0] - x[0]).abs().max() + 1 / 510  # pushed out by at most ×1.5
