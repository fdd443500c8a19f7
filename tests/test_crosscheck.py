"""Implementations cross-checked: two libraries' same attack, compared image by image."""

from __future__ import annotations

import json

import pandas as pd

from bench.audit.crosscheck import comparisons, disagreements
from bench.audit.flags import cross_cell_flags

N = 100


def _row(cell_id: str, attack: str, attack_type: str, source: str, args: dict, defense: str = "none") -> dict:
    return {"cell_id": cell_id, "status": "ok", "model": "m", "attack": attack, "attack_type": attack_type,
            "attack_source": source, "attack_args": json.dumps({"target": None, **args}), "eps": args.get("eps"),
            "norm": "Linf", "defense": defense, "eval_mode": "oblivious", "device": "cpu", "precision": "fp32",
            "robust_acc": None}


def _predictions(cell_id: str, broken: set[int]) -> pd.DataFrame:
    return pd.DataFrame({"cell_id": cell_id, "image": range(N), "label": 0, "clean_pred": 0,
                         "robust_pred": [1 if i in broken else 0 for i in range(N)], "robust_all": True, "attacked": True})


TA = ("pgd", "torchattacks", {"eps": 0.1, "steps": 20, "alpha": 0.01, "random_start": True})
FB = ("foolbox/LinfPGD", "foolbox", {"eps": 0.1, "steps": 20, "abs_stepsize": 0.01, "rel_stepsize": 0.03, "random_start": True})


def _run(broken_a: set[int], broken_b: set[int], b_args: dict | None = None):
    df = pd.DataFrame([_row("a", "pgd", *TA), _row("b", "fb-pgd", FB[0], FB[1], b_args or FB[2])])
    return df, pd.concat([_predictions("a", broken_a), _predictions("b", broken_b)], ignore_index=True)


def test_the_same_attack_from_two_libraries_is_compared_on_the_same_images():
    df, predictions = _run(set(range(30)), set(range(28)) | {90})
    (row,) = comparisons(df, predictions).to_dict("records")
    assert (row["both_broke"], row["only_a"], row["only_b"]) == (28, 2, 1)
    assert row["robust_acc_a"] == 0.70 and row["robust_acc_b"] == 0.71 and row["agree"]
    assert row["family"] == "PGD Linf ε=0.1, 20 steps of 0.01, random start"


def test_a_clear_disagreement_flags_the_weaker_implementation_with_both_numbers():
    df, predictions = _run(set(range(40)), set(range(20)))
    evidence: dict = {}
    flags = cross_cell_flags(df, predictions, evidence=evidence)
    assert flags == {"b": ["implementations-disagree"]}  # b broke fewer: its 80 % overestimates what a shows
    (numbers,) = evidence["b"]["implementations_disagree"]
    assert numbers["robust_acc"] == 0.8 and numbers["other_robust_acc"] == 0.6
    assert numbers["only_other_broke"] == 20 and numbers["only_this_broke"] == 0 and numbers["p"] < 1e-5


def test_a_small_difference_is_no_disagreement():
    df, predictions = _run(set(range(40)), set(range(37)))
    assert cross_cell_flags(df, predictions) == {}


def test_different_budgets_or_steps_are_not_the_same_attack():
    for change in ({"steps": 40}, {"abs_stepsize": 0.02}, {"random_start": False}, {"eps": 0.2}):
        df, predictions = _run(set(range(40)), set(range(10)), {**FB[2], **change})
        assert comparisons(df, predictions).empty, change


def test_disagreement_through_a_randomized_defense_is_shown_but_not_flagged():
    df, predictions = _run(set(range(40)), set(range(10)))
    df["defense"], df["eval_mode"] = "noise-0.05", "adaptive-bpda"
    assert len(comparisons(df, predictions)) == 1
    assert cross_cell_flags(df, predictions, randomized=["noise-0.05"]) == {}


def test_only_cells_that_attacked_every_image_of_the_model_they_are_evaluated_on_are_compared():
    df, predictions = _run(set(range(40)), set(range(10)))
    cascaded = df.assign(n=N, n_attacked=[N, 60])  # a cascade attacked only what the attacks before left standing
    assert comparisons(cascaded, predictions).empty
    transfer = df.assign(defense="jpeg-q50")  # oblivious through a defense: transfer, not the attack's strength
    assert comparisons(transfer, predictions).empty
    assert len(comparisons(df.assign(n=N, n_attacked=N), predictions)) == 1


def test_disagreements_name_the_other_implementation():
    df, predictions = _run(set(range(10)), set(range(40)))
    assert list(disagreements(comparisons(df, predictions))) == ["a"]
    assert disagreements(comparisons(df, predictions))["a"][0]["other"] == "fb-pgd (foolbox)"
