"""The results table: its columns (a contract other tools read), the environment record, and
durable writing (rows are appended and fsynced one by one; the Parquet table is built from them)."""

from __future__ import annotations

import functools
import json
import os
import platform
import subprocess
from pathlib import Path
from typing import Any, Iterable

import pandas as pd
import torch

# name → pandas dtype. Order is the table's column order.
COLUMNS: dict[str, str] = {
    "suite": "string",
    "run_id": "string",
    "cell_id": "string",
    "status": "string",  # ok | skipped | failed
    "reason": "string",
    "model": "string",
    "model_source": "string",  # builtin, torchvision, timm, factory, file
    "weights": "string",  # the weights tag actually loaded, "checkpoint:<file>", or "random"
    "input_size": "Int64",  # the model's own input size (its preprocessing decides which decoded copy it reads)
    "dataset": "string",
    "attack": "string",
    "attack_type": "string",  # the attack's registry name (pgd, square, sgd, foolbox/LinfPGD, art/SquareAttack, python)
    "attack_source": "string",  # where the attack comes from: torchattacks, foolbox, art, python
    "attack_args": "string",  # JSON of the attack's resolved arguments (defaults filled in); digested in cell_id
    "eps": "float64",
    "norm": "string",  # what eps bounds: Linf, L2, L1, L0, or none (CW, DeepFool, FMN without eps: measured, not bounded)
    "minimum_norm": "string",  # the norm a minimum-norm attack minimises (its per-image distances give a curve); else empty
    "distance_median": "float64",  # median smallest perturbation found (minimum_norm) over the images it broke
    "defense": "string",
    "eval_mode": "string",  # oblivious, adaptive-bpda (real defense forward, identity backward), adaptive-diff
    "eot_samples": "Int64",  # draws averaged per attack gradient (randomized defenses); 1 deterministic; null oblivious
    "device": "string",
    "precision": "string",
    "batch_size": "Int64",
    "n": "Int64",
    "n_skipped": "Int64",  # unreadable images left out of n (named in run.json and the report)
    "n_attacked": "Int64",  # images the attack ran on: n, fewer with `cascade: true` (the rest were already broken)
    "clean_acc": "float64",
    "robust_acc": "float64",
    "attack_success_rate": "float64",
    "targeted_success_rate": "float64",
    # share of images classified correctly under every one of eval_draws draws of a randomized
    # defense (robust_acc is one seeded draw); equal to robust_acc for deterministic defenses
    "robust_acc_all_draws": "float64",
    "eval_draws": "Int64",
    # 95 % Wilson intervals of the four rates above
    "clean_acc_ci_low": "float64",
    "clean_acc_ci_high": "float64",
    "robust_acc_ci_low": "float64",
    "robust_acc_ci_high": "float64",
    "attack_success_rate_ci_low": "float64",
    "attack_success_rate_ci_high": "float64",
    "targeted_success_rate_ci_low": "float64",
    "targeted_success_rate_ci_high": "float64",
    "flags": "string",  # comma-separated flags and indicators of attack failure (bench/flags.py), empty when none
    "verdict": "string",  # reliable | unreliable (an indicator of attack failure fired); empty for cells that did not run
    "indicators": "string",  # JSON: the indicators' evidence (image counts, measured values; bench/indicators.py)
    "unconstrained_success": "float64",  # share of up to 16 images the same attack broke with an unbounded budget
    "linf_max": "float64",
    "l2_mean": "float64",
    "l2_max": "float64",  # largest per-image ‖x_adv − x‖₂ (the L2 budget is checked on it)
    "attack_seconds": "float64",
    "attack_images_per_s": "float64",
    "attack_steps_per_s": "float64",  # images × gradient steps per second
    "forward_passes": "float64",  # the attack's queries (forward passes) per attacked image
    "backward_passes": "float64",  # input gradients the attack took per attacked image
    "clean_images_per_s": "float64",
    "defense_images_per_s": "float64",
    "warmup_seconds": "float64",  # model preparation, compilation, first pass: never in throughput
    "check_seconds": "float64",  # the indicators' own checks (stability, the unconstrained attack): never in throughput
    "peak_mem_mb": "float64",
    "seed": "Int64",
    "git_sha": "string",
    "torch_version": "string",
    "device_name": "string",
    "worker": "string",  # the process that ran the cell: host:pid, and on Ray "node <id>" (README: Scaling out)
    "started_at": "string",
}

# Columns that vary from run to run on the same machine; every other column is reproducible.
VOLATILE_COLUMNS = (
    "run_id", "started_at", "attack_seconds", "attack_images_per_s", "attack_steps_per_s",
    "clean_images_per_s", "defense_images_per_s", "warmup_seconds", "check_seconds", "peak_mem_mb", "worker",
)

ROWS_FILE = "rows.jsonl"
PREDICTIONS_FILE = "predictions.parquet"
PREDICTIONS_KEY = "_predictions"
TABLE_FILE = "results.parquet"
RUN_FILE = "run.json"
WORST_CASE_FILE = "worst_case.parquet"
WORST_CASE_IMAGES_FILE = "worst_case_images.parquet"


def to_frame(rows: Iterable[dict[str, Any]]) -> pd.DataFrame:
    """Rows → a typed table with exactly the contract's columns, in order."""
    df = pd.DataFrame(list(rows), columns=list(COLUMNS))
    return df.astype(COLUMNS)


def predictions_frame(rows: Iterable[dict[str, Any]]) -> pd.DataFrame:
    """Per-image predictions of every ok cell, long format: cell_id, image, label, clean_pred,
    robust_pred, robust_all (right under every draw of a randomized defense: robust_acc_all_draws)
    attacked (the attack ran on the image: false for images a cascade skipped) and distance (the measured
    perturbation in the cell's curve norm: minimum_norm, else the budget's norm; NaN for an unbounded attack
    that minimises nothing)."""
    parts = []
    for row in rows:
        pred = row.get(PREDICTIONS_KEY)
        if pred:
            labels = pred["labels"]
            robust_all = pred.get("robust_all") or [r == y for r, y in zip(pred["robust"], labels)]
            parts.append(pd.DataFrame({"cell_id": row["cell_id"], "image": range(len(labels)), "label": labels,
                                       "clean_pred": pred["clean"], "robust_pred": pred["robust"],
                                       "robust_all": robust_all, "attacked": pred.get("attacked") or [True] * len(labels),
                                       "distance": pred.get("distance") or [float("nan")] * len(labels)}))
    columns = {"cell_id": "string", "image": "int64", "label": "int64", "clean_pred": "int64", "robust_pred": "int64",
               "robust_all": "bool", "attacked": "bool", "distance": "float64"}
    if not parts:
        return pd.DataFrame({c: pd.Series(dtype=t) for c, t in columns.items()})
    return pd.concat(parts, ignore_index=True).astype(columns)


def _last_byte(path: Path) -> bytes:
    with path.open("rb") as f:
        f.seek(-1, os.SEEK_END)
        return f.read(1)


class RowLog:
    """Append-only JSON-lines log; each row is flushed and fsynced before ``append`` returns,
    so a run killed at any moment keeps every finished cell."""

    def __init__(self, path: Path):
        self.path = path
        self._f = path.open("a", encoding="utf-8")
        if self._f.tell() and _last_byte(path) != b"\n":
            self._f.write("\n")  # a line cut off by a crash: end it, or the next row would be glued to it and lost

    def append(self, row: dict[str, Any]) -> None:
        self._f.write(json.dumps(row, allow_nan=True) + "\n")
        self._f.flush()
        os.fsync(self._f.fileno())

    def close(self) -> None:
        self._f.close()


def read_rows(run_dir: Path) -> list[dict[str, Any]]:
    path = Path(run_dir) / ROWS_FILE
    if not path.exists():
        return []
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # a line cut off by a crash mid-write: that cell simply has no row
    return rows


def write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def write_table(df: pd.DataFrame, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    df.to_parquet(tmp, index=False)
    os.replace(tmp, path)


def write_json(obj: Any, path: Path) -> None:
    write_atomic(path, (json.dumps(obj, indent=2, default=str) + "\n").encode())


def load_run(run_dir: Path) -> tuple[pd.DataFrame, dict[str, Any]]:
    """A run's table (from Parquet, or from the row log if the run never finished) and run.json."""
    run_dir = Path(run_dir)
    meta = json.loads((run_dir / RUN_FILE).read_text(encoding="utf-8"))
    table = run_dir / TABLE_FILE
    df = pd.read_parquet(table) if table.exists() else to_frame(read_rows(run_dir))
    return df, meta


def load_predictions(run_dir: Path) -> pd.DataFrame | None:
    path = Path(run_dir) / PREDICTIONS_FILE
    return pd.read_parquet(path) if path.exists() else None


# ---------------------------------------------------------------------------------------------
# Environment


def git_sha(cwd: Path | None = None) -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return out.stdout.strip() if out.returncode == 0 else "unknown"


@functools.cache
def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_name(device: str) -> str:
    if device.startswith("cuda") and torch.cuda.is_available():
        index = torch.device(device).index or 0
        return torch.cuda.get_device_name(index) if index < torch.cuda.device_count() else "unavailable"
    return cpu_name() if device == "cpu" else "unavailable"


def machine_slug() -> str:
    """A file-name-safe name for this machine's benchmark device: the GPU when there is one,
    else the CPU, so baselines of different hardware never meet."""
    import re

    name = f"cuda-{torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else f"cpu-{cpu_name()}-{os.cpu_count()}"
    return re.sub(r"[^A-Za-z0-9]+", "-", name).strip("-").lower()


def environment() -> dict[str, Any]:
    import torchvision

    try:
        import torchattacks

        ta_version = torchattacks.__version__
    except ImportError:
        ta_version = "not installed"
    return {
        "git_sha": git_sha(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "torchattacks": ta_version,
        "cpu": cpu_name(),
        "cpu_threads": torch.get_num_threads(),
        "gpus": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else [],
        "cuda": torch.version.cuda,
    }
