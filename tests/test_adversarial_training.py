"""Adversarial training: PGD (Madry et al.) and TRADES examples stay in their ball, ε can warm up,
and a few epochs on digits buy robustness against an independent PGD that standard training does not."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn as nn

from bench.adversarial_training import AdversarialSpec, _ascend, adversarial_loss
from bench.data import load_dataset
from bench.sources import create_model
from bench.specs import DataSpec, ModelSpec
from bench.train import robust_accuracy, train


def test_the_spec_checks_its_values_and_defaults_to_madrys_step():
    spec = AdversarialSpec("pgd", 0.1, steps=5)
    assert spec.alpha == pytest.approx(2.5 * 0.1 / 5)
    assert AdversarialSpec("pgd", 0.1, steps=5, step_size=0.01).alpha == 0.01
    with pytest.raises(ValueError, match=r"--adversarial must be one of pgd, trades, got 'fgsm'"):
        AdversarialSpec("fgsm", 0.1)
    with pytest.raises(ValueError, match=r"--train-eps must be in \(0, 1\].*got 2.*--train-steps must be at least 1"):
        AdversarialSpec("pgd", 2.0, steps=0)
    card = AdversarialSpec("trades", 0.1, steps=5, beta=3.0).card()
    assert card == {"method": "trades", "eps": 0.1, "steps": 5, "step_size": 0.05, "beta": 3.0, "eps_warmup": 0}
    assert "beta" not in AdversarialSpec("pgd", 0.1).card()


def test_eps_warms_up_linearly_then_stays_and_the_step_follows_it():
    spec = AdversarialSpec("pgd", 0.2, steps=5, eps_warmup=4)
    assert [spec.eps_at(e) for e in range(6)] == pytest.approx([0.05, 0.1, 0.15, 0.2, 0.2, 0.2])
    assert AdversarialSpec("pgd", 0.2).eps_at(0) == 0.2
    # the same share of the ball per step at every budget: 2.5 · ε / steps
    assert [spec.alpha_at(spec.eps_at(e)) for e in range(4)] == pytest.approx([0.025, 0.05, 0.075, 0.1])


def _linear(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 4, 3))


def test_pgd_examples_stay_in_the_ball_and_the_image_range_and_raise_the_loss():
    model, x, y = _linear(), torch.rand(16, 3, 4, 4), torch.randint(0, 3, (16,))
    ce = nn.CrossEntropyLoss()
    adv = _ascend(model, x, x.clone(), lambda out: ce(out, y), eps=0.05, steps=5, alpha=0.02)
    assert (adv - x).abs().max() <= 0.05 + 1e-6 and adv.min() >= 0 and adv.max() <= 1
    assert ce(model(adv), y) > ce(model(x), y)


@pytest.mark.parametrize("method", ["pgd", "trades"])
def test_a_training_loss_differentiates_to_the_weights_and_leaves_the_mode_asked_for(method):
    model, x, y = _linear(), torch.rand(8, 3, 4, 4), torch.randint(0, 3, (8,))
    g = torch.Generator().manual_seed(0)
    loss, logits = adversarial_loss(model, x, y, AdversarialSpec(method, 0.1, steps=2), 0.1, g, train_mode=True)
    assert model.training and logits.shape == (8, 3)
    loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())
    # the clean loss is a lower bound of the PGD loss (its examples maximise it)
    if method == "pgd":
        assert loss.item() >= nn.functional.cross_entropy(model(x), y).item() - 1e-6


@pytest.fixture(scope="module")
def digits_models(tmp_path_factory):
    """The digits recipe at 8 px (the scans' own size) for 3 epochs, standard and PGD-trained, same seed."""
    out = tmp_path_factory.mktemp("digits")
    kw = dict(epochs=3, image_size=8, batch_size=64, seed=0)
    standard = train("digits_cnn", "digits", out, robust_eps=0.1, **kw)
    robust = train("digits_cnn", "digits", out, adversarial=AdversarialSpec("pgd", 0.1, steps=3), **kw)
    return out, standard, robust


def test_pgd_training_raises_robust_accuracy_over_standard_training(digits_models):
    _, standard, robust = digits_models
    assert standard["adversarial"] is None and robust["adversarial"]["method"] == "pgd"
    assert standard["robust_test"]["eps"] == robust["robust_test"]["eps"] == 0.1
    # measured on all 360 test images with torchattacks' PGD-20: well apart, not noise
    assert robust["robust_test"]["acc"] > standard["robust_test"]["acc"] + 0.05
    assert standard["test_acc"] > 0.7 and robust["test_acc"] > 0.5


def test_the_card_says_how_it_was_trained_and_its_numbers_are_the_checkpoints(digits_models):
    out, _, robust = digits_models
    card = json.loads((out / "digits_cnn-pgd.json").read_text())
    assert card["checkpoint"] == "digits_cnn-pgd.pt" and card["arch"] == "small_cnn" and card["num_classes"] == 10
    assert card["adversarial"] == {"method": "pgd", "eps": 0.1, "steps": 3, "step_size": pytest.approx(2.5 * 0.1 / 3),
                                   "eps_warmup": 0}
    assert card["data"] == "digits" and card["data_split"]["split"] == "test" and card["test_images"] == 360
    assert card["train_images"] == 1437 and card["augmentation"] == "none"
    model = create_model(ModelSpec("m", "small_cnn", None, checkpoint=str(out / "digits_cnn-pgd.pt"), num_classes=10,
                                   input_size=8))
    test = load_dataset(DataSpec("digits", split="test", image_size=8))
    assert robust_accuracy(model, test, 0.1, seed=0) == pytest.approx(card["robust_test"]["acc"])
