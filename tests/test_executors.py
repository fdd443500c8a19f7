"""Executors: the Ray executor gives the local executor's table, loses nothing when a worker dies
or the run is stopped, and says how to install Ray when it is missing. One Ray instance (2 CPUs)
serves every test here; the suite's local table is computed once."""

from __future__ import annotations

import json
import logging
import re
import sys

import pandas as pd
import pytest
import yaml

from bench import executors
from bench.cli import main
from bench.results import COLUMNS, VOLATILE_COLUMNS, read_rows
from bench.failures import Interrupted
from bench.runner import run_suite
from bench.specs import ExecutorSpec
from bench.suite import load_suite
from tests.conftest import torch_threads

ray = pytest.importorskip("ray", reason="the ray extra is not installed (make install installs it)")

# Lite0 on the bundled photos, FGSM and PGD × 2 ε × none/JPEG, oblivious and adaptive (bpda, diff)
SUITE = {
    "name": "scale", "seed": 0, "data": {"source": "samples", "limit": 4},
    "models": [{"name": "lite0", "arch": "efficientnet_lite0", "weights": "imagenet", "input_size": 96}],
    "attacks": [{"name": "fgsm", "type": "fgsm", "eps": ["1/255", "4/255"]},
                {"name": "pgd", "type": "pgd", "eps": ["1/255", "4/255"], "steps": 2, "alpha": "1/255"}],
    "defenses": ["none", {"type": "jpeg", "quality": 50}],
    "eval_mode": ["oblivious", "adaptive"], "batch_size": 4, "unconstrained_check": False,
}
# what may differ between two executors: timings, when, and who ran it
IGNORED = set(VOLATILE_COLUMNS) | {"worker", "started_at"}


@pytest.fixture(scope="module")
def ray_session():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False, logging_level=logging.WARNING)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def suite_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("suite") / "scale.yaml"
    path.write_text(yaml.safe_dump(SUITE))
    return path


@pytest.fixture
def tiny_file(tmp_path, tiny_suite):
    """The custom-CNN suite of the runner tests (6 cells in 3 crafting groups): for the fault paths, where
    Lite0's compute would only add time."""
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(tiny_suite))
    return path


@pytest.fixture(scope="module")
def local_table(suite_file, tmp_path_factory):
    out = tmp_path_factory.mktemp("local")
    with torch_threads(1):  # as each Ray worker (1 CPU): float sums, and so perturbations, can depend on the thread count
        result = run_suite(load_suite(suite_file), out / "results", out / "reports")
    assert result.complete and result.counts == {"ok": 16}
    return _table(result.run_dir)


def _table(run_dir) -> pd.DataFrame:
    return pd.read_parquet(run_dir / "results.parquet")[[c for c in COLUMNS if c not in IGNORED]]


def _ray(**spec) -> executors.Executor:
    return executors.create(ExecutorSpec("ray", workers=2, **spec))


class KillOnFirstRow:
    """A progress hook that kills one worker actor the moment the first row lands."""

    def __init__(self):
        self.killed = None

    def start(self, cells, batches): pass
    def cell(self, cell): pass
    def batch(self, n): pass
    def stop(self): pass

    def cell_done(self):
        if self.killed is None:
            names = sorted(a["name"] for a in ray.util.list_named_actors(all_namespaces=True) if a["name"].startswith("bench-"))
            self.killed = names[0]
            ray.kill(ray.get_actor(names[0], namespace="bench"), no_restart=True)


def test_ray_gives_the_local_table(ray_session, suite_file, local_table, tmp_path):
    result = run_suite(load_suite(suite_file), tmp_path / "results", tmp_path / "reports", executor=_ray())
    assert result.complete and result.counts == {"ok": 16}
    pd.testing.assert_frame_equal(_table(result.run_dir), local_table)
    df = pd.read_parquet(result.run_dir / "results.parquet")
    assert df["worker"].str.contains(" node ").all()  # host:pid node <ray node id>
    assert df["worker"].nunique() == 2  # both workers took groups
    oblivious = df[df["eval_mode"] == "oblivious"].groupby(["attack", "eps"])["worker"].nunique()
    assert (oblivious == 1).all()  # a crafting group stays on one worker: crafted once


@pytest.mark.slow  # make test-slow (CI runs it): keeps make test within its minutes
def test_a_killed_worker_loses_nothing_and_no_cell_runs_twice(ray_session, suite_file, local_table, tmp_path):
    executor, hook = _ray(), KillOnFirstRow()
    result = run_suite(load_suite(suite_file), tmp_path / "results", tmp_path / "reports", executor=executor, progress=hook)
    assert hook.killed and result.complete and result.counts == {"ok": 16}
    ids = [r["cell_id"] for r in read_rows(result.run_dir)]
    assert len(ids) == 16 and len(set(ids)) == 16  # every cell exactly once, in rows.jsonl too
    pd.testing.assert_frame_equal(_table(result.run_dir), local_table)
    meta = executor.describe()
    assert meta["retries"] >= 1 and len(meta["lost_workers"]) == 1
    assert "killed by `ray.kill`" in meta["lost_workers"][0]["reason"]


CRASHING_NET = """
import os
import torch.nn as nn


class Crash(nn.Module):
    def __init__(self, num_classes):
        super().__init__()
        self.fc = nn.Linear(3, num_classes)

    def forward(self, x):
        if x.device.type != "meta" and x.shape[0] > 1:  # a real batch: the process dies, as an OOM kill would do it
            os._exit(3)
        return self.fc(x.mean((2, 3)))


def build(num_classes=2):
    return Crash(num_classes)
"""


@pytest.mark.slow  # make test-slow (CI runs it): keeps make test within its minutes
def test_a_group_whose_worker_keeps_dying_fails_after_the_last_retry_and_the_rest_runs(ray_session, tiny_suite, tmp_path, write_suite):
    (tmp_path / "crash.py").write_text(CRASHING_NET)
    tiny_suite["models"].append({"name": "crash", "factory": "crash.py:build", "num_classes": 2, "input_size": 96,
                                 "mean": [0.5] * 3, "std": [0.5] * 3})
    tiny_suite["attacks"], tiny_suite["defenses"] = [{"name": "fgsm", "type": "fgsm", "eps": "8/255"}], ["none"]
    executor = _ray(max_retries=1)
    result = run_suite(load_suite(write_suite(tiny_suite)), tmp_path / "results", tmp_path / "reports", executor=executor)
    df = pd.read_parquet(result.run_dir / "results.parquet").set_index("model")
    assert result.complete and len(df) == 2 and df.loc["cnn", "status"] == "ok"
    assert df.loc["crash", "status"] == "failed"
    # one retry (max_retries=1), so the group ran on two workers and both died
    assert re.fullmatch(r"lost its worker 2 time\(s\), the last .+ node [0-9a-f]{8}: ActorDiedError: .+", df.loc["crash", "reason"])
    meta = executor.describe()
    assert meta["retries"] == 1 and len(meta["lost_workers"]) == 2


def test_cuda_groups_on_a_cluster_without_gpus_are_skipped_saying_so(ray_session, tiny_suite, write_suite, tmp_path):
    tiny_suite["devices"] = ["cuda"]
    result = run_suite(load_suite(write_suite(tiny_suite)), tmp_path / "results", tmp_path / "reports", executor=_ray())
    df = pd.read_parquet(result.run_dir / "results.parquet")
    assert result.complete and len(df) == 6 and (df["status"] == "skipped").all()
    assert (df["reason"] == "the Ray cluster has no GPU (none of its nodes lists one)").all()


@pytest.mark.slow  # make test-slow (CI runs it): keeps make test within its minutes
def test_ctrl_c_keeps_the_rows_that_landed_and_resume_completes_the_run(ray_session, tiny_file, tmp_path, caplog):
    """(With more workers asked for than the 2 CPUs hold: the pool is cut to what fits, with a warning.)"""
    landed = []

    class StopAfterTwo(KillOnFirstRow):
        def cell_done(self):
            landed.append(1)

    suite = load_suite(tiny_file)
    with pytest.raises(Interrupted):
        run_suite(suite, tmp_path / "results", tmp_path / "reports", executor=executors.create(ExecutorSpec("ray", workers=4)),
                  progress=StopAfterTwo(), stop=lambda: len(landed) >= 2)
    assert "4 CPU workers of 1 CPU(s) each do not fit on the Ray cluster's nodes; starting 2" in caplog.text
    run_dir = next((tmp_path / "results" / "tiny").iterdir())
    kept = read_rows(run_dir)
    assert 2 <= len(kept) < 6 and len(kept) == len(landed)
    assert json.loads((run_dir / "run.json").read_text())["status"] == "interrupted"
    assert not ray.util.list_named_actors(all_namespaces=True)  # its workers went with it
    result = run_suite(suite, tmp_path / "results", tmp_path / "reports", resume=run_dir)  # resumed here, locally
    ids = [r["cell_id"] for r in read_rows(run_dir)]
    assert result.complete and result.counts == {"ok": 6} and len(ids) == len(set(ids)) == 6


def test_without_ray_the_ray_executor_says_how_to_install_it(monkeypatch, suite_file, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray now fails
    monkeypatch.delitem(sys.modules, "bench.executors.ray_actors", raising=False)
    assert main(["run", str(suite_file), "--executor", "ray"]) == 2
    err = capsys.readouterr().err
    assert "executor: the ray executor needs Ray" in err and "pip install -e '.[ray]'" in err and "Traceback" not in err


def test_ray_only_options_need_the_ray_executor(suite_file, capsys):
    assert main(["run", str(suite_file), "--workers", "2"]) == 2
    assert "--workers applies to --executor ray only" in capsys.readouterr().err
    assert main(["run", str(suite_file), "--max-retries", "1", "--dry-run"]) == 2  # checked at --dry-run too
    assert "--max-retries applies to --executor ray only" in capsys.readouterr().err


def test_a_worker_without_the_models_file_skips_its_cells_and_names_itself(ray_session, tmp_path, write_suite):
    from bench.executors.ray_actors import CellWorker
    from bench.cells import load_datasets

    net = tmp_path / "net.py"
    net.write_text("import torch.nn as nn\n\ndef build(num_classes=1000):\n"
                   "    return nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(3, num_classes))\n")
    doc = {"name": "gone", "data": {"source": "samples", "limit": 2, "image_size": 32},
           "models": [{"name": "net", "factory": f"{net}:build", "num_classes": 1000, "input_size": 32,
                       "mean": [0.5] * 3, "std": [0.5] * 3}],
           "attacks": [{"name": "fgsm", "type": "fgsm", "eps": "1/255"}]}
    suite = load_suite(write_suite(doc))
    net.unlink()  # present where the suite was loaded, not where the worker runs
    worker = CellWorker(suite, load_datasets(suite), "r", {"git_sha": "x", "torch": "x"}, threads=None)
    row = worker.run(suite.cells()[0])
    assert row["status"] == "skipped" and str(net) in row["reason"] and worker.name in row["reason"]
    assert "every Ray node needs" in row["reason"]


@pytest.mark.slow  # make test-slow (CI runs it): keeps make test within its minutes
def test_a_cascade_on_ray_gives_the_local_cascade_even_when_a_worker_dies(ray_session, tmp_path):
    """Each (model, device, precision) chain runs on one worker in order; a chain whose worker dies (after
    its first row landed) is taken over by another, which first replays the rows that landed."""
    from tests import masked_models as mm

    data = mm.write_images(tmp_path / "data")
    doc = {"name": "chain", "seed": 0, "data": {"source": "imagefolder", "path": str(data), "image_size": 16},
           # one chain, slow enough (20 ms a pass) that the worker running it dies midway
           "models": [mm.entry("robust", delay=0.02)], "cascade": True,
           "attacks": [{"name": "fgsm", "type": "fgsm", "eps": ["4/255", "8/255"]},
                       {"name": "pgd", "type": "pgd", "eps": ["4/255", "8/255"], "steps": 3, "alpha": "2/255",
                        "random_start": False}],
           "defenses": ["none"], "batch_size": 4}
    path = tmp_path / "chain.yaml"
    path.write_text(yaml.safe_dump(doc))
    suite = load_suite(path)
    with torch_threads(1):  # as each Ray worker
        local = run_suite(suite, tmp_path / "local", tmp_path / "reports")
    executor, hook = _ray(), KillOnFirstRow()
    remote = run_suite(suite, tmp_path / "ray", tmp_path / "reports", executor=executor, progress=hook)
    assert hook.killed and remote.complete and len(executor.describe()["lost_workers"]) == 1
    pd.testing.assert_frame_equal(_table(remote.run_dir), _table(local.run_dir))
    assert pd.read_parquet(remote.run_dir / "results.parquet")["n_attacked"].min() < 12  # the cascade did skip images


@pytest.mark.slow  # a Ray instance of its own started in a subprocess (make test-slow, CI)
def test_rays_own_log_lines_go_to_the_run_log_not_the_terminal(suite_file, tmp_path):
    import subprocess

    proc = subprocess.run([sys.executable, "-m", "bench", "run", str(suite_file), "--executor", "ray", "--workers", "1",
                           "--no-progress", "--results-dir", str(tmp_path / "r"), "--reports-dir", str(tmp_path / "p")],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    said = [line for line in (proc.stdout + proc.stderr).splitlines() if line.strip()]
    ours = ("INFO ", "WARNING ", "cells:", "table:", "report:")
    assert [line for line in said if not line.lstrip().startswith(ours)] == []  # no banner, no raylet, no token line
    assert next((tmp_path / "r").rglob("run.log")).is_file()


def test_what_ray_logs_while_the_executor_lives_goes_to_the_run_log(capsys):
    from bench.failures import _trace
    from bench.executors.ray_actors import _RayLog

    quiet = _RayLog()
    try:
        logging.getLogger("ray.somewhere").warning("before the run log exists")
        records: list[logging.LogRecord] = []
        handler = logging.Handler()
        handler.emit = records.append
        _trace.addHandler(handler)  # as run_suite attaches run.log
        try:
            quiet.flush()
            logging.getLogger("ray.somewhere").warning("during the run")
        finally:
            _trace.removeHandler(handler)
    finally:
        quiet.close()
    assert [r.getMessage() for r in records] == ["before the run log exists", "during the run"]
    assert "before the run log" not in capsys.readouterr().err
    assert logging.getLogger("ray").propagate == quiet.propagate  # put back as it was


def test_a_lost_workers_reason_is_whole_sentences():
    from bench.executors.ray_actors import _sentences

    text = "The actor died because its node ran out of memory. " * 20
    cut = _sentences(text, 600)
    assert len(cut) <= 600 and cut.endswith("memory.") and cut.count("The actor") == cut.count("memory.")
    assert _sentences("short.", 600) == "short."


SLOW_NOISE = """
import time

import torch


def slow_noise(model, images, labels, eps, generator, pause=0.5):
    time.sleep(pause)  # a shard that takes long enough for both workers to be up before the cell is done
    return (images + eps * (torch.rand(images.shape, generator=generator) * 2 - 1)).clamp(0, 1)
"""


def _whole_locally_and_in_shards_on_ray(tmp_path, doc: dict, cells: int):
    """The suite run whole in this process (one thread, as each Ray worker) and in shards of one batch on two Ray
    workers: (Ray's predictions, the local ones, Ray's shard log), predictions in (cell, image) order."""
    whole, spread = tmp_path / "whole.yaml", tmp_path / "spread.yaml"
    whole.write_text(yaml.safe_dump(doc))
    spread.write_text(yaml.safe_dump({**doc, "shard_size": doc["batch_size"]}))
    with torch_threads(1):
        local = run_suite(load_suite(whole), tmp_path / "local", tmp_path / "local-reports")
    result = run_suite(load_suite(spread), tmp_path / "results", tmp_path / "reports", executor=_ray())
    assert result.complete and result.counts == {"ok": cells}

    def predictions(run_dir):
        return pd.read_parquet(run_dir / "predictions.parquet").sort_values(["cell_id", "image"], ignore_index=True)

    shards = pd.DataFrame([json.loads(line) for line in (result.run_dir / "shards.jsonl").read_text().splitlines()])
    return predictions(result.run_dir), predictions(local.run_dir), shards


@pytest.mark.slow  # make test-slow (CI runs it): keeps make test within its minutes
def test_one_cell_runs_over_two_workers_with_the_numbers_of_one_piece(ray_session, tmp_path):
    """Without a cascade, a cell of many shards is spread over the workers (spans of shards, then one worker
    assembles the row): each shard on disk once, and every per-image outcome that of the cell run whole."""
    (tmp_path / "noise.py").write_text(SLOW_NOISE)
    doc = {"name": "spread", "seed": 3, "data": {"source": "digits", "limit": 24, "image_size": 16},
           "models": [{"name": "cnn", "arch": "small_cnn", "num_classes": 10}],
           # an L2 random start moves every image's distance: any seed that followed the shard would show
           "attacks": [{"name": "pgd", "type": "pgdl2", "eps": 1.0, "steps": 2, "alpha": 0.4, "random_start": True},
                       {"name": "square", "type": "square", "eps": "12/255", "n_queries": 10},
                       {"name": "noise", "type": "python", "fn": str(tmp_path / "noise.py") + ":slow_noise", "eps": "12/255"},
                       {"name": "aa", "type": "autoattack/custom", "eps": "12/255", "attacks": ["apgd-ce"]},
                       {"name": "deepfool", "type": "deepfool", "steps": 5}],  # every family: an ensemble, minimum-norm
           "defenses": ["none", {"type": "gaussian_noise", "sigma": 0.02}], "batch_size": 4, "unconstrained_check": False}
    mine, theirs, shards = _whole_locally_and_in_shards_on_ray(tmp_path, doc, cells=10)
    assert theirs["distance"].gt(0).any()
    pd.testing.assert_frame_equal(mine, theirs)
    assert len(shards) == len(shards[["cell_id", "shard"]].drop_duplicates()) == 10 * 6  # 10 cells × 6 shards, once each
    workers = shards[shards["cell_id"].str.contains("/noise@")].groupby("cell_id")["worker"].nunique()
    assert len(workers) == 2 and (workers == 2).all()  # the slow cells' shards ran on both workers


@pytest.mark.slow  # make test-slow (CI runs it)
def test_a_cascades_chain_runs_over_two_workers_shard_by_shard_with_the_numbers_of_one_process(ray_session, tmp_path, linear):
    """Each worker runs the chain's attacks in order on the shards of its span (a later attack starts on a shard
    once that shard's earlier attacks are done): per-image outcomes and attacked images as one local process."""
    (tmp_path / "noise.py").write_text(SLOW_NOISE)
    doc = {"name": "chain", "seed": 4, "data": {"source": "digits", "limit": 24, "image_size": 16},
           "models": [{"name": "lin", "factory": f"{linear}:build"}],
           # one norm (a cascade is per norm), ε rising: each attack skips what the ones before it broke
           "attacks": [{"name": "pgd", "type": "pgd", "eps": "8/255", "steps": 2, "alpha": "4/255", "random_start": True},
                       {"name": "noise", "type": "python", "fn": str(tmp_path / "noise.py") + ":slow_noise", "eps": "16/255"},
                       {"name": "pgd2", "type": "pgd", "eps": "24/255", "steps": 2, "alpha": "12/255", "random_start": True}],
           "batch_size": 4, "cascade": True, "unconstrained_check": False}
    mine, theirs, shards = _whole_locally_and_in_shards_on_ray(tmp_path, doc, cells=3)
    first = theirs[theirs["cell_id"].str.contains("/pgd@")]
    broke = (first["robust_pred"] != first["label"]) & (first["clean_pred"] == first["label"])
    assert broke.any()  # the first attack broke images, which the later ones must skip: a real chain
    later = theirs[theirs["cell_id"].str.contains("/noise@")]
    assert not later["attacked"].to_numpy()[broke.to_numpy()].any()
    pd.testing.assert_frame_equal(mine, theirs)
    assert shards["worker"].nunique() == 2 and len(shards) == 3 * 6
