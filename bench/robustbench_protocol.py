"""RobustBench's protocol in one command: ``bench robustbench MODEL --data ROOT``.

RobustBench's leaderboard gives each model two numbers on the first n test images of the dataset, taken in the
dataset's own order: clean accuracy, and robust accuracy under the authors' AutoAttack (standard version) at the
threat model's ε (CIFAR-10 and CIFAR-100: 10,000 images, L∞ 8/255 or L2 0.5). This module writes that evaluation as
a suite (the data from the torchvision-format folder at ``ROOT`` with ``order: file``, the model, one
``autoattack/standard`` attack, no defense), runs it through the harness like any suite (so every check, the
report, crash safety and ``--resume`` apply), and writes the leaderboard's row: model, dataset, threat model, clean,
AutoAttack, ε, n.

MODEL is a zoo entry of the dataset and threat model (its weights under ``--model-dir``, as for ``source:
robustbench``), so a user with the entry's weights and CIFAR-10 on disk reproduces its leaderboard row; or any model
a suite can name by one string (``bench perf --model``'s forms: ``file.py:function``, ``model.pt2``,
``timm/<name>``, …), whose row is then comparable with the leaderboard's.

Two AutoAttack figures, both measured: RobustBench's is the robust accuracy of AutoAttack's float adversarial
images (``AutoAttack (float)``, the column to compare with the leaderboard); the harness also quantises them to the
8-bit grid of the images, as every cell does, and an image that rounding brings back is counted robust there
(``AutoAttack (8-bit)``, the cell's ``robust_acc``; at most a point higher in the cases measured). ImageNet is not
offered: RobustBench evaluates 5,000 validation images from its own list, which this command does not read yet.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from bench.specs import format_eps

# (dataset, threat model) → the leaderboard's ε; dataset → its n and torchvision's dataset class
EPS = {("cifar10", "Linf"): "8/255", ("cifar10", "L2"): 0.5, ("cifar100", "Linf"): "8/255", ("cifar100", "L2"): 0.5}
N = {"cifar10": 10_000, "cifar100": 10_000}
TORCHVISION = {"cifar10": "CIFAR10", "cifar100": "CIFAR100"}
COLUMNS = ["model", "dataset", "threat_model", "clean", "autoattack_float", "autoattack_8bit", "eps", "n", "verdict",
           "run_dir"]


class ProtocolError(ValueError):
    """Arguments the protocol cannot run with; one line naming the option."""


@dataclass(frozen=True)
class Protocol:
    model: str
    data: str
    dataset: str = "cifar10"
    threat_model: str = "Linf"
    n: int | None = None
    model_dir: str = "models"
    batch_size: int = 500
    device: str = "cpu"
    precision: str = "fp32"
    seed: int = 0

    @property
    def eps(self) -> Any:
        return EPS[(self.dataset, self.threat_model)]

    @property
    def name(self) -> str:
        return "robustbench-" + re.sub(r"[^A-Za-z0-9_.\-]", "_", Path(self.model).stem if self.model.endswith(".pt2")
                                       else self.model.rsplit("/", 1)[-1].replace(":", "-"))


def check(p: Protocol) -> None:
    if p.dataset == "imagenet":
        raise ProtocolError("--dataset imagenet: not offered yet (RobustBench evaluates 5,000 validation images from its own "
                            "list of ids); allowed: " + ", ".join(N))
    if p.dataset not in N:
        raise ProtocolError(f"--dataset {p.dataset!r} is not allowed; allowed: {', '.join(N)}")
    if (p.dataset, p.threat_model) not in EPS:
        allowed = ", ".join(t for d, t in EPS if d == p.dataset)
        raise ProtocolError(f"--threat-model {p.threat_model!r} has no AutoAttack leaderboard for {p.dataset}; allowed: {allowed}")
    if p.n is not None and not 1 <= p.n <= N[p.dataset]:
        raise ProtocolError(f"--n must be between 1 and {N[p.dataset]} (the test split), got {p.n}")


def _zoo_entry(p: Protocol) -> bool:
    """Whether MODEL names an entry of RobustBench's zoo for this dataset and threat model."""
    from bench.sources import robustbench_models

    try:
        return (p.dataset, p.threat_model, p.model) in set(robustbench_models.listing())
    except Exception:  # robustbench not installed: then it is not a zoo name here
        return False


def model_entry(p: Protocol) -> dict[str, Any]:
    """The suite's model entry: a zoo entry, or one string as ``bench perf --model`` reads it."""
    if _zoo_entry(p):
        return {"source": "robustbench", "name": p.model, "dataset": p.dataset, "threat_model": p.threat_model,
                "model_dir": str(Path(p.model_dir).resolve())}
    name = p.name.removeprefix("robustbench-")
    if p.model.endswith(".pt2"):
        return {"name": name, "file": str(Path(p.model).resolve())}
    if ":" in p.model:
        path, _, fn = p.model.rpartition(":")
        return {"name": name, "factory": f"{Path(path).resolve()}:{fn}" if path.endswith(".py") else p.model}
    return {"name": name, "arch": p.model}


def suite(p: Protocol) -> dict[str, Any]:
    """The protocol as a suite document (the form ``bench run`` reads)."""
    check(p)
    return {"name": p.name, "seed": p.seed,
            "data": {"source": "torchvision", "name": TORCHVISION[p.dataset], "root": str(Path(p.data).resolve()),
                     "split": "test", "order": "file", "limit": p.n or N[p.dataset]},
            "models": [model_entry(p)],
            "attacks": [{"name": "autoattack", "type": "autoattack/standard", "eps": p.eps, "norm": p.threat_model}],
            "defenses": ["none"], "devices": [p.device], "precisions": [p.precision], "batch_size": p.batch_size}


def leaderboard_row(p: Protocol, run_dir: Path) -> dict[str, Any]:
    """The leaderboard's row from a finished run of :func:`suite`, read from its folder."""
    from bench.results import load_predictions, load_run

    df, _ = load_run(run_dir)
    row = df.iloc[0]
    out = {"model": p.model, "dataset": p.dataset, "threat_model": p.threat_model, "eps": format_eps(row["eps"]),
           "n": int(row["n"]) if pd.notna(row["n"]) else None, "run_dir": str(run_dir)}
    if row["status"] != "ok":
        return {**out, "clean": None, "autoattack_float": None, "autoattack_8bit": None,
                "verdict": f"{row['status']}: {row['reason']}"}
    pred = load_predictions(run_dir)
    pred = pred[pred["cell_id"] == row["cell_id"]]
    right = pred["clean_pred"] == pred["label"]
    floating = float((right & ~pred["reached"].fillna(False).astype(bool)).mean())
    verdict = str(row.get("verdict") or "")
    if verdict == "unreliable":  # an indicator of attack failure fired: the figures are upper bounds
        verdict = f"unreliable ({row['flags']}): AutoAttack's figures are upper bounds"
    return {**out, "clean": float(row["clean_acc"]), "autoattack_float": floating,
            "autoattack_8bit": float(row["robust_acc"]), "verdict": verdict}


def markdown(row: dict[str, Any]) -> str:
    pct = lambda v: "–" if v is None else f"{100 * v:.2f} %"  # noqa: E731  the leaderboard's two decimals
    table = pd.DataFrame([{"model": row["model"], "dataset": row["dataset"], "threat model": row["threat_model"],
                           "clean": pct(row["clean"]), "AutoAttack (float)": pct(row["autoattack_float"]),
                           "AutoAttack (8-bit)": pct(row["autoattack_8bit"]), "ε": row["eps"], "n": row["n"]}])
    lines = [f"# RobustBench protocol: `{row['model']}`", "", table.to_markdown(index=False), "",
             "RobustBench's protocol: the first n test images in the dataset's order, clean accuracy and the authors' AutoAttack "
             "(standard version) at the leaderboard's ε. *AutoAttack (float)* is the robust accuracy of AutoAttack's own "
             "adversarial images, the figure the leaderboard reports; *AutoAttack (8-bit)* counts those images after "
             "rounding to the 8-bit grid, as every bench cell does.", ""]
    if row["verdict"] and row["verdict"] != "reliable":
        lines += [f"**{row['verdict']}**", ""]
    lines += [f"Run folder: `{row['run_dir']}` (the full report is in the suite's reports folder).", ""]
    return "\n".join(lines)


def _stem(p: Protocol) -> str:
    return f"{p.name.removeprefix('robustbench-')}-{p.dataset}-{p.threat_model}"


def suite_path(p: Protocol, reports_root: str | Path) -> Path:
    """Where the protocol's suite file is kept: ``reports/robustbench/<model>-<dataset>-<threat model>.yaml``."""
    return Path(reports_root) / "robustbench" / f"{_stem(p)}.yaml"


def write(p: Protocol, row: dict[str, Any], reports_root: str | Path) -> Path:
    """``reports/robustbench/<model>-<dataset>-<threat model>.md``, and the row put in ``reports/robustbench/leaderboard.csv``
    (replacing an earlier row of the same model, dataset and threat model)."""
    from bench import files

    folder = Path(reports_root) / "robustbench"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{_stem(p)}.md"
    files.write_atomic(path, markdown(row).encode())
    board = folder / "leaderboard.csv"
    try:
        old = pd.read_csv(board)[COLUMNS] if board.exists() else pd.DataFrame(columns=COLUMNS)
    except Exception as exc:  # a damaged or foreign file: say so, never overwrite what cannot be read
        raise ProtocolError(f"{board}: cannot be read as the leaderboard ({type(exc).__name__}: {str(exc)[:120]}); "
                            "move it away and run again") from None
    key = ["model", "dataset", "threat_model"]
    new = pd.concat([old[~(old[key] == pd.Series({k: row[k] for k in key})).all(axis=1)], pd.DataFrame([row])[COLUMNS]],
                    ignore_index=True)
    files.write_atomic(board, new.to_csv(index=False).encode())
    return path
