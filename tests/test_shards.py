"""Shards: a cell's images in whole attack batches. The numbers do not depend on the sharding (every batch is seeded
by its index in the data), each shard's outcomes land on disk before the next starts, and a resume runs only the
shards without them."""

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

from bench.cells import shard_plan
from bench.results import SHARDS_FILE, read_rows
from bench.runner import run_suite
from bench.suite import load_suite

ROOT = Path(__file__).resolve().parents[1]
BATCH = 4
ATTACKS = [  # one of each family: gradient with a random start, score-based, an ensemble, minimum-norm, the user's own
    {"name": "pgd", "type": "pgdl2", "eps": 1.0, "steps": 2, "alpha": 0.4, "random_start": True},  # the start moves the L2 norm
    {"name": "square", "type": "square", "eps": "12/255", "n_queries": 20},
    {"name": "aa", "type": "autoattack/custom", "eps": "12/255", "attacks": ["apgd-ce", "apgd-dlr"]},
    {"name": "deepfool", "type": "deepfool", "steps": 5},
    {"name": "mine", "type": "python", "fn": str(ROOT / "suites" / "attacks" / "margin_pgd.py") + ":margin_pgd",
     "eps": "12/255", "steps": 2},
]
IMAGES = 24


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def _suite(tmp_path: Path, shard_size: int | None, cascade: bool = False, attacks=ATTACKS, limit: int = IMAGES,
           factory: Path | None = None) -> Path:
    model = {"name": "lin", "factory": f"{factory}:build"} if factory else {"name": "cnn", "arch": "small_cnn", "num_classes": 10}
    doc = {"name": "sharded", "seed": 5, "data": {"source": "digits", "limit": limit, "image_size": 16},
           "models": [model], "attacks": attacks,
           "defenses": ["none", {"type": "gaussian_noise", "sigma": 0.02}], "batch_size": BATCH, "cascade": cascade,
           "unconstrained_check": False}
    if shard_size is not None:
        doc["shard_size"] = shard_size
    path = tmp_path / f"s{shard_size}-{cascade}.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def _predictions(run_dir: Path) -> pd.DataFrame:
    cols = ["cell_id", "image", "clean_pred", "robust_pred", "robust_all", "attacked", "reached", "distance"]
    return pd.read_parquet(run_dir / "predictions.parquet")[cols].sort_values(["cell_id", "image"]).reset_index(drop=True)


def test_a_shard_is_whole_batches_and_the_plan_covers_every_image_once():
    assert shard_plan(10, 4, 4) == [(0, 4), (4, 8), (8, 10)]
    assert shard_plan(10, 4, 5) == [(0, 8), (8, 10)]  # rounded up to whole batches
    assert shard_plan(10, 4, None) == [(0, 10)]
    assert shard_plan(0, 4, 4) == [(0, 0)]


def test_one_batch_per_shard_gives_the_per_image_outcomes_of_the_whole_cell(tmp_path, linear):
    """The quick form of the next test (make test): a gradient attack with a random start and a score-based one."""
    attacks = [ATTACKS[0], {**ATTACKS[1], "n_queries": 10}]
    runs = [run_suite(load_suite(_suite(tmp_path, size, attacks=attacks, factory=linear)), tmp_path / f"r{size}",
                      tmp_path / f"p{size}") for size in (BATCH, None)]
    assert all(r.complete for r in runs)
    sharded, whole = (_predictions(r.run_dir) for r in runs)
    assert whole["distance"].gt(0).any() and len(whole) == 4 * IMAGES
    pd.testing.assert_frame_equal(sharded, whole)


@pytest.mark.slow  # make test-slow (CI runs it): every family, three shard sizes, with and without a cascade
@pytest.mark.parametrize("cascade", [False, True], ids=["cells", "cascade"])
def test_the_numbers_do_not_depend_on_the_sharding(tmp_path, cascade, linear):
    """One batch per shard, three batches per shard and the whole cell at once: identical per-image outcomes, for
    every family of attack, with and without a cascade (whose later attacks see what the earlier ones left)."""
    runs = {}
    for size in (BATCH, 3 * BATCH, None):
        result = run_suite(load_suite(_suite(tmp_path, size, cascade, factory=linear)), tmp_path / f"r{size}", tmp_path / f"p{size}")
        assert result.complete and {r["status"] for r in result.rows} == {"ok"}, [r["reason"] for r in result.rows]
        runs[size] = result
    whole = _predictions(runs[None].run_dir)
    assert len(whole) and whole["cell_id"].nunique() == len(runs[None].rows)
    broken = whole[(whole["clean_pred"] != whole["robust_pred"])].groupby("cell_id").size()
    assert 0 < broken.min() and broken.max() < IMAGES  # every attack breaks some images and leaves others: a real test
    for size in (BATCH, 3 * BATCH):
        pd.testing.assert_frame_equal(_predictions(runs[size].run_dir), whole)
        shards = [json.loads(line) for line in (runs[size].run_dir / SHARDS_FILE).read_text().splitlines()]
        per_cell = -(-IMAGES // size)
        assert len(shards) == per_cell * len(runs[size].rows)  # every cell in its shards, each logged once
    table = {s: pd.read_parquet(r.run_dir / "results.parquet").set_index("cell_id") for s, r in runs.items()}
    for column in ("robust_acc", "clean_acc", "n_attacked", "distance_median", "flags", "forward_passes"):
        pd.testing.assert_series_equal(table[BATCH][column], table[None][column], check_names=False)


def test_dry_run_prints_the_shards_of_each_cell(tmp_path, capsys):
    from bench.cli import main

    assert main(["run", str(_suite(tmp_path, 8, attacks=ATTACKS[:1], limit=20)), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "3 shard(s) of 8 images" in out


def test_ctrl_c_stops_after_the_current_shard_and_resume_runs_only_the_rest(tmp_path):
    from bench.failures import Interrupted

    path = _suite(tmp_path, BATCH, attacks=ATTACKS[:1])
    suite = load_suite(path)
    shards_landed = []

    def stop() -> bool:  # asked between shards: stop once two shards of the first cell are on disk
        logged = tmp_path / "results"
        files = list(logged.glob(f"*/*/{SHARDS_FILE}"))
        shards_landed[:] = files[0].read_text().splitlines() if files else []
        return len(shards_landed) >= 2

    with pytest.raises(Interrupted):
        run_suite(suite, tmp_path / "results", tmp_path / "reports", stop=stop)
    (run_dir,) = (tmp_path / "results" / "sharded").iterdir()
    assert len((run_dir / SHARDS_FILE).read_text().splitlines()) == 2 and read_rows(run_dir) == []
    # the two cells share a crafting: measured shard by shard for both, so each has one of its six shards
    partial = json.loads((run_dir / "run.json").read_text())["partial_cells"]
    assert sorted(partial.values()) == ["1 of 6 shards"] * 2
    report = (tmp_path / "reports" / "sharded" / "latest.md").read_text()
    assert "Partial cells" in report and "(1 of 6 shards)" in report
    resumed = run_suite(suite, tmp_path / "results", tmp_path / "reports", resume=run_dir)
    assert resumed.complete
    keys = [(r["cell_id"], r["shard"]) for r in map(json.loads, (run_dir / SHARDS_FILE).read_text().splitlines())]
    assert len(keys) == len(set(keys)) == 6 * 2  # 24 images in 6 shards, 2 cells: none run twice
    (tmp_path / "fresh").mkdir()
    fresh = run_suite(load_suite(_suite(tmp_path / "fresh", None, attacks=ATTACKS[:1])), tmp_path / "fresh-r", tmp_path / "fresh-p")
    pd.testing.assert_frame_equal(_predictions(run_dir), _predictions(fresh.run_dir))


def test_kill_9_in_the_middle_of_a_cell_loses_no_shard_and_doubles_none(tmp_path):
    """A real process killed with SIGKILL once a few shards of the first cell are on disk; the resume runs the
    shards without outcomes only, and the cell's numbers are those of an uninterrupted run."""
    slow = [{"name": "pgd", "type": "pgd", "eps": "2/255", "steps": 40, "alpha": "1/255", "random_start": True}]
    path = _suite(tmp_path, BATCH, attacks=slow, limit=40)
    proc = subprocess.Popen([sys.executable, "-m", "bench", "run", str(path), "--no-progress"], cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline, log = time.monotonic() + 1800, None  # an event (shards on disk), not a guess of the speed
    while time.monotonic() < deadline:
        found = list((tmp_path / "results").glob(f"*/*/{SHARDS_FILE}"))
        if found and len(found[0].read_text().splitlines()) >= 3:
            log = found[0]
            break
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.02)
    assert log is not None, "no shard landed in time"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    run_dir = log.parent
    assert read_rows(run_dir) == [] or len(log.read_text().splitlines()) >= 10  # killed inside a cell
    from bench.cli import main

    assert main(["run", str(path), "--no-progress", "--resume", "--results-dir", str(tmp_path / "results"),
                 "--reports-dir", str(tmp_path / "reports")]) == 0
    keys = [(r["cell_id"], r["shard"]) for r in map(json.loads, log.read_text().splitlines())]
    assert len(keys) == len(set(keys)) == 10 * 2  # every shard of both cells exactly once
    fresh = run_suite(load_suite(path), tmp_path / "fresh-r", tmp_path / "fresh-p")
    pd.testing.assert_frame_equal(_predictions(run_dir), _predictions(fresh.run_dir))
    df = pd.read_parquet(run_dir / "results.parquet")
    assert len(df) == 2 and df["cell_id"].is_unique
