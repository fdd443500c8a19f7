"""Indicators of attack failure: each fires on a model that masks its gradients (or fails otherwise)
in its classic way, and none fires on a genuinely robust model whose robust accuracy is known
(tests/masked_models.py). Whole suites run through the harness, as a user's would."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch
import yaml

from bench.audit.indicators import at_chance, chance_accuracy, is_softmax, still_improving
from bench.audit.queries import QueryLog
from bench.runner import run_suite
from bench.suite import load_suite
from tests import masked_models as mm

PGD = {"name": "pgd", "type": "pgd", "eps": "8/255", "steps": 10, "alpha": "2/255", "random_start": False}
SQUARE = {"name": "square", "type": "square", "eps": "8/255", "n_queries": 300}


def _run(tmp, doc):
    path = tmp / f"{doc['name']}.yaml"
    path.write_text(yaml.safe_dump(doc))
    return run_suite(load_suite(path), tmp / "results", tmp / "reports")


@pytest.fixture(scope="module")
def masked(tmp_path_factory):
    """PGD and Square on the robust model and on every masked one."""
    tmp = tmp_path_factory.mktemp("masked")
    data = mm.write_images(tmp / "data")
    kinds = ["robust", "shattered", "quantised", "scaled", "noisy", "softmax", "constant"]
    doc = {"name": "masked", "seed": 0, "data": {"source": "imagefolder", "path": str(data), "image_size": 16},
           "models": [mm.entry(k) for k in kinds], "attacks": [PGD, SQUARE], "batch_size": 12}
    result = _run(tmp, doc)
    df = pd.read_parquet(result.run_dir / "results.parquet")
    return df.set_index(["model", "attack"]), pd.read_parquet(result.run_dir / "worst_case.parquet").set_index("model"), result


def _flags(df, model, attack):
    return set(str(df.loc[(model, attack), "flags"]).split(",")) - {""}


def test_the_genuinely_robust_model_keeps_its_known_robust_accuracy_and_raises_no_indicator(masked):
    df, worst, _ = masked
    assert df.loc[("robust", "pgd"), "robust_acc"] == pytest.approx(mm.ROBUST_AT_8)  # PGD finds every breakable image
    assert worst.loc["robust", "worst_case_acc"] == pytest.approx(mm.ROBUST_AT_8)
    for attack in ("pgd", "square"):
        # no indicator of attack failure; Square may carry the note that PGD broke images it left (not a failure)
        assert _flags(df, "robust", attack) - {"weaker-than-another"} == set(), attack
        assert df.loc[("robust", attack), "verdict"] == "reliable"
    assert df.loc[("robust", "pgd"), "unconstrained_success"] == 1.0


@pytest.mark.parametrize("model,expected", [
    ("shattered", {"shattered-gradients", "unconstrained-fails", "black-box-stronger"}),
    ("quantised", {"unavailable-gradients", "unconstrained-fails", "black-box-stronger"}),
    ("scaled", {"unavailable-gradients", "unconstrained-fails", "black-box-stronger"}),
])
def test_masked_gradients_are_flagged_and_a_black_box_attack_brings_the_worst_case_down(masked, model, expected):
    df, worst, _ = masked
    assert df.loc[(model, "pgd"), "robust_acc"] == 1.0  # PGD is fooled completely
    assert expected <= _flags(df, model, "pgd")
    assert df.loc[(model, "pgd"), "verdict"] == "unreliable"
    # Square does not follow gradients: it breaks images, and the worst case over both attacks shows it
    assert worst.loc[model, "worst_case_acc"] < 1.0
    assert worst.loc[model, "worst_case_acc"] == pytest.approx(df.loc[(model, "square"), "robust_acc"])
    assert json.loads(worst.loc[model, "only_broken_by"])["square ε=8/255"] > 0
    # gradients, masked or not, do not steer a score-based attack: it is not blamed for them
    assert not {"unavailable-gradients", "shattered-gradients"} & _flags(df, model, "square")


def test_randomness_the_suite_does_not_declare_is_unstable(masked):
    df, _, _ = masked
    for attack in ("pgd", "square"):
        assert "unstable-predictions" in _flags(df, "noisy", attack)
    assert json.loads(df.loc[("noisy", "pgd"), "indicators"])["repeat_difference"] > 0
    assert json.loads(df.loc[("robust", "pgd"), "indicators"])["repeat_difference"] == 0


def test_probabilities_instead_of_logits_are_flagged(masked):
    df, _, _ = masked
    assert "softmax-output" in _flags(df, "softmax", "pgd") and "softmax-output" not in _flags(df, "robust", "pgd")


def test_a_model_that_ignores_its_input_is_at_chance(masked):
    df, _, _ = masked
    assert df.loc[("constant", "pgd"), "clean_acc"] == 0.5
    assert "clean-at-chance" in _flags(df, "constant", "pgd")


def test_the_report_says_which_cells_cannot_be_trusted_and_what_to_try(masked):
    _, _, result = masked
    text = result.report_path.read_text()
    section = text.split("## Can these numbers be trusted?")[1].split("\n## ")[0]
    section = section.replace("\n  ", " ")  # a wrapped bullet, joined again
    assert "shattered · pgd · 8/255 · none · oblivious" in section
    assert "**shattered-gradients**: gradient cosine" in section
    assert "robust · pgd" not in section
    assert "- **unconstrained-fails**" in section and "Try: fix the attack" in section
    assert text.index("## Can these numbers be trusted?") < text.index("## Worst case over all attacks") < text.index("## Models")


@pytest.fixture(scope="module")
def cases(tmp_path_factory):
    """PGD whose steps are too large (it steps over the band model's thin adversarial band) or too
    small (it stops on its way), oblivious and adaptive through random noise (EOT) and an 8-bit bit
    depth (the identity on saved images)."""
    tmp = tmp_path_factory.mktemp("cases")
    data = mm.write_images(tmp / "data")
    doc = {"name": "cases", "seed": 0, "data": {"source": "imagefolder", "path": str(data), "image_size": 16},
           "models": [mm.entry("robust"), mm.entry("band")],
           "attacks": [{"name": "big-steps", "type": "pgd", "eps": "30/255", "steps": 10, "alpha": 0.035, "random_start": False},
                       {"name": "short", "type": "pgd", "eps": "30/255", "steps": 10, "alpha": "0.5/255", "random_start": False}],
           "defenses": ["none", {"type": "gaussian_noise", "sigma": 0.3}, {"type": "bit_depth", "bits": 8}],
           "eval_mode": ["oblivious", "adaptive"], "adaptive_method": "bpda", "eot_samples": 4, "batch_size": 12}
    result = _run(tmp, doc)
    df = pd.read_parquet(result.run_dir / "results.parquet")
    return df.set_index(["model", "attack", "defense", "eval_mode"])


def _case(df, *key):
    return set(str(df.loc[key, "flags"]).split(",")) - {""}


def test_an_attack_that_found_an_adversarial_point_and_returned_another_is_a_silent_success(cases):
    # PGD's steps of 0.035 cross the band (m within 0.02 of 1/2) and back; it returns its last iterate
    assert "silent-success" in _case(cases, "band", "big-steps", "none", "oblivious")
    assert json.loads(cases.loc[("band", "big-steps", "none", "oblivious"), "indicators"])["silent_success_images"] >= 1
    assert "silent-success" not in _case(cases, "robust", "big-steps", "none", "oblivious")  # monotone: its last point is its best


def test_an_attack_still_improving_at_its_last_step_is_incomplete_optimization(cases):
    # 10 steps of 0.5/255 cover 5/255 of a 30/255 budget: the margins are still falling at the end
    assert "incomplete-optimization" in _case(cases, "robust", "short", "none", "oblivious")
    assert "incomplete-optimization" not in _case(cases, "robust", "big-steps", "none", "oblivious")


def test_an_eot_average_that_fools_only_the_surrogate_is_a_transfer_failure(cases):
    # through σ = 0.3 noise, PGD fools the 4-draw average but the evaluation's one draw flips back
    assert "transfer-failure" in _case(cases, "robust", "short", "noise-0.3", "adaptive-bpda")
    # through 8-bit rounding (the identity on saved images) the surrogate is the real model
    assert "transfer-failure" not in _case(cases, "robust", "short", "bits-8", "adaptive-bpda")
    assert "transfer-failure" not in _case(cases, "robust", "big-steps", "noise-0.3", "adaptive-bpda")


# --- the rules, on constructed records ------------------------------------------------------------


def _log(traces):
    """A QueryLog holding the given margin trajectories (image index → margins in query order)."""
    log = QueryLog(torch.nn.Identity(), len(traces))
    log._trace = [(torch.tensor([i]), torch.tensor([m])) for step in range(max(map(len, traces))) for i, t in enumerate(traces)
                  if step < len(t) for m in [t[step]]]
    return log


def test_still_improving_compares_the_last_tenth_of_the_queries_with_the_rest():
    falling = [10 - i for i in range(20)]  # still falling at the end: the last 2 queries beat all before by 2/19
    flat = [10 - i for i in range(10)] + [1.0] * 10  # converged halfway
    noisy = [10 - i for i in range(10)] + [1.5, 1.0] * 5  # bounces at its floor: nothing new at the end
    reached = torch.tensor([False, False, False, True])
    attacked = torch.ones(4, dtype=torch.bool)
    improving, judged = still_improving(_log([falling, flat, noisy, falling]), reached, attacked)
    assert improving.tolist() == [True, False, False, False]  # the broken image (reached) is not judged
    assert judged.tolist() == [True, True, True, False]
    few = still_improving(_log([[3, 2, 1]]), torch.tensor([False]), torch.tensor([True]))[1]
    assert few.tolist() == [False]  # too few queries to tell


def test_chance_is_what_guessing_without_the_image_gets():
    labels = torch.tensor([0, 0, 1, 1])
    assert chance_accuracy(labels, torch.tensor([0, 0, 0, 0])) == 0.5
    assert chance_accuracy(labels, torch.tensor([2, 2, 2, 2])) == 0.0
    assert at_chance(labels, torch.tensor([0, 0, 0, 0]))
    many = torch.arange(40) % 2
    assert not at_chance(many, many)  # 40 of 40 right: far above the 0.5 chance
    assert at_chance(many, torch.zeros(40, dtype=torch.long))


def test_softmax_rows_are_recognised_and_logits_are_not():
    logits = torch.tensor([[2.0, -1.0, 0.5], [0.1, 0.2, 0.3]])
    assert is_softmax(logits.softmax(1)) and not is_softmax(logits) and not is_softmax(logits.abs())
