"""Adaptive evaluation: gradients through the defense exist and point uphill; the grid and the
report put oblivious and adaptive side by side; and on the bundled ImageNet model JPEG looks
strong only against attacks that ignore it."""

from __future__ import annotations

import re

import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from bench.data import load_dataset
from bench.defenses import spec as defense_spec
from bench.defenses import JPEG, Defended, attack_path, straight_through
from bench.sources import create_model
from bench.runner import run_suite
from bench.suite import DataSpec, ModelSpec, load_suite


@pytest.fixture(scope="module")
def lite0():
    return create_model(ModelSpec("lite0", "efficientnet_lite0", "imagenet", num_classes=1000, input_size=224))


@pytest.fixture(scope="module")
def photos():
    ds = load_dataset(DataSpec("samples", limit=4))
    return ds.images.float() / 255, ds.labels


@pytest.mark.parametrize("mode", ["adaptive-bpda", "adaptive-diff"])
def test_gradient_through_the_defense_is_nonzero_and_raises_the_defended_loss(lite0, photos, mode):
    x, y = photos
    spec = defense_spec("jpeg", quality=50)
    attacked = Defended(lite0, attack_path(spec, mode))
    x_req = x.clone().requires_grad_(True)
    loss = F.cross_entropy(attacked(x_req), y, reduction="sum")
    (g,) = torch.autograd.grad(loss, x_req)
    assert (g != 0).float().mean() > 0.5
    real = JPEG(50)
    step = (x + 2 / 255 * g.sign()).clamp(0, 1)
    with torch.no_grad():
        before = F.cross_entropy(lite0(real(x)), y, reduction="sum")
        after = F.cross_entropy(lite0(real(step)), y, reduction="sum")
    assert after > before  # measured on the real defense, not the surrogate


def test_bpda_runs_the_real_defense_forward_and_the_identity_backward():
    x = torch.rand(2, 3, 32, 32, requires_grad=True)
    out = straight_through(JPEG(30))(x)
    assert torch.allclose(out, JPEG(30)(x.detach()), atol=1e-6)
    (g,) = torch.autograd.grad(out.sum(), x)
    assert torch.equal(g, torch.ones_like(x))


def test_oblivious_mode_attacks_the_bare_model():
    x = torch.rand(1, 3, 8, 8)
    assert torch.equal(attack_path(defense_spec("jpeg", quality=50), "oblivious")(x), x)


def test_adaptive_cells_exist_only_for_real_defenses(write_suite, tiny_suite):
    tiny_suite["eval_mode"] = ["oblivious", "adaptive"]
    cells = load_suite(write_suite(tiny_suite)).cells()
    modes = {(c.defense.label, c.eval_mode) for c in cells}
    assert modes == {("none", "oblivious"), ("jpeg-q50", "oblivious"), ("jpeg-q50", "adaptive-bpda"), ("jpeg-q50", "adaptive-diff")}
    tiny_suite["adaptive_method"] = "bpda"
    assert {c.eval_mode for c in load_suite(write_suite(tiny_suite)).cells()} == {"oblivious", "adaptive-bpda"}


def test_adaptive_seeds_differ_per_defense_but_oblivious_ones_do_not(write_suite, tiny_suite):
    tiny_suite["eval_mode"] = ["oblivious", "adaptive"]
    tiny_suite["defenses"] = ["none", {"type": "jpeg", "quality": [50, 75]}]
    cells = [c for c in load_suite(write_suite(tiny_suite)).cells() if c.attack.name == "pgd"]
    oblivious = {c.attack_seed for c in cells if c.eval_mode == "oblivious"}
    adaptive = [c.attack_seed for c in cells if c.eval_mode != "oblivious"]
    assert len(oblivious) == 1 and len(set(adaptive)) == len(adaptive) == 4


@pytest.mark.slow  # make test-slow (CI runs it): keeps make test within its minutes
def test_jpeg_helps_against_oblivious_attacks_and_adaptive_attacks_take_it_back(tmp_path, write_suite):
    doc = {
        "name": "shape", "seed": 0, "data": {"source": "samples"},
        "models": [{"name": "lite0", "arch": "efficientnet_lite0", "weights": "imagenet"}],
        "attacks": [{"name": "pgd", "type": "pgd", "eps": "2/255", "steps": 5, "alpha": "1/255"}],
        "defenses": ["none", {"type": "jpeg", "quality": 25}],
        "eval_mode": ["oblivious", "adaptive"], "batch_size": 16,
        "unconstrained_check": False,  # not what this test is about: its extra craftings would double the time
    }
    result = run_suite(load_suite(write_suite(doc)), tmp_path / "r", tmp_path / "p")
    df = pd.read_parquet(result.run_dir / "results.parquet").set_index(["defense", "eval_mode"])["robust_acc"]
    undefended, oblivious = df[("none", "oblivious")], df[("jpeg-q25", "oblivious")]
    assert oblivious >= undefended + 3 / 16  # JPEG recovers accuracy against the oblivious attack
    for mode in ("adaptive-bpda", "adaptive-diff"):
        assert df[("jpeg-q25", mode)] <= undefended + (oblivious - undefended) / 2  # and most of it is taken back
    report = result.report_path.read_text()
    assert re.search(r"\| jpeg-q25 +\| bpda +\|", report)  # a row per defense and mode
    assert "## Defense comparison" in report
    # the comparison per ε: the oblivious attacks' worst case → every attack's (McNemar's p)
    row = re.search(r"\| +\d+ \| jpeg-q25 +\| [^|]+\| ([\d.]+) % → ([\d.]+) % \(([<\d.]+)\)", report)
    assert row, report
    assert float(row[1]) == 100 * oblivious and float(row[2]) <= 100 * min(df[("jpeg-q25", m)] for m in ("adaptive-bpda", "adaptive-diff"))


@pytest.mark.slow  # make test-slow (CI runs it): keeps make test within its minutes
def test_randomized_defenses_record_eot_and_every_draw_and_rerun_to_the_bit(tmp_path, write_suite, tiny_suite):
    tiny_suite.update(attacks=[{"name": "pgd", "type": "pgd", "eps": "8/255", "steps": 2, "alpha": "4/255"}],
                      defenses=["none", "resize_pad", {"type": "median", "size": 2}], eval_mode=["oblivious", "adaptive"],
                      eot_samples=2, eval_draws=3)
    path = write_suite(tiny_suite)
    frames = []
    for i in range(2):
        result = run_suite(load_suite(path), tmp_path / f"r{i}", tmp_path / f"p{i}")
        frames.append(pd.read_parquet(result.run_dir / "results.parquet").set_index("cell_id"))
    df = frames[0]
    assert (df["status"] == "ok").all(), df["reason"]
    rp = df[df["defense"] == "resize_pad-1.1"].set_index("eval_mode")
    assert rp["eot_samples"].isna()["oblivious"] and rp.loc["adaptive-bpda", "eot_samples"] == 2
    assert (rp["eval_draws"] == 3).all() and (rp["robust_acc_all_draws"] <= rp["robust_acc"]).all()
    med = df[df["defense"] == "median-2"].set_index("eval_mode")
    assert med.loc["adaptive-diff", "eot_samples"] == 1 and (med["eval_draws"] == 1).all()
    assert (med["robust_acc_all_draws"] == med["robust_acc"]).all()
    # one seeded draw per image: a second run gives the same table and the same adversarial steps
    cols = ["clean_acc", "robust_acc", "robust_acc_all_draws", "linf_max", "l2_mean"]
    pd.testing.assert_frame_equal(frames[0][cols], frames[1].loc[frames[0].index, cols])
    steps = (df["attack_steps_per_s"] * df["attack_seconds"]).round()
    adaptive_rp = (df["defense"] == "resize_pad-1.1") & (df["eval_mode"] != "oblivious")
    assert steps[adaptive_rp].eq(2 * 2 * 6).all(), steps[adaptive_rp]  # steps × EOT draws × images


@pytest.mark.slow  # make test-slow (CI runs it): keeps make test within its minutes
def test_adaptive_pgd_takes_back_what_squeezing_smoothing_and_randomization_seemed_to_buy(tmp_path, write_suite):
    """On the bundled ImageNet model: for bit depth 5, median 3 and resize-and-pad, an adaptive PGD at
    4/255 leaves robust accuracy within 10 points of the undefended model's, and no adaptive attack
    does worse than the oblivious one by more than one image."""
    doc = {
        "name": "squeeze", "seed": 0, "data": {"source": "samples", "limit": 8},
        "models": [{"name": "lite0", "arch": "efficientnet_lite0", "weights": "imagenet"}],
        "attacks": [{"name": "pgd", "type": "pgd", "eps": "4/255", "steps": 5, "alpha": "1/255"}],
        "defenses": ["none", {"type": "bit_depth", "bits": 5}, {"type": "median", "size": 3}, "resize_pad"],
        "eval_mode": ["oblivious", "adaptive"], "eot_samples": 2, "batch_size": 8, "unconstrained_check": False,
        # the differentiable versions where they exist (BPDA's identity is a poor stand-in for a resize)
        "exclude": [{"defense": ["median", "resize_pad"], "eval_mode": "adaptive-bpda"}],
    }
    result = run_suite(load_suite(write_suite(doc)), tmp_path / "r", tmp_path / "p")
    df = pd.read_parquet(result.run_dir / "results.parquet")
    assert (df["status"] == "ok").all(), df["reason"]
    acc = df.groupby(["defense", "eval_mode"])["robust_acc"].min()
    undefended = acc[("none", "oblivious")]
    for defense in ("bits-5", "median-3", "resize_pad-1.1"):
        adaptive = acc[defense].drop("oblivious").min()
        assert adaptive <= undefended + 0.10, (defense, adaptive, undefended)
        assert adaptive <= acc[(defense, "oblivious")] + 1 / 8, defense
