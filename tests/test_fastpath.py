"""The fast path changes speed, never results: every lever keeps logits and gradients."""

from __future__ import annotations


import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
import torchattacks

import bench.fastpath
from bench.attacks.sgd import SGD
from bench.fastpath import (
    MAX_GRAD_SCALE,
    PLAIN,
    Autocast,
    GradientOverflow,
    GradientUnderflow,
    Levers,
    PrecisionError,
    backend_flags,
    calibrate_fp16,
    fold_batchnorm,
    input_gradient,
    prepare,
)
from bench.sources import create_model
from bench.suite import ModelSpec


def _model(arch: str, size: int = 64):
    model = create_model(ModelSpec(arch, arch, None, num_classes=10, input_size=size), seed=0)
    # random BatchNorm statistics, so folding has something to fold; seeded, so no test depends
    # on what consumed the global random state before it
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2, generator=g)
                m.running_var.uniform_(0.5, 2.0, generator=g)
                m.weight.uniform_(0.5, 1.5, generator=g)
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


def _grad(model, x, y):
    """Input gradient of the summed cross-entropy to labels ``y``: what an attack asks for."""
    x = x.detach().clone().requires_grad_(True)
    (g,) = torch.autograd.grad(F.cross_entropy(model(x), y, reduction="sum"), x)
    return g


def _sign_agreement(g, ref):
    nonzero = ref != 0
    return (g.sign() == ref.sign())[nonzero].float().mean().item()


@pytest.mark.parametrize("precision,threshold", [("bf16", 0.85), ("fp16", 0.95)])
def test_low_precision_gradients_point_the_way_fp32_ones_do(precision, threshold):
    """float32 logits and gradients out, and the gradient's sign (what PGD steps along) agrees
    with fp32 on most pixels (measured: bf16 0.91, fp16 0.97 on this network)."""
    model = _model("custom_cnn", 96)
    x = torch.rand(4, 3, 96, 96, generator=torch.Generator().manual_seed(1))
    y = torch.tensor([0, 3, 5, 7])
    fast = prepare(model, "cpu", precision, sample=x)
    assert fast(x).dtype == torch.float32
    g, ref = _grad(fast, x, y), _grad(model, x, y)
    assert g.dtype == torch.float32 and torch.isfinite(g).all()
    assert _sign_agreement(g, ref) >= threshold
    assert F.cosine_similarity(g.flatten(), ref.flatten(), dim=0) >= 0.9


def test_gradient_scale_does_not_change_the_gradient_value():
    model = _model("custom_cnn", 96)
    x = torch.rand(2, 3, 96, 96)
    plain = Autocast(model, "cpu", torch.bfloat16, grad_scale=1.0)
    scaled = Autocast(model, "cpu", torch.bfloat16, grad_scale=1024.0)  # a power of two: exact
    g = input_gradient(plain, x)
    assert (g != 0).any() and torch.allclose(g, input_gradient(scaled, x), rtol=1e-6, atol=0)


class Confident(nn.Module):
    """A small conv net that is sure of class 5 on every image (as a trained model is on clean
    photos): the cross-entropy to its own prediction has tiny gradients, so a scale chosen on it
    is 2^16, and a summed loss to any other label then overflows fp16 at that scale."""

    def __init__(self, margin: float = 15.0):
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2), nn.ReLU(), nn.AdaptiveAvgPool2d(4), nn.Flatten(), nn.Linear(128, 10))
        with torch.no_grad():
            self.net[-1].bias[5] = margin
        self.eval()

    def forward(self, x):
        return self.net(x)


class Amplifier(nn.Module):
    """fp16 backward overflows whatever the scale: the forward is the identity, the backward
    multiplies the gradient by 10^6 in fp16 (max 65504)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.fc = nn.Linear(3 * 8 * 8, 10)
        with torch.no_grad():
            self.fc.weight.uniform_(-1, 1)

    def forward(self, x):
        z = x.flatten(1).half()
        return self.fc((z - z.detach()) * 1e6 + z.detach())


def test_fp16_scale_backs_off_where_a_fixed_scale_gave_nans():
    """The old calibration kept 2^16 for this model (its own-label loss is tiny); a summed loss
    to other labels then came back all NaN. Now the backward halves the scale until finite,
    the value matches fp32, and the lowered scale is where the next call starts."""
    model = Confident()
    x = torch.rand(8, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    y = torch.full((8,), 3)
    fast = Autocast(model, "cpu", torch.float16, grad_scale=MAX_GRAD_SCALE)  # where the old calibration left it
    g = _grad(fast, x, y)
    assert torch.isfinite(g).all()
    lowered = fast.grad_scale
    assert 1 <= lowered < MAX_GRAD_SCALE
    reference = _grad(model, x, y)
    assert (g - reference).norm() < 0.1 * reference.norm() and _sign_agreement(g, reference) > 0.99
    assert torch.equal(_grad(fast, x, y), g) and fast.grad_scale == lowered  # sticks: no overflow, no retry


@pytest.mark.parametrize("attack,n", [("pgd", 1), ("sgd", 8)])
def test_fp16_attacks_give_finite_images_within_the_budget(attack, n):
    """PGD (mean loss: one image makes it a sum) and the project's SGD attack (summed), both
    targeted at a class the model does not predict, through prepare(..., 'fp16'), against the
    same attack on the fp32 model. With the old fixed scale, SGD's images came back NaN and PGD's
    gradients were NaN on 90 % of the pixels, which ``sign()`` turns into 0: those pixels never
    moved (3 % moved, against 94 % in fp32)."""
    x = torch.rand(n, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    y = torch.full((n,), 5)  # the model's own prediction
    fast = prepare(Confident(), "cpu", "fp16", sample=torch.rand(8, 3, 32, 32, generator=torch.Generator().manual_seed(1)))
    eps = 8 / 255

    def run(model):
        if attack == "pgd":
            atk = torchattacks.PGD(model, eps=eps, alpha=2 / 255, steps=3, random_start=False)
        else:
            atk = SGD(model, eps=eps, steps=3)
        atk.set_mode_targeted_by_function(lambda images, labels: torch.full_like(labels, 3))
        return atk(x, y)

    adv, reference = run(fast), run(Confident())
    assert torch.isfinite(adv).all()
    assert (adv - x).abs().max() <= eps + 1e-6 and adv.min() >= 0 and adv.max() <= 1
    moved, moved_fp32 = (adv != x).float().mean().item(), (reference != x).float().mean().item()
    assert moved >= 0.9 * moved_fp32 > 0
    assert ((adv - x).sign() == (reference - x).sign()).float().mean() >= 0.9
    assert fast.grad_scale < MAX_GRAD_SCALE


def test_fp16_calibration_chooses_the_largest_finite_scale():
    model = Confident()
    x = torch.rand(8, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    fast = Autocast(model, "cpu", torch.float16)
    scale = calibrate_fp16(fast, x)
    assert scale == fast.grad_scale and scale in [2.0**k for k in range(17)]
    # the old calibration (own-label loss) kept 2^16 here; the probe loss (runner-up minus top
    # logit) has gradient ±1 at the logits, as an attack's summed loss does, and 2^16 overflows
    assert scale < MAX_GRAD_SCALE
    assert torch.isfinite(input_gradient(fast, x)).all() and fast.grad_scale == scale
    fast.grad_scale = 2 * scale
    bench.fastpath._margin_gradient(fast, x)
    assert fast.grad_scale == scale  # twice the chosen scale overflows: the backward backs off


def test_fp16_scale_rescues_gradients_that_underflow_unscaled():
    """The scale's purpose: gradients below fp16's smallest subnormal (6e-8) survive it."""

    class Faint(nn.Module):  # the backward multiplies by 1e-7 (in fp16 here); the forward is the identity
        def __init__(self, dtype=torch.float16):
            super().__init__()
            torch.manual_seed(0)
            self.fc, self.dtype = nn.Linear(3 * 8 * 8, 10), dtype

        def forward(self, x):
            z = x.flatten(1).to(self.dtype)
            return self.fc((z - z.detach()) * 1e-7 + z.detach())

    x = torch.rand(4, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    y = torch.tensor([1, 2, 3, 4])
    unscaled = Autocast(Faint(), "cpu", torch.float16, grad_scale=1.0)
    assert (_grad(unscaled, x, y) == 0).all()
    fast = prepare(Faint(), "cpu", "fp16", Levers(fold_bn=False, channels_last=False), sample=x)
    assert fast.grad_scale >= 2**10
    g = _grad(fast, x, y)
    reference = _grad(Faint(torch.float32), x, y)  # the same network in fp32
    assert (g != 0).mean(dtype=torch.float32) > 0.99
    assert _sign_agreement(g, reference) > 0.99


def test_fp16_overflow_even_at_scale_1_raises_a_clear_error():
    x = torch.rand(4, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    with pytest.raises(GradientOverflow, match="even without loss scaling.*use bf16 or fp32"):
        prepare(Amplifier(), "cpu", "fp16", Levers(fold_bn=False, channels_last=False), sample=x)
    # during an attack too, through the autograd engine and torchattacks, with its own type
    fast = Autocast(Amplifier(), "cpu", torch.float16, grad_scale=4.0)
    with pytest.raises(GradientOverflow) as info:
        torchattacks.PGD(fast, eps=8 / 255, alpha=2 / 255, steps=1)(x, torch.zeros(4, dtype=torch.long))
    assert isinstance(info.value, PrecisionError) and isinstance(info.value, RuntimeError)
    assert fast.grad_scale == 1.0


def test_fp16_refuses_dead_gradients():
    x = torch.rand(2, 3, 96, 96)

    class Dead(torch.nn.Module):  # a network whose input gradient is zero (masked gradients)
        def forward(self, x):
            return torch.stack([x.half().mean((1, 2, 3)) * 0, torch.zeros(len(x))], 1)

    with pytest.raises(GradientUnderflow, match="all zero"):
        calibrate_fp16(Autocast(Dead(), "cpu", torch.float16), x)


def test_fp16_weight_gradients_flow_when_weights_are_not_frozen():
    model = Confident()
    x = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    fast = prepare(model, "cpu", "fp16", Levers(frozen=False), sample=x)
    F.cross_entropy(fast(x), torch.full((4,), 3), reduction="sum").backward()
    grads = [p.grad for p in fast.parameters()]
    assert grads and all(g is not None and torch.isfinite(g).all() and (g != 0).any() for g in grads)


def test_no_grad_forward_is_plain_autocast():
    model = Confident()
    x = torch.rand(2, 3, 32, 32)
    fast = Autocast(model, "cpu", torch.float16, grad_scale=8.0)
    with torch.no_grad():
        out = fast(x)
    assert out.grad_fn is None and out.dtype == torch.float32 and fast.grad_scale == 8.0


def test_backend_flags_set_cudnn_benchmark_for_the_scope_only():
    assert Levers().cudnn_benchmark and not PLAIN.cudnn_benchmark
    before = torch.backends.cudnn.benchmark
    try:
        for outer in (False, True):
            torch.backends.cudnn.benchmark = outer
            for levers in (PLAIN, Levers()):
                with backend_flags(levers):
                    assert torch.backends.cudnn.benchmark is levers.cudnn_benchmark
                assert torch.backends.cudnn.benchmark is outer
            with pytest.raises(KeyError), backend_flags(Levers()):
                raise KeyError("restored on an exception too")
            assert torch.backends.cudnn.benchmark is outer
    finally:
        torch.backends.cudnn.benchmark = before


def test_prepare_leaves_the_global_cudnn_flag_alone(monkeypatch):
    """prepare() used to switch cudnn.benchmark on for the whole process for any CUDA model,
    PLAIN too. Moving to the device is faked, so this runs without a GPU."""
    monkeypatch.setattr(torch.nn.Module, "to", lambda self, *args, **kwargs: self)
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)
    for levers in (PLAIN, Levers()):
        prepare(_model("custom_cnn", 96), "cuda:0", "fp32", levers)
        assert torch.backends.cudnn.benchmark is False


def test_the_compile_lever_keeps_predictions_and_gradients(monkeypatch, x):
    """torch.compile with the eager backend (no C compiler needed): prepare's compile lever wraps
    the model, and the compiled model answers as the uncompiled one."""
    calls = []
    real_compile = torch.compile

    def eager_compile(model, **kwargs):
        calls.append(model)
        return real_compile(model, backend="eager", **kwargs)

    monkeypatch.setattr(bench.fastpath.torch, "compile", eager_compile)
    model = _model("resnet18")
    plain = prepare(model, "cpu", "fp32", Levers())
    compiled = prepare(model, "cpu", "fp32", Levers(compile=True))
    assert len(calls) == 1 and isinstance(compiled, torch._dynamo.eval_frame.OptimizedModule)
    assert not compiled.training  # eval mode survives the wrapper (see Wrapper)
    with torch.no_grad():
        assert torch.equal(compiled(x).argmax(1), plain(x).argmax(1))
        assert torch.allclose(compiled(x), plain(x), atol=1e-5, rtol=1e-5)
    assert torch.allclose(input_gradient(compiled, x), input_gradient(plain, x), atol=1e-5, rtol=1e-4)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_prepare_on_cuda_leaves_cudnn_benchmark_to_backend_flags(monkeypatch):
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)
    fast = prepare(_model("resnet18"), "cuda", "fp32", Levers())
    assert torch.backends.cudnn.benchmark is False
    with backend_flags(Levers()):
        assert torch.backends.cudnn.benchmark is True
        fast(torch.rand(2, 3, 64, 64, device="cuda"))
    assert torch.backends.cudnn.benchmark is False


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_fp16_on_cuda_backs_off_and_stays_finite():
    model = Confident()
    x = torch.rand(8, 3, 32, 32, device="cuda")
    fast = prepare(model, "cuda", "fp16", sample=x)
    atk = SGD(fast, eps=8 / 255, steps=3)
    atk.set_mode_targeted_by_function(lambda images, labels: torch.full_like(labels, 3))
    adv = atk(x, torch.full((8,), 5, device="cuda"))
    assert torch.isfinite(adv).all() and (adv - x).abs().max() <= 8 / 255 + 1e-6


# ---------------------------------------------------------------------------------------------
# The fast path on models it was not written for


def _arbitrary(kind: str):
    from bench.models import Classifier

    torch.manual_seed(0)
    if kind == "batchnorm":  # torchvision ResNet: BatchNorm after every conv
        import torchvision

        net, size = torchvision.models.resnet18(num_classes=10), 64
    elif kind == "depthwise":  # MobileNetV3: depthwise convolutions, hard-swish, squeeze-excitation
        import torchvision

        net, size = torchvision.models.mobilenet_v3_small(num_classes=10), 64
    elif kind == "attention":  # timm ViT: LayerNorm and attention, one patch-embedding conv
        import timm

        net, size = timm.create_model("test_vit", num_classes=10), 160
    else:  # a user's factory model without any normalisation layer
        net, size = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, stride=2), torch.nn.ReLU(), torch.nn.Conv2d(8, 8, 3, stride=2),
                                        torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(8, 10)), 32
    if kind == "batchnorm":  # non-trivial running statistics, so folding has something to get right
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    model = Classifier(net, (0.5,) * 3, (0.25,) * 3, size, 10).eval().requires_grad_(False)
    return model, torch.rand(4, 3, size, size, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("kind", ["batchnorm", "depthwise", "attention", "plain"])
def test_levers_keep_any_models_logits_and_gradients(kind):
    model, x = _arbitrary(kind)
    fast = prepare(model, "cpu", "fp32", Levers(), sample=x)
    with torch.no_grad():
        ref, out = model(x), fast(x)
    assert torch.allclose(out, ref, atol=1e-3 * max(1.0, ref.abs().max().item()), rtol=0)
    g_ref, g_fast = input_gradient(model, x), input_gradient(fast, x)
    assert g_fast.is_contiguous() and torch.allclose(g_fast, g_ref, atol=1e-4 * g_ref.abs().max().item(), rtol=1e-2)


def test_a_lever_that_changes_the_logits_switches_itself_off_with_the_reason_logged(monkeypatch, caplog):
    import bench.fastpath as fastpath

    real = fastpath.fold_batchnorm

    def broken(model):  # a folding that gets one BatchNorm wrong
        folded = real(model)
        first = next(m for m in folded.modules() if isinstance(m, torch.nn.Conv2d))
        with torch.no_grad():
            first.weight.mul_(1.5)
        return folded

    monkeypatch.setattr(fastpath, "fold_batchnorm", broken)
    model, x = _arbitrary("batchnorm")
    with caplog.at_level("WARNING", logger="bench.fastpath"):
        fast = prepare(model, "cpu", "fp32", Levers(), sample=x)
    with torch.no_grad():
        assert torch.allclose(fast(x), model(x), atol=1e-3 * model(x).abs().max().item(), rtol=0)
    assert "switching off fold_bn" in caplog.text


def test_channels_last_is_not_pulled_for_a_model_without_a_convolution_stack():
    from bench.fastpath import ChannelsLast

    vit, x = _arbitrary("attention")
    assert not any(isinstance(m, ChannelsLast) for m in prepare(vit, "cpu", "fp32", Levers(), sample=x).modules())
    cnn, x = _arbitrary("plain")
    assert any(isinstance(m, ChannelsLast) for m in prepare(cnn, "cpu", "fp32", Levers(), sample=x).modules())
