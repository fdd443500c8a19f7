"""The GPU check: its CPU smoke run (every step's plumbing, the bundle, the budgets) and its kit."""

from __future__ import annotations

import json
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest

import gpu_check
from gpu_check import KIT, STEPS, TOTAL_SECONDS, missing_on_gpu, normalise

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def smoke(tmp_path_factory) -> tuple[dict, Path, float]:
    """`scripts/gpu-check OUT --device cpu --smoke`, as a user runs it."""
    out = tmp_path_factory.mktemp("gpu-check-out")
    t0 = time.monotonic()
    proc = subprocess.run([str(ROOT / "scripts" / "gpu-check"), str(out), "--device", "cpu", "--smoke"], cwd=ROOT,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads((out / "results.json").read_text()), out, time.monotonic() - t0


@pytest.mark.slow  # the smoke run of every step: about two minutes (make test-slow, CI)
def test_the_smoke_run_brings_back_one_summary_one_json_and_one_tarball(smoke):
    results, out, _ = smoke
    assert sorted(p.name for p in out.iterdir()) == ["gpu-check.tar.gz", "results.json", "summary.md"]
    with tarfile.open(out / "gpu-check.tar.gz") as tar:
        names = tar.getnames()
    for step in STEPS:
        assert f"gpu-check/{step.name}.json" in names
    assert "gpu-check/nightly/compare-doctored.md" in names and "gpu-check/perf/perf-fp32.md" in names
    summary = (out / "summary.md").read_text()
    assert all(f"| {step.name} |" in summary for step in STEPS)


@pytest.mark.slow  # the smoke run of every step: about two minutes (make test-slow, CI)
def test_every_step_runs_on_the_cpu_and_a_cuda_only_step_says_it_skipped_for_want_of_cuda(smoke):
    results, _, _ = smoke
    assert list(results["steps"]) == [s.name for s in STEPS]
    for step in STEPS:
        r = results["steps"][step.name]
        if step.cuda_only:
            assert r["status"] == "skipped" and r["reason"].startswith("no CUDA"), r
        else:
            assert r["status"] == "ok", r
        assert r["seconds"] <= r["budget"] == step.smoke_seconds


@pytest.mark.slow  # the smoke run of every step: about two minutes (make test-slow, CI)
def test_the_nightly_step_finds_the_doctored_baseline_and_two_clean_runs(smoke):
    numbers = smoke[0]["steps"]["nightly"]["numbers"]
    assert numbers["compare_clean_exit"] == 0 and numbers["compare_doctored_exit"] == 1 and numbers["history_exit"] == 0


@pytest.mark.slow  # the smoke run of every step: about two minutes (make test-slow, CI)
def test_the_kit_is_exactly_what_the_check_imports_beyond_the_gpu_machines_packages(smoke):
    imported = smoke[0]["imports"]
    assert "torch" in imported and "foolbox" in imported  # the record is real: the libraries the steps use
    assert missing_on_gpu(imported) == {normalise(k) for k in KIT}


def test_the_steps_fit_in_eight_minutes_and_one_device_call():
    assert sum(s.seconds for s in STEPS) == TOTAL_SECONDS == 480  # each step is killed at its budget
    assert TOTAL_SECONDS + 60 <= 540 <= 600  # docs/gpu.md's device call: 60 s for the kit's install and the bundle


@pytest.mark.slow  # make test-slow (CI runs it): keeps make test within its minutes
def test_a_step_over_its_budget_fails_and_the_whole_check_stays_within_the_sum_of_budgets(tmp_path):
    results = gpu_check.check(tmp_path / "out", "cpu", True, ["perf", "nvjpeg"], budgets={"perf": 15, "nvjpeg": 16})
    perf = results["steps"]["perf"]
    assert perf["status"] == "failed" and "ran past" in perf["reason"], perf  # 5 s of work for a step of ~10 s
    assert results["steps"]["nvjpeg"]["status"] == "skipped"  # it ran (its CPU half) in what was left
    assert results["seconds"] <= 31 + 3


def test_a_failing_step_is_recorded_with_its_reason(tmp_path, monkeypatch):
    def boom(ctx):
        raise ValueError("no such kernel")

    monkeypatch.setattr(gpu_check, "STEPS", (gpu_check.Step("boom", 5, 5, False, boom, "fails"),))
    gpu_check.run_step("boom", tmp_path, "cpu", True, 5)
    result = json.loads((tmp_path / "boom.json").read_text())
    assert result["status"] == "failed" and result["reason"] == "ValueError: no such kernel"


def test_a_child_past_its_budget_is_killed_with_what_it_started(tmp_path):
    marker = tmp_path / "grandchild-alive"
    script = f"import subprocess, sys, time; subprocess.Popen(['sh', '-c', 'sleep 3; touch {marker}']); time.sleep(30)"
    t0 = time.monotonic()
    with pytest.raises(TimeoutError, match="ran past 1 s"):
        gpu_check._run([sys.executable, "-c", script], 1, cwd=tmp_path)
    assert time.monotonic() - t0 < 10
    time.sleep(4)
    assert not marker.exists()  # the whole process group went


def test_make_gpu_kit_downloads_into_the_ignored_wheel_folder():
    env = {k: v for k, v in __import__("os").environ.items() if not k.startswith("MAKE")}
    # -o pyproject.toml: the install stamp counts as up to date whatever order a clone wrote the files in
    out = subprocess.run(["make", "-n", "-o", "pyproject.toml", "gpu-kit", "STAMP=Makefile"], cwd=ROOT, capture_output=True,
                         text=True, env=env)
    assert out.stdout.strip() == ".venv/bin/python -m gpu_check kit .whl"
    assert "/.whl/" in (ROOT / ".gitignore").read_text().splitlines()


def _kit(folder: Path, tag: str, python: str = "3.12") -> Path:
    """A kit as `make gpu-kit` leaves it, with one small wheel tagged ``tag`` (a real wheel: pip installs it)."""
    import zipfile

    folder.mkdir(parents=True, exist_ok=True)
    name, dist = "kitprobe", "kitprobe-1.0.dist-info"
    files = {f"{name}/__init__.py": "", f"{dist}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n",
             f"{dist}/WHEEL": f"Wheel-Version: 1.0\nGenerator: tests\nRoot-Is-Purelib: false\nTag: {tag}\n"}
    with zipfile.ZipFile(folder / f"{name}-1.0-{tag}.whl", "w") as z:
        for path, text in files.items():
            z.writestr(path, text)
        z.writestr(f"{dist}/RECORD", "".join(f"{p},,\n" for p in [*files, f"{dist}/RECORD"]))
    (folder / "KIT.json").write_text(json.dumps({"python": python, "implementation": "cp", "platforms": ["manylinux2014_x86_64"]}))
    return folder


def _gpu_check(tmp_path: Path, kit: Path) -> subprocess.CompletedProcess:
    import os

    env = {**os.environ, "GPU_KIT": str(kit)}
    return subprocess.run([str(ROOT / "scripts" / "gpu-check"), str(tmp_path / "out"), "--device", "cpu", "--smoke", "--only",
                           "agreement"], cwd=ROOT, capture_output=True, text=True, timeout=600, env=env)


@pytest.mark.slow  # make test-slow (CI runs it): keeps make test within its minutes
def test_with_a_kit_for_another_python_the_smoke_run_checks_the_kit_installs_there_and_runs_here(tmp_path):
    """The kit holds the GPU machine's cp312 wheels; on a 3.11 machine (this one, CI) they cannot be installed, but
    they can be checked to install for 3.12, and the smoke steps run in the project's own environment."""
    proc = _gpu_check(tmp_path, _kit(tmp_path / "kit", "cp312-cp312-manylinux2014_x86_64"))
    assert proc.returncode == 0, proc.stderr[-2000:]
    if sys.version_info[:2] != (3, 12):
        assert "is for CPython 3.12 (checked: it installs there)" in proc.stderr
    assert json.loads((tmp_path / "out" / "results.json").read_text())["steps"]["agreement"]["status"] != "failed"


def test_a_kit_that_would_not_install_on_its_target_is_one_line_and_nothing_runs(tmp_path):
    proc = _gpu_check(tmp_path, _kit(tmp_path / "kit", "cp311-cp311-manylinux2014_x86_64"))
    errors = [line for line in proc.stderr.splitlines() if line.startswith("gpu-check:")]
    assert proc.returncode == 3 and len(errors) == 1 and "kit" in errors[0], proc.stderr[-2000:]
    assert not (tmp_path / "out").exists()


def test_make_gpu_kit_says_which_python_and_platform_the_kit_is_for(tmp_path):
    import gpu_check

    wheel = _kit(tmp_path / "kit", "cp312-cp312-manylinux2014_x86_64") / "kitprobe-1.0-cp312-cp312-manylinux2014_x86_64.whl"
    text = gpu_check.kit_summary([wheel], tmp_path / "kit")
    assert f"1 wheels, 0.0 MiB in {tmp_path / 'kit'}, for CPython 3.12 on manylinux x86-64 (the GPU machine's; this is " \
           f"Python {'.'.join(map(str, sys.version_info[:3]))})" in text
    assert gpu_check.target_args()[:2] == ["--python-version", "3.12"]
