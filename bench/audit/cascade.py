"""Cascade: each attack runs only on the images still standing, as AutoAttack's standard evaluation.

With ``cascade: true`` in a suite, the attacks of a (model, device, precision) run in suite order
(each attack's ε values in turn), and each crafting attacks only the images that are still standing
for a defense it serves: classified correctly without attack, and not yet broken by an earlier
attack at the same or a smaller ε of the same norm (an image broken at ε is broken at every larger
ε). Clean-misclassified images are never attacked. An oblivious crafting serves every defense of its
(model, attack, ε), so it attacks the images standing for at least one of them. Images not attacked
keep their clean pixels, so a single cascaded row's robust accuracy is not that attack's alone: the
worst case over the attacks (:mod:`bench.audit.worst_case`) is the number, and it is the same as without
cascade for attacks whose result for an image does not depend on the other images of its batch.
Attacks without a budget (``norm: none``) are not cascaded: they run on every image.

The state is rebuilt from rows (their per-image predictions), so a resumed run or a Ray worker that
takes over a chain continues where the rows left off; it can also be recorded a shard at a time (the images
[lo, hi) of the data), so a chain's shards can run on several workers, each shard's later attacks as soon as that
shard's earlier ones are done. A crafting never counts what its own attack (same attack, ε and mode) broke: the
cells that share one crafting see the same standing images whichever of them was recorded first.
"""

from __future__ import annotations

from typing import Any, Iterable

import torch

from bench.results import PREDICTIONS_KEY
from bench.specs import CellSpec


class Cascade:
    def __init__(self) -> None:
        # (model, device, precision, defense label, norm) → (attack, ε, mode) that broke images → per image, broken
        self._broken: dict[tuple, dict[tuple, torch.Tensor]] = {}

    @staticmethod
    def _who(cell: CellSpec) -> tuple:
        return (cell.attack.name, cell.attack.eps, cell.eval_mode)

    @staticmethod
    def key(cell: CellSpec, defense_label: str, norm: str) -> tuple:
        return (cell.model.name, cell.device, cell.precision, defense_label, norm)

    def record(self, cell: CellSpec, norm: str, labels: torch.Tensor, robust: torch.Tensor, lo: int = 0,
               n: int | None = None) -> None:
        """Note the images this cell's attack broke (its robust prediction is wrong): all ``n`` images of the data,
        or the shard of them from ``lo`` (``labels`` and ``robust`` of those images only)."""
        if cell.attack.eps is None or norm == "none":
            return
        n = len(labels) if n is None else n
        broken = self._broken.setdefault(self.key(cell, cell.defense.label, norm), {}).setdefault(
            self._who(cell), torch.zeros(n, dtype=torch.bool))
        broken[lo : lo + len(labels)] |= robust != labels

    def standing(self, cell: CellSpec, norm: str, labels: torch.Tensor, clean: dict[str, torch.Tensor]) -> torch.Tensor:
        """The images this cell's crafting attacks: for at least one of the defenses in ``clean``
        (defense label → defended clean predictions), classified correctly and not broken at ≤ ε."""
        if cell.attack.eps is None or norm == "none":
            return torch.ones(len(labels), dtype=torch.bool)
        out = torch.zeros(len(labels), dtype=torch.bool)
        me = self._who(cell)
        for label, pred in clean.items():
            alive = pred == labels
            for who, broken in self._broken.get(self.key(cell, label, norm), {}).items():
                if who != me and who[1] <= cell.attack.eps + 1e-12:  # an earlier attack at the same or a smaller ε
                    alive &= ~broken
            out |= alive
        return out

    def replay(self, rows: Iterable[dict[str, Any]], cells: dict[str, CellSpec]) -> None:
        """Rebuild the state from rows that landed earlier (a resume, a retried chain)."""
        for row in rows:
            cell, pred = cells.get(row.get("cell_id")), row.get(PREDICTIONS_KEY)
            if cell is None or row.get("status") != "ok" or not pred:
                continue
            self.record(cell, row.get("norm") or "Linf", torch.tensor(pred["labels"]), torch.tensor(pred["robust"]))
