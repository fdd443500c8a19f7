"""The runner: one row per cell, honest metrics, skips and failures that never stop the run."""

from __future__ import annotations

import math
import urllib.error

import pandas as pd
import pytest
import torch

from bench.models import CustomCNN
from bench.results import COLUMNS, VOLATILE_COLUMNS
from bench.runner import rates, run_suite
from bench.suite import load_suite



def test_rates_follow_their_definitions():
    labels = torch.tensor([0, 1, 1, 0])
    clean = torch.tensor([0, 1, 0, 0])  # three right
    robust = torch.tensor([1, 1, 0, 0])  # image 0 flipped to 1; image 2 was already wrong
    r = rates(labels, clean, robust, target=1)
    assert r["clean_acc"] == 0.75 and r["robust_acc"] == 0.5
    assert r["attack_success_rate"] == pytest.approx(1 / 3)
    assert r["targeted_success_rate"] == 0.5
    assert math.isnan(rates(labels, clean, robust, target=None)["targeted_success_rate"])
    assert math.isnan(rates(labels, 1 - labels, robust, None)["attack_success_rate"])  # none right to start with


@pytest.fixture
def run(tmp_path, write_suite, tiny_suite):
    def _run(doc=None):
        suite = load_suite(write_suite(doc or tiny_suite))
        result = run_suite(suite, tmp_path / "results", tmp_path / "reports")
        return suite, result, pd.read_parquet(result.run_dir / "results.parquet")

    return _run


def test_every_cell_gets_one_row_with_every_column(run):
    suite, result, df = run()
    assert result.complete and list(df.columns) == list(COLUMNS)
    assert df["cell_id"].tolist() == [c.cell_id for c in suite.cells()]
    assert (df["status"] == "ok").all() and (df["n"] == 6).all()
    assert (result.run_dir / "run.json").exists() and (result.run_dir / "rows.jsonl").exists()
    assert result.report_path.exists()


def test_measured_perturbation_never_exceeds_eps_plus_half_a_level(run):
    _, _, df = run()
    assert (df["linf_max"] <= df["eps"] + 1 / 510 + 1e-9).all()
    assert (df["linf_max"] > 0).all() and (df["l2_mean"] > 0).all()


def test_clean_accuracy_depends_on_the_defense_only(run):
    _, _, df = run()
    assert df.groupby("defense")["clean_acc"].nunique().eq(1).all()
    assert (df["attack_seconds"] > 0).all() and (df["attack_images_per_s"] > 0).all()


def test_same_suite_same_seed_gives_identical_results(run):
    _, _, a = run()
    _, _, b = run()
    cols = [c for c in COLUMNS if c not in VOLATILE_COLUMNS]
    pd.testing.assert_frame_equal(a[cols], b[cols])


def test_unavailable_weights_skip_their_cells_and_the_rest_still_runs(run, tiny_suite, monkeypatch):
    from torchvision.models import ResNet18_Weights

    def offline(self, *a, **k):
        raise urllib.error.URLError("offline")

    monkeypatch.setattr(ResNet18_Weights, "get_state_dict", offline)
    tiny_suite["models"].append({"name": "r18", "arch": "resnet18", "weights": "imagenet"})
    tiny_suite["data"]["image_size"] = 96
    _, result, df = run(tiny_suite)
    skipped = df[df["model"] == "r18"]
    assert (skipped["status"] == "skipped").all() and skipped["reason"].str.contains("put https://").all()
    assert skipped["robust_acc"].isna().all()
    assert (df[df["model"] == "cnn"]["status"] == "ok").all()
    assert "put https://download.pytorch.org/models/resnet18-f37072fd.pth" in result.report_path.read_text()


def test_non_finite_logits_fail_the_cell_with_a_reason(run, tiny_suite, tmp_path):
    state = CustomCNN(2, 96).state_dict()
    state["classifier.5.bias"] = torch.full((2,), float("nan"))
    torch.save(state, tmp_path / "nan.pt")
    tiny_suite["models"] = [{"name": "nan", "arch": "custom_cnn", "num_classes": 2, "checkpoint": str(tmp_path / "nan.pt")}]
    _, result, df = run(tiny_suite)
    assert (df["status"] == "failed").all() and df["reason"].str.contains("non-finite logits").all()
    assert (df["flags"] == "non-finite").all()


def test_bf16_runs_on_cpu_with_float32_perturbations(run, tiny_suite):
    tiny_suite["precisions"] = ["bf16"]
    tiny_suite["attacks"] = tiny_suite["attacks"][:1]
    _, _, df = run(tiny_suite)
    assert (df["status"] == "ok").all() and (df["precision"] == "bf16").all()
    assert (df["linf_max"] <= df["eps"] + 1 / 510 + 1e-9).all()


def test_cuda_cells_are_skipped_without_a_gpu(run, tiny_suite):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    tiny_suite["devices"] = ["cpu", "cuda"]
    _, _, df = run(tiny_suite)
    assert (df[df["device"] == "cuda"]["status"] == "skipped").all()
    assert (df[df["device"] == "cuda"]["reason"] == "CUDA is not available on this machine").all()
    assert (df[df["device"] == "cpu"]["status"] == "ok").all()


def test_steps_per_second_counts_images_times_gradient_steps(run):
    _, _, df = run()
    fgsm, pgd = df[df["attack"] == "fgsm"], df[df["attack"] == "pgd"]  # pgd runs 3 steps
    assert (fgsm["attack_steps_per_s"] == fgsm["attack_images_per_s"]).all()
    assert pgd["attack_steps_per_s"].tolist() == pytest.approx((3 * pgd["attack_images_per_s"]).tolist())


def test_warm_up_and_defense_cost_are_reported_separately(run):
    _, _, df = run()
    assert (df["warmup_seconds"] > 0).all()
    assert df[df["defense"] == "none"]["defense_images_per_s"].isna().all()
    assert (df[df["defense"] == "jpeg-q50"]["defense_images_per_s"] > 0).all()


def test_out_of_memory_halves_the_batch_and_records_the_size_used(run, monkeypatch):
    import bench.attacks as registry

    real_build = registry.build

    def build(spec, model):
        attack = real_build(spec, model)
        original = attack.forward

        def forward(images, labels):
            if len(images) > 2:
                raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
            return original(images, labels)

        attack.forward = forward
        return attack

    monkeypatch.setattr(registry, "build", build)
    _, _, df = run()
    assert (df["status"] == "ok").all()
    assert (df["batch_size"] == 2).all()  # asked for 4


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_cells_run_in_every_precision(run, tiny_suite):
    tiny_suite["devices"] = ["cuda"]
    tiny_suite["precisions"] = ["fp32", "bf16", "fp16"]
    _, _, df = run(tiny_suite)
    assert (df["status"] == "ok").all(), df[["cell_id", "reason"]]
    assert (df["linf_max"] <= df["eps"] + 1 / 510 + 1e-9).all()
    assert (df["peak_mem_mb"] > 0).all()


def test_every_rate_comes_with_its_wilson_interval(run):
    _, _, df = run()
    for rate in ("clean_acc", "robust_acc", "attack_success_rate"):
        ok = df[df[rate].notna()]
        assert (ok[f"{rate}_ci_low"] <= ok[rate]).all() and (ok[rate] <= ok[f"{rate}_ci_high"]).all()
    assert df["targeted_success_rate_ci_low"].isna().all()  # no targeted attack in this suite


def test_same_suite_with_adaptive_cells_is_reproducible(run, tiny_suite):
    tiny_suite["eval_mode"] = ["oblivious", "adaptive"]
    _, _, a = run(tiny_suite)
    _, _, b = run(tiny_suite)
    assert set(a["eval_mode"]) == {"oblivious", "adaptive-bpda", "adaptive-diffjpeg"}
    cols = [c for c in COLUMNS if c not in VOLATILE_COLUMNS]
    pd.testing.assert_frame_equal(a[cols], b[cols])


def test_a_model_can_bring_its_own_data(run, tiny_suite, tmp_path):
    from tests.conftest import write_images

    other = write_images(tmp_path / "other", {"a": 2, "b": 2, "c": 2}, size=100)
    tiny_suite["models"].append({"name": "cnn3", "arch": "custom_cnn", "num_classes": 3,
                                 "data": {"source": "imagefolder", "path": str(other), "image_size": 112}})
    tiny_suite["attacks"] = tiny_suite["attacks"][:1]
    _, result, df = run(tiny_suite)
    assert (df["status"] == "ok").all()
    assert set(df[df["model"] == "cnn3"]["dataset"]) == {f"imagefolder:{other.parent.name}/other"}
    assert set(df[df["model"] == "cnn"]["n"]) == {6} and set(df[df["model"] == "cnn3"]["n"]) == {6}
    assert "imagefolder:" in result.report_path.read_text()


def test_unreadable_and_truncated_images_are_counted_in_the_row_and_named_in_the_report(run, tiny_suite, image_folder):
    good = (image_folder / "real" / "000.png").read_bytes()
    (image_folder / "real" / "cut.png").write_bytes(good[: len(good) // 2])  # truncated
    (image_folder / "fake" / "junk.jpg").write_bytes(b"not an image at all")
    tiny_suite["attacks"] = tiny_suite["attacks"][:1]
    _, result, df = run(tiny_suite)
    assert (df["n_skipped"] == 2).all() and (df["n"] == 6).all() and (df["status"] == "ok").all()
    report = result.report_path.read_text()
    assert "2 unreadable image(s) were skipped" in report and "cut.png" in report and "junk.jpg" in report


def test_each_adversarial_batch_is_crafted_once(run, tiny_suite, monkeypatch):
    from bench.runner import Workspace

    crafted = []
    real = Workspace._craft

    def counting(self, cell, model, batch_size):
        crafted.append((cell.attack.name, cell.attack.eps, cell.eval_mode, cell.defense.label if cell.eval_mode != "oblivious" else None))
        return real(self, cell, model, batch_size)

    monkeypatch.setattr(Workspace, "_craft", counting)
    tiny_suite["eval_mode"] = ["oblivious", "adaptive"]
    tiny_suite["defenses"] = ["none", {"type": "jpeg", "quality": [50, 75]}]
    _, _, df = run(tiny_suite)
    assert len(crafted) == len(set(crafted))  # never the same crafting twice
    # 3 attack settings: one oblivious crafting each, plus 2 methods x 2 JPEG qualities adaptive
    assert len(crafted) == 3 * (1 + 2 * 2)


def test_attacks_leave_the_model_in_eval_mode_and_predictions_match_a_plain_forward(tmp_path, write_suite):
    """torchattacks calls model.train() after an attack on a model it found training; every wrapper
    must start in eval mode, or dropout (Lite0 has some) would leak into clean and robust accuracy."""
    from bench.data import load_dataset
    from bench.defenses import JPEG
    from bench.models import create_model
    from bench.runner import Workspace, load_datasets
    from bench.suite import ModelSpec

    doc = {"name": "evalmode", "seed": 0, "data": {"source": "samples", "limit": 8, "image_size": 64},
           "models": [{"name": "lite0", "arch": "efficientnet_lite0", "weights": "imagenet"}],
           "attacks": [{"name": "fgsm", "type": "fgsm", "eps": "2/255"}, {"name": "sgd", "type": "sgd", "eps": "2/255", "steps": 2}],
           "defenses": ["none", {"type": "jpeg", "quality": 50}], "batch_size": 4}
    suite = load_suite(write_suite(doc))
    ws = Workspace(suite, load_datasets(suite), "r", {"git_sha": "x", "torch": "x"})
    for cell in suite.cells():
        prep = ws.model(cell)
        ws.adversarial(cell, prep)
        assert not any(m.training for m in prep.model.modules())

    df = pd.read_parquet(run_suite(suite, tmp_path / "r", tmp_path / "p").run_dir / "results.parquet")
    model = create_model(ModelSpec("lite0", "efficientnet_lite0", "imagenet", num_classes=1000, input_size=64))
    ds = load_dataset(suite.data)
    x = ds.images.float() / 255
    with torch.no_grad():
        for label, defense in (("none", lambda t: t), ("jpeg-q50", JPEG(50))):
            expected = (model(defense(x)).argmax(1) == ds.labels).float().mean().item()
            assert set(df[df["defense"] == label]["clean_acc"]) == {expected}
