"""Adversarial training for ``bench train --adversarial``: each batch is replaced by its worst case
inside the training ε before the optimiser step.

- ``pgd`` (Madry et al. 2018): minimise the cross-entropy on L∞ PGD examples (uniform random start,
  ``steps`` signed-gradient steps of ``step_size``, projection onto the ε-ball and [0, 1]);
- ``trades`` (Zhang et al. 2019): cross-entropy on the clean batch plus β · KL(f(x) ‖ f(x')) where x'
  maximises that KL inside the ball (start x + 0.001·N(0, 1), as the paper's code).

The examples are crafted with the network in eval mode (a BatchNorm's running statistics must not
learn the attack's batches) and gradients on the input only; the training step then runs in the
recipe's own mode. ε can be ramped up linearly over the first epochs (``eps_warmup``; the step size
follows it), which keeps a network trained from scratch from collapsing to a constant prediction at the
full budget.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

METHODS = ("pgd", "trades")


@dataclass(frozen=True)
class AdversarialSpec:
    method: str  # pgd | trades
    eps: float  # L∞ budget on images in [0, 1]
    steps: int = 7
    step_size: float | None = None  # None: 2.5 · ε / steps (Madry et al.)
    beta: float = 6.0  # trades: weight of the robustness term
    eps_warmup: int = 0  # epochs over which ε rises linearly from ε/warmup to ε

    def __post_init__(self) -> None:
        problems = []
        if self.method not in METHODS:
            problems.append(f"--adversarial must be one of {', '.join(METHODS)}, got {self.method!r}")
        if not 0 < self.eps <= 1:
            problems.append(f"--train-eps must be in (0, 1] (images are in [0, 1]: 0.1 or 8/255), got {self.eps}")
        if self.steps < 1:
            problems.append(f"--train-steps must be at least 1, got {self.steps}")
        if self.step_size is not None and not 0 < self.step_size <= 1:
            problems.append(f"--train-step-size must be in (0, 1], got {self.step_size}")
        if not self.beta > 0:  # NaN too
            problems.append(f"--trades-beta must be positive, got {self.beta}")
        if self.eps_warmup < 0:
            problems.append(f"--eps-warmup must be 0 or more epochs, got {self.eps_warmup}")
        if problems:
            raise ValueError("; ".join(problems))

    @property
    def alpha(self) -> float:
        return self.step_size if self.step_size is not None else 2.5 * self.eps / self.steps

    def alpha_at(self, eps: float) -> float:
        """The step at a warmed-up budget ``eps``: the same share of the ball as at the full ε."""
        return self.alpha * eps / self.eps

    def eps_at(self, epoch: int) -> float:
        """The budget in epoch ``epoch`` (0-based)."""
        if self.eps_warmup and epoch < self.eps_warmup:
            return self.eps * (epoch + 1) / self.eps_warmup
        return self.eps

    def card(self) -> dict:
        out = asdict(self)
        out["step_size"] = self.alpha
        if self.method != "trades":
            out.pop("beta")
        return out


def _in_ball(x_adv: torch.Tensor, x: torch.Tensor, eps: float) -> torch.Tensor:
    return torch.min(torch.max(x_adv, x - eps), x + eps).clamp_(0, 1)


def _ascend(model: nn.Module, x: torch.Tensor, start: torch.Tensor, loss_of, eps: float, steps: int, alpha: float) -> torch.Tensor:
    """``steps`` signed-gradient ascent steps on ``loss_of(logits)`` from ``start``, kept in the ball."""
    x_adv = _in_ball(start, x, eps)
    for _ in range(steps):
        x_adv.requires_grad_(True)
        loss = loss_of(model(x_adv))
        (grad,) = torch.autograd.grad(loss, x_adv)
        x_adv = _in_ball(x_adv.detach() + alpha * grad.sign(), x, eps)
    return x_adv.detach()


def adversarial_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor, spec: AdversarialSpec, eps: float,
                     g: torch.Generator, train_mode: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """(the training loss, the logits it was computed from) for one batch under ``spec`` at ``eps``.
    The model is left in ``train_mode`` for the step."""
    model.eval()
    if spec.method == "pgd":
        noise = (torch.rand(x.shape, generator=g) * 2 - 1).mul_(eps).to(x)
        x_adv = _ascend(model, x, x + noise, lambda out: F.cross_entropy(out, y), eps, spec.steps, spec.alpha_at(eps))
        model.train(train_mode)
        logits = model(x_adv)
        return F.cross_entropy(logits, y), logits
    # trades
    with torch.no_grad():
        p_clean = F.softmax(model(x), dim=1)
    noise = torch.randn(x.shape, generator=g).mul_(0.001).to(x)
    x_adv = _ascend(model, x, x + noise, lambda out: F.kl_div(F.log_softmax(out, dim=1), p_clean, reduction="sum"),
                    eps, spec.steps, spec.alpha_at(eps))
    model.train(train_mode)
    logits = model(x)
    robust = F.kl_div(F.log_softmax(model(x_adv), dim=1), F.softmax(logits, dim=1), reduction="batchmean")
    return F.cross_entropy(logits, y) + spec.beta * robust, logits
