"""Every query an attack makes, seen from the model's side.

The harness hands an attack a model; whatever library the attack comes from, each of its forward
passes goes through :class:`QueryLog`, which writes down, per image of the batch being attacked:

- how many forward passes (queries) and backward passes (input gradients) it cost;
- whether some query inside the attack's budget already achieved the attack's goal (a point the
  model misclassifies, or classifies as the target), whatever the attack finally returned;
- the attack's progress: the image's margin at every query (the true class's logit minus the best
  other one; for a targeted attack the best non-target logit minus the target's), which an attack
  drives down;
- input gradients that are all zero or not finite while the model still classifies the point the
  attacker's way is not reached.

Query rows are matched to the batch's images by position when the attack queries the whole batch,
else (an attack that queries the images still standing, or one at a time) by distance: the image
whose budget ball holds the query. The indicators of attack failure (:mod:`bench.indicators`) are
judged from these records.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn as nn

from bench.fastpath import Wrapper

# a query this far outside the ball still counts as inside it: attacks project in float
_BUDGET_TOLERANCE = 1e-5
_SAMPLED_POSITIONS = 256  # values compared first when matching a query to an image (a lower bound of the distance)


def margins(logits: torch.Tensor, goal: torch.Tensor, targeted: bool) -> torch.Tensor:
    """Per row, how far the attack still is from its goal (< 0: reached): untargeted, the goal
    class's logit minus the best other logit; targeted, the best non-target logit minus the target's."""
    logits = logits.detach().float()
    own = logits.gather(1, goal[:, None]).squeeze(1)
    others = logits.scatter(1, goal[:, None], -math.inf).amax(1)
    return others - own if targeted else own - others


@dataclass
class _Batch:
    images: torch.Tensor  # float, the clean batch being attacked
    goal: torch.Tensor  # the true labels (untargeted) or the target labels
    index: torch.Tensor  # global image indices of the batch's rows
    flat: torch.Tensor = field(init=False)
    sampled: torch.Tensor = field(init=False)

    def __post_init__(self) -> None:
        self.flat = self.images.flatten(1)
        g = torch.Generator().manual_seed(0)
        k = min(_SAMPLED_POSITIONS, self.flat.shape[1])
        self.positions = torch.randperm(self.flat.shape[1], generator=g)[:k].to(self.flat.device)
        self.sampled = self.flat[:, self.positions]


class QueryLog(Wrapper):
    """A model wrapper that records the attack's queries (module docstring). ``norm`` and ``eps``
    are the attack's budget (``norm="none"``: unbounded, every query counts); ``n`` the number of
    images in the whole crafting (records are per global image index)."""

    def __init__(self, model: nn.Module, n: int, norm: str = "Linf", eps: float | None = None, targeted: bool = False):
        super().__init__(model)
        self.norm, self.eps, self.targeted = norm, eps, targeted
        self.recording = False
        self._batch: _Batch | None = None
        self.forward_rows = 0  # query rows (images × forward passes), over the whole crafting
        self.backward_rows = 0  # rows whose input gradient the attack asked for
        self.found = torch.zeros(n, dtype=torch.bool)  # a query inside the budget reached the goal
        self.dead_gradients = torch.zeros(n, dtype=torch.long)  # zero / non-finite gradient rows before the goal
        self.gradient_rows = torch.zeros(n, dtype=torch.long)
        self._trace: list[tuple[torch.Tensor, torch.Tensor]] = []  # (global index, margin) per query

    # -- recording --------------------------------------------------------------------------

    def begin(self, images: torch.Tensor, goal: torch.Tensor, index: torch.Tensor) -> None:
        """The batch the next attack call works on (its images in [0, 1], goal labels, global indices)."""
        self._batch = _Batch(images.detach(), goal.detach().to(images.device), index.cpu())
        self.recording = True

    def end(self) -> None:
        self.recording = False
        self._batch = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.model(x)
        if self.recording and self._batch is not None and x.dim() == 4:
            self._record(x, logits)
        return logits

    def _record(self, x: torch.Tensor, logits: torch.Tensor) -> None:
        batch = self._batch
        self.forward_rows += x.shape[0]
        self.backward_rows += x.shape[0] if x.requires_grad else 0
        with torch.no_grad():
            pos, inside = self._match(x.detach(), batch)
            matched = pos >= 0
            if not bool(matched.any()):  # not a perturbation of this batch's images (counted, not judged)
                return
            rows = matched.nonzero().squeeze(1)
            goal = batch.goal[pos[rows]]
            margin = margins(logits[rows], goal, self.targeted)
            reached = margin < 0
            index = batch.index[pos[rows].cpu()]
            self.found[index[(reached & inside[rows]).cpu()]] = True
            self._trace.append((index, margin.cpu()))
        if x.requires_grad:
            x.register_hook(self._gradient_hook(rows, index, reached))

    def _gradient_hook(self, rows: torch.Tensor, index: torch.Tensor, reached: torch.Tensor):
        def hook(grad: torch.Tensor) -> None:
            with torch.no_grad():
                g = grad.detach()[rows].flatten(1)
                dead = ~torch.isfinite(g).all(1) | (g == 0).all(1)
                self.gradient_rows.index_add_(0, index, torch.ones_like(index))
                # a zero gradient at a point already past the goal is the loss saturating as designed (CW's κ)
                self.dead_gradients.index_add_(0, index, (dead & ~reached).long().cpu())
            return None

        return hook

    def _match(self, x: torch.Tensor, batch: _Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """Per query row: the batch position of the image it perturbs (-1 if none) and whether it
        lies inside that image's budget."""
        q = x.shape[0]
        flat = x.flatten(1).float()
        pos = torch.full((q,), -1, dtype=torch.long, device=x.device)
        inside = torch.zeros(q, dtype=torch.bool, device=x.device)
        if flat.shape[1] != batch.flat.shape[1]:
            return pos, inside
        bounded = self.norm in ("Linf", "L2", "L1") and self.eps is not None
        if q == batch.flat.shape[0]:  # the whole batch, in order: the usual case
            if not bounded:
                return torch.arange(q, device=x.device), torch.ones(q, dtype=torch.bool, device=x.device)
            ok = self._distance(flat, batch.flat) <= self.eps + _BUDGET_TOLERANCE
            pos[ok], inside[ok] = torch.arange(q, device=x.device)[ok], True
        # the rest: the image whose sampled values are nearest, checked on every value
        rest = (pos < 0).nonzero().squeeze(1)
        if len(rest) == 0:
            return pos, inside
        sampled = flat[rest][:, batch.positions]
        if self.norm == "Linf":
            near = (sampled[:, None, :] - batch.sampled[None]).abs().amax(-1)
        else:
            near = torch.cdist(sampled, batch.sampled)
        order = near.argsort(1)
        for j, r in enumerate(rest.tolist()):
            for candidate in order[j, :2].tolist():  # the nearest two by the sample; the full distance decides
                d = self._distance(flat[r : r + 1], batch.flat[candidate : candidate + 1])[0]
                if not bounded:
                    pos[r], inside[r] = candidate, True
                    break
                if d <= self.eps + _BUDGET_TOLERANCE:
                    pos[r], inside[r] = candidate, True
                    break
        return pos, inside

    def _distance(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        diff = a - b
        if self.norm == "L2":
            return diff.norm(dim=1)
        if self.norm == "L1":
            return diff.abs().sum(1)
        return diff.abs().amax(1)

    # -- results ----------------------------------------------------------------------------

    def trajectories(self) -> dict[int, torch.Tensor]:
        """Global image index → its margin at each query, in query order."""
        if not self._trace:
            return {}
        index = torch.cat([i for i, _ in self._trace])
        margin = torch.cat([m for _, m in self._trace])
        order = torch.argsort(index, stable=True)
        index, margin = index[order], margin[order]
        out: dict[int, torch.Tensor] = {}
        values, counts = torch.unique_consecutive(index, return_counts=True)
        for value, chunk in zip(values.tolist(), torch.split(margin, counts.tolist())):
            out[value] = chunk
        return out
