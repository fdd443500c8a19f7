"""`bench robustbench MODEL --data ROOT` (bench/robustbench_protocol.py): RobustBench's protocol, the first n test
images in the dataset's order, clean accuracy and the authors' AutoAttack at the leaderboard's ε, a leaderboard row."""

from __future__ import annotations

import pandas as pd
import pytest
import torch
import yaml

from bench import robustbench_protocol as rb
from tests.test_data_torchvision import _labels, write_cifar10
from tests.test_sources_robustbench import ENTRY, _state

pytest.importorskip("pyautoattack")


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture
def cli(tmp_path, monkeypatch, capsys):
    from bench.cli import main

    monkeypatch.chdir(tmp_path)

    def _cli(*args):
        code = main(list(args))
        out = capsys.readouterr()
        return code, out.out, [line for line in out.err.splitlines() if line.startswith("error")]

    return _cli


@pytest.fixture
def cifar(tmp_path):
    write_cifar10(tmp_path / "root")
    return tmp_path / "root"


def test_the_protocol_is_a_suite_of_the_first_n_images_in_file_order_and_the_authors_autoattack(tmp_path):
    doc = rb.suite(rb.Protocol("small_cnn", str(tmp_path), n=100))
    assert doc["data"] == {"source": "torchvision", "name": "CIFAR10", "root": str(tmp_path.resolve()), "split": "test",
                           "order": "file", "limit": 100}
    assert doc["attacks"] == [{"name": "autoattack", "type": "autoattack/standard", "eps": "8/255", "norm": "Linf"}]
    assert doc["defenses"] == ["none"] and doc["models"] == [{"name": "small_cnn", "arch": "small_cnn"}]
    assert rb.suite(rb.Protocol("m.py:build", str(tmp_path), threat_model="L2"))["attacks"][0]["eps"] == 0.5
    assert rb.suite(rb.Protocol("small_cnn", str(tmp_path)))["data"]["limit"] == 10_000  # the leaderboard's n


def test_an_own_model_gets_a_leaderboard_row_from_what_the_run_measured(cli, cifar, tmp_path):
    code, out, errors = cli("robustbench", "small_cnn", "--data", str(cifar), "--n", "12", "--no-progress")
    assert code == 0 and not errors
    board = pd.read_csv(tmp_path / "reports" / "robustbench" / "leaderboard.csv")
    (row,) = board.to_dict("records")
    assert (row["model"], row["dataset"], row["threat_model"], row["eps"], row["n"]) == ("small_cnn", "cifar10", "Linf", "8/255", 12)
    # the row is the run's own numbers: clean and 8-bit from the cell, float from its per-image record
    table = pd.read_parquet(tmp_path / row["run_dir"] / "results.parquet")
    pred = pd.read_parquet(tmp_path / row["run_dir"] / "predictions.parquet")
    assert pred["label"].tolist() == _labels()[:12].tolist()  # the first 12 images, in the files' order
    assert row["clean"] == table["clean_acc"].iloc[0] and row["autoattack_8bit"] == table["robust_acc"].iloc[0]
    assert row["autoattack_float"] == ((pred["clean_pred"] == pred["label"]) & ~pred["reached"]).mean()
    assert "| small_cnn | cifar10 | Linf |" in " ".join(out.split()).replace(" |", " |")
    suite_file = tmp_path / "reports" / "robustbench" / "small_cnn-cifar10-Linf.yaml"
    assert yaml.safe_load(suite_file.read_text())["attacks"][0]["type"] == "autoattack/standard"  # rerunnable with bench run
    code, _, _ = cli("robustbench", "small_cnn", "--data", str(cifar), "--n", "12", "--no-progress")
    assert code == 0 and len(pd.read_csv(tmp_path / "reports" / "robustbench" / "leaderboard.csv")) == 1  # replaced, not added


def test_a_zoo_entry_with_its_weights_in_model_dir_reproduces_its_row(cli, cifar, tmp_path):
    pytest.importorskip("robustbench.model_zoo")
    path = tmp_path / "models" / "cifar10" / "Linf" / f"{ENTRY}.pt"
    path.parent.mkdir(parents=True)
    torch.save({"state_dict": {f"module.{k}": v for k, v in _state().items()}}, path)
    code, _, errors = cli("robustbench", ENTRY, "--data", str(cifar), "--n", "8", "--model-dir", str(tmp_path / "models"),
                          "--no-progress")
    assert code == 0 and not errors
    doc = yaml.safe_load((tmp_path / "reports" / "robustbench" / f"{ENTRY}-cifar10-Linf.yaml").read_text())
    assert doc["models"] == [{"source": "robustbench", "name": ENTRY, "dataset": "cifar10", "threat_model": "Linf",
                              "model_dir": str((tmp_path / "models").resolve())}]
    (row,) = pd.read_csv(tmp_path / "reports" / "robustbench" / "leaderboard.csv").to_dict("records")
    assert row["model"] == ENTRY and row["n"] == 8 and 0 <= row["autoattack_float"] <= row["clean"]


def test_missing_zoo_weights_give_a_row_that_says_so_not_a_number(cli, cifar, tmp_path):
    pytest.importorskip("robustbench.model_zoo")
    code, _, _ = cli("robustbench", ENTRY, "--data", str(cifar), "--n", "4", "--model-dir", str(tmp_path / "none"),
                     "--no-progress")
    (row,) = pd.read_csv(tmp_path / "reports" / "robustbench" / "leaderboard.csv").to_dict("records")
    assert pd.isna(row["autoattack_float"]) and row["verdict"].startswith("skipped: ")
    assert f"{tmp_path / 'none' / 'cifar10' / 'Linf' / ENTRY}.pt" in row["verdict"]


@pytest.mark.parametrize("args, words", [
    (["--dataset", "imagenet"], "--dataset imagenet: not offered yet"),
    (["--dataset", "mnist"], "--dataset 'mnist' is not allowed; allowed: cifar10, cifar100"),
    (["--threat-model", "corruptions"], "--threat-model 'corruptions' has no AutoAttack leaderboard for cifar10; allowed: Linf, L2"),
    (["--n", "10001"], "--n must be between 1 and 10000"),
])
def test_options_the_protocol_cannot_run_with_are_one_line(cli, cifar, args, words):
    code, _, errors = cli("robustbench", "small_cnn", "--data", str(cifar), *args)
    assert code == 2 and len(errors) == 1 and words in errors[0]
