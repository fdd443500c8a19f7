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
from bench.runlock import RunLock

CELLS = 12  # slow_suite: 6 ε × 2 defenses


@pytest.fixture
def slow_suite(tmp_path, tiny_suite) -> Path:
    """Enough cells (about a second each) that a run can be stopped in the middle."""
    tiny_suite["attacks"] = [{"name": "pgd", "type": "pgd", "eps": [f"{k}/255" for k in range(1, CELLS // 2 + 1)], "steps": 20, "alpha": "1/255"}]
    path = tmp_path / "slow.yaml"
    path.write_text(yaml.safe_dump(tiny_suite))
    return path


def _start(suite: Path, cwd: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "bench", "run", str(suite), "--no-progress", *extra], cwd=cwd,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


# Waits are on events (rows on disk, the process ending), never on a guess of how long a run takes: on a machine
# loaded with other processes the run is slower, not wrong. HANG_S only ends a test whose process hangs for ever.
HANG_S = 1800


def _wait_for_rows(cwd: Path, count: int, proc: subprocess.Popen) -> Path:
    deadline = time.monotonic() + HANG_S
    while time.monotonic() < deadline:
        logs = list((cwd / "results" / "tiny").glob("*/rows.jsonl"))
        if logs and len(logs[0].read_text().splitlines()) >= count:
            return logs[0].parent
        assert proc.poll() is None, proc.communicate()  # it ended before the rows came: say why
        time.sleep(0.05)
    raise AssertionError(f"the run was still going without {count} rows after {HANG_S} s: it hangs")


def _resume(suite: Path, cwd: Path, capsys) -> tuple[int, str]:
    """`bench run SUITE --resume`, in this process (the run it resumes was a real process, killed or
    stopped); returns the exit status and stderr."""
    from bench.cli import main

    code = main(["run", str(suite), "--no-progress", "--resume", "--results-dir", str(cwd / "results"),
                 "--reports-dir", str(cwd / "reports")])
    return code, capsys.readouterr().err


def test_sigkill_mid_run_then_resume_gives_every_cell_exactly_one_row(tmp_path, slow_suite, capsys):
    proc = _start(slow_suite, tmp_path)
    run_dir = _wait_for_rows(tmp_path, 3, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    before = {r["cell_id"]: r for r in read_rows(run_dir)}
    assert 3 <= len(before) < CELLS  # killed in the middle, rows so far on disk

    code, err = _resume(slow_suite, tmp_path, capsys)
    assert code == 0, err
    ids = [r["cell_id"] for r in read_rows(run_dir)]
    assert len(ids) == len(set(ids)) == CELLS  # nothing repeated, nothing missing
    df = pd.read_parquet(run_dir / "results.parquet")
    assert df["cell_id"].is_unique and len(df) == CELLS and (df["status"] == "ok").all()
    for cell_id, row in before.items():  # rows from before the kill are kept as they were
        assert df.set_index("cell_id").loc[cell_id, "robust_acc"] == row["robust_acc"]
    meta = json.loads((run_dir / "run.json").read_text())
    assert meta["status"] == "complete" and len(meta["resumed_at"]) == 1


@pytest.mark.slow  # make test-slow (CI runs it): keeps make test within its minutes
def test_ctrl_c_stops_after_the_current_batch_and_keeps_finished_cells(tmp_path, slow_suite, capsys):
    proc = _start(slow_suite, tmp_path)
    run_dir = _wait_for_rows(tmp_path, 2, proc)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=HANG_S)
    assert proc.returncode == 130, err
    meta = json.loads((run_dir / "run.json").read_text())
    assert meta["status"] == "interrupted"
    df = pd.read_parquet(run_dir / "results.parquet")
    assert 2 <= len(df) < CELLS and df["cell_id"].is_unique and (df["status"] == "ok").all()
    assert "interrupted" in (tmp_path / "reports" / "tiny" / "latest.md").read_text()
    assert _resume(slow_suite, tmp_path, capsys)[0] == 0
    assert len(pd.read_parquet(run_dir / "results.parquet")) == CELLS


def test_resume_refuses_a_changed_suite(tmp_path, slow_suite, tiny_suite, capsys):
    proc = _start(slow_suite, tmp_path)
    run_dir = _wait_for_rows(tmp_path, 1, proc)
    proc.kill()
    proc.wait()
    doc = yaml.safe_load(slow_suite.read_text())
    doc["seed"] = 99
    slow_suite.write_text(yaml.safe_dump(doc))
    code, err = _resume(slow_suite, tmp_path, capsys)
    assert code == 2 and "the suite changed since this run started" in err
    RunLock(run_dir).acquire().release()  # the refusal, in this process, let go of the run's lock


def test_a_doctored_run_json_cannot_make_the_report_write_elsewhere(tmp_path, capsys):
    from bench.cli import main

    run_dir = tmp_path / "results" / "x" / "r1"
    run_dir.mkdir(parents=True)
    (run_dir / "run.json").write_text(json.dumps({"suite": "../../outside", "run_id": "r1"}))
    (run_dir / "rows.jsonl").write_text("")
    code = main(["report", str(run_dir), "--reports-dir", str(tmp_path / "reports")])
    assert code == 2 and "is not a plain name" in capsys.readouterr().err
    assert not (tmp_path.parent / "outside").exists()


def test_a_second_writer_on_a_running_run_exits_2_naming_the_first_and_writes_nothing(tmp_path, slow_suite, capsys):
    """`--resume` while the run is still going used to append a second copy of its rows."""
    proc = _start(slow_suite, tmp_path)
    try:
        run_dir = _wait_for_rows(tmp_path, 1, proc)
        proc.send_signal(signal.SIGSTOP)  # frozen mid-run, lock held: the run cannot finish before the second writer tries
        code, err = _resume(slow_suite, tmp_path, capsys)
    finally:
        proc.kill()
        proc.wait()
    assert code == 2, err
    assert f"another process is writing this run (process {proc.pid} on " in err and "Traceback" not in err
    ids = [r["cell_id"] for r in read_rows(run_dir)]
    assert len(ids) == len(set(ids))  # only the first run's rows
    assert json.loads((run_dir / "run.json").read_text()).get("resumed_at") is None  # the second never touched it


def test_retry_failed_runs_failed_cells_again_and_their_new_rows_replace_the_old(tmp_path, tiny_suite, write_suite, monkeypatch):
    import bench.attacks as attacks
    from bench.cli import main
    from bench.runner import run_suite
    from bench.suite import load_suite

    real = attacks.build

    def flaky(spec, model, **kw):
        if spec.name == "pgd":
            raise RuntimeError("a flaky attack")
        return real(spec, model, **kw)

    suite = load_suite(write_suite(tiny_suite))  # (the loader builds each attack once to check its arguments)
    monkeypatch.setattr(attacks, "build", flaky)
    first = run_suite(suite, tmp_path / "results", tmp_path / "reports")
    assert first.counts == {"ok": 4, "failed": 2}
    monkeypatch.setattr(attacks, "build", real)
    assert run_suite(suite, tmp_path / "results", tmp_path / "reports", resume=first.run_dir).counts == {"ok": 4, "failed": 2}
    args = ["run", str(write_suite(tiny_suite)), "--retry-failed", "--no-progress",
            "--results-dir", str(tmp_path / "results"), "--reports-dir", str(tmp_path / "reports")]
    assert main(args) == 0  # the latest run, its failed cells again
    df = pd.read_parquet(first.run_dir / "results.parquet")
    assert len(df) == 6 and df["cell_id"].is_unique and (df["status"] == "ok").all()
    rows = read_rows(first.run_dir)
    assert len(rows) == 8  # the log keeps both lines of a retried cell …
    assert all(r["status"] == "ok" for r in {r["cell_id"]: r for r in rows}.values())  # … and the last one counts


def test_an_interrupted_retry_keeps_the_failed_rows_it_did_not_reach(tmp_path, tiny_suite, write_suite, monkeypatch):
    import bench.attacks as attacks
    from bench.failures import Interrupted
    from bench.runner import run_suite
    from bench.suite import load_suite

    suite = load_suite(write_suite(tiny_suite))
    monkeypatch.setattr(attacks, "build", lambda spec, model, **kw: (_ for _ in ()).throw(RuntimeError("every attack fails")))
    first = run_suite(suite, tmp_path / "results", tmp_path / "reports")
    assert first.counts == {"failed": 6}
    stop = iter([False, True])  # the retry stops before its second cell
    with pytest.raises(Interrupted):
        run_suite(suite, tmp_path / "results", tmp_path / "reports", resume=first.run_dir, retry_failed=True,
                  stop=lambda: next(stop, True))
    df = pd.read_parquet(first.run_dir / "results.parquet")
    assert len(df) == 6 and df["cell_id"].is_unique and (df["status"] == "failed").all()
