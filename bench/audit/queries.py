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
whose budget ball holds the query. The indicators of attack failure (:mod:`bench.audit.indicators`) are
judged from these records.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn as nn

from bench.fastpath import Wrapper
from bench.timing import Stopwatch

# a query this far outside the ball still counts as inside it: attacks project in float
_BUDGET_TOLERANCE = 1e-5
_SAMPLED_POSITIONS = 256  # values compared first when matching a query to an image (a lower bound of the distance)


def margins(logits: torch.Tensor, goal: torch.Tensor, targeted: bool) -> torch.Tensor:
    """Per row, how far the attack still is from its goal (< 0: reached): untargeted, the goal
    class's logit minus the best other logit; targeted, the best non-target logit minus the target's.
    Differentiable (callers that only record it run it without autograd)."""
    logits = logits.float()
    own = logits.gather(1, goal[:, None]).squeeze(1)
    others = logits.scatter(1, goal[:, None], -math.inf).amax(1)
    return others - own if targeted else own - others


@dataclass
class _Batch:
    images: torch.Tensor  # float, the clean batch being attacked
    goal: torch.Tensor  # the true labels (untargeted) or the target labels
    index: torch.Tensor  # global image indices of the batch's rows (on the images' device)
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
    images in the whole crafting (records are per global image index).

    Recording stays on the model's device and never waits for it (no host sync per query), and it
    times itself: ``watch.seconds`` is its own share of the attack's timed region, which the harness
    takes out of the attack's time."""

    def __init__(self, model: nn.Module, n: int, norm: str = "Linf", eps: float | None = None, targeted: bool = False,
                 device: str | torch.device = "cpu"):
        super().__init__(model)
        self.norm, self.eps, self.targeted, self.n = norm, eps, targeted, n
        self.recording = False
        self._batch: _Batch | None = None
        self.watch = Stopwatch(device)
        self.forward_rows = 0  # query rows (images × forward passes), over the whole crafting
        self.backward_rows = 0  # rows whose input gradient the attack took
        # per global image index, plus one slot (index n) for query rows that match no image
        self._found = torch.zeros(n + 1, dtype=torch.int32, device=device)  # a query inside the budget reached the goal
        self._dead = torch.zeros(n + 1, dtype=torch.long, device=device)  # zero / non-finite gradient rows before the goal
        self._gradients = torch.zeros(n + 1, dtype=torch.long, device=device)
        self._trace: list[tuple[torch.Tensor, torch.Tensor]] = []  # (global index, margin) per query

    @property
    def found(self) -> torch.Tensor:
        return self._found[: self.n].bool().cpu()

    @property
    def dead_gradients(self) -> torch.Tensor:
        return self._dead[: self.n].cpu()

    @property
    def gradient_rows(self) -> torch.Tensor:
        return self._gradients[: self.n].cpu()

    # -- recording --------------------------------------------------------------------------

    def begin(self, images: torch.Tensor, goal: torch.Tensor, index: torch.Tensor) -> None:
        """The batch the next attack call works on (its images in [0, 1], goal labels, global indices)."""
        self._batch = _Batch(images.detach(), goal.detach().to(images.device), index.to(images.device))
        self.recording = True

    def end(self) -> None:
        self.recording = False
        self._batch = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.model(x)
        if self.recording and self._batch is not None and x.dim() == 4:
            with self.watch.region():
                self._record(x, logits)
        return logits

    def _record(self, x: torch.Tensor, logits: torch.Tensor) -> None:
        batch = self._batch
        self.forward_rows += x.shape[0]
        with torch.no_grad():
            pos, inside = self._match(x.detach(), batch)
            matched = pos >= 0
            safe = pos.clamp(min=0)
            index = torch.where(matched, batch.index[safe], torch.full_like(pos, self.n))  # unmatched rows: slot n
            margin = margins(logits, batch.goal[safe], self.targeted)
            reached = margin < 0
            self._found.scatter_reduce_(0, index, (reached & inside).int(), "amax")
            self._trace.append((index, margin))
        if x.requires_grad and not getattr(x, "_bench_query_hook", False):
            x.register_hook(self._gradient_hook(index, reached))
            x._bench_query_hook = True  # one hook per tensor: an attack may query it several times (EOT)

    def _gradient_hook(self, index: torch.Tensor, reached: torch.Tensor):
        def hook(grad: torch.Tensor) -> None:
            with self.watch.region(), torch.no_grad():
                self.backward_rows += grad.shape[0]
                g = grad.detach().flatten(1)
                dead = ~torch.isfinite(g).all(1) | (g == 0).all(1)
                self._gradients.index_add_(0, index, torch.ones_like(index))
                # a zero gradient at a point already past the goal is the loss saturating as designed (CW's κ)
                self._dead.index_add_(0, index, (dead & ~reached).long())
            return None

        return hook

    def _match(self, x: torch.Tensor, batch: _Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """Per query row: the batch position of the image it perturbs (-1 if none) and whether it
        lies inside that image's budget. Rows of a whole-batch query are matched by position;
        other rows (or rows outside their position's budget) to the image whose sampled values are
        nearest, checked on every value. On a GPU, tensor operations only: nothing waits for the device
        (on a CPU, where waiting costs nothing, work that cannot change the answer is skipped)."""
        q = x.shape[0]
        flat = x.flatten(1).float()
        none = torch.full((q,), -1, dtype=torch.long, device=x.device)
        if flat.shape[1] != batch.flat.shape[1]:
            return none, torch.zeros(q, dtype=torch.bool, device=x.device)
        bounded = self.norm in ("Linf", "L2", "L1") and self.eps is not None
        cpu = x.device.type == "cpu"
        if q == batch.flat.shape[0]:  # the whole batch, in order: the usual case
            aligned = torch.arange(q, device=x.device)
            if not bounded:
                return aligned, torch.ones(q, dtype=torch.bool, device=x.device)
            ok = self._distance(flat, batch.flat) <= self.eps + _BUDGET_TOLERANCE
            if cpu and bool(ok.all()):
                return aligned, ok
            candidate = torch.where(ok, aligned, self._nearest(flat[:, batch.positions], batch))
        else:
            candidate = self._nearest(flat[:, batch.positions], batch)
        if not bounded:
            return candidate, torch.ones(q, dtype=torch.bool, device=x.device)
        inside = self._distance(flat, batch.flat[candidate]) <= self.eps + _BUDGET_TOLERANCE
        return torch.where(inside, candidate, none), inside

    def _nearest(self, sampled: torch.Tensor, batch: _Batch) -> torch.Tensor:
        """Per query row, the batch image nearest over the sampled values. cdist, never a broadcast
        difference: its (queries × images × values) intermediate cost 0.15 s a query of 360 images on a
        CPU (10 s of an APGD crafting)."""
        if self.norm != "Linf":
            return torch.cdist(sampled, batch.sampled).argmin(1)
        if sampled.device.type != "cpu":  # cdist's exact L∞ kernel: fast on a GPU, and no wait
            return torch.cdist(sampled, batch.sampled, p=math.inf).argmin(1)
        # CPU: L2's matrix product (30× faster than the L∞ kernel), then the exact L∞ search only for
        # the rows whose L2-nearest image lies outside the budget on the sampled values
        nearest = torch.cdist(sampled, batch.sampled).argmin(1)
        if self.eps is not None:
            far = (sampled - batch.sampled[nearest]).abs().amax(1) > self.eps + _BUDGET_TOLERANCE
            if bool(far.any()):
                nearest[far] = torch.cdist(sampled[far], batch.sampled, p=math.inf).argmin(1)
        return nearest

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
        index = torch.cat([i for i, _ in self._trace]).cpu()
        margin = torch.cat([m for _, m in self._trace]).cpu()
        keep = index < self.n
        index, margin = index[keep], margin[keep]
        order = torch.argsort(index, stable=True)
        index, margin = index[order], margin[order]
        out: dict[int, torch.Tensor] = {}
        values, counts = torch.unique_consecutive(index, return_counts=True)
        for value, chunk in zip(values.tolist(), torch.split(margin, counts.tolist())):
            out[value] = chunk
        return out
