"""The Makefile's gating targets, as dry runs (`make -n`): they print the commands the nightly
workflow relies on, with this machine's baseline paths, and run nothing."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from bench.results import machine_slug

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.skipif(
    shutil.which("make") is None or not (ROOT / ".venv" / "bin" / "python").exists(),
    reason="needs make and the project's .venv (the Makefile's targets use .venv/bin)",
)


def make(*args: str) -> list[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAKE")}  # no flags from an outer make
    proc = subprocess.run(["make", *args], cwd=ROOT, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr
    return [line.strip() for line in proc.stdout.splitlines()]


@pytest.fixture(scope="module")
def paths() -> dict[str, str]:
    """The Makefile's per-device paths, as it computes them (each expansion asks .venv/bin/python,
    importing torch, for the machine's slug: so they are read once, and passed to the dry runs)."""
    (line,) = make("-s", "--eval=show-paths: ; @echo $(PERF_STORAGE) $(NIGHTLY_BASELINE)", "show-paths")
    storage, baseline = line.split()
    slug = machine_slug()
    assert storage == f"benchmarks/baselines/{slug}" and baseline == f"benchmarks/nightly/{slug}/results.parquet"
    return {"PERF_STORAGE": storage, "NIGHTLY_BASELINE": baseline}


@pytest.fixture(scope="module")
def dry_run(paths) -> list[str]:
    """`make -n nightly perf-gate`: the commands, printed and not run."""
    return make("-n", "nightly", "perf-gate", *(f"{k}={v}" for k, v in paths.items()))


def test_nightly_runs_the_gpu_suite_then_compares_with_this_devices_baseline(dry_run, paths):
    lines = dry_run
    run = lines.index(".venv/bin/bench run suites/nightly-gpu.yaml --no-progress")
    baseline = paths["NIGHTLY_BASELINE"]
    compare = [i for i, line in enumerate(lines) if line.startswith(f".venv/bin/bench compare {baseline} $latest")]
    assert compare and compare[0] > run  # compared after the run, against this device's stored run
    assert "--out reports/nightly-gpu/compare-latest.md" in lines[compare[0]]
    assert any(f"if [ ! -f {baseline} ]" in line for line in lines)  # the first night stores a baseline instead
    history = [i for i, line in enumerate(lines) if line.startswith(".venv/bin/bench history suites/nightly-gpu.yaml")]
    assert history and history[0] > compare[0] and "--out reports/nightly-gpu" in lines[history[0]]
    # a regression found by the compare still fails the target, after the history is written
    assert lines[compare[0]].endswith("|| status=$?; \\") and lines[history[0] + 1].strip() == "exit $status"


def test_perf_gate_compares_against_this_devices_stored_benchmarks(dry_run, paths):
    storage = paths["PERF_STORAGE"]
    assert any(line.startswith(f"if ! ls {storage}/*/*_baseline.json") for line in dry_run)  # no baseline: exit 2
    (pytest_line,) = [line for line in dry_run if line.startswith(".venv/bin/python -m pytest tests/benchmarks")]
    for part in ("-m benchmark_suite", "--benchmark-only", "--benchmark-warmup=on",
                 "--benchmark-timer=bench.timing.synchronized_timer", f"--benchmark-storage=file://{ROOT}/{storage}",
                 "--benchmark-compare", "--benchmark-compare-fail=median:10%"):
        assert f" {part}" in pytest_line, part


def test_perf_gate_takes_any_fail_expression():
    lines = make("-n", "perf-gate", "PERF_FAIL=mean:5%", "PERF_STORAGE=benchmarks/baselines/x")
    (pytest_line,) = [line for line in lines if "-m pytest tests/benchmarks" in line]
    assert pytest_line.endswith("--benchmark-compare-fail=mean:5%")


def test_the_nightly_workflow_runs_the_gpu_tests_and_fails_on_them():
    import yaml

    workflow = yaml.safe_load((ROOT / ".github" / "workflows" / "nightly-gpu.yml").read_text())
    steps = workflow["jobs"]["nightly"]["steps"]
    runs = [step.get("run", "") for step in steps]
    (gpu,) = [i for i, run in enumerate(runs) if ".venv/bin/python -m pytest -m gpu" in run]
    install = runs.index("make install")
    assert install < gpu < runs.index("make nightly")
    assert not steps[gpu].get("continue-on-error") and "if" not in steps[gpu]  # a failure fails the job
    assert "torch.cuda.is_available()" in runs[gpu]  # and so does a runner whose GPU tests would all skip


@pytest.mark.slow  # make test-slow (CI runs it): keeps make test within its minutes
def test_robust_trains_both_digits_models_when_missing_then_runs_the_suite(tmp_path):
    lines = make("-n", "robust", f"DIGITS_MODELS={tmp_path}", "STAMP=Makefile")
    assert f".venv/bin/bench train digits_cnn --robust-eps 0.15 --out {tmp_path}" in lines
    assert f".venv/bin/bench train digits_cnn --adversarial pgd --train-eps 0.15 --out {tmp_path}" in lines
    assert lines[-1] == ".venv/bin/bench run suites/robust.yaml"
    for name in ("digits_cnn.pt", "digits_cnn-pgd.pt"):  # once made, never again
        (tmp_path / name).write_bytes(b"")
    assert make("-n", "robust", f"DIGITS_MODELS={tmp_path}", "STAMP=Makefile") == [".venv/bin/bench run suites/robust.yaml"]


def test_faces_makes_the_adversarially_trained_detector_with_fast_fgsm_training(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "split.json").write_text("{}")
    lines = " ".join(make("-n", "faces", f"FACES_DATA={tmp_path / 'data'}", f"FACES_MODELS={tmp_path}", "STAMP=Makefile"))
    assert (f".venv/bin/bench train custom_cnn --adversarial pgd --train-eps 2/255 --train-steps 1 --train-step-size 2.5/255 "
            f"--data {tmp_path / 'data'} --out {tmp_path}") in lines.replace("\\ ", "").replace("  ", " ")


def test_attack_sources_trains_the_pgd_digits_model_when_missing_then_runs_the_suite(tmp_path):
    lines = make("-n", "attack-sources", f"DIGITS_MODELS={tmp_path}", "STAMP=Makefile")
    assert lines == [f".venv/bin/bench train digits_cnn --adversarial pgd --train-eps 0.15 --out {tmp_path}",
                     ".venv/bin/bench run suites/attack-sources.yaml"]
    (tmp_path / "digits_cnn-pgd.pt").write_bytes(b"")
    assert make("-n", "attack-sources", f"DIGITS_MODELS={tmp_path}", "STAMP=Makefile") == [
        ".venv/bin/bench run suites/attack-sources.yaml"]


def test_install_brings_the_optional_attack_libraries():
    (line,) = [x for x in make("-n", "install", "STAMP=.never-there") if "pip install" in x and "-e" in x]
    assert "foolbox" in line and "art" in line
