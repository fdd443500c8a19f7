"""End to end through the command line, as a user runs it."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from bench.results import COLUMNS


def bench(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bench", *args], cwd=cwd, capture_output=True, text=True, timeout=300)


@pytest.fixture
def suite_file(tmp_path, tiny_suite) -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(tiny_suite, sort_keys=False))
    return path


def test_run_writes_the_table_run_json_and_report(tmp_path, suite_file):
    proc = bench("run", str(suite_file), "--no-progress", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "cells: 6 ok, 0 skipped, 0 failed" in proc.stdout
    (run_dir,) = (tmp_path / "results" / "tiny").iterdir()
    df = pd.read_parquet(run_dir / "results.parquet")
    assert list(df.columns) == list(COLUMNS) and len(df) == 6
    assert set(df["attack"]) == {"fgsm", "pgd"} and set(df["defense"]) == {"none", "jpeg-q50"}
    assert df["robust_acc"].between(0, 1).all() and df["clean_acc"].between(0, 1).all()
    report = (tmp_path / "reports" / "tiny" / f"{run_dir.name}.md").read_text()
    assert report == (tmp_path / "reports" / "tiny" / "latest.md").read_text()
    for section in ("## Clean accuracy", "## Robust accuracy", "## Attack success rate", "## Perturbation and cost", "## Environment"):
        assert section in report
    assert "| cnn     | fgsm     | 8/255 |" in report
    assert (tmp_path / "reports" / "tiny" / f"{run_dir.name}-robust.png").stat().st_size > 1000

    # the report can be rebuilt from the run folder alone
    (tmp_path / "reports" / "tiny" / "latest.md").unlink()
    proc = bench("report", str(run_dir), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "reports" / "tiny" / "latest.md").read_text() == report


def test_dry_run_prints_the_grid_and_writes_nothing(tmp_path, suite_file):
    proc = bench("run", str(suite_file), "--dry-run", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("suite tiny: 6 cells")
    assert len(proc.stdout.strip().splitlines()) == 7
    assert not (tmp_path / "results").exists()


def test_bad_input_exits_2_with_one_message_and_writes_nothing(tmp_path, tiny_suite):
    tiny_suite["attacks"][1]["eps"] = 2
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(tiny_suite))
    proc = bench("run", str(path), cwd=tmp_path)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    (line,) = proc.stderr.strip().splitlines()
    assert re.fullmatch(rf"error: {re.escape(str(path))}:\d+: attacks\[1\]\.eps: must be in \(0, 1\] \(pixel space, images in \[0,1\]\), got 2", line), line
    assert not (tmp_path / "results").exists() and not (tmp_path / "reports").exists()


def test_missing_suite_file_exits_2(tmp_path):
    proc = bench("run", "nope.yaml", cwd=tmp_path)
    assert proc.returncode == 2 and "suite file not found" in proc.stderr and "Traceback" not in proc.stderr


def test_report_of_a_folder_that_is_not_a_run_exits_2(tmp_path):
    proc = bench("report", str(tmp_path), cwd=tmp_path)
    assert proc.returncode == 2 and "not a run folder" in proc.stderr
