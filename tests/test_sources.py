"""Model sources: every torchvision and timm architecture by name, preprocessing carried along."""

from __future__ import annotations

import urllib.error

import pandas as pd
import pytest

from bench.runner import run_suite
from bench.sources import catalogue, create_model
from bench.suite import SuiteError, load_suite


def _suite(tiny_suite: dict, *models: dict) -> dict:
    return {**tiny_suite, "models": list(models), "attacks": [{"name": "fgsm", "type": "fgsm", "eps": "2/255"}],
            "defenses": ["none"]}


def test_torchvision_preprocessing_is_read_from_the_weights_enum(write_suite, tiny_suite):
    suite = load_suite(write_suite(_suite(tiny_suite, {"arch": "torchvision/mobilenet_v3_small", "weights": None},
                                          {"name": "vit", "arch": "torchvision/vit_b_16", "weights": "IMAGENET1K_SWAG_LINEAR_V1"})))
    small, vit = suite.models
    assert (small.source, small.arch, small.weights, small.num_classes) == ("torchvision", "mobilenet_v3_small", None, 1000)
    assert (small.input_size, small.preprocess.resize, small.interpolation) == (224, 256, "bilinear")
    assert small.mean == pytest.approx((0.485, 0.456, 0.406)) and small.class_names is None  # random init: no names
    assert (vit.weights, vit.input_size, vit.preprocess.resize, vit.interpolation) == ("IMAGENET1K_SWAG_LINEAR_V1", 224, 224, "bicubic")
    assert len(vit.class_names) == 1000


def test_an_input_size_override_keeps_the_sources_crop_fraction(write_suite, tiny_suite):
    suite = load_suite(write_suite(_suite(tiny_suite, {"arch": "torchvision/resnet50", "input_size": 112})))
    assert (suite.models[0].input_size, suite.models[0].preprocess.resize) == (112, 116)  # DEFAULT (V2): 232 for 224


@pytest.mark.parametrize("entry, key, words", [
    ({"arch": "torchvision/mobilenet_v3_smal"}, "models[0].arch", "did you mean mobilenet_v3_small"),
    ({"arch": "torchvision/resnet50", "weights": "IMAGENET1K_V9"}, "models[0].weights", "allowed: null, imagenet, IMAGENET1K_V1, IMAGENET1K_V2"),
    ({"arch": "timm/test_vitt"}, "models[0].arch", "did you mean test_vit"),
    ({"arch": "resnet19"}, "models[0].arch", "did you mean resnet18"),
    ({"arch": "torchvision/resnet50", "mean": [0.5, 0.5]}, "models[0].mean", "must be a list of 3 numbers"),
    ({"arch": "torchvision/resnet50", "std": [0.5, 0, 0.5]}, "models[0].std", "must be > 0"),
    ({"arch": "torchvision/resnet50", "interpolation": "lanczos"}, "models[0].interpolation", "allowed: bilinear, bicubic, nearest"),
    ({"arch": "torchvision/resnet50", "weights": "imagenet", "num_classes": 10}, "models[0].num_classes", "weights have 1000 classes"),
    ({"arch": "torchvision/vit_b_16", "input_size": 64}, "models[0].input_size", "1×3×64×64 probe batch fails"),
])
def test_bad_model_entries_are_one_line_errors_before_anything_runs(write_suite, tiny_suite, entry, key, words):
    with pytest.raises(SuiteError) as err:
        load_suite(write_suite(_suite(tiny_suite, entry)))
    assert f": {key}: " in str(err.value) and words in str(err.value), str(err.value)


def test_timm_preprocessing_comes_from_resolve_data_config(write_suite, tiny_suite):
    (m,) = load_suite(write_suite(_suite(tiny_suite, {"name": "vit", "arch": "timm/test_vit", "num_classes": 2}))).models
    assert (m.source, m.arch, m.weights) == ("timm", "test_vit", None)
    assert (m.input_size, m.preprocess.resize, m.interpolation) == (160, 168, "bicubic")  # crop_pct 0.95
    assert m.mean == (0.5, 0.5, 0.5)


def test_missing_timm_weights_skip_with_where_to_put_them(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    from bench.models import ModelUnavailable
    from bench.specs import ModelSpec

    spec = ModelSpec("v", "test_vit", "r160_in1k", num_classes=1000, input_size=160, source="timm", mean=(0.5,) * 3, std=(0.5,) * 3)
    with pytest.raises(ModelUnavailable, match=r"not in the local Hugging Face cache: .*huggingface-cli download timm/test_vit"):
        create_model(spec)


def test_missing_torchvision_weights_skip_with_the_file_to_put_where(monkeypatch, tmp_path):
    import torch

    from bench.models import ModelUnavailable
    from bench.specs import ModelSpec

    def offline(*a, **k):
        raise urllib.error.URLError("offline")

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))  # an empty hub cache
    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    spec = ModelSpec("m", "mobilenet_v3_small", "IMAGENET1K_V1", num_classes=1000, input_size=224, source="torchvision",
                     mean=(0.5,) * 3, std=(0.5,) * 3)
    with pytest.raises(ModelUnavailable, match=r"put https://download.pytorch.org/models/mobilenet_v3_small-047dcff4.pth at .*checkpoints"):
        create_model(spec)


def test_bench_models_lists_builders_with_weights_availability():
    names = {e.name: e for e in catalogue("torchvision")}
    assert "torchvision/mobilenet_v3_small" in names and "torchvision/resnet50" in names and len(names) >= 50
    assert "IMAGENET1K_V2" in names["torchvision/resnet50"].weights
    assert {e.name for e in catalogue("builtin")} == {"resnet18", "efficientnet_lite0", "custom_cnn", "small_cnn"}
    lite0 = next(e for e in catalogue("builtin") if e.name == "efficientnet_lite0")
    assert lite0.available == "imagenet"  # ships in a package
    assert [e.name for e in catalogue("timm", "test_vit_relpos")] == ["timm/test_vit_relpos"]


@pytest.mark.slow  # make test-slow (CI runs it): keeps make test within its minutes
def test_models_of_every_library_source_run_ok_and_share_decoded_data_by_preprocessing(tmp_path, write_suite, tiny_suite):
    doc = _suite(tiny_suite,
                 {"name": "mnv3", "arch": "torchvision/mobilenet_v3_small", "num_classes": 2, "input_size": 64},
                 {"name": "r50", "arch": "torchvision/resnet50", "weights": None, "num_classes": 2, "input_size": 64,
                  "crop_pct": 0.875},  # resize 73 px, as mnv3's 256/224 at 64 px: the two share one decoded copy
                 {"name": "vit", "arch": "timm/test_vit", "num_classes": 2},
                 {"name": "cnn", "arch": "custom_cnn", "num_classes": 2})
    suite = load_suite(write_suite(doc))
    result = run_suite(suite, tmp_path / "results", tmp_path / "reports")
    df = pd.read_parquet(result.run_dir / "results.parquet")
    assert (df["status"] == "ok").all(), df[["model", "reason"]]
    by_model = df.set_index("model")
    assert by_model["model_source"].to_dict() == {"mnv3": "torchvision", "r50": "torchvision", "vit": "timm", "cnn": "builtin"}
    assert by_model["weights"].to_dict() == {"mnv3": "random", "r50": "random", "vit": "random", "cnn": "random"}
    assert by_model["input_size"].to_dict() == {"mnv3": 64, "r50": 64, "vit": 160, "cnn": 96}
    import json

    datasets = json.loads((result.run_dir / "run.json").read_text())["datasets"]
    shared = sorted(sorted(d["models"]) for d in datasets.values())
    assert shared == [["cnn"], ["mnv3", "r50"], ["vit"]]  # one decoded copy per distinct preprocessing
    report = result.report_path.read_text()
    assert "## Models" in report and "| vit     | timm" in report
