"""The fast attack path: what turns a model into the fastest honest thing an attack can query.

Each lever is separate, so ``bench perf`` can switch them on one at a time and show its share:

- ``frozen``: weights ``requires_grad_(False)``, so backward computes input gradients only;
- ``fold_bn``: eval-mode BatchNorm folded into the preceding convolution (exact up to rounding),
  which removes a memory-bound pass forward and backward;
- ``channels_last``: NHWC memory format for conv nets;
- ``cudnn_benchmark``: ``torch.backends.cudnn.benchmark`` (let cuDNN time its kernels for the fixed
  input shape). It is process-wide state, so :func:`prepare` never sets it: run the attack inside
  ``with backend_flags(levers):``, which sets it for that scope and restores it after;
- ``precision``: ``torch.autocast`` (bf16/fp16) around the forward, float32 logits out, so the loss
  and the perturbation stay float32 for every torchattacks attack, unpatched; fp16 gets a dynamic
  gradient scale (see :class:`Autocast`) so input gradients neither underflow to zero nor overflow;
- ``compile``: ``torch.compile`` of the model's forward only (the attack's ``autograd.grad`` stays
  outside the compiled region).
"""

from __future__ import annotations

import copy
import logging
import math
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Iterator

import torch
import torch.nn as nn
import torch.nn.functional as F

log = logging.getLogger(__name__)

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


# fp16's gradient scale starts here (as torch.amp.GradScaler's does) and only ever backs off.
MAX_GRAD_SCALE = 2.0**16


class PrecisionError(RuntimeError):
    """The model's input gradients cannot be trusted at this precision: the cell fails with this message."""


class GradientUnderflow(PrecisionError):
    """Input gradients are all zero at this precision, even with loss scaling."""


class GradientOverflow(PrecisionError):
    """fp16 input gradients are non-finite even at gradient scale 1 (no loss scaling at all)."""


@dataclass(frozen=True)
class Levers:
    frozen: bool = True
    fold_bn: bool = True
    channels_last: bool = True
    compile: bool = False
    cudnn_benchmark: bool = True  # applied by backend_flags(), not by prepare(): it is process-wide


PLAIN = Levers(frozen=False, fold_bn=False, channels_last=False, compile=False, cudnn_benchmark=False)


@contextmanager
def backend_flags(levers: Levers = Levers()) -> Iterator[None]:
    """Set the process-wide backend flags of ``levers`` (``torch.backends.cudnn.benchmark``) for
    the ``with`` block and restore their previous values after it, even on an exception.

    cuDNN reads the flag when a convolution runs, not when a model is built, so wrap the attack
    (and any timed pass) in it, not only :func:`prepare`. On CPU the flag has no effect.
    """
    previous = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = levers.cudnn_benchmark
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = previous


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


class _ToChannelsLast(torch.autograd.Function):
    """NCHW → NHWC forward; the gradient goes back as plain contiguous NCHW. Autograd would
    otherwise hand the attack an NHWC-strided gradient, and attacks that ``view`` it (PGDL2's
    ``grad.view(n, -1)``) fail or, worse, reorder it."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        return x.contiguous(memory_format=torch.channels_last)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        return grad.contiguous()


class ChannelsLast(Wrapper):
    """Feeds the wrapped model NHWC inputs (the conv weights are converted once). What the
    attack sees stays NCHW: its input is untouched and its gradient comes back contiguous NCHW."""

    def __init__(self, model: nn.Module):
        super().__init__(model.to(memory_format=torch.channels_last))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(_ToChannelsLast.apply(x))


class _LowPrecision(torch.autograd.Function):
    """The low-precision network as one autograd node with a dynamic gradient scale.

    Forward runs the network under autocast with autograd on, on a detached copy of the input, and
    keeps that inner graph. Backward multiplies the incoming (float32) gradient by the owner's
    scale ``s``, back-propagates it through the inner graph and divides the result by ``s``, so
    the gradient's value is unchanged but small gradients survive fp16's range inside the network.
    If the result is not finite, ``s`` is halved (for good: later calls start from the lowered
    scale, as ``torch.amp.GradScaler`` backs off) and only this backward is redone, after
    re-running the forward, until it is finite; still non-finite at ``s = 1`` raises
    :class:`GradientOverflow`. The retry re-runs the forward rather than keeping the inner graph
    with ``retain_graph``, so the common, finite case frees activations during backward as usual.
    """

    @staticmethod
    def forward(ctx, owner: "Autocast", x: torch.Tensor, *params: torch.Tensor) -> torch.Tensor:
        # params: the network's weights that require grad (none when frozen), passed so their
        # gradients flow too; the inner graph reaches them directly
        xi = x.detach().requires_grad_(ctx.needs_input_grad[1])
        with torch.enable_grad():
            logits = owner._forward(xi)
        ctx.owner, ctx.inner, ctx.params = owner, (xi, logits), params
        return logits.detach()

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: torch.Tensor):
        owner, params = ctx.owner, ctx.params
        xi, logits = ctx.inner
        ctx.inner = ctx.params = None  # the inner graph lives no longer than this backward
        need_x = ctx.needs_input_grad[1]
        wanted = ([xi] if need_x else []) + list(params)
        if not wanted or not logits.requires_grad:  # the logits do not depend on anything that wants a gradient
            return (None,) * (2 + len(params))
        while True:
            s = owner.grad_scale
            grads = torch.autograd.grad(logits, wanted, grad * s, allow_unused=True)
            finite = [torch.isfinite(g).all() for g in grads if g is not None]
            if not finite or bool(torch.stack(finite).all()):
                break  # the common case: one check (one device sync) per backward
            if not bool(torch.isfinite(grad).all()):
                break  # non-finite from upstream (a NaN loss): not ours to fix by scaling, pass it on
            if s <= 1.0:
                raise GradientOverflow(
                    "fp16 input gradients are non-finite (inf or NaN) even without loss scaling (gradient scale 1): "
                    "the network overflows fp16 in backward; use bf16 or fp32 for this model"
                )
            owner.grad_scale = max(1.0, s / 2)
            log.debug("fp16 gradient overflow at scale %g: backing off to %g", s, owner.grad_scale)
            with torch.enable_grad():  # rebuild the inner graph the failed backward freed
                logits = owner._forward(xi)
        grads = [None if g is None else g / s for g in grads]  # s is a power of two: exact
        gx = grads.pop(0) if need_x else None
        return (None, gx, *grads)


class Autocast(Wrapper):
    """Runs the model's forward under ``torch.autocast`` and returns float32 logits.

    ``grad_scale`` > 1 multiplies the gradient entering the low-precision network and divides it
    again at the input: the input gradient is unchanged in value, but small gradients survive
    fp16's range inside the network (AMP's loss scaling, done at the boundary so no attack needs
    to know about it). For fp16 the scale is dynamic: a backward whose gradients overflow halves
    it and is redone, and the lowered scale sticks (see :class:`_LowPrecision`); at scale 1 an
    overflow raises :class:`GradientOverflow`. Without autograd (``torch.no_grad``, or nothing
    that needs a gradient) the forward is plain autocast.
    """

    def __init__(self, model: nn.Module, device_type: str, dtype: torch.dtype, grad_scale: float = 1.0):
        super().__init__(model)
        self.device_type, self.dtype, self.grad_scale = device_type, dtype, float(grad_scale)

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(self.device_type, dtype=self.dtype):
            logits = self.model(x)
        return logits.float()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        params = [p for p in self.model.parameters() if p.requires_grad]
        scaled = self.dtype == torch.float16 or self.grad_scale != 1.0
        if not scaled or not torch.is_grad_enabled() or not (x.requires_grad or params):
            return self._forward(x)
        return _LowPrecision.apply(self, x, *params)


def input_gradient(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Gradient of the cross-entropy to the model's own prediction, w.r.t. the input."""
    x = x.detach().clone().requires_grad_(True)
    logits = model(x)
    loss = F.cross_entropy(logits, logits.detach().argmax(1), reduction="sum")
    (g,) = torch.autograd.grad(loss, x)
    return g


def _margin_gradient(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Input gradient of the summed margin between each image's runner-up and top logit: a loss
    whose gradient at the logits is ±1 whatever the model's confidence, as large as an attack's
    summed loss on a wrong label. (The cross-entropy to the model's own prediction saturates on a
    confident model, so a scale chosen on it overflows on an attack's loss, and its zero gradient
    says nothing about the precision.)"""
    x = x.detach().clone().requires_grad_(True)
    logits = model(x)
    if logits.shape[1] >= 2:
        top = logits.topk(2, dim=1).values
        loss = (top[:, 1] - top[:, 0]).sum()
    else:
        loss = logits.sum()
    (g,) = torch.autograd.grad(loss, x)
    return g


def calibrate_fp16(model: Autocast, x: torch.Tensor) -> float:
    """Start the dynamic gradient scale at 2^16 and let one probe gradient (see
    :func:`_margin_gradient`) back it off to the largest power of two whose gradients are finite;
    attacks back it off further if they need to. Refuse a model whose fp16 input gradients are
    all zero even so (:class:`GradientUnderflow`), or non-finite even at scale 1
    (:class:`GradientOverflow`, raised by the backward)."""
    model.grad_scale = MAX_GRAD_SCALE
    g = _margin_gradient(model, x)
    if not (g != 0).any():
        raise GradientUnderflow(
            f"fp16 input gradients are all zero even with loss scaling (scale {model.grad_scale:g}): "
            "use bf16 or fp32 for this model"
        )
    return model.grad_scale


def prepare(model: nn.Module, device: str, precision: str = "fp32", levers: Levers = Levers(),
            sample: torch.Tensor | None = None) -> nn.Module:
    """Put a [0,1]-input classifier on ``device`` with the chosen levers. ``sample`` (a batch)
    is needed for fp16, to start its gradient scale and refuse dead gradients; given, it also
    checks that the levers keep the model's logits within float tolerance of the plain model's,
    and switches off (with the reason in the log) any lever that does not, for this model.

    Process-wide backend flags (``levers.cudnn_benchmark``) are not set here: run the model
    inside ``with backend_flags(levers):``. Raises :class:`PrecisionError` (its subclasses
    :class:`GradientUnderflow`, :class:`GradientOverflow`) for fp16 gradients that cannot be
    trusted; attacks on an fp16 model can raise :class:`GradientOverflow` too."""
    levers = _useful(model, levers)
    if sample is not None and (levers.fold_bn or levers.channels_last or levers.compile):
        model_fp32, levers = _checked(model, device, levers, sample.to(device))
    else:
        model_fp32 = _apply(model, device, levers)
    model = model_fp32
    if precision != "fp32":
        model = Autocast(model, torch.device(device).type, DTYPES[precision])
        if precision == "fp16":
            if sample is None:
                raise ValueError("fp16 needs a sample batch to calibrate its gradient scale")
            scale = calibrate_fp16(model, sample.to(device))
            log.debug("fp16 gradient scale %g", scale)
    return model.eval()  # torch.compile's wrapper too (see Wrapper)


def _apply(model: nn.Module, device: str, levers: Levers) -> nn.Module:
    model = copy.deepcopy(model)
    model.eval()
    model.requires_grad_(not levers.frozen)
    if levers.fold_bn:
        model = fold_batchnorm(model)
        model.requires_grad_(not levers.frozen)
    model = model.to(device)
    if levers.channels_last:
        model = ChannelsLast(model)
    if levers.compile:
        model = torch.compile(model)
    return model.eval()


def _useful(model: nn.Module, levers: Levers) -> Levers:
    """Levers that cannot help this model are not pulled: channels_last only pays for a stack of
    convolutions (a ViT's single patch-embedding conv would only add two layout copies)."""
    convs = sum(isinstance(m, nn.Conv2d) for m in model.modules())
    if levers.channels_last and convs < 2:
        log.debug("channels_last off for %s: %d convolution(s), nothing to gain", type(model).__name__, convs)
        levers = replace(levers, channels_last=False)
    return levers


# Logits of a lever-transformed model must match the plain model's this closely (relative to the
# largest logit): BatchNorm folding and memory layouts change float rounding, nothing more.
LEVER_TOLERANCE = 1e-3


def _checked(model: nn.Module, device: str, levers: Levers, sample: torch.Tensor) -> tuple[nn.Module, Levers]:
    """The model with ``levers`` if its logits on ``sample`` match the plain model's; otherwise
    switch off, one by one, the levers that change them (the reason goes to the log)."""
    with torch.no_grad():
        try:
            reference = _apply(model, device, replace(PLAIN, frozen=levers.frozen))(sample).float()
        except Exception as exc:  # a network that only runs under autocast, say: nothing to compare with
            log.debug("fast path: levers not checked for %s (%s)", type(model).__name__, exc)
            return _apply(model, device, levers), levers
        scale = max(1.0, reference.abs().max().item())
        for drop in (None, "fold_bn", "channels_last", "compile"):
            if drop is not None:
                if not getattr(levers, drop):
                    continue
                levers = replace(levers, **{drop: False})
            try:
                prepared = _apply(model, device, levers)
                diff = (prepared(sample).float() - reference).abs().max().item()
            except Exception as exc:  # a lever that cannot even run on this model (fx folding, compile) is off too
                log.warning("fast path: levers %s fail on %s (%s: %s)", levers, type(model).__name__, type(exc).__name__, exc)
                diff = math.inf
            if diff <= LEVER_TOLERANCE * scale:
                return prepared, levers
            pulled = [n for n in ("fold_bn", "channels_last", "compile") if getattr(levers, n)]
            log.warning("fast path: %s change the logits of %s by %.3g (tolerance %.3g): switching off %s",
                        ", ".join(pulled) or "no lever", type(model).__name__, diff, LEVER_TOLERANCE * scale,
                        next((n for n in ("fold_bn", "channels_last", "compile") if getattr(levers, n)), "nothing more"))
    return prepared, levers  # plain: nothing left to switch off (the reference itself)
