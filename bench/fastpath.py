"""The fast attack path: what turns a model into the fastest honest thing an attack can query.

Each lever is separate, so ``bench perf`` can switch them on one at a time and show its share:

- ``frozen``: weights ``requires_grad_(False)``, so backward computes input gradients only;
- ``fold_bn``: eval-mode BatchNorm folded into the preceding convolution (exact up to rounding),
  which removes a memory-bound pass forward and backward;
- ``channels_last``: NHWC memory format for conv nets;
- ``precision``: ``torch.autocast`` (bf16/fp16) around the forward, float32 logits out, so the loss
  and the perturbation stay float32 for every torchattacks attack, unpatched; fp16 gets a gradient
  scale calibrated so input gradients neither underflow to zero nor overflow;
- ``compile``: ``torch.compile`` of the model's forward only (the attack's ``autograd.grad`` stays
  outside the compiled region).
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

log = logging.getLogger(__name__)

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


class GradientUnderflow(RuntimeError):
    """Input gradients are all zero at this precision, even with loss scaling."""


@dataclass(frozen=True)
class Levers:
    frozen: bool = True
    fold_bn: bool = True
    channels_last: bool = True
    compile: bool = False


PLAIN = Levers(frozen=False, fold_bn=False, channels_last=False, compile=False)


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """A copy of ``model`` with every Conv2d→BatchNorm2d pair folded into the conv.

    For a :class:`~bench.models.Classifier` the wrapped network is folded and the wrapper kept.
    Pairs are found by the network's own ``fold_bn()`` where it defines one (EfficientNet-Lite0),
    else by tracing with torch.fx (torchvision ResNets). Networks without BatchNorm come back
    unchanged. Only valid in eval mode, where the running statistics are constants.
    """
    model = copy.deepcopy(model).eval()
    if hasattr(model, "net"):
        model.net = _fold(model.net)
        return model
    return _fold(model)


def _fold(net: nn.Module) -> nn.Module:
    if hasattr(net, "fold_bn"):
        net.fold_bn()
        return net
    if not any(isinstance(m, nn.BatchNorm2d) for m in net.modules()):
        return net
    from torch.fx.experimental.optimization import fuse

    try:
        return fuse(net)
    except Exception as exc:  # a network fx cannot trace keeps its BatchNorm: correct, only slower
        log.info("BatchNorm folding skipped for %s: %s", type(net).__name__, exc)
        return net


class Wrapper(nn.Module):
    """A module around a model that keeps the model's train/eval mode. A new nn.Module starts in
    training mode, and torchattacks calls ``model.train()`` after an attack on a model it found
    training, which would switch dropout and BatchNorm batch statistics back on."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.train(model.training)


class ChannelsLast(Wrapper):
    """Feeds the wrapped model NHWC inputs (the conv weights are converted once)."""

    def __init__(self, model: nn.Module):
        super().__init__(model.to(memory_format=torch.channels_last))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x.contiguous(memory_format=torch.channels_last))


class _ScaleGrad(torch.autograd.Function):
    """Identity forward; multiplies the incoming gradient by ``scale`` in backward."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, scale: float) -> torch.Tensor:
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return grad * ctx.scale, None


class Autocast(Wrapper):
    """Runs the model's forward under ``torch.autocast`` and returns float32 logits.

    ``grad_scale`` > 1 multiplies the gradient entering the low-precision network and divides it
    again at the input: the input gradient is unchanged in value, but small gradients survive
    fp16's range inside the network (the same idea as AMP's loss scaling, done at the boundary so
    no attack needs to know about it).
    """

    def __init__(self, model: nn.Module, device_type: str, dtype: torch.dtype, grad_scale: float = 1.0):
        super().__init__(model)
        self.device_type, self.dtype, self.grad_scale = device_type, dtype, grad_scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.grad_scale
        if s != 1.0:
            x = _ScaleGrad.apply(x, 1.0 / s)
        with torch.autocast(self.device_type, dtype=self.dtype):
            logits = self.model(x)
        logits = logits.float()
        return _ScaleGrad.apply(logits, s) if s != 1.0 else logits


def input_gradient(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Gradient of the cross-entropy to the model's own prediction, w.r.t. the input."""
    x = x.detach().clone().requires_grad_(True)
    logits = model(x)
    loss = F.cross_entropy(logits, logits.detach().argmax(1), reduction="sum")
    (g,) = torch.autograd.grad(loss, x)
    return g


def calibrate_fp16(model: Autocast, x: torch.Tensor) -> float:
    """Choose the largest gradient scale (2^16 down to 1) whose input gradients are finite, and
    refuse a model whose fp16 input gradients are all zero even then."""
    for exp in range(16, -1, -4):
        model.grad_scale = float(2**exp)
        g = input_gradient(model, x)
        if torch.isfinite(g).all():
            break
    else:
        model.grad_scale = 1.0
    if not (g != 0).any():
        raise GradientUnderflow(
            "fp16 input gradients are all zero even with loss scaling up to 2^16: use bf16 or fp32 for this model"
        )
    return model.grad_scale


def prepare(model: nn.Module, device: str, precision: str = "fp32", levers: Levers = Levers(),
            sample: torch.Tensor | None = None) -> nn.Module:
    """Put a [0,1]-input classifier on ``device`` with the chosen levers. ``sample`` (a batch)
    is needed for fp16, to calibrate the gradient scale."""
    model = copy.deepcopy(model)
    model.eval()
    model.requires_grad_(not levers.frozen)
    if levers.fold_bn:
        model = fold_batchnorm(model)
        model.requires_grad_(not levers.frozen)
    model = model.to(device)
    if levers.channels_last:
        model = ChannelsLast(model)
    if device.startswith("cuda"):
        torch.backends.cudnn.benchmark = True  # fixed input shapes: let cuDNN pick the fastest kernels
    if levers.compile:
        model = torch.compile(model)
    if precision != "fp32":
        model = Autocast(model, torch.device(device).type, DTYPES[precision])
        if precision == "fp16":
            if sample is None:
                raise ValueError("fp16 needs a sample batch to calibrate its gradient scale")
            scale = calibrate_fp16(model, sample.to(device))
            log.debug("fp16 gradient scale %g", scale)
    return model.eval()  # torch.compile's wrapper too (see Wrapper)
