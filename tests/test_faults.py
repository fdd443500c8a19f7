"""Faults and hostile files around a run, written as the attack each check stops: links planted in a
run folder, a disk that fills mid-run, run folders damaged on disk. Each ends in one line and an exit
status a scheduler can act on, never a traceback, and a resume afterwards loses and doubles nothing."""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from bench import files
from bench.results import read_rows

CELLS = 4  # SUITE: fgsm at three ε and pgd at one, no defense


@pytest.fixture
def cli(tmp_path, monkeypatch, capsys):
    """`bench ARGS` in this process from tmp_path: (exit status, stdout, stderr lines)."""
    from bench.cli import main

    monkeypatch.chdir(tmp_path)

    def _cli(*args: str) -> tuple[int, str, list[str]]:
        code = main(list(args))
        out = capsys.readouterr()
        return code, out.out, [line for line in out.err.splitlines() if line.strip()]

    return _cli


def _suite_doc(images: Path) -> dict:
    """Four cells of a small random CNN on six 32 px images: a second or two in all."""
    return {"name": "tiny", "seed": 3, "data": {"source": "imagefolder", "path": str(images), "image_size": 32},
            "models": [{"name": "cnn", "arch": "small_cnn", "num_classes": 2}],
            "attacks": [{"name": "fgsm", "type": "fgsm", "eps": ["2/255", "4/255", "8/255"]},
                        {"name": "pgd", "type": "pgd", "eps": "8/255", "steps": 2, "alpha": "4/255"}],
            "defenses": ["none"], "devices": ["cpu"], "precisions": ["fp32"], "batch_size": 4}


@pytest.fixture(scope="module")
def template(tmp_path_factory) -> Path:
    """One finished run of the suite, made once for the module; tests work on copies of it."""
    from bench.cli import main
    from tests.conftest import write_images

    root = tmp_path_factory.mktemp("template")
    images = write_images(root / "imgs", {"fake": 3, "real": 3}, size=40)
    (root / "tiny.yaml").write_text(yaml.safe_dump(_suite_doc(images), sort_keys=False))
    assert main(["run", str(root / "tiny.yaml"), "--no-progress", "--results-dir", str(root / "results"),
                 "--reports-dir", str(root / "reports")]) == 0
    return root


@pytest.fixture
def suite(tmp_path, template) -> Path:
    shutil.copy(template / "tiny.yaml", tmp_path / "tiny.yaml")
    return tmp_path / "tiny.yaml"


@pytest.fixture
def finished(tmp_path, template, suite) -> Path:
    """A copy of the finished run, in tmp_path/results as `bench run` there would leave it."""
    (run,) = (template / "results" / "tiny").iterdir()
    shutil.copytree(run, tmp_path / "results" / "tiny" / run.name)
    return tmp_path / "results" / "tiny" / run.name


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file() and not p.is_symlink()}


def _errors(err: list[str]) -> list[str]:
    """The error lines a command printed (log lines aside), after checking it printed no traceback."""
    assert not any("Traceback" in line for line in err), "\n".join(err)
    return [line for line in err if line.startswith("error")]


# ---------------------------------------------------------------------------------------------
# Links


@pytest.mark.parametrize("name", [".lock", "rows.jsonl", "run.log", "run.json", "results.parquet"])
def test_a_symlink_planted_in_a_run_folder_stops_resume_with_one_line_and_its_target_untouched(cli, suite, finished,
                                                                                                tmp_path, name):
    target = tmp_path / "precious"
    target.write_bytes(b"do not touch\n")
    rows = read_rows(finished)[:3]  # a run half done, so the resume has cells to run
    (finished / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (finished / name).unlink()
    (finished / name).symlink_to(target)
    before = _snapshot(finished)
    code, _, err = cli("run", str(suite), "--no-progress", "--resume", str(finished))
    assert code == 2
    assert _errors(err) == [f"error: cannot resume: {finished / name}: is a symbolic link; bench never writes through a link "
                            "(remove it and run again)"]
    assert target.read_bytes() == b"do not touch\n"
    assert _snapshot(finished) == before  # nothing written


def test_a_symlink_where_the_report_goes_stops_a_new_run_before_it_starts(cli, suite, tmp_path):
    target = tmp_path / "precious"
    target.write_bytes(b"do not touch\n")
    (tmp_path / "reports" / "tiny").mkdir(parents=True)
    (tmp_path / "reports" / "tiny" / "latest.md").symlink_to(target)
    code, _, err = cli("run", str(suite), "--no-progress")
    assert code == 2 and len(_errors(err)) == 1 and "latest.md: is a symbolic link" in err[-1]
    assert target.read_bytes() == b"do not touch\n" and not (tmp_path / "results").exists()


# ---------------------------------------------------------------------------------------------
# A full disk


class FullDisk:
    """Every write through bench.files fails with ENOSPC once ``after`` rows have landed (the row
    that fills it is cut half-way, as a real full disk cuts it), until ``free()``."""

    def __init__(self, monkeypatch, after: int, where: str = "rows.jsonl"):
        self.rows, self.full, self.after, self.where = 0, False, after, where
        real = files._write

        def write(fd, data):
            if self.full:
                raise OSError(errno.ENOSPC, "No space left on device")
            if self.where in os.readlink(f"/proc/self/fd/{fd}"):  # the file, or its temp copy
                self.rows += 1
                if self.rows > self.after:
                    self.full = True
                    return real(fd, bytes(data)[: len(data) // 2])
            return real(fd, data)

        monkeypatch.setattr(files, "_write", write)

    def free(self) -> None:
        self.full, self.after = False, 10**9


needs_proc = pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="the fault injection reads /proc/self/fd")


@needs_proc
def test_a_disk_that_fills_mid_run_is_one_line_run_json_error_and_resume_finishes_every_cell_once(cli, suite, tmp_path,
                                                                                                   monkeypatch):
    disk = FullDisk(monkeypatch, after=2)
    code, _, err = cli("run", str(suite), "--no-progress")
    (run_dir,) = (tmp_path / "results" / "tiny").iterdir()
    relative = run_dir.relative_to(tmp_path)
    assert code == 1
    assert _errors(err) == [f"error: the run stopped: {relative / 'rows.jsonl'}: cannot write: No space left on device "
                            f"(ENOSPC); the rows that finished are kept in {relative} (--resume finishes it once the cause "
                            "is fixed)"]
    meta = json.loads((run_dir / "run.json").read_text())  # rewritten in place: no room for a new file
    assert meta["status"] == "error" and "No space left on device (ENOSPC)" in meta["error"]
    assert not [p for p in run_dir.iterdir() if p.name.endswith(".tmp")]
    assert len(read_rows(run_dir)) == 2  # the third row was cut half-way: not a row

    disk.free()
    code, out, err = cli("run", str(suite), "--no-progress", "--resume")
    assert code == 0, err
    df = pd.read_parquet(run_dir / "results.parquet")
    assert len(df) == CELLS and df["cell_id"].is_unique and set(df["status"]) == {"ok"}
    assert json.loads((run_dir / "run.json").read_text())["status"] == "complete"


@needs_proc
def test_a_disk_that_fills_while_the_report_is_written_never_leaves_run_json_complete(cli, suite, tmp_path, monkeypatch):
    FullDisk(monkeypatch, after=0, where="latest.md")
    code, _, err = cli("run", str(suite), "--no-progress")
    (run_dir,) = (tmp_path / "results" / "tiny").iterdir()
    assert code == 1 and len(_errors(err)) == 1 and "latest.md: cannot write: No space left on device (ENOSPC)" in err[-1]
    meta = json.loads((run_dir / "run.json").read_text())
    assert meta["status"] == "error" and "latest.md" in meta["error"]
    assert not [p for p in (tmp_path / "reports" / "tiny").iterdir() if p.name.endswith(".tmp")]


@pytest.fixture
def tiny_disk(tmp_path):
    """A tmpfs of 24 KiB (six pages) for the results: room for the lock, run.json and about four rows."""
    mount = tmp_path / "disk"
    mount.mkdir()
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=24k", "tmpfs", str(mount)], capture_output=True)
    if made.returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root): the injected full disk above covers the same code")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True)


@pytest.mark.slow  # make test-slow (CI runs it): keeps make test within its minutes
def test_a_real_full_disk_gives_one_line_and_resume_after_freeing_space_finishes(tmp_path, suite, tiny_disk):
    run = [sys.executable, "-m", "bench", "run", str(suite), "--no-progress", "--results-dir", str(tiny_disk / "results"),
           "--reports-dir", str(tmp_path / "reports")]
    first = subprocess.run(run, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    errors = [line for line in first.stderr.splitlines() if line.startswith("error")]
    assert first.returncode == 1 and len(errors) == 1 and "No space left on device (ENOSPC)" in errors[0], first.stderr
    assert "Traceback" not in first.stderr
    (run_dir,) = (tiny_disk / "results" / "tiny").iterdir()
    assert json.loads((run_dir / "run.json").read_text())["status"] == "error"
    subprocess.run(["mount", "-o", "remount,size=4m", str(tiny_disk)], check=True)
    again = subprocess.run(run + ["--resume"], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    df = pd.read_parquet(run_dir / "results.parquet")
    assert len(df) == CELLS and df["cell_id"].is_unique and set(df["status"]) == {"ok"}


# ---------------------------------------------------------------------------------------------
# Damaged run folders


DAMAGED = ["run.json", "results.parquet", "predictions.parquet", "worst_case.parquet", "worst_case_images.parquet"]


def _damage(run_dir: Path, name: str) -> None:
    data = (run_dir / name).read_bytes()
    (run_dir / name).write_bytes(data[: len(data) // 3])  # truncated, as a crash or a full disk leaves it


@pytest.mark.parametrize("name", DAMAGED)
def test_compare_on_a_damaged_baseline_exits_2_with_one_line_naming_the_file(cli, finished, tmp_path, name):
    baseline = tmp_path / "baseline"
    shutil.copytree(finished, baseline)
    _damage(baseline, name)
    code, _, err = cli("compare", str(baseline), str(finished))
    assert code == 2 and len(_errors(err)) == 1 and err[0].startswith(f"error: {baseline / name}: "), err


@pytest.mark.parametrize("name", DAMAGED)
def test_report_on_a_damaged_run_exits_2_with_one_line_naming_the_file(cli, finished, name):
    _damage(finished, name)
    code, _, err = cli("report", str(finished))
    assert code == 2 and len(_errors(err)) == 1 and err[0].startswith(f"error: {finished / name}: "), err


@pytest.mark.parametrize("name", DAMAGED)
def test_history_leaves_a_damaged_run_out_and_says_which_file(cli, suite, finished, tmp_path, name):
    damaged = finished.parent / "20000101T000000Z-0000"  # sorts first: the older run
    shutil.copytree(finished, damaged)
    _damage(damaged, name)
    code, out, err = cli("history", "tiny")
    assert code == 0 and "history of 1 run(s)" in out
    assert f"left out of the history: {(damaged / name).relative_to(tmp_path)}: " in " ".join(" ".join(err).split())


def test_resume_of_a_run_with_a_damaged_run_json_exits_2_with_one_line(cli, suite, finished):
    _damage(finished, "run.json")
    code, _, err = cli("run", str(suite), "--no-progress", "--resume", str(finished))
    assert code == 2 and _errors(err) == [f"error: cannot resume: {finished / 'run.json'}: is not valid JSON "
                                          f"({_json_error(finished / 'run.json')})"]


def _json_error(path: Path) -> str:
    try:
        json.loads(path.read_text())
    except ValueError as exc:
        return str(exc)
    raise AssertionError("the file was meant to be damaged")


def test_resume_skips_row_log_lines_that_are_not_rows(cli, suite, finished):
    rows = read_rows(finished)
    (finished / "rows.jsonl").write_text(json.dumps(rows[0]) + "\n5\n[1, 2]\n{\"no\": \"cell\"}\n\x00garbage\n")
    code, _, err = cli("run", str(suite), "--no-progress", "--resume", str(finished))
    assert code == 0, err
    df = pd.read_parquet(finished / "results.parquet")
    assert len(df) == CELLS and df["cell_id"].is_unique


def test_compare_still_exits_1_for_a_real_regression(cli, finished, tmp_path):
    worse = tmp_path / "worse"
    shutil.copytree(finished, worse)
    df = pd.read_parquet(worse / "results.parquet")
    df = df[df.index != 0]  # a cell lost: a regression
    df.to_parquet(worse / "results.parquet")
    code, _, err = cli("compare", str(finished), str(worse))
    assert code == 1, err


# ---------------------------------------------------------------------------------------------
# Damage of the wrong type: valid JSON and Parquet whose values are not what a run writes


def _json_edit(key, value):
    def doctor(run_dir: Path) -> str:
        meta = json.loads((run_dir / "run.json").read_text())
        meta[key] = value
        (run_dir / "run.json").write_text(json.dumps(meta))
        return "run.json"
    return doctor


def _table_edit(name, edit):
    def doctor(run_dir: Path) -> str:
        df = pd.read_parquet(run_dir / name)
        edit(df).to_parquet(run_dir / name)
        return name
    return doctor


TYPED = {
    "digest-number": _json_edit("suite_digest", 5),
    "environment-text": _json_edit("environment", "x"),
    "resolved-suite-text": _json_edit("resolved_suite", "x"),
    "wall-seconds-text": _json_edit("wall_seconds", "x"),
    "suite-number": _json_edit("suite", 5),
    "results-two-columns": _table_edit("results.parquet", lambda df: df[["cell_id", "status"]]),
    "results-eps-text": _table_edit("results.parquet", lambda df: df.assign(eps="8/255")),
    "results-model-number": _table_edit("results.parquet", lambda df: df.assign(model=3)),
    "worst-case-one-column": _table_edit("worst_case.parquet", lambda df: df.iloc[:, :1]),
    "worst-images-one-column": _table_edit("worst_case_images.parquet", lambda df: df.iloc[:, :1]),
}


@pytest.mark.parametrize("variant", list(TYPED))
def test_values_of_the_wrong_type_are_one_line_exit_2_for_report_compare_history_and_resume(cli, suite, finished, tmp_path,
                                                                                             variant):
    baseline = tmp_path / "baseline"
    shutil.copytree(finished, baseline)
    name = TYPED[variant](baseline)
    for args in (("compare", str(baseline), str(finished)), ("compare", str(finished), str(baseline)), ("report", str(baseline))):
        code, _, err = cli(*args)
        assert code == 2 and len(_errors(err)) == 1, (args, err)
    damaged = finished.parent / "20000101T000000Z-0000"
    shutil.copytree(baseline, damaged)
    code, out, err = cli("history", "tiny")
    _errors(err)  # no traceback
    assert code == 0 and "history of 1 run(s)" in out
    if name == "run.json":  # a resume reads run.json: refused, and the run left as it was
        before = _snapshot(damaged)
        code, _, err = cli("run", str(suite), "--no-progress", "--resume", str(damaged))
        assert code == 2 and len(_errors(err)) == 1 and str(damaged / "run.json") in err[-1]
        assert _snapshot(damaged) == before


def test_a_fifo_or_a_device_in_a_run_folder_is_refused_not_read(cli, finished, tmp_path):
    baseline = tmp_path / "baseline"
    shutil.copytree(finished, baseline)
    (baseline / "run.json").unlink()
    os.mkfifo(baseline / "run.json")  # reading it would wait for a writer for ever
    code, _, err = cli("compare", str(baseline), str(finished))
    assert code == 2 and _errors(err) == [f"error: {baseline / 'run.json'}: is not a regular file (a FIFO, a device or a "
                                          "folder): not read"]
    (baseline / "run.json").unlink()
    (baseline / "run.json").symlink_to("/dev/zero")  # reading it would never end
    code, _, err = cli("report", str(baseline))
    assert code == 2 and "is not a regular file" in _errors(err)[0]


def test_a_hard_link_planted_in_a_run_folder_stops_resume_and_its_other_name_is_untouched(cli, suite, finished, tmp_path):
    victim = tmp_path / "victim"
    victim.write_bytes(b"do not touch\n")
    (finished / ".lock").unlink()
    os.link(victim, finished / ".lock")
    code, _, err = cli("run", str(suite), "--no-progress", "--resume", str(finished))
    assert code == 2 and "has 2 hard links" in _errors(err)[0] and victim.read_bytes() == b"do not touch\n"


def test_a_dangling_link_where_the_reports_go_stops_a_new_run_before_any_cell(cli, suite, tmp_path):
    (tmp_path / "reports").mkdir()
    (tmp_path / "reports" / "tiny").symlink_to(tmp_path / "nowhere")
    code, _, err = cli("run", str(suite), "--no-progress")
    assert code == 2 and "reports/tiny: is a symbolic link" in _errors(err)[0] and not (tmp_path / "results").exists()


@needs_proc
def test_a_disk_full_before_the_first_run_json_leaves_no_run_and_does_not_advise_a_resume(cli, suite, tmp_path, monkeypatch):
    FullDisk(monkeypatch, after=0, where="run.json")
    code, _, err = cli("run", str(suite), "--no-progress")
    (line,) = _errors(err)
    assert code == 1 and "run.json: cannot write: No space left on device (ENOSPC)" in line
    assert "nothing was run or kept" in line and "--resume" not in line
    assert list((tmp_path / "results" / "tiny").iterdir()) == []  # no stub a resume or history would trip on
