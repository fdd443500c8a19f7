"""The tutorial's attack, done right: a perturbation optimised with ``torch.optim.SGD``.

The original loop (see the background page) kept the perturbation in *normalised* space,
clamped it *before* each step (so the final one could exceed ε) and never clipped x + r to
the image range. Here δ lives in pixel space of images in [0, 1], is projected onto the ε ball
and into [0, 1] after every step, and the loss is summed over the batch so each image's
gradient does not shrink with the batch size (for one image, sum and mean coincide).
"""

from __future__ import annotations

import torch
import torch.nn as nn
from torchattacks.attack import Attack


class SGD(Attack):
    r"""Targeted (or untargeted) L∞ attack with SGD + momentum on the cross-entropy.

    Arguments:
        model (nn.Module): model to attack; takes images in [0, 1].
        eps (float): L∞ budget in pixel space. (Default: 10/255)
        steps (int): optimiser steps. (Default: 30)
        lr (float): SGD learning rate. (Default: 0.1)
        momentum (float): SGD momentum. (Default: 0.1)

    Targeted mode (``set_mode_targeted_*``) minimises the cross-entropy to the target class;
    default mode maximises it for the true label.
    """

    def __init__(self, model: nn.Module, eps: float = 10 / 255, steps: int = 30, lr: float = 0.1, momentum: float = 0.1):
        super().__init__("SGD", model)
        if steps < 1:
            raise ValueError(f"steps must be >= 1, got {steps}")
        if lr <= 0:
            raise ValueError(f"lr must be > 0, got {lr}")
        if not 0 <= momentum < 1:
            raise ValueError(f"momentum must be in [0, 1), got {momentum}")
        self.eps, self.steps, self.lr, self.momentum = eps, steps, lr, momentum
        self.supported_mode = ["default", "targeted"]

    def forward(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        images = images.clone().detach().to(self.device)
        labels = labels.clone().detach().to(self.device)
        goal = self.get_target_label(images, labels) if self.targeted else labels
        sign = 1.0 if self.targeted else -1.0  # SGD minimises: the target's loss, or minus the true label's
        loss_fn = nn.CrossEntropyLoss(reduction="sum")

        delta = torch.zeros_like(images, requires_grad=True)
        opt = torch.optim.SGD([delta], lr=self.lr, momentum=self.momentum)
        for _ in range(self.steps):
            loss = sign * loss_fn(self.get_logits(images + delta), goal)
            # autograd.grad instead of backward(): the model's parameters never receive gradients.
            (delta.grad,) = torch.autograd.grad(loss, delta)
            opt.step()
            with torch.no_grad():  # project after every step: onto the ε ball, then into [0, 1]
                delta.clamp_(-self.eps, self.eps)
                delta.copy_((images + delta).clamp_(0, 1) - images)
        return (images + delta).detach()
