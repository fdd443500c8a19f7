"""Flags: each is raised by a constructed case that should raise it, and not otherwise; the verdict
follows them. (The indicators of attack failure judged on real attacks: tests/test_indicators.py.)"""

from __future__ import annotations

import pandas as pd

from bench.audit.flags import FLAGS, cell_flags, cross_cell_flags, verdict


def test_a_perturbation_far_below_eps_is_flagged():
    assert cell_flags(delta=3 / 255, eps=8 / 255, clean_changed=0.0) == ["short-delta"]
    assert cell_flags(delta=5 / 255, eps=8 / 255, clean_changed=0.0) == []
    assert cell_flags(delta=0.0, eps=None, clean_changed=0.0) == []  # no budget to reach


def test_a_defense_that_changes_most_clean_predictions_is_flagged():
    assert cell_flags(delta=8 / 255, eps=8 / 255, clean_changed=0.6) == ["defense-breaks-clean"]
    assert cell_flags(delta=8 / 255, eps=8 / 255, clean_changed=0.4) == []


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


def _bb_case(square_breaks_more: bool, defense="none", mode="oblivious", pgd_attacked=(True,) * 4):
    """Two cells at one (model, defense, ε): pgd and square; square breaks image 2 as well when asked."""
    common = dict(status="ok", model="m", defense=defense, eval_mode=mode, device="cpu", precision="fp32", norm="Linf",
                  eps=8 / 255, robust_acc=0.5)
    df = pd.DataFrame([dict(cell_id="pgd", attack="pgd", attack_type="pgd", **common),
                       dict(cell_id="sq", attack="square", attack_type="square", **common)])
    preds = pd.DataFrame({"cell_id": ["pgd"] * 4 + ["sq"] * 4, "image": [0, 1, 2, 3] * 2, "label": [0] * 8,
                          "robust_pred": [1, 0, 0, 0] + [1, 0, 1 if square_breaks_more else 0, 0],
                          "attacked": list(pgd_attacked) + [True] * 4})
    return df, preds


def test_a_black_box_attack_that_breaks_what_every_gradient_attack_left_flags_the_gradient_attacks():
    df, preds = _bb_case(square_breaks_more=True)
    assert cross_cell_flags(df, preds, black_box=("square",)) == {"pgd": ["black-box-stronger"]}
    df, preds = _bb_case(square_breaks_more=False)  # square breaks only what pgd broke
    assert cross_cell_flags(df, preds, black_box=("square",)) == {}
    df, preds = _bb_case(square_breaks_more=True)  # at another ε the comparison does not apply
    df.loc[df["cell_id"] == "sq", "eps"] = 16 / 255
    assert cross_cell_flags(df, preds, black_box=("square",)) == {}


def test_black_box_stronger_is_judged_only_where_the_gradient_attack_had_its_chance():
    # adaptive attacks through a deterministic defense: judged
    df, preds = _bb_case(True, defense="bits-5", mode="adaptive-bpda")
    assert cross_cell_flags(df, preds, black_box=("square",)) == {"pgd": ["black-box-stronger"]}
    # oblivious attacks through a defense measure transfer, not a failure of the attack
    df, preds = _bb_case(True, defense="bits-5", mode="oblivious")
    assert cross_cell_flags(df, preds, black_box=("square",)) == {}
    # through a randomized defense each cell's evaluation draws differ: one beating the other can be luck
    df, preds = _bb_case(True, defense="noise-0.05", mode="adaptive-bpda")
    assert cross_cell_flags(df, preds, black_box=("square",), randomized=("noise-0.05",)) == {}
    # a cascade skipped image 2 for pgd (square broke it first): pgd never had the chance
    df, preds = _bb_case(True, pgd_attacked=(True, True, False, True))
    assert cross_cell_flags(df, preds, black_box=("square",)) == {}


def test_under_a_cascade_two_cells_are_compared_on_the_images_both_attacked():
    # at 8/255 the cascade attacked only images 2 and 3 (0 and 1 were broken at 4/255, and keep their
    # clean pixels: right); on the images both attacked (2 and 3), robust accuracy falls from 1 to 0
    df = _rows(cells=[(4 / 255, 0.5, "oblivious"), (8 / 255, 0.5, "oblivious")])
    preds = pd.DataFrame({"cell_id": ["c0"] * 4 + ["c1"] * 4, "image": [0, 1, 2, 3] * 2, "label": [0] * 8,
                          "robust_pred": [1, 1, 0, 0] + [0, 0, 1, 1],
                          "attacked": [True] * 4 + [False, False, True, True]})
    assert cross_cell_flags(df, preds) == {}
    df.loc[df["cell_id"] == "c1", "robust_acc"] = 0.75
    preds.loc[(preds["cell_id"] == "c1") & (preds["image"] == 2), "robust_pred"] = 0  # 1 → 1/2: no rise either
    assert cross_cell_flags(df, preds) == {}
    assert cross_cell_flags(df) == {"c1": ["eps-rise"]}  # by the rates alone, the cascade's rows would seem to rise


def test_the_verdict_is_unreliable_when_an_indicator_of_attack_failure_fired():
    assert verdict([]) == "reliable"
    assert verdict(["defense-breaks-clean"]) == "reliable"  # a note about the setting, not an attack failure
    assert verdict(["silent-success"]) == "unreliable"
    assert verdict(["defense-breaks-clean", "black-box-stronger"]) == "unreliable"


def test_every_flag_says_what_it_suspects_and_what_to_try():
    indicators = {"silent-success", "incomplete-optimization", "transfer-failure", "unavailable-gradients",
                  "unstable-predictions", "shattered-gradients", "unconstrained-fails", "black-box-stronger",
                  "softmax-output", "clean-at-chance", "implementations-disagree", "ensemble-weaker"}
    kept = {"eps-rise", "adaptive-weaker", "short-delta", "defense-breaks-clean", "non-finite", "zero-grad",
            "weaker-than-another"}
    assert set(FLAGS) == indicators | kept
    assert all(f.suspects and f.remedy for f in FLAGS.values())
    assert [c for c, f in FLAGS.items() if not f.unreliable] == ["weaker-than-another", "defense-breaks-clean"]


def _aa_case(pgd_breaks_more: bool, aa_breaks_more: bool = True, defense: str = "none", attacked=(True,) * 4):
    """AutoAttack and PGD at one (model, defense, ε): AA breaks image 0 (and image 3 when asked); PGD breaks
    image 0 (and image 2 when asked)."""
    common = dict(status="ok", model="m", defense=defense, eval_mode="oblivious", device="cpu", precision="fp32",
                  norm="Linf", eps=8 / 255, robust_acc=0.5)
    df = pd.DataFrame([dict(cell_id="aa", attack="aa", attack_type="autoattack/standard", **common),
                       dict(cell_id="pgd", attack="pgd", attack_type="pgd", **common)])
    preds = pd.DataFrame({"cell_id": ["aa"] * 4 + ["pgd"] * 4, "image": [0, 1, 2, 3] * 2, "label": [0] * 8,
                          "robust_pred": [1, 0, 0, 1 if aa_breaks_more else 0] + [1, 0, 1 if pgd_breaks_more else 0, 0],
                          "attacked": [True] * 4 + list(attacked)})
    return df, preds


def test_an_ensemble_that_left_standing_what_another_attack_broke_is_unreliable_and_names_it():
    df, preds = _aa_case(pgd_breaks_more=True)
    evidence: dict = {}
    flags = cross_cell_flags(df, preds, evidence=evidence)
    assert flags == {"aa": ["ensemble-weaker"], "pgd": ["weaker-than-another"]}  # each broke one the other left
    assert evidence["aa"]["weaker_than"] == {"pgd": 1} and evidence["pgd"]["weaker_than"] == {"aa": 1}
    assert verdict(flags["aa"]) == "unreliable" and verdict(flags["pgd"]) == "reliable"  # a note for a single attack
    assert cross_cell_flags(*_aa_case(pgd_breaks_more=False)) == {"pgd": ["weaker-than-another"]}  # AA dominates
    assert cross_cell_flags(*_aa_case(pgd_breaks_more=False, aa_breaks_more=False)) == {}  # the same images


def test_domination_is_not_judged_through_a_randomized_defense_or_under_a_cascade():
    df, preds = _aa_case(pgd_breaks_more=True, defense="noise-0.05")
    assert cross_cell_flags(df, preds, randomized=("noise-0.05",)) == {}  # each cell's draws differ
    df, preds = _aa_case(pgd_breaks_more=True, attacked=(False, True, True, False))  # PGD attacked what AA left
    assert cross_cell_flags(df, preds) == {}
