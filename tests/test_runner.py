"""The runner: one row per cell, honest metrics, skips and failures that never stop the run."""

from __future__ import annotations

import contextlib
import math
import urllib.error

import pandas as pd
import pytest
import torch

from bench.measure import rates
from bench.models import CustomCNN
from bench.results import COLUMNS, VOLATILE_COLUMNS
from bench.runner import run_suite
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


@pytest.mark.slow  # make test-slow (CI runs it): keeps make test within its minutes
def test_attacks_that_seed_themselves_from_the_clock_still_rerun_to_the_bit(run, tmp_path):
    """torchattacks' AutoAttack and Square draw their seed from time.time() when none is given; the
    harness gives them the crafting's seed, so two runs (seconds apart) give the same table."""
    from tests import masked_models as mm

    doc = {"name": "clock", "seed": 0,
           "data": {"source": "imagefolder", "path": str(mm.write_images(tmp_path / "data")), "image_size": 16},
           "models": [{**mm.entry("robust"), "kwargs": {"kind": "robust", "classes": 10}}], "batch_size": 12,
           "attacks": [{"name": "aa", "type": "autoattack", "eps": "8/255"},
                       {"name": "square", "type": "square", "eps": "8/255", "n_queries": 200}]}
    _, _, a = run(doc)
    _, _, b = run(doc)
    cols = [c for c in COLUMNS if c not in VOLATILE_COLUMNS]
    assert (a["status"] == "ok").all(), a["reason"].tolist()
    pd.testing.assert_frame_equal(a[cols], b[cols])


def test_unavailable_weights_skip_their_cells_and_the_rest_still_runs(run, tiny_suite, monkeypatch, tmp_path):
    import torch

    def offline(*a, **k):
        raise urllib.error.URLError("offline")

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))  # an empty hub cache, whatever this machine holds
    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    tiny_suite["models"].append({"name": "r18", "arch": "resnet18", "weights": "imagenet"})
    tiny_suite["data"]["image_size"] = 96
    _, result, df = run(tiny_suite)
    skipped = df[df["model"] == "r18"]
    assert (skipped["status"] == "skipped").all() and skipped["reason"].str.contains("put https://").all()
    assert skipped["robust_acc"].isna().all() and skipped["weights"].isna().all()  # nothing was loaded
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

    def build(spec, model, **kw):
        attack = real_build(spec, model, **kw)
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


@pytest.mark.slow  # make test-slow (CI runs it): keeps make test within its minutes
def test_same_suite_with_adaptive_cells_is_reproducible(run, tiny_suite):
    tiny_suite["eval_mode"] = ["oblivious", "adaptive"]
    _, _, a = run(tiny_suite)
    _, _, b = run(tiny_suite)
    assert set(a["eval_mode"]) == {"oblivious", "adaptive-bpda", "adaptive-diff"}
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
    import bench.cells as cells

    crafted = []
    real = cells.craft

    def counting(ws, cell, model, batch_size, lo, hi):
        crafted.append((cell.attack.name, cell.attack.eps, cell.eval_mode, cell.defense.label if cell.eval_mode != "oblivious" else None))
        return real(ws, cell, model, batch_size, lo, hi)

    monkeypatch.setattr(cells, "craft", counting)
    tiny_suite["eval_mode"] = ["oblivious", "adaptive"]
    tiny_suite["defenses"] = ["none", {"type": "jpeg", "quality": [50, 75]}]
    _, _, df = run(tiny_suite)
    assert len(crafted) == len(set(crafted))  # never the same crafting twice
    # 3 attack settings: one oblivious crafting each, plus 2 methods x 2 JPEG qualities adaptive
    assert len(crafted) == 3 * (1 + 2 * 2)


def test_attacks_leave_the_model_in_eval_mode_and_predictions_match_a_plain_forward(tmp_path, write_suite):
    """torchattacks calls model.train() after an attack on a model it found training; every wrapper
    must start in eval mode, or dropout (Lite0 has some) would leak into clean and robust accuracy."""
    from bench.cells import Workspace, load_datasets
    from bench.data import load_dataset
    from bench.defenses import JPEG
    from bench.sources import create_model
    from bench.suite import ModelSpec

    doc = {"name": "evalmode", "seed": 0, "data": {"source": "samples", "limit": 8, "image_size": 64},
           "models": [{"name": "lite0", "arch": "efficientnet_lite0", "weights": "imagenet"}],
           "attacks": [{"name": "fgsm", "type": "fgsm", "eps": "2/255"}, {"name": "sgd", "type": "sgd", "eps": "2/255", "steps": 2}],
           "defenses": ["none", {"type": "jpeg", "quality": 50}], "batch_size": 4}
    suite = load_suite(write_suite(doc))
    ws = Workspace(suite, load_datasets(suite), "r", {"git_sha": "x", "torch": "x"})
    for cell in suite.cells():
        prep = ws.model(cell)
        ws.adversarial(cell, prep, *ws.shards(cell)[0])
        assert not any(m.training for m in prep.model.modules())

    df = pd.read_parquet(run_suite(suite, tmp_path / "r", tmp_path / "p").run_dir / "results.parquet")
    model = create_model(ModelSpec("lite0", "efficientnet_lite0", "imagenet", num_classes=1000, input_size=64))
    ds = load_dataset(suite.data)
    x = ds.images.float() / 255
    with torch.no_grad():
        for label, defense in (("none", lambda t: t), ("jpeg-q50", JPEG(50))):
            expected = (model(defense(x)).argmax(1) == ds.labels).float().mean().item()
            assert set(df[df["defense"] == label]["clean_acc"]) == {expected}


# ---------------------------------------------------------------------------------------------
# One cell fails alone


def _raising_build(monkeypatch, attack_name: str, exc: Exception):
    """Make the attack named ``attack_name`` raise ``exc`` from its forward pass (its own error)."""
    import bench.attacks as registry

    real_build = registry.build

    def build(spec, model, **kw):
        attack = real_build(spec, model, **kw)
        if spec.name == attack_name:
            def forward(images, labels):
                raise exc
            attack.forward = forward
        return attack

    monkeypatch.setattr(registry, "build", build)


def test_a_foreign_exception_fails_its_cells_with_type_and_message_and_the_run_goes_on(run, tiny_suite, monkeypatch):
    _raising_build(monkeypatch, "pgd", ValueError("the attack's own bug"))
    _, result, df = run(tiny_suite)
    assert result.complete
    pgd, rest = df[df["attack"] == "pgd"], df[df["attack"] != "pgd"]
    assert (pgd["status"] == "failed").all() and len(pgd) == 2
    assert (pgd["reason"] == "ValueError: the attack's own bug").all()
    assert (rest["status"] == "ok").all()
    log = (result.run_dir / "run.log").read_text()
    assert "Traceback" in log and "ValueError: the attack's own bug" in log


def test_an_exception_while_preparing_a_model_fails_that_models_cells_only(run, tiny_suite, monkeypatch):
    import bench.cells as cells

    real = cells.prepare

    def prepare(model, device, precision="fp32", *a, **k):
        if precision == "bf16":
            raise torch.cuda.OutOfMemoryError("CUDA out of memory while preparing (simulated)")
        return real(model, device, precision, *a, **k)

    monkeypatch.setattr(cells, "prepare", prepare)
    tiny_suite["precisions"] = ["fp32", "bf16"]
    tiny_suite["attacks"] = tiny_suite["attacks"][:1]
    _, result, df = run(tiny_suite)
    bf16 = df[df["precision"] == "bf16"]
    assert (bf16["status"] == "failed").all()
    assert bf16["reason"].str.startswith("OutOfMemoryError: CUDA out of memory while preparing").all()
    assert (df[df["precision"] == "fp32"]["status"] == "ok").all()


def test_a_cuda_index_beyond_the_machines_gpus_is_skipped_with_a_reason(run, tiny_suite, monkeypatch):
    from bench.cells import cuda_unavailable

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda d=None: "Fake GPU")
    assert cuda_unavailable("cuda:3") == "cuda:3 does not exist: this machine has 1 GPU(s) (cuda:0 to cuda:0)"
    assert cuda_unavailable("cuda:0") is None and cuda_unavailable("cpu") is None
    tiny_suite["devices"] = ["cpu", "cuda:3"]
    tiny_suite["attacks"] = tiny_suite["attacks"][:1]
    _, result, df = run(tiny_suite)
    far = df[df["device"] == "cuda:3"]
    assert len(far) == 4 and (far["status"] == "skipped").all()
    assert (far["reason"] == "cuda:3 does not exist: this machine has 1 GPU(s) (cuda:0 to cuda:0)").all()
    assert (far["device_name"] == "unavailable").all()
    assert (df[df["device"] == "cpu"]["status"] == "ok").all()


def test_a_results_folder_that_breaks_stops_the_run_as_an_error_not_an_interruption(run, tiny_suite, monkeypatch, tmp_path):
    import json

    from bench.results import RowLog
    from bench.runner import RunError

    real = RowLog.append
    calls = []

    def append(self, row):
        if "status" in row:  # a result row (the shard log's lines have no status)
            calls.append(row["cell_id"])
            if len(calls) == 3:
                raise OSError(28, "No space left on device")
        real(self, row)

    monkeypatch.setattr(RowLog, "append", append)
    with pytest.raises(RunError, match="No space left on device") as info:
        run(tiny_suite)
    meta = json.loads((info.value.run_dir / "run.json").read_text())
    assert meta["status"] == "error" and "No space left on device" in meta["error"]
    assert len(pd.read_parquet(info.value.run_dir / "results.parquet")) == 2  # the rows that landed are kept


def test_out_of_memory_shrinks_only_the_crafting_that_needed_it(run, tiny_suite, monkeypatch):
    import bench.attacks as registry

    real_build = registry.build

    def build(spec, model, **kw):
        attack = real_build(spec, model, **kw)
        original = attack.forward

        def forward(images, labels):
            if spec.name == "pgd" and len(images) > 1:
                raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
            return original(images, labels)

        attack.forward = forward
        return attack

    monkeypatch.setattr(registry, "build", build)
    tiny_suite["attacks"] = [tiny_suite["attacks"][1], tiny_suite["attacks"][0]]  # the greedy attack first
    _, _, df = run(tiny_suite)
    assert (df["status"] == "ok").all()
    assert set(df[df["attack"] == "pgd"]["batch_size"]) == {1}
    assert set(df[df["attack"] == "fgsm"]["batch_size"]) == {4}  # later cells keep the size asked for


# ---------------------------------------------------------------------------------------------
# Numbers that mean what they say


def test_cell_ids_carry_the_attacks_resolved_arguments(write_suite, tiny_suite):
    def pgd_id(**params):
        doc = {**tiny_suite, "attacks": [{"name": "pgd", "type": "pgd", "eps": "8/255", **params}]}
        return load_suite(write_suite(doc)).cells()[0].cell_id

    assert pgd_id(steps=10) != pgd_id(steps=20)
    assert pgd_id() == pgd_id(steps=10)  # the default written out is the same attack
    assert pgd_id(steps=20).startswith("cnn/pgd@") and "/eps=8/255/none/oblivious/cpu/fp32" in pgd_id()


def test_l2_attacks_take_l2_budgets_and_are_checked_in_l2(run, tiny_suite):
    tiny_suite["attacks"] = [{"name": "pgdl2", "type": "pgdl2", "eps": 2.0, "steps": 3, "alpha": 0.5}]
    tiny_suite["defenses"] = ["none"]
    _, _, df = run(tiny_suite)
    assert (df["status"] == "ok").all(), df["reason"].tolist()
    assert (df["norm"] == "L2").all() and (df["eps"] == 2.0).all()
    # each changed value can move by 1/510 when quantised: √(3·96·96)/510 is the most that can add
    assert (df["l2_max"] <= 2.0 + math.sqrt(3 * 96 * 96) / 510).all() and (df["l2_max"] > 1.0).all()
    assert (df["linf_max"] > 8 / 255).all()  # an L2 attack is not bounded in L-inf, and is not failed for it


def test_budget_checks_follow_the_norm_and_allow_exactly_the_quantisation_slack():
    from bench.failures import CellFailure
    from bench.measure import check_budget, perturbation_norms

    clean = torch.full((1, 3, 4, 4), 100, dtype=torch.uint8)
    adv = clean.clone()
    adv[0, 0, 0, :2] = 110  # two values moved by 10/255
    norms = perturbation_norms(adv, clean)
    assert norms["changed"].item() == 2 and norms["linf"].item() == pytest.approx(10 / 255)
    assert norms["l2"].item() == pytest.approx(math.sqrt(2) * 10 / 255)
    check_budget("Linf", 9.5 / 255, norms)  # 10/255 ≤ 9.5/255 + 1/510
    with pytest.raises(CellFailure, match="Linf perturbation"):
        check_budget("Linf", 9 / 255, norms)
    l2 = math.sqrt(2) * 10 / 255
    check_budget("L2", l2 - math.sqrt(2) / 510 + 1e-5, norms)
    with pytest.raises(CellFailure, match="L2 perturbation .* of image 0 exceeds"):
        check_budget("L2", l2 - math.sqrt(2) / 510 - 1e-4, norms)
    check_budget("none", None, norms)  # CW, DeepFool: measured, not bounded


def test_warm_up_covers_every_shape_the_timers_see(run, tiny_suite, monkeypatch):
    """With compile on, nothing may compile inside a timed region: not the first no-grad pass,
    not the last, shorter batch (6 images in batches of 4)."""
    import bench.cells as cells
    import bench.crafting as crafting
    import bench.fastpath as fastpath
    import bench.measure as measure
    from bench.timing import Stopwatch

    graphs = []

    def counting_backend(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    real_compile = torch.compile
    monkeypatch.setattr(fastpath.torch, "compile", lambda model, **k: real_compile(model, backend=counting_backend))
    timed_compiles = []

    class Watch(Stopwatch):
        @contextlib.contextmanager
        def region(self):
            before = len(graphs)
            with super().region():
                yield
            timed_compiles.append(len(graphs) - before)

    for module in (cells, crafting, measure):  # every timed region: the clean pass, the crafting, the measurement
        monkeypatch.setattr(module, "Stopwatch", Watch)
    torch._dynamo.reset()
    tiny_suite["compile"] = True
    _, _, df = run(tiny_suite)
    assert (df["status"] == "ok").all(), df["reason"].tolist()
    assert graphs, "the model was not compiled"
    assert timed_compiles and sum(timed_compiles) == 0, timed_compiles


def test_an_attack_that_leaves_the_model_training_fails_its_cells_only(run, tiny_suite, monkeypatch):
    import bench.attacks as registry

    real_build = registry.build

    def build(spec, model, **kw):
        attack = real_build(spec, model, **kw)
        if spec.name == "fgsm":
            original = attack.forward

            def forward(images, labels):
                out = original(images, labels)
                model.train()  # an attack that forgets to restore eval mode
                return out

            attack.forward = forward
        return attack

    monkeypatch.setattr(registry, "build", build)
    tiny_suite["attacks"] = [tiny_suite["attacks"][0], tiny_suite["attacks"][1]]  # fgsm (2 ε) first, then pgd
    _, _, df = run(tiny_suite)
    assert (df[df["attack"] == "fgsm"]["status"] == "failed").all()
    assert df[df["attack"] == "fgsm"]["reason"].str.contains("training mode").all()
    assert (df[df["attack"] == "pgd"]["status"] == "ok").all()  # the model was put back in eval mode


def test_results_do_not_depend_on_where_the_files_live(run, tmp_path):
    """Two checkouts of the same model file and data in different folders give the same table: no seed
    (attack, defense draws, the indicators' checks) may depend on a path."""
    import shutil

    from tests import masked_models as mm

    tables = []
    for where in ("a", "b/deeper"):
        root = tmp_path / where
        root.mkdir(parents=True)
        shutil.copy(mm.__file__, root / "mm.py")
        doc = {"name": "where", "seed": 0, "batch_size": 12,
               "data": {"source": "imagefolder", "path": str(mm.write_images(root / "data")), "image_size": 16},
               "models": [{"name": "robust", "factory": str(root / "mm.py") + ":build", "kwargs": {"kind": "robust"}}],
               "attacks": [{"name": "pgd", "type": "pgd", "eps": "8/255", "steps": 3, "alpha": "2/255"},
                           {"name": "square", "type": "square", "eps": "8/255", "n_queries": 50}]}
        tables.append(run(doc)[2])
    cols = [c for c in COLUMNS if c not in VOLATILE_COLUMNS and c != "dataset"]  # the dataset's name holds its folder
    pd.testing.assert_frame_equal(tables[0][cols], tables[1][cols])
