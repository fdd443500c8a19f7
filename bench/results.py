"""The results table: its columns (a contract other tools read), the environment record, and
durable writing (rows are appended and fsynced one by one; the Parquet table is built from them)."""

from __future__ import annotations

import functools
import json
import os
import platform
import stat
import subprocess
from pathlib import Path
from typing import Any, Iterable

import pandas as pd
import torch

from bench import files

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
    "flags": "string",  # comma-separated flags and indicators of attack failure (bench/audit/flags.py), empty when none
    "verdict": "string",  # reliable | unreliable (an indicator of attack failure fired); empty for cells that did not run
    "indicators": "string",  # JSON: the indicators' evidence (image counts, measured values; bench/audit/indicators.py)
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
    "query_log_seconds": "float64",  # the query log's share of attack_seconds (recording every query the attack makes)
    "peak_mem_mb": "float64",
    "seed": "Int64",
    "git_sha": "string",
    "torch_version": "string",
    "device_name": "string",
    "worker": "string",  # the process that ran the cell: host:pid, and on Ray "node <id>" (docs/scaling-out.md)
    "started_at": "string",
}

# Columns that vary from run to run on the same machine; every other column is reproducible.
VOLATILE_COLUMNS = (
    "run_id", "started_at", "attack_seconds", "attack_images_per_s", "attack_steps_per_s",
    "clean_images_per_s", "defense_images_per_s", "warmup_seconds", "check_seconds", "query_log_seconds",
    "peak_mem_mb", "worker",
)

ROWS_FILE = "rows.jsonl"
SHARDS_FILE = "shards.jsonl"  # each shard of a cell as it lands (bench/measure.py measure_shard): resume inside a cell
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
    attacked (the attack ran on the image: false for images a cascade skipped), distance (the measured
    perturbation in the cell's curve norm: minimum_norm, else the budget's norm; NaN for an unbounded attack
    that minimises nothing), broken_by (for an ensemble, AutoAttack, the attack of it that broke the image;
    empty for other attacks and for images not broken) and reached (the attack's float output reached its goal
    on the model it attacked, before 8-bit quantisation: AutoAttack's and RobustBench's own robust accuracy is
    of these float images)."""
    parts = []
    for row in rows:
        pred = row.get(PREDICTIONS_KEY)
        if pred:
            labels = pred["labels"]
            robust_all = pred.get("robust_all") or [r == y for r, y in zip(pred["robust"], labels)]
            parts.append(pd.DataFrame({"cell_id": row["cell_id"], "image": range(len(labels)), "label": labels,
                                       "clean_pred": pred["clean"], "robust_pred": pred["robust"],
                                       "robust_all": robust_all, "attacked": pred.get("attacked") or [True] * len(labels),
                                       "distance": pred.get("distance") or [float("nan")] * len(labels),
                                       "broken_by": pred.get("broken_by") or [None] * len(labels),
                                       "reached": pred.get("reached") or [None] * len(labels)}))
    columns = PREDICTION_COLUMNS
    if not parts:
        return pd.DataFrame({c: pd.Series(dtype=t) for c, t in columns.items()})
    return pd.concat(parts, ignore_index=True).astype(columns)


class RowLog:
    """Append-only JSON-lines log; each row is written and fsynced before ``append`` returns,
    so a run killed at any moment keeps every finished cell. Opened as :mod:`bench.files` opens
    every file (never through a link); a failed write raises :class:`bench.files.WriteError`."""

    def __init__(self, path: Path):
        self.path = path
        self._file = files.AppendFile(path)
        if self._file.size() and _last_byte(path) != b"\n":
            self._file.append(b"\n")  # a line cut off by a crash: end it, or the next row would be glued to it and lost

    def append(self, row: dict[str, Any]) -> None:
        self._file.append((json.dumps(row, allow_nan=True) + "\n").encode("utf-8"))

    def close(self) -> None:
        self._file.close()


def _last_byte(path: Path) -> bytes:
    with path.open("rb") as f:
        f.seek(-1, os.SEEK_END)
        return f.read(1)


def read_rows(run_dir: Path) -> list[dict[str, Any]]:
    """The rows of a run's row log; lines that are not a row (cut off by a crash mid-write, or
    damaged) are left out: that cell simply has no row, and a resume runs it again."""
    path = Path(run_dir) / ROWS_FILE
    if not os.path.lexists(path):
        return []
    _regular(path)
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        raise RunFolderError(path, f"cannot be read ({exc.strerror or exc})") from None
    rows = []
    for line in text.splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict) and isinstance(row.get("cell_id"), str):
            rows.append(row)
    return rows


def read_shards(run_dir: Path) -> dict[tuple[str, int], dict[str, Any]]:
    """The shards a run's shard log holds: (cell id, shard) → its outcomes (a shard logged twice keeps its last);
    lines that are not a shard (cut off by a crash) are left out: that shard runs again."""
    path = Path(run_dir) / SHARDS_FILE
    if not os.path.lexists(path):
        return {}
    _regular(path)
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        raise RunFolderError(path, f"cannot be read ({exc.strerror or exc})") from None
    out = {}
    for line in text.splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict) and isinstance(record.get("cell_id"), str) and isinstance(record.get("shard"), int) \
                and _whole_shard(record):
            out[(record.pop("cell_id"), record.pop("shard"))] = record
    return out


_SHARD_LISTS = ("robust", "survived", "attacked", "reached", "linf", "l2", "l1", "l0")
_SHARD_NUMBERS = ("attack_seconds", "steps", "forward_passes", "backward_passes", "peak_mem_mb", "batch_size",
                  "check_seconds", "repaired", "defense_seconds", "eval_draws")


def _whole_shard(record: dict[str, Any]) -> bool:
    """A shard's outcomes as measure_shard wrote them: its range and one value per image in each list (a record
    damaged on disk is left out, and that shard runs again)."""
    lo, hi = record.get("lo"), record.get("hi")
    if not (isinstance(lo, int) and isinstance(hi, int) and 0 <= lo <= hi):
        return False
    if not all(isinstance(record.get(k), list) and len(record[k]) == hi - lo for k in _SHARD_LISTS):
        return False
    signals = record.get("signals")
    if not isinstance(signals, dict) or not all(isinstance(v, list) and len(v) == hi - lo for v in signals.values()):
        return False
    numbers = all(isinstance(record.get(k), (int, float)) and not isinstance(record.get(k), bool) for k in _SHARD_NUMBERS)
    return numbers and isinstance(record.get("stability"), dict) and isinstance(record.get("stability_flags"), list) \
        and (record.get("broken_by") is None or (isinstance(record["broken_by"], list) and len(record["broken_by"]) == hi - lo))


def write_table(df: pd.DataFrame, path: Path) -> None:
    files.write_with(path, lambda f: df.to_parquet(f, index=False))


def write_json(obj: Any, path: Path, reserve: int = 0) -> None:
    """Write ``obj`` as JSON; ``reserve`` trailing spaces (valid JSON whitespace) keep room in the
    file for a later :func:`bench.files.overwrite_in_place` on a full disk."""
    files.write_atomic(path, (json.dumps(obj, indent=2, default=str) + "\n" + " " * reserve).encode())


# ---------------------------------------------------------------------------------------------
# Reading a run folder: every damaged file is one line naming it


class RunFolderError(ValueError):
    """A run folder's file that cannot be read (truncated, not JSON or Parquet, the wrong shape)."""

    def __init__(self, path: str | Path, problem: str):
        super().__init__(f"{path}: {problem}")
        self.path = Path(path)


# run.json's keys that readers use, and the JSON types each must have (a key may be missing: older runs)
RUN_SCHEMA: dict[str, tuple[type, ...]] = {
    "suite": (str,), "run_id": (str,), "suite_digest": (str,), "status": (str,), "suite_file": (str, type(None)),
    "resolved_suite": (dict,), "dataset": (dict,), "datasets": (dict,), "environment": (dict,), "cells": (int,),
    "wall_seconds": (int, float), "started_at": (str,), "finished_at": (str,), "error": (str,), "resumed_at": (list,),
    "executor": (dict, str), "earlier_executors": (list,), "partial_cells": (dict,)}
MAX_JSON_BYTES = 256 * 2**20  # a run.json is kilobytes to a few megabytes (image ids); more is not a run.json


def _regular(path: Path) -> int:
    """The file's size; :class:`RunFolderError` for anything but a regular file (a FIFO would block the reader
    for ever, /dev/zero never ends)."""
    try:
        st = os.stat(path)
    except OSError as exc:
        raise RunFolderError(path, f"cannot be read ({exc.strerror or exc})") from None
    if not stat.S_ISREG(st.st_mode):
        raise RunFolderError(path, "is not a regular file (a FIFO, a device or a folder): not read")
    return st.st_size


def read_json(path: str | Path) -> dict[str, Any]:
    """A run.json: a JSON object whose known keys (:data:`RUN_SCHEMA`) have their types, or
    :class:`RunFolderError` naming the file (and the key)."""
    path = Path(path)
    if _regular(path) > MAX_JSON_BYTES:
        raise RunFolderError(path, f"is over {MAX_JSON_BYTES // 2**20} MB: not a run.json")
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise RunFolderError(path, f"cannot be read ({exc.strerror or exc})") from None
    except (UnicodeDecodeError, ValueError) as exc:
        raise RunFolderError(path, f"is not valid JSON ({_first_line(exc)})") from None
    if not isinstance(meta, dict):
        raise RunFolderError(path, f"must hold a JSON object, got {type(meta).__name__}")
    for key, types in RUN_SCHEMA.items():
        if key not in ("suite", "run_id"):
            types = (*types, type(None))  # a sparse run.json (null where a run wrote nothing) reads as missing
        if key in meta and (not isinstance(meta[key], types) or isinstance(meta[key], bool)):
            allowed = " or ".join({str: "a string", dict: "an object", list: "a list", int: "an integer", float: "a number",
                                   type(None): "null"}[t] for t in types)
            raise RunFolderError(path, f"{key} must be {allowed}, got {type(meta[key]).__name__} {str(meta[key])[:40]!r}")
    return meta


def read_table(path: str | Path, schema: dict[str, str] | None = None, needs: tuple[str, ...] = ()) -> pd.DataFrame:
    """A Parquet table of a run folder, conformed to ``schema`` (column → pandas dtype): ``needs`` must be there,
    a column of the schema that is there must hold its kind of values (text, numbers, true/false), and one that
    is missing (a run older than it) is added empty. :class:`RunFolderError` naming the file otherwise."""
    path = Path(path)
    _regular(path)
    try:
        df = pd.read_parquet(path)
    except Exception as exc:  # pyarrow's ArrowInvalid, OSError and friends: a truncated or foreign file
        raise RunFolderError(path, f"cannot be read as a Parquet table ({type(exc).__name__}: {_first_line(exc, path)})") from None
    missing = [c for c in needs if c not in df.columns]
    if missing:
        raise RunFolderError(path, f"is not a bench table: it lacks the column(s) {', '.join(missing)}")
    for column, dtype in (schema or {}).items():
        if column not in df.columns:
            df[column] = pd.Series([None] * len(df), index=df.index, dtype="object").astype(dtype)
            continue
        values = df[column]
        if values.isna().all():
            continue
        if dtype == "string":
            ok = pd.api.types.is_string_dtype(values) and values.dropna().map(lambda v: isinstance(v, str)).all()
        elif dtype in ("bool", "boolean"):
            ok = pd.api.types.is_bool_dtype(values)
        else:
            ok = pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values)
        if not ok:
            raise RunFolderError(path, f"its column {column} holds {values.dtype} values, not {dtype}")
    return df


def _first_line(exc: BaseException, path: Path | None = None) -> str:
    text = str(exc).strip().splitlines()
    line = text[0] if text else type(exc).__name__
    line = line.replace(f" '{path}'", "") if path else line  # the message names the file already
    return line.split(". ")[0].rstrip(".")[:200]  # its first sentence: "… magic bytes not found in footer"


# Without these a table is not a results table (every run since the first has had them)
TABLE_KEYS = ("cell_id", "status", "model", "attack", "defense", "eval_mode", "device", "precision")


def load_run(run_dir: Path) -> tuple[pd.DataFrame, dict[str, Any]]:
    """A run's table (from Parquet, or from the row log if the run never finished) and run.json;
    :class:`RunFolderError` naming the file when one cannot be read."""
    run_dir = Path(run_dir)
    meta = read_json(run_dir / RUN_FILE)
    table = run_dir / TABLE_FILE
    df = read_table(table, COLUMNS, TABLE_KEYS) if table.exists() else to_frame(read_rows(run_dir))
    return df, meta


PREDICTION_KEYS = ("cell_id", "image", "label", "clean_pred", "robust_pred")
PREDICTION_COLUMNS = {"cell_id": "string", "image": "int64", "label": "int64", "clean_pred": "int64", "robust_pred": "int64",
                      "robust_all": "bool", "attacked": "bool", "distance": "float64", "broken_by": "string", "reached": "boolean"}


def load_predictions(run_dir: Path) -> pd.DataFrame | None:
    path = Path(run_dir) / PREDICTIONS_FILE
    return read_table(path, PREDICTION_COLUMNS, PREDICTION_KEYS) if path.exists() else None


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
