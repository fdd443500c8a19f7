"""The query log: every query an attack makes is counted, matched to the image it perturbs, and
judged against the attack's budget and goal."""

from __future__ import annotations

import torch
import torch.nn as nn

from bench.audit.queries import QueryLog, margins


class Mean(nn.Module):
    """Class 1 when an image's mean is above 1/2."""

    def forward(self, x):
        m = x.mean(dim=(1, 2, 3))
        return 10 * torch.stack([0.5 - m, m - 0.5], 1)


def _batch():
    images = torch.stack([torch.full((3, 4, 4), v) for v in (0.40, 0.45, 0.60)])
    return images, torch.tensor([0, 0, 1])


def test_margins_say_how_far_the_attack_is_from_its_goal():
    logits = torch.tensor([[2.0, 1.0, 0.0], [0.0, 3.0, 1.0]])
    assert margins(logits, torch.tensor([0, 0]), targeted=False).tolist() == [1.0, -3.0]  # right by 1; wrong by 3
    assert margins(logits, torch.tensor([2, 1]), targeted=True).tolist() == [2.0, -2.0]  # the target 2 short; reached


def test_whole_batch_queries_are_counted_and_matched_by_position():
    images, labels = _batch()
    log = QueryLog(Mean(), n=10, norm="Linf", eps=0.1)
    log.begin(images, labels, torch.tensor([7, 8, 9]))  # global indices of the batch's images
    x = (images + 0.08).requires_grad_(True)  # image 1 (0.45 → 0.53) crosses; all inside the budget
    loss = nn.functional.cross_entropy(log(x), labels, reduction="sum")
    torch.autograd.grad(loss, x)
    log.end()
    assert log.forward_rows == 3 and log.backward_rows == 3
    assert log.found.nonzero().squeeze(1).tolist() == [8]
    assert sorted(log.trajectories()) == [7, 8, 9]
    assert log.dead_gradients.sum() == 0 and log.gradient_rows[[7, 8, 9]].tolist() == [1, 1, 1]


def test_a_point_outside_the_budget_is_never_a_success():
    images, labels = _batch()
    log = QueryLog(Mean(), n=3, norm="Linf", eps=0.05)
    log.begin(images, labels, torch.arange(3))
    with torch.no_grad():
        log(images + 0.2)  # misclassifies image 0 and 1, but 0.2 > ε: not the attack's to claim
    assert not log.found.any() and log.forward_rows == 3


def test_queries_on_a_subset_are_matched_to_their_images_by_distance():
    images, labels = _batch()
    log = QueryLog(Mean(), n=3, norm="Linf", eps=0.1)
    log.begin(images, labels, torch.arange(3))
    with torch.no_grad():
        log(images[[2, 1]] + torch.tensor([-0.09, 0.09]).view(2, 1, 1, 1))  # as Square queries the images still standing
    assert log.found.tolist() == [False, True, False]  # image 1 at 0.54: class 1; image 2 at 0.51: still class 1
    assert sorted(log.trajectories()) == [1, 2]


def test_zero_gradients_count_only_where_the_attack_has_not_yet_won():
    images, labels = _batch()

    class Flat(nn.Module):  # logits that do not depend on the input: gradients are exactly zero
        def forward(self, x):
            return torch.tensor([[1.0, 0.0]]).expand(len(x), 2) + 0 * x.sum((1, 2, 3))[:, None]

    log = QueryLog(Flat(), n=3, norm="Linf", eps=0.1)
    log.begin(images, labels, torch.arange(3))
    x = images.clone().requires_grad_(True)
    torch.autograd.grad(nn.functional.cross_entropy(log(x), labels, reduction="sum"), x)
    # images 0 and 1 (class 0) are right: a dead gradient; image 2 (class 1) is already misclassified
    assert log.dead_gradients.tolist() == [1, 1, 0]


def test_nothing_is_recorded_outside_an_attack():
    images, labels = _batch()
    log = QueryLog(Mean(), n=3, norm="Linf", eps=0.1)
    with torch.no_grad():
        log(images)
    assert log.forward_rows == 0 and log.trajectories() == {}


def test_a_targeted_attack_succeeds_only_at_its_target():
    images = torch.stack([torch.full((3, 4, 4), v) for v in (0.40, 0.45)])

    class Three(nn.Module):  # class 2 when the mean is above 0.55, class 1 above 1/2, else class 0
        def forward(self, x):
            m = x.mean(dim=(1, 2, 3))
            return 10 * torch.stack([0.5 - m, m - 0.5, 2 * (m - 0.55)], 1)

    log = QueryLog(Three(), n=2, norm="Linf", eps=0.2, targeted=True)
    log.begin(images, torch.tensor([2, 2]), torch.arange(2))  # the goal: class 2
    with torch.no_grad():
        log(images + torch.tensor([0.12, 0.2]).view(2, 1, 1, 1))  # 0.52 (class 1: misclassified, not the target); 0.65
    assert log.found.tolist() == [False, True]
