"""The fast path changes speed, never results: every lever keeps logits and gradients."""

from __future__ import annotations

import pytest
import torch

from bench.fastpath import PLAIN, Autocast, GradientUnderflow, Levers, calibrate_fp16, fold_batchnorm, input_gradient, prepare
from bench.models import create_model
from bench.suite import ModelSpec


def _model(arch: str, size: int = 64):
    model = create_model(ModelSpec(arch, arch, None, num_classes=10, input_size=size), seed=0)
    # random BatchNorm statistics, so folding has something to fold
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
    return model


@pytest.fixture
def x():
    return torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("arch", ["resnet18", "efficientnet_lite0"])
def test_folding_batchnorm_removes_it_and_keeps_logits_and_gradients(arch, x):
    model = _model(arch)
    folded = fold_batchnorm(model)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())  # the original is untouched
    with torch.no_grad():
        assert torch.allclose(folded(x), model(x), atol=1e-4, rtol=1e-4)
    assert torch.allclose(input_gradient(folded, x), input_gradient(model, x), atol=1e-4, rtol=1e-3)


@pytest.mark.parametrize("levers", [PLAIN, Levers(), Levers(fold_bn=False), Levers(channels_last=False)])
def test_every_lever_combination_gives_the_same_logits(levers, x):
    model = _model("resnet18")
    fast = prepare(model, "cpu", "fp32", levers)
    with torch.no_grad():
        assert torch.allclose(fast(x), model(x), atol=1e-4, rtol=1e-4)
    weights_need_grad = any(p.requires_grad for p in fast.parameters())
    assert weights_need_grad == (not levers.frozen)


def test_autocast_returns_float32_logits_and_gradients(x):
    fast = prepare(_model("custom_cnn", 96), "cpu", "bf16", sample=None)
    x = torch.rand(2, 3, 96, 96)
    assert fast(x).dtype == torch.float32
    assert input_gradient(fast, x).dtype == torch.float32


def test_gradient_scale_does_not_change_the_gradient_value():
    model = _model("custom_cnn", 96)
    x = torch.rand(2, 3, 96, 96)
    plain = Autocast(model, "cpu", torch.bfloat16, grad_scale=1.0)
    scaled = Autocast(model, "cpu", torch.bfloat16, grad_scale=1024.0)  # a power of two: exact
    g = input_gradient(plain, x)
    assert (g != 0).any() and torch.allclose(g, input_gradient(scaled, x), rtol=1e-6, atol=0)


def test_fp16_calibration_picks_a_finite_scale_and_refuses_dead_gradients():
    model = _model("custom_cnn", 96)
    x = torch.rand(2, 3, 96, 96)
    fast = Autocast(model, "cpu", torch.float16)
    scale = calibrate_fp16(fast, x)
    assert scale >= 1 and torch.isfinite(input_gradient(fast, x)).all()

    class Dead(torch.nn.Module):  # a network whose input gradient is zero (masked gradients)
        def forward(self, x):
            return torch.stack([x.half().mean((1, 2, 3)) * 0, torch.zeros(len(x))], 1)

    with pytest.raises(GradientUnderflow, match="all zero"):
        calibrate_fp16(Autocast(Dead(), "cpu", torch.float16), x)
