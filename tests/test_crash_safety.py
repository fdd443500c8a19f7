"""Crash safety: a run killed at any moment keeps every finished cell, resumes without losing or
repeating one, and Ctrl-C stops cleanly after the current batch."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from bench.results import read_rows


@pytest.fixture
def slow_suite(tmp_path, tiny_suite) -> Path:
    """Enough cells (about a second each) that a run can be stopped in the middle."""
    tiny_suite["attacks"] = [{"name": "pgd", "type": "pgd", "eps": [f"{k}/255" for k in range(1, 9)], "steps": 40, "alpha": "1/255"}]
    path = tmp_path / "slow.yaml"
    path.write_text(yaml.safe_dump(tiny_suite))
    return path


def _start(suite: Path, cwd: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "bench", "run", str(suite), "--no-progress", *extra], cwd=cwd,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for_rows(cwd: Path, count: int, proc: subprocess.Popen, timeout: float = 120) -> Path:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        logs = list((cwd / "results" / "tiny").glob("*/rows.jsonl"))
        if logs and len(logs[0].read_text().splitlines()) >= count:
            return logs[0].parent
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.05)
    raise AssertionError("the run produced no rows in time")


def _resume(suite: Path, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bench", "run", str(suite), "--no-progress", "--resume"], cwd=cwd,
                          capture_output=True, text=True, timeout=300)


def test_sigkill_mid_run_then_resume_gives_every_cell_exactly_one_row(tmp_path, slow_suite):
    proc = _start(slow_suite, tmp_path)
    run_dir = _wait_for_rows(tmp_path, 3, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    before = {r["cell_id"]: r for r in read_rows(run_dir)}
    assert 3 <= len(before) < 16  # killed in the middle, rows so far on disk

    resumed = _resume(slow_suite, tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    ids = [r["cell_id"] for r in read_rows(run_dir)]
    assert len(ids) == len(set(ids)) == 16  # nothing repeated, nothing missing
    df = pd.read_parquet(run_dir / "results.parquet")
    assert df["cell_id"].is_unique and len(df) == 16 and (df["status"] == "ok").all()
    for cell_id, row in before.items():  # rows from before the kill are kept as they were
        assert df.set_index("cell_id").loc[cell_id, "robust_acc"] == row["robust_acc"]
    meta = json.loads((run_dir / "run.json").read_text())
    assert meta["status"] == "complete" and len(meta["resumed_at"]) == 1


def test_ctrl_c_stops_after_the_current_batch_and_keeps_finished_cells(tmp_path, slow_suite):
    proc = _start(slow_suite, tmp_path)
    run_dir = _wait_for_rows(tmp_path, 2, proc)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    meta = json.loads((run_dir / "run.json").read_text())
    assert meta["status"] == "interrupted"
    df = pd.read_parquet(run_dir / "results.parquet")
    assert 2 <= len(df) < 16 and df["cell_id"].is_unique and (df["status"] == "ok").all()
    assert "interrupted" in (tmp_path / "reports" / "tiny" / "latest.md").read_text()
    assert _resume(slow_suite, tmp_path).returncode == 0
    assert len(pd.read_parquet(run_dir / "results.parquet")) == 16


def test_resume_refuses_a_changed_suite(tmp_path, slow_suite, tiny_suite):
    proc = _start(slow_suite, tmp_path)
    _wait_for_rows(tmp_path, 1, proc)
    proc.kill()
    proc.wait()
    doc = yaml.safe_load(slow_suite.read_text())
    doc["seed"] = 99
    slow_suite.write_text(yaml.safe_dump(doc))
    resumed = _resume(slow_suite, tmp_path)
    assert resumed.returncode == 2 and "the suite changed since this run started" in resumed.stderr


def test_a_doctored_run_json_cannot_make_the_report_write_elsewhere(tmp_path):
    run_dir = tmp_path / "results" / "x" / "r1"
    run_dir.mkdir(parents=True)
    (run_dir / "run.json").write_text(json.dumps({"suite": "../../outside", "run_id": "r1"}))
    (run_dir / "rows.jsonl").write_text("")
    proc = subprocess.run([sys.executable, "-m", "bench", "report", str(run_dir)], cwd=tmp_path, capture_output=True, text=True)
    assert proc.returncode == 2 and "is not a plain name" in proc.stderr
    assert not (tmp_path.parent / "outside").exists()
