"""A user's own attack for `type: python` (suites/attack-sources.yaml runs it; the README shows it).

L∞ PGD on the margin loss (Carlini and Wagner's f6: the best other logit minus the true one) instead of
cross-entropy, from a random start drawn from the harness's seeded generator. The harness calls it once per
batch, with the model (images in [0, 1] → logits), the images, their labels, the budget and the generator;
every other key of the suite entry (here `steps`, `step_size`) arrives as a keyword argument.
"""

import torch


def margin_pgd(model, images, labels, eps, generator, steps=20, step_size=None):
    step = step_size if step_size is not None else 2.5 * eps / steps
    noise = torch.rand(images.shape, generator=generator, device=images.device) * 2 - 1
    x = (images + eps * noise).clamp(0, 1)
    for _ in range(steps):
        x.requires_grad_(True)
        logits = model(x)
        true = logits.gather(1, labels[:, None]).squeeze(1)
        other = logits.scatter(1, labels[:, None], float("-inf")).amax(1)
        (grad,) = torch.autograd.grad((other - true).sum(), x)
        x = x.detach() + step * grad.sign()
        x = torch.min(torch.max(x, images - eps), images + eps).clamp(0, 1)  # back into the ball and the image range
    return x.detach()
