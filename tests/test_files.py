"""How bench writes files: never through a link, atomically with temp names of its own, one line on failure."""

from __future__ import annotations

import errno
import logging
import os
import subprocess
import sys

import pytest

from bench import files


@pytest.fixture
def planted(tmp_path):
    """A file outside the folder bench writes, and what it holds."""
    target = tmp_path / "precious.txt"
    target.write_bytes(b"precious\n")
    return target


@pytest.mark.parametrize("write", [
    lambda p: files.write_atomic(p, b"overwritten"),
    lambda p: files.AppendFile(p).append(b"appended"),
    lambda p: files.open_fd(p, os.O_RDWR | os.O_CREAT),
    lambda p: files.LogFile(p),
], ids=["atomic", "append", "open", "log"])
def test_a_symlink_where_bench_writes_is_refused_and_its_target_left_byte_identical(tmp_path, planted, write):
    (tmp_path / "out").mkdir()
    link = tmp_path / "out" / "file"
    link.symlink_to(planted)
    with pytest.raises(files.LinkError, match=r"out/file: is a symbolic link; bench never writes through a link") as info:
        write(link)
    assert planted.read_bytes() == b"precious\n"
    assert len(str(info.value).splitlines()) == 1
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["file"]  # no temp file left either


def test_a_fifo_where_bench_writes_is_refused_without_blocking(tmp_path):
    fifo = tmp_path / "rows.jsonl"
    os.mkfifo(fifo)
    for write in (lambda: files.AppendFile(fifo), lambda: files.write_atomic(fifo, b"x")):
        with pytest.raises(files.LinkError, match="is not a regular file \\(a FIFO\\)"):
            write()


def test_an_atomic_write_replaces_the_file_and_leaves_no_temp_file(tmp_path):
    path = tmp_path / "report.md"
    path.write_text("old")
    files.write_atomic(path, b"new")
    assert path.read_text() == "new" and [p.name for p in tmp_path.iterdir()] == ["report.md"]


def test_a_failed_write_is_one_line_naming_the_file_and_errno_and_removes_its_temp_file(tmp_path, monkeypatch):
    def full(fd, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(files, "_write", full)
    with pytest.raises(files.WriteError) as info:
        files.write_atomic(tmp_path / "results.parquet", b"x" * 100)
    assert str(info.value) == f"{tmp_path / 'results.parquet'}: cannot write: No space left on device (ENOSPC)"
    assert list(tmp_path.iterdir()) == []


def test_a_writer_that_raises_leaves_the_old_file_and_no_temp_file(tmp_path):
    path = tmp_path / "table.parquet"
    path.write_bytes(b"old")

    def broken(f):
        f.write(b"half")
        raise RuntimeError("the writer broke")

    with pytest.raises(RuntimeError, match="the writer broke"):
        files.write_with(path, broken)
    assert path.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["table.parquet"]


def test_two_processes_writing_one_report_never_collide(tmp_path):
    """Each write has a temp name of its own (pid + random): 2 × 80 writes of one file, none fails."""
    script = ("import sys; from pathlib import Path; from bench import files\n"
              "for i in range(80): files.write_atomic(Path(sys.argv[1]), (sys.argv[2] * 5000).encode())\n")
    target = tmp_path / "latest.md"
    procs = [subprocess.Popen([sys.executable, "-c", script, str(target), tag], stderr=subprocess.PIPE, text=True)
             for tag in "ab"]
    errors = [p.communicate(timeout=120)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], errors
    assert target.read_text() in ("a" * 5000, "b" * 5000)
    assert [p.name for p in tmp_path.iterdir()] == ["latest.md"]


def test_appends_are_unbuffered_so_a_failed_append_leaves_nothing_for_close_to_fail_on(tmp_path, monkeypatch):
    log = files.AppendFile(tmp_path / "rows.jsonl")
    log.append(b"one\n")
    monkeypatch.setattr(files, "_write", lambda fd, data: (_ for _ in ()).throw(OSError(errno.ENOSPC, "No space left on device")))
    with pytest.raises(files.WriteError, match="rows.jsonl: cannot write: No space left on device"):
        log.append(b"two\n")
    log.close()  # never raises
    assert (tmp_path / "rows.jsonl").read_bytes() == b"one\n"


def test_a_log_file_that_cannot_be_written_drops_records_silently(tmp_path, monkeypatch, capsys):
    handler = files.LogFile(tmp_path / "run.log")
    logger = logging.getLogger("bench.test_files")
    logger.addHandler(handler)
    try:
        monkeypatch.setattr(files, "_write", lambda fd, data: (_ for _ in ()).throw(OSError(errno.ENOSPC, "full")))
        logger.error("a record that cannot land")
    finally:
        logger.removeHandler(handler)
        handler.close()
    assert handler.failed and "Logging error" not in capsys.readouterr().err


def test_in_place_overwrite_fits_the_reserve_and_refuses_what_does_not(tmp_path):
    path = tmp_path / "run.json"
    path.write_text('{"status": "running"}' + " " * 64)
    files.overwrite_in_place(path, b'{"status": "error"}')
    assert path.read_bytes() == b'{"status": "error"}'
    with pytest.raises(files.WriteError, match="does not fit in place"):
        files.overwrite_in_place(path, b"x" * 1000)


@pytest.mark.parametrize("write", [
    lambda p: files.write_atomic(p, b"overwritten"),
    lambda p: files.AppendFile(p).append(b"appended"),
    lambda p: files.open_fd(p, os.O_RDWR | os.O_CREAT),
    lambda p: files.overwrite_in_place(p, b"x"),
], ids=["atomic", "append", "open", "in-place"])
def test_a_hard_link_where_bench_writes_is_refused_and_its_other_name_left_byte_identical(tmp_path, planted, write):
    (tmp_path / "out").mkdir()
    link = tmp_path / "out" / "rows.jsonl"
    os.link(planted, link)
    with pytest.raises(files.LinkError, match=r"rows.jsonl: has 2 hard links"):
        write(link)
    assert planted.read_bytes() == b"precious\n"
