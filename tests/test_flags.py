"""Sanity flags: each is raised by a constructed case that should raise it, and not otherwise."""

from __future__ import annotations

import pandas as pd

from bench.flags import FLAGS, cell_flags, cross_cell_flags


def test_zero_gradients_are_flagged():
    assert "zero-grad" in cell_flags(zero_grad=True, delta=8 / 255, eps=8 / 255, clean_changed=0.0)
    assert cell_flags(zero_grad=False, delta=8 / 255, eps=8 / 255, clean_changed=0.0) == []


def test_a_perturbation_far_below_eps_is_flagged():
    assert cell_flags(zero_grad=False, delta=3 / 255, eps=8 / 255, clean_changed=0.0) == ["short-delta"]
    assert cell_flags(zero_grad=False, delta=5 / 255, eps=8 / 255, clean_changed=0.0) == []
    assert cell_flags(zero_grad=False, delta=0.0, eps=None, clean_changed=0.0) == []  # no budget to reach


def test_a_defense_that_changes_most_clean_predictions_is_flagged():
    assert cell_flags(zero_grad=False, delta=8 / 255, eps=8 / 255, clean_changed=0.6) == ["defense-breaks-clean"]
    assert cell_flags(zero_grad=False, delta=8 / 255, eps=8 / 255, clean_changed=0.4) == []


def _rows(**overrides):
    base = dict(status="ok", model="m", attack="pgd", defense="jpeg-q50", eval_mode="oblivious", device="cpu", precision="fp32")
    rows = []
    for i, (eps, acc, mode) in enumerate(overrides["cells"]):
        rows.append({**base, "cell_id": f"c{i}", "eps": eps, "robust_acc": acc, "eval_mode": mode})
    return pd.DataFrame(rows)


def test_robust_accuracy_rising_with_eps_is_flagged_on_the_larger_eps():
    df = _rows(cells=[(2 / 255, 0.3, "oblivious"), (4 / 255, 0.5, "oblivious"), (8 / 255, 0.1, "oblivious")])
    assert cross_cell_flags(df) == {"c1": ["eps-rise"]}
    df = _rows(cells=[(2 / 255, 0.5, "oblivious"), (4 / 255, 0.3, "oblivious")])
    assert cross_cell_flags(df) == {}


def test_an_adaptive_attack_weaker_than_the_oblivious_one_is_flagged():
    df = _rows(cells=[(4 / 255, 0.2, "oblivious"), (4 / 255, 0.4, "adaptive-bpda"), (4 / 255, 0.1, "adaptive-diff")])
    assert cross_cell_flags(df) == {"c1": ["adaptive-weaker"]}


def test_every_flag_says_what_it_suspects_and_what_to_try():
    assert set(FLAGS) == {"eps-rise", "adaptive-weaker", "zero-grad", "short-delta", "defense-breaks-clean", "non-finite"}
    assert all(f.suspects and f.remedy for f in FLAGS.values())
