"""End to end through the command line, as a user runs it."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from bench.results import COLUMNS


def bench(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """`bench ARGS` as a user types it: a new process."""
    return subprocess.run([sys.executable, "-m", "bench", *args], cwd=cwd, capture_output=True, text=True, timeout=300)


@pytest.fixture
def cli(tmp_path, monkeypatch, capsys):
    """`bench ARGS` from tmp_path, in this process (the same `main`, without a new process's seconds
    of imports): exit status, stdout and stderr as a CompletedProcess."""
    from bench.cli import main

    monkeypatch.chdir(tmp_path)

    def _cli(*args: str) -> subprocess.CompletedProcess:
        code = main(list(args))
        out = capsys.readouterr()
        return subprocess.CompletedProcess(list(args), code, out.out, out.err)

    return _cli


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
    # every rate is what the cell's own per-image predictions give (predictions.parquet)
    preds = pd.read_parquet(run_dir / "predictions.parquet")
    assert set(preds["cell_id"]) == set(df["cell_id"])
    for row in df.itertuples():
        p = preds[preds["cell_id"] == row.cell_id]
        assert len(p) == row.n == 6
        assert row.clean_acc == pytest.approx((p["clean_pred"] == p["label"]).mean())
        assert row.robust_acc == pytest.approx((p["robust_pred"] == p["label"]).mean())
        right = p["clean_pred"] == p["label"]
        if right.any():
            assert row.attack_success_rate == pytest.approx((p["robust_pred"] != p["label"])[right].mean())
    # the same model and defense give the same clean accuracy whatever the attack
    assert (df.groupby("defense")["clean_acc"].nunique() == 1).all()
    report = (tmp_path / "reports" / "tiny" / f"{run_dir.name}.md").read_text()
    latest = (tmp_path / "reports" / "tiny" / "latest.md").read_text()
    # latest.md is the same report, its plots copied under stable names (a committed latest report keeps them)
    assert latest == report.replace(f"({run_dir.name}-", "(latest-") and "(latest-robust.png)" in latest
    assert (tmp_path / "reports" / "tiny" / "latest-robust.png").read_bytes() == (
        tmp_path / "reports" / "tiny" / f"{run_dir.name}-robust.png").read_bytes()
    for section in ("## Clean accuracy", "## Robust accuracy", "## Attack success rate", "## Perturbation and cost", "## Environment"):
        assert section in report
    robust = report.split("## Robust accuracy")[1].split("\n## ")[0]
    assert re.search(r"\| fgsm +\| none +\| oblivious +\| [0-9.]+ % \[", robust), robust  # a row per attack, defense and mode
    assert (tmp_path / "reports" / "tiny" / f"{run_dir.name}-robust.png").stat().st_size > 1000

    # the report can be rebuilt from the run folder alone
    (tmp_path / "reports" / "tiny" / "latest.md").unlink()
    proc = bench("report", str(run_dir), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "reports" / "tiny" / "latest.md").read_text() == latest


def test_dry_run_prints_the_grid_and_writes_nothing(tmp_path, suite_file, cli):
    proc = cli("run", str(suite_file), "--dry-run")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("suite tiny: 6 cells")
    assert len(proc.stdout.strip().splitlines()) == 7
    assert not (tmp_path / "results").exists()


def test_bad_input_exits_2_with_one_message_and_writes_nothing(tmp_path, tiny_suite, cli):
    tiny_suite["attacks"][1]["eps"] = 2
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(tiny_suite))
    proc = cli("run", str(path))
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    (line,) = proc.stderr.strip().splitlines()
    assert re.fullmatch(rf"error: {re.escape(str(path))}:\d+: attacks\[1\]\.eps: must be in \(0, 1\] for an L-inf attack \(pixel space, images in \[0,1\]\), got 2", line), line
    assert not (tmp_path / "results").exists() and not (tmp_path / "reports").exists()


def test_missing_suite_file_exits_2(tmp_path, cli):
    proc = cli("run", "nope.yaml")
    assert proc.returncode == 2 and "suite file not found" in proc.stderr and "Traceback" not in proc.stderr


def test_report_of_a_folder_that_is_not_a_run_exits_2(tmp_path, cli):
    proc = cli("report", str(tmp_path))
    assert proc.returncode == 2 and "not a run folder" in proc.stderr


def test_custom_cnn_too_small_for_its_input_is_exit_2_at_dry_run(tmp_path, tiny_suite, cli):
    tiny_suite["data"]["image_size"] = 64
    path = tmp_path / "small.yaml"
    path.write_text(yaml.safe_dump(tiny_suite, sort_keys=False))
    proc = cli("run", str(path), "--dry-run")
    assert proc.returncode == 2
    assert re.fullmatch(rf"error: {re.escape(str(path))}:\d+: data\.image_size: model 'cnn' \(custom_cnn\) at 64 px: "
                        r"a 1×3×64×64 probe batch fails: ValueError: input_size 64 is too small for custom_cnn.*\n", proc.stderr)
    assert proc.stdout == "" and not (tmp_path / "results").exists()


def test_a_broken_attack_fails_its_cell_and_every_other_cell_runs(tmp_path, tiny_suite, monkeypatch, capsys):
    """The issue's bar: pgdl2, deepfool, cw, fgsm and one attack made to raise: one row per cell,
    the broken one failed with its reason, exit 1, the rest ok, no traceback on the terminal."""
    import bench.attacks as registry
    from bench.cli import main

    real_build = registry.build

    def build(spec, model, **kw):
        attack = real_build(spec, model, **kw)
        if spec.name == "broken":
            def forward(images, labels):
                raise RuntimeError("boom inside the attack")
            attack.forward = forward
        return attack

    monkeypatch.setattr(registry, "build", build)
    tiny_suite["attacks"] = [
        {"name": "pgdl2", "type": "pgdl2", "eps": 0.5, "steps": 5},
        {"name": "deepfool", "type": "deepfool", "steps": 3},
        {"name": "cw", "type": "cw", "steps": 3},
        {"name": "fgsm", "type": "fgsm", "eps": "2/255"},
        {"name": "broken", "type": "fgsm", "eps": "2/255"},
    ]
    tiny_suite["defenses"] = ["none"]
    path = tmp_path / "mixed.yaml"
    path.write_text(yaml.safe_dump(tiny_suite, sort_keys=False))
    monkeypatch.chdir(tmp_path)
    assert main(["run", str(path), "--no-progress"]) == 1
    out, err = capsys.readouterr()
    assert "cells: 4 ok, 0 skipped, 1 failed" in out and "Traceback" not in err
    (run_dir,) = (tmp_path / "results" / "tiny").iterdir()
    df = pd.read_parquet(run_dir / "results.parquet")
    assert sorted(df["attack"]) == sorted(a["name"] for a in tiny_suite["attacks"]) and df["cell_id"].is_unique
    assert df.set_index("attack")["status"].to_dict() == {"pgdl2": "ok", "deepfool": "ok", "cw": "ok", "fgsm": "ok", "broken": "failed"}
    assert df.set_index("attack").loc["broken", "reason"] == "RuntimeError: boom inside the attack"
    assert df.set_index("attack")["norm"].to_dict() == {"pgdl2": "L2", "deepfool": "none", "cw": "none", "fgsm": "Linf", "broken": "Linf"}
    assert "RuntimeError: boom inside the attack" in (run_dir / "run.log").read_text()


@pytest.mark.parametrize("args,message", [
    (["digits_cnn", "--adversarial", "pgd"], "--adversarial needs --train-eps (e.g. 0.1 or 8/255)"),
    (["digits_cnn", "--train-eps", "0.1"], "--train-eps only applies with --adversarial pgd or trades"),
    (["digits_cnn", "--adversarial", "pgd", "--train-eps", "a/b"], "--train-eps must be a number or a fraction like 8/255, got 'a/b'"),
    (["digits_cnn", "--adversarial", "pgd", "--train-eps", "3"], "--train-eps must be in (0, 1]"),
    (["digits_cnn", "--data", "faces-folder"], "recipe 'digits_cnn' trains on digits data; --data 'faces-folder' is not that"),
    (["custom_cnn"], "--data is required for the faces recipes: a folder made by `bench data faces`"),
    (["custom_cnn", "--data", "digits"], "recipe 'custom_cnn' trains on faces data; --data 'digits' is not that"),
    (["vgg"], "unknown recipe 'vgg'; allowed: custom_cnn, resnet18_frozen, resnet18_finetune, digits_cnn, all"),
    (["digits_cnn", "--adversarial", "pgd", "--train-eps", "1e400"], "--train-eps must be a number or a fraction like 8/255"),
    (["digits_cnn", "--image-size", "4"], "--image-size must be at least 8 pixels, got 4"),
    (["digits_cnn", "--trades-beta", "3"], "--trades-beta only applies with --adversarial trades"),
    (["digits_cnn", "--adversarial", "trades", "--train-eps", "0.1", "--trades-beta", "nan"], "--trades-beta must be positive"),
])
def test_train_rejects_bad_options_before_any_compute(cli, tmp_path, args, message):
    proc = cli("train", *args, "--out", str(tmp_path / "models"))
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr
    assert not (tmp_path / "models").exists()


def test_train_digits_writes_the_adversarial_checkpoint_under_its_method(cli, tmp_path):
    proc = cli("train", "digits_cnn", "--adversarial", "trades", "--train-eps", "0.1", "--train-steps", "1", "--epochs", "2",
               "--image-size", "8", "--robust-eps", "0.05", "--out", "m")
    assert proc.returncode == 0, proc.stderr
    assert "digits_cnn-trades: test accuracy" in proc.stdout and "under PGD at ε 0.05 " in proc.stdout
    card = json.loads((tmp_path / "m" / "digits_cnn-trades.json").read_text())
    # the recipe's warm-up (5 epochs) shortened so that the last of the 2 epochs trains at the full ε
    assert card["adversarial"]["method"] == "trades" and card["adversarial"]["eps_warmup"] == 1
    assert card["robust_test"]["eps"] == 0.05  # --robust-eps wins over the training ε
    assert card["input_size"] == 8 and card["epochs"] == 2 and card["batch_size"] == 64


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="needs a machine without a GPU, where cuda cells skip")
def test_a_run_where_every_cell_is_skipped_exits_3_and_require_all_makes_any_skip_exit_3(tmp_path, tiny_suite, cli):
    tiny_suite["attacks"], tiny_suite["defenses"] = tiny_suite["attacks"][:1], ["none"]
    tiny_suite["devices"] = ["cuda"]  # no GPU here: every cell is skipped, nothing is measured
    (tmp_path / "gpu.yaml").write_text(yaml.safe_dump(tiny_suite))
    out = cli("run", "gpu.yaml", "--no-progress")
    assert out.returncode == 3 and "every cell skipped" in out.stderr
    tiny_suite["devices"] = ["cpu", "cuda"]  # some cells measured, some skipped: fine, unless every cell is required
    (tmp_path / "mixed.yaml").write_text(yaml.safe_dump(tiny_suite))
    assert cli("run", "mixed.yaml", "--no-progress").returncode == 0
    out = cli("run", "mixed.yaml", "--no-progress", "--require-all")
    assert out.returncode == 3 and "2 cell(s) skipped" in out.stderr
