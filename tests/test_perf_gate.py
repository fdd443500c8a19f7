"""The perf gate really fails: pytest-benchmark against a doctored baseline that claims the code
used to be twice as fast."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TIME_STATS = ("min", "max", "mean", "median", "q1", "q3", "iqr", "stddev", "ld15iqr", "hd15iqr", "total")


def _bench(tmp_path: Path, *extra: str) -> subprocess.CompletedProcess:
    args = [sys.executable, "-m", "pytest", "tests/benchmarks/test_throughput.py", "-m", "benchmark_suite", "-k", "jpeg_pil",
            "--benchmark-only", "--benchmark-timer=bench.timing.synchronized_timer", f"--benchmark-storage=file://{tmp_path}",
            "-p", "no:cacheprovider", "-q", *extra]
    return subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=300)


@pytest.mark.slow  # two timed benchmark sessions (make test-slow, CI)
def test_the_gate_fails_on_a_regression_and_passes_within_its_threshold(tmp_path):
    saved = _bench(tmp_path, "--benchmark-save=baseline")
    assert saved.returncode == 0, saved.stdout + saved.stderr
    (baseline,) = tmp_path.glob("*/0001_baseline.json")
    data = json.loads(baseline.read_text())
    assert data["machine_info"]["device_slug"] and "torch" in data["machine_info"]
    assert data["benchmarks"][0]["extra_info"]["images_per_s"] > 0
    for b in data["benchmarks"]:  # doctor: the baseline now claims half the time
        for key in TIME_STATS:
            if isinstance(b["stats"].get(key), (int, float)):
                b["stats"][key] /= 2
        b["stats"]["ops"] *= 2
    baseline.write_text(json.dumps(data))

    gate = _bench(tmp_path, "--benchmark-compare=0001", "--benchmark-compare-fail=median:10%")
    assert gate.returncode != 0
    assert "Performance has regressed" in gate.stdout + gate.stderr

    lenient = _bench(tmp_path, "--benchmark-compare=0001", "--benchmark-compare-fail=median:900%")
    assert lenient.returncode == 0, lenient.stdout + lenient.stderr
