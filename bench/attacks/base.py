"""What every attack source shares: the description of one attack type, and the errors."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch
import torch.nn as nn


class AttackUnavailable(RuntimeError):
    """The library an attack comes from is not installed here; the message says how to install it.
    A suite that names such an attack still loads (its arguments unchecked); its cells are skipped."""


@dataclass(frozen=True)
class AttackInfo:
    """One attack type as a source resolved it."""

    name: str  # canonical type, the result rows' attack_type: pgd, foolbox/LinfPGD, art/SquareAttack, python
    source: str  # torchattacks, foolbox, art, python
    params: dict[str, Any]  # arguments a suite may give and their defaults (eps among them if it takes a budget)
    targeted: bool  # has a targeted mode
    cls: Any = None  # the class (or a python attack's function)
    minimum_norm: str | None = None  # the norm it minimises, for attacks that search the smallest perturbation
    black_box: bool = False  # queries outputs only (score- or decision-based)
    step_params: frozenset = frozenset()  # step sizes in pixel units (scaled with the budget by unbounded())
    required: tuple[str, ...] = ()  # arguments without a default, which the suite must give
    keys: dict[str, str] = field(default_factory=dict)  # entry keys of the source itself (python: fn, norm)
    checked: bool = True  # False: the library is missing here, so its arguments were not checked
    budget: str = "none"  # eps: required, optional (a minimum-norm attack runs unbounded without one) or none
    path: str | None = None  # a python attack's resolved target (file.py:function), which build() loads
    fixed_norm: str | None = None  # the norm of its budget, where the type fixes it (foolbox: the attack's distance)
    default_name: str = ""  # the attack's name in a suite entry that gives none

    @property
    def label(self) -> str:
        return self.default_name or self.name


class Probe(nn.Module):
    """A stand-in model, so argument checks run before any real model is loaded."""

    def __init__(self, classes: int = 2):
        super().__init__()
        self.fc = nn.Linear(1, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.flatten(1).mean(1, keepdim=True))


NORMS = ("Linf", "L2", "L1", "L0")


class Float32(nn.Module):
    """float32 in and out, whatever precision the harness computes in inside: the libraries that turn outputs
    into NumPy (no bfloat16 there) or send float64 (ART) get what they expect."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x.float()).float()


def names_of(registry: Callable[[], dict[str, AttackInfo]]) -> list[str]:
    """A library source's attack types, or none when the library is not installed."""
    try:
        return sorted(i.name for i in registry().values())
    except AttackUnavailable:
        return []


def lookup_in(registry: Callable[[], dict[str, AttackInfo]], prefix: str, type_name: str) -> AttackInfo:
    """An attack of a source's registry by type, case-insensitive, with or without the source's prefix."""
    name = type_name.lower().removeprefix(prefix)
    attacks = registry()
    if name not in attacks:
        raise KeyError(name)
    return attacks[name]
