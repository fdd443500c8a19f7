"""AutoAttack by its authors (Croce & Hein, 2020): ``type: autoattack/standard`` (and ``plus``, ``rand``, and
``custom`` with ``attacks: [apgd-ce, apgd-t, …]``), from ``pyautoattack``, the PyPI package of the authors'
repository (github.com/fra31/auto-attack), an optional extra: ``pip install -e '.[autoattack]'``.

This is the AutoAttack RobustBench's leaderboard and the papers that cite it run. bench's bare ``autoattack``
is torchattacks' re-implementation, which is weaker: its APGD-CE, APGD-T and FAB-T take torchattacks' default of
10 iterations where the authors' take 100; at 100 they give the authors' outcome image for image (docs/attacks.md:
"AutoAttack, the number to cite", measured by benchmarks/autoattack_reference.py). Cite this one.

The harness calls it as it calls every attack, once per batch of the suite's ``batch_size`` (a batch as large as
the data runs it exactly as one call of the authors' ``run_standard_evaluation`` over every image would), seeded
with the crafting's seed unless the entry pins ``seed``, with the model wrapper that counts queries; its
adversarial images are quantised to 8 bits and budget-checked like any attack's. Norms Linf, L2 and L1 as the
authors' code has them. Its per-image record says which of its attacks broke each image (``broken_by`` in
predictions.parquet), read off the adversarial example it returned: the one attack whose output it is.

Models with fewer than 10 classes: the standard version's APGD-T and FAB-T target the 9 classes after the
true one, which such a model does not have; they target the ``num_classes - 1`` it has, and the attacks on
the DLR loss, which reads the third (targeted: the fourth) largest logit, are left out of the ensemble for a
model with fewer classes than that, with a warning (the authors' code would raise).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import warnings
from typing import TYPE_CHECKING, Any

import torch
import torch.nn as nn

from bench.attacks.base import AttackInfo, AttackUnavailable

if TYPE_CHECKING:
    from bench.specs import AttackSpec

NAME = "autoattack"
PREFIX = "autoattack/"
INSTALL = "pip install -e '.[autoattack]' (pyautoattack>=0.2, the authors' code), or `make install`"
VERSIONS = ("standard", "plus", "rand", "custom")
SUBATTACKS = ("apgd-ce", "apgd-dlr", "fab", "square", "apgd-t", "fab-t")
NORMS = ("Linf", "L2", "L1")
# The versions' attacks, in the authors' order (autoattack.py _set_version): the report's log follows it.
ORDER = {"standard": ("apgd-ce", "apgd-t", "fab-t", "square"),
         "plus": ("apgd-ce", "apgd-dlr", "fab", "square", "apgd-t", "fab-t"),
         "rand": ("apgd-ce", "apgd-dlr")}
BLACK_BOX: tuple[str, ...] = ()  # an ensemble led by gradient attacks (Square is one of four)
log = logging.getLogger(__name__)


def claims(type_name: str) -> bool:
    return type_name.lower().startswith(PREFIX)


def _package():
    try:
        import pyautoattack
    except ImportError:
        raise AttackUnavailable(f"the authors' AutoAttack (pyautoattack) is not installed: {INSTALL}") from None
    return pyautoattack


def _info(version: str) -> AttackInfo:
    params: dict[str, Any] = {"eps": None, "norm": "Linf", "seed": None}
    if version == "custom":
        params["attacks"] = ["apgd-ce", "apgd-t"]
    return AttackInfo(f"{PREFIX}{version}", NAME, params, targeted=False, budget="required",
                      default_name=f"autoattack-{version}")


def names() -> list[str]:
    try:
        _package()
    except AttackUnavailable:
        return []
    return [f"{PREFIX}{v}" for v in VERSIONS]


def lookup(type_name: str) -> AttackInfo:
    version = type_name.lower().removeprefix(PREFIX)
    if version not in VERSIONS:
        raise KeyError(type_name)
    _package()
    return _info(version)


def norm(info: AttackInfo, params: dict[str, Any]) -> str:
    return str(params.get("norm", "Linf"))


def minimum_norm(info: AttackInfo, params: dict[str, Any]) -> str | None:
    return None


def check(info: AttackInfo, spec: "AttackSpec") -> None:
    """The arguments the authors' constructor would refuse, refused in one line before any compute."""
    kwargs = spec.kwargs
    if kwargs.get("norm", "Linf") not in NORMS:
        raise ValueError(f"norm must be one of {', '.join(NORMS)}, got {kwargs.get('norm')!r}")
    seed = kwargs.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise ValueError(f"seed must be an integer (or left out: the crafting's seed), got {seed!r}")
    if info.name.endswith("/custom"):
        chosen = kwargs.get("attacks")
        if not isinstance(chosen, (list, tuple)) or not chosen or any(a not in SUBATTACKS for a in chosen) \
                or len(set(chosen)) < len(chosen):
            raise ValueError(f"attacks must be a list of distinct names among {', '.join(SUBATTACKS)}, got {chosen!r}")


def build(info: AttackInfo, spec: "AttackSpec", model: nn.Module, seed: int, num_classes: int | None = None):
    _package()
    kwargs = spec.kwargs
    version = info.name.removeprefix(PREFIX)
    return AuthorsAutoAttack(model, version, float(spec.eps), kwargs.get("norm", "Linf"),
                             int(seed) if kwargs.get("seed") is None else int(kwargs["seed"]),
                             list(kwargs["attacks"]) if version == "custom" else None, num_classes or 10)


def family(type_name: str, args: dict[str, Any]) -> tuple | None:
    """The authors' AutoAttack and torchattacks' re-implementation of one version, norm and ε are one family
    (bench/audit/crosscheck.py compares them image by image). Pure: no import."""
    version = type_name.lower().removeprefix(PREFIX)
    if args.get("eps") is None or version not in ORDER:
        return None
    return ("autoattack", args.get("norm", "Linf"), args["eps"], version)


# ---------------------------------------------------------------------------------------------
# The attack


def _row_keys(x: torch.Tensor) -> list[bytes]:
    rows = x.detach().float().cpu().contiguous().reshape(len(x), -1).numpy()
    return [hashlib.blake2b(r.tobytes(), digest_size=16).digest() for r in rows]


class AuthorsAutoAttack:
    """``pyautoattack.AutoAttack(model, ...).run_standard_evaluation`` called as the harness calls every attack:
    ``attack(images, labels) -> adversarial images``. After each call ``broken_by`` names, per image, the
    attack of the ensemble whose output the returned image is (None where the image was returned as it came:
    misclassified from the start, or never broken). The authors' checks (randomness, softmax outputs, …) are
    logged once, not warned on the terminal per batch."""

    def __init__(self, model: nn.Module, version: str, eps: float, norm: str, seed: int, attacks: list[str] | None,
                 num_classes: int):
        self.model, self.version, self.eps, self.norm = model, version, eps, norm
        self.seed, self.attacks, self.num_classes = seed, attacks, num_classes
        self.broken_by: list[str | None] = []
        self._adversaries: dict[str, Any] = {}
        self._calls: list[tuple[str, list[bytes]]] = []
        self._said: set[str] = set()

    @property
    def order(self) -> tuple[str, ...]:
        return tuple(self.attacks) if self.attacks else ORDER[self.version]

    def _adversary(self, device: torch.device):
        key = str(device)
        if key not in self._adversaries:
            from pyautoattack import AutoAttack

            with self._quiet():
                if self.version == "custom":
                    adversary = AutoAttack(self.model, attacks=list(self.attacks), device=device, eps=self.eps,
                                           norm=self.norm, seed=self.seed, version="custom")
                else:
                    adversary = AutoAttack(self.model, device=device, eps=self.eps, norm=self.norm, seed=self.seed,
                                           version=self.version)
            targets = max(1, self.num_classes - 1)  # a model with fewer classes than the version's target classes
            for sub in (adversary.apgd_targeted, adversary.fab):
                sub.n_target_classes = min(sub.n_target_classes, targets)
            # the DLR loss reads the third (targeted: the fourth) largest logit, which fewer classes do not have
            fewest = {"apgd-dlr": 3, "apgd-t": 4}
            dropped = [a for a in adversary.attacks_to_run if self.num_classes < fewest.get(a, 0)]
            if dropped:
                adversary.attacks_to_run = [a for a in adversary.attacks_to_run if a not in dropped]
                log.warning("AutoAttack on a %d-class model: %s left out (the DLR loss needs %s classes); the "
                            "ensemble runs %s", self.num_classes, ", ".join(dropped),
                            " and ".join(f"{fewest[a]} ({a})" for a in dropped), ", ".join(adversary.attacks_to_run))
            for attr in ("apgd", "apgd_targeted", "fab", "square"):
                self._record(getattr(adversary, attr), attr)
            self._adversaries[key] = adversary
        return self._adversaries[key]

    def _record(self, sub: Any, attr: str) -> None:
        """Wrap one attack object's ``perturb`` (on this instance only) to note the rows it returns."""
        original = sub.perturb

        def perturb(x, y, *args, **kwargs):
            adv = original(x, y, *args, **kwargs)
            name = {"apgd": f"apgd-{getattr(sub, 'loss', 'ce')}", "apgd_targeted": "apgd-t",
                    "fab": "fab-t" if getattr(sub, "targeted", False) else "fab", "square": "square"}[attr]
            self._calls.append((name, _row_keys(adv)))
            return adv

        sub.perturb = perturb

    @contextlib.contextmanager
    def _quiet(self):
        """The authors' code warns through both ``warnings`` and its ``auto-attack`` logger, once per call:
        each distinct message is logged once per attack (the run log), not printed per batch."""
        logger = logging.getLogger("auto-attack")
        level, propagate = logger.level, logger.propagate
        logger.setLevel(logging.WARNING)
        logger.propagate = False
        handler = _Collect()
        logger.addHandler(handler)
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                yield
        finally:
            logger.removeHandler(handler)
            logger.setLevel(level)
            logger.propagate = propagate
            for message in [*handler.messages, *(str(w.message) for w in caught)]:
                if message not in self._said:
                    self._said.add(message)
                    log.info("AutoAttack's own check: %s", message.strip().splitlines()[0] if message.strip() else message)

    def __call__(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        adversary = self._adversary(images.device)
        self._calls = []
        with self._quiet():
            adv, _ = adversary.run_standard_evaluation(images, labels, batch_size=len(images))
        last: dict[bytes, str] = {}
        for name, keys in self._calls:  # an image is not attacked again once broken: the last call that returned it
            for k in keys:
                last[k] = name
        changed = (adv.detach() != images.detach()).flatten(1).any(1).tolist()
        self.broken_by = [last.get(k) if moved else None for k, moved in zip(_row_keys(adv), changed)]
        self._calls = []
        return adv


class _Collect(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())
