"""The run-folder lock: one writer at a time, the holder named, and gone when the holder dies."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from bench.runlock import RunLock, RunLocked

HOLD = "import sys, time; from bench.runlock import RunLock; RunLock(sys.argv[1]).acquire(); print('held', flush=True); time.sleep(120)"


def test_a_second_lock_on_a_run_folder_is_refused_and_names_the_holder(tmp_path):
    with RunLock(tmp_path):
        with pytest.raises(RunLocked, match=rf"another process is writing this run \(process {os.getpid()} on "):
            RunLock(tmp_path).acquire()
    RunLock(tmp_path).acquire().release()  # released at the end of the block


def test_the_lock_dies_with_the_process_that_holds_it(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(RunLocked, match=f"process {holder.pid} on"):
            RunLock(tmp_path).acquire()
    finally:
        holder.kill()  # SIGKILL: no cleanup code runs; the kernel drops the lock
        holder.wait()
    RunLock(tmp_path).acquire().release()
