"""The ``robustbench`` model source: RobustBench's model zoo, its weights read offline as data.

Specification: ``{source: robustbench, name: ENTRY, dataset, threat_model, model_dir}`` (or ``arch:
robustbench/ENTRY``) builds RobustBench's own network for the entry, takes [0, 1] images at the zoo's
preprocessing, and loads ``model_dir/<dataset>/<threat_model>/<entry>.pt`` with ``weights_only=True`` and
RobustBench's key fixes; a missing file skips the model's cells naming the path; a file that would run
code runs nothing and fails in one line; bad keys are one-line suite errors naming what is allowed.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import sys
import types
from pathlib import Path

import pytest
import torch
import yaml

import bench
from bench import sources
from bench.models import CheckpointError, ModelUnavailable
from bench.sources import Context, create_model
from bench.sources import robustbench_models as rb
from bench.specs import ModelSpec
from bench.suite import SuiteError, load_suite
from tests.conftest import torch_threads, write_images

ENTRY = "Wong2020Fast"  # a PreActResNet-18 (11 M parameters): builds in well under a second, cheap at 32 px


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """The zoo's CIFAR networks keep 32×32 feature maps: on a busy 2-core machine two threads spin more than they
    compute (a run took 2–3× longer); one thread keeps this file well under a minute."""
    with torch_threads(1):
        yield


@pytest.fixture(scope="module")
def zoo():
    """RobustBench's model zoo; the tests that need it are skipped only where robustbench is not installed
    (or is torchattacks' stale copy), with the install command."""
    try:
        return rb.zoo()
    except rb.ZooUnavailable as exc:
        pytest.skip(str(exc))


def _state(seed: int = 0) -> dict[str, torch.Tensor]:
    """Random weights of the zoo's Wong2020Fast, without the mu/sigma buffers (RobustBench's file has none)."""
    net = rb._table("cifar10", "Linf")[ENTRY]["model"]()
    g = torch.Generator().manual_seed(seed)
    state = {}
    for k, v in net.state_dict().items():
        if k in ("mu", "sigma"):
            continue
        state[k] = torch.randn(v.shape, generator=g) * 0.05 if v.is_floating_point() else v.clone()
        if k.endswith("running_var"):
            state[k] = state[k].abs() + 0.5
    return state


@pytest.fixture(scope="module")
def model_dir(zoo, tmp_path_factory) -> Path:
    """A model_dir with Wong2020Fast's weights where robustbench's load_model looks, in its format
    ({'state_dict': ...} with DataParallel's ``module.`` prefix)."""
    root = tmp_path_factory.mktemp("rb") / "models"
    path = root / "cifar10" / "Linf" / f"{ENTRY}.pt"
    path.parent.mkdir(parents=True)
    torch.save({"state_dict": {f"module.{k}": v for k, v in _state().items()}}, path)
    return root


def _suite(tmp_path: Path, models: list[dict], attacks=None) -> Path:
    images = write_images(tmp_path / "imgs", {"a": 2, "b": 1}, size=32)
    doc = {"name": "rb", "data": {"source": "imagefolder", "path": str(images), "image_size": 32}, "models": models,
           "attacks": attacks or [{"name": "fgsm", "type": "fgsm", "eps": "2/255"}],
           "devices": ["cpu"], "precisions": ["fp32"], "batch_size": 4,
           "unconstrained_check": False}  # no extra crafting per attack: the zoo's CIFAR networks are slow on 2 CPU cores
    path = tmp_path / "suite.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def _entry(folder, **over) -> dict:
    return {"source": "robustbench", "name": ENTRY, "dataset": "cifar10", "threat_model": "Linf",
            "model_dir": str(folder), **over}


def _robustbench_load_model(monkeypatch, model_dir: Path) -> torch.nn.Module:
    """robustbench.utils.load_model itself on our (trusted) file: its module imports gdown, which it only
    needs to download, so a stand-in is enough; the file is there, so it downloads nothing."""
    monkeypatch.setitem(sys.modules, "gdown", types.ModuleType("gdown"))
    try:
        with rb._package():
            utils = importlib.import_module("robustbench.utils")
            return utils.load_model(ENTRY, model_dir=str(model_dir), dataset="cifar10", threat_model="Linf")
    finally:
        sys.modules.pop("robustbench.utils", None)


def test_the_suite_entry_builds_robustbenchs_network_with_its_weights(zoo, model_dir, tmp_path, monkeypatch):
    suite = load_suite(_suite(tmp_path, [_entry(model_dir)]))
    (spec,) = suite.models
    assert (spec.name, spec.source, spec.arch, spec.weights) == (ENTRY, "robustbench", f"cifar10/Linf/{ENTRY}", "robustbench")
    assert (spec.num_classes, spec.input_size, spec.resize_size) == (10, 32, 32)  # CIFAR images as they are
    assert spec.mean == (0.0, 0.0, 0.0) and spec.std == (1.0, 1.0, 1.0)  # the zoo's networks normalise inside
    assert sources.missing_files(spec) == []
    model = create_model(spec)
    assert type(model.net).__module__ == "robustbench.model_zoo.cifar10"  # the zoo's own definition

    direct = rb._table("cifar10", "Linf")[ENTRY]["model"]()  # the zoo's architecture, the weights loaded directly
    result = direct.load_state_dict(_state(), strict=False)
    assert set(result.missing_keys) == {"mu", "sigma"} and not result.unexpected_keys
    direct.eval()
    theirs = _robustbench_load_model(monkeypatch, model_dir)
    x = torch.rand(3, 3, 32, 32)
    with torch.no_grad():
        ours = model(x)
        assert torch.allclose(ours, direct(x), atol=1e-5)
        assert torch.allclose(ours, theirs(x), atol=1e-5)  # the same network as robustbench's own load_model gives
        assert ours.std() > 0


def test_both_entry_forms_run_end_to_end(zoo, model_dir, tmp_path):
    path = _suite(tmp_path, [_entry(model_dir), {"name": "mine", "arch": f"robustbench/{ENTRY}", "model_dir": str(model_dir)}])
    result = bench.run(path, progress=False, results_dir=tmp_path / "results", reports_dir=tmp_path / "reports")
    table = result.table
    assert sorted(table["model"]) == [ENTRY, "mine"] and (table["model_source"] == "robustbench").all()
    assert (table["status"] == "ok").all(), table["reason"].tolist()
    assert table["clean_acc"].between(0, 1).all() and (table["weights"] == "robustbench").all()
    a, b = (table[table["model"] == m].iloc[0] for m in (ENTRY, "mine"))
    assert a["clean_acc"] == b["clean_acc"] and a["robust_acc"] == b["robust_acc"]  # one network, two names


def test_model_dir_defaults_to_models_beside_the_suite(zoo, tmp_path):
    (spec,) = load_suite(_suite(tmp_path, [{"source": "robustbench", "name": ENTRY}])).models
    assert dict(spec.kwargs)["model_dir"] == str((tmp_path / "models").resolve())
    assert sources.missing_files(spec) == [str((tmp_path / "models" / "cifar10" / "Linf" / f"{ENTRY}.pt").resolve())]


def test_missing_weights_skip_the_cells_naming_the_exact_path(zoo, tmp_path):
    empty = tmp_path / "nothing here"
    path = _suite(tmp_path, [_entry(empty)], attacks=[{"name": "fgsm", "type": "fgsm", "eps": ["1/255", "2/255"]}])
    result = bench.run(path, progress=False, results_dir=tmp_path / "results", reports_dir=tmp_path / "reports")
    table = result.table
    assert len(table) == 2 and (table["status"] == "skipped").all()
    expected = str((empty / "cifar10" / "Linf" / f"{ENTRY}.pt").resolve())
    for reason in table["reason"]:
        assert expected in reason and "\n" not in reason and "downloads nothing" in reason
    assert not empty.exists()  # nothing created, nothing downloaded


def test_an_ensemble_needs_each_of_its_files(zoo, tmp_path):
    spec = ModelSpec(name="c", arch="cifar10/Linf/Chen2020Adversarial", weights="robustbench", num_classes=10,
                     input_size=32, source="robustbench", mean=rb.MEAN, std=rb.STD, kwargs=(("model_dir", str(tmp_path)),))
    with pytest.raises(ModelUnavailable) as info:
        create_model(spec)
    message = str(info.value)
    for i in range(3):  # robustbench's load_model: '{model_path}_m{i}.pt'
        assert str(tmp_path / "cifar10" / "Linf" / f"Chen2020Adversarial.pt_m{i}.pt") in message
    assert "\n" not in message


def test_a_pickle_that_runs_code_runs_nothing(zoo, tmp_path):
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (exec, (f"open({str(marker)!r}, 'w').write('ran')",))

    folder = tmp_path / "models"
    path = folder / "cifar10" / "Linf" / f"{ENTRY}.pt"
    path.parent.mkdir(parents=True)
    torch.save({"state_dict": Payload()}, path)
    (spec,) = load_suite(_suite(tmp_path, [_entry(folder)])).models  # the suite loads: the file is read at build
    with pytest.raises(CheckpointError) as info:
        create_model(spec)
    message = str(info.value)
    assert str(path) in message and "weights_only" in message and "\n" not in message
    assert not marker.exists()


@pytest.mark.parametrize("over, key, expected", [
    ({"dataset": "mnist"}, "dataset", "'mnist' is not a RobustBench dataset; allowed: cifar10, cifar100, imagenet"),
    ({"threat_model": "Linf9"}, "threat_model", "'Linf9' is not a RobustBench threat model; did you mean Linf?; allowed: Linf, L2, corruptions"),
    ({"dataset": "cifar100", "threat_model": "L2"}, "threat_model", "RobustBench has no cifar100 models for L2; allowed for cifar100: Linf, corruptions"),
    ({"name": "Carmon2019Unlabelled"}, "name", "'Carmon2019Unlabelled' is not in RobustBench's cifar10 Linf zoo; did you mean Carmon2019Unlabeled"),
    ({"name": "Salman2020Do_R18"}, "name", "(it is in dataset: imagenet, threat_model: Linf)"),
    ({"source": "robustbnch"}, "source", "unknown model source 'robustbnch'; allowed: robustbench"),
    ({"model_dir": 3}, "model_dir", "must be a folder"),
    ({"arch": "resnet18"}, "arch", "names a RobustBench entry as robustbench/<entry>"),
    ({"checkpoint": "w.pt"}, "model_dir", "give either model_dir"),
])
def test_bad_keys_are_one_line_suite_errors(zoo, tmp_path, over, key, expected):
    (tmp_path / "w.pt").write_bytes(b"")
    with pytest.raises(SuiteError) as info:
        load_suite(_suite(tmp_path, [_entry(tmp_path, **over)]))
    message = str(info.value)
    assert f"models[0].{key}" in message and expected in message, message
    assert "\n" not in message.strip()


@pytest.mark.parametrize("name, threat, size, resize, interpolation", [
    ("Salman2020Do_R18", "Linf", 224, 256, "bilinear"),  # Res256Crop224
    ("Liu2023Comprehensive_Swin-B", "Linf", 224, 256, "bicubic"),  # BicubicRes256Crop224
    ("Mo2022When_ViT-B", "Linf", 224, 224, "bilinear"),  # Res224
    ("Tian2022Deeper_DeiT-S", "corruptions", 224, 248, "bicubic"),  # from timm: crop_pct 0.9, as get_timm_model_preprocessing
])
def test_imagenet_entries_take_robustbenchs_preprocessing(zoo, tmp_path, name, threat, size, resize, interpolation):
    ctx = Context("models[0]", tmp_path, 224, lambda key, message: ValueError(f"{key}: {message}"))
    spec = sources.resolve({"source": "robustbench", "name": name, "dataset": "imagenet", "threat_model": threat}, ctx, name="m")
    assert (spec.num_classes, spec.input_size, spec.resize_size, spec.interpolation) == (1000, size, resize, interpolation)
    assert spec.mean == (0.0, 0.0, 0.0) and spec.std == (1.0, 1.0, 1.0) and len(spec.class_names) == 1000


def test_entries_robustbench_takes_from_timm_are_read_from_the_hub_cache(zoo, tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    spec = ModelSpec(name="x", arch="cifar10/Linf/Debenedetti2022Light_XCiT-S12", weights="robustbench", num_classes=10,
                     input_size=32, source="robustbench", mean=rb.MEAN, std=rb.STD, kwargs=(("model_dir", str(tmp_path)),))
    with pytest.raises(ModelUnavailable, match=r"put https://\S+ at .*/hub/checkpoints/debenedetti2022light-xcit-s-cifar10-linf\.pth\.tar"):
        create_model(spec)


def test_a_zoo_network_that_cannot_be_built_here_skips_its_cells(zoo, model_dir, tmp_path, monkeypatch):
    def needs_cuda():
        raise RuntimeError("Found no NVIDIA driver on your system")

    monkeypatch.setitem(rb._table("cifar10", "Linf")[ENTRY], "model", needs_cuda)
    path = _suite(tmp_path, [_entry(model_dir)])
    result = bench.run(path, progress=False, results_dir=tmp_path / "results", reports_dir=tmp_path / "reports")
    (row,) = result.table.to_dict("records")
    assert row["status"] == "skipped" and "cannot be built here (RuntimeError: Found no NVIDIA driver" in row["reason"]


def test_robustbench_missing_or_stale_is_one_line_with_the_install_command(tmp_path, monkeypatch):
    def missing(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(rb, "_ZOO", None)
    monkeypatch.setattr(importlib.metadata, "distribution", missing)  # torchattacks' copy: a package, no record
    if importlib.util.find_spec("robustbench") is not None:
        with pytest.raises(rb.ZooUnavailable, match="no install record"):
            rb.check_install()
    with pytest.raises(SuiteError) as info:
        load_suite(_suite(tmp_path, [_entry(tmp_path)]))
    message = str(info.value)
    assert "models[0].source" in message and "pip install --no-deps 'robustbench>=1.1,<2'" in message and "\n" not in message
    spec = ModelSpec(name="w", arch=f"cifar10/Linf/{ENTRY}", weights="robustbench", num_classes=10, input_size=32,
                     source="robustbench", mean=rb.MEAN, std=rb.STD, kwargs=(("model_dir", str(tmp_path)),))
    with pytest.raises(ModelUnavailable, match=r"pip install --no-deps 'robustbench>=1\.1,<2'"):
        create_model(spec)  # a suite checked elsewhere: the cells are skipped with the install command


def test_files_that_are_not_robustbenchs_own_are_refused(zoo, monkeypatch):
    version = rb.check_install()  # the real one here
    assert [int(p) for p in version.split(".")[:2]] >= [1, 1]
    monkeypatch.setattr(rb, "_record_hash", lambda path: "not-the-recorded-hash")  # torchattacks' copy written over it
    with pytest.raises(rb.ZooUnavailable, match=r"torchattacks' old copy written over them\?\): pip install --no-deps --force-reinstall"):
        rb.check_install()


def test_bench_models_lists_the_zoo(zoo):
    names = {(e.name, e.weights) for e in sources.catalogue("robustbench", "carmon2019")}
    assert ("robustbench/Carmon2019Unlabeled", "dataset: cifar10, threat_model: Linf") in names


def test_an_entry_from_timm_loads_the_file_timm_would_download(zoo, tmp_path, monkeypatch):
    import timm

    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    name = "Debenedetti2022Light_XCiT-S12"
    torch.manual_seed(1)
    with rb._quiet():
        reference = timm.create_model(rb.timm_name(name, "cifar10", "Linf"), num_classes=10).eval()  # normalise + XCiT
    (path,) = rb.weight_files(name, "cifar10", "Linf", tmp_path)
    path.parent.mkdir(parents=True)
    torch.save({"model": reference.model.state_dict()}, path)  # the release's layout: the XCiT's weights under 'model'
    spec = ModelSpec(name="x", arch=f"cifar10/Linf/{name}", weights="robustbench", num_classes=10, input_size=32,
                     source="robustbench", mean=rb.MEAN, std=rb.STD, kwargs=(("model_dir", str(tmp_path)),))
    x = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(create_model(spec)(x), reference(x), atol=1e-5)


def test_a_checkpoint_of_your_own_for_a_zoo_architecture(zoo, tmp_path):
    torch.manual_seed(3)
    net = rb._table("cifar10", "Linf")[ENTRY]["model"]().eval()  # e.g. fine-tuned by you: bench's checkpoint loading
    torch.save(net.state_dict(), tmp_path / "mine.pt")
    (spec,) = load_suite(_suite(tmp_path, [{"source": "robustbench", "name": ENTRY, "checkpoint": "mine.pt"}])).models
    assert spec.weights is None and spec.checkpoint == str((tmp_path / "mine.pt").resolve()) and sources.missing_files(spec) == []
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(create_model(spec)(x), net(x), atol=1e-5)
