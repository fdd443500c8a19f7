"""Training recipes: each one runs, writes a safe checkpoint and an honest card; the faces
suite runs end to end on what they make."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import torch
import yaml

from bench.data import load_dataset
from bench.faces import split_protocol
from bench.sources import create_model
from bench.runner import run_suite
from bench.suite import DataSpec, ModelSpec, SuiteError, load_suite
from bench.adversarial_training import AdversarialSpec
from bench.train import RECIPES, accuracy, train

FACES_RECIPES = [name for name, recipe in RECIPES.items() if recipe.data == "faces"]
from tests.conftest import write_images


@pytest.fixture(scope="module")
def faces_data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("faces")
    write_images(root / "src", {"fake": 10, "real": 10}, size=96)
    split_protocol(root / "src", root / "data", seed=0, train_per_class=6)
    return root / "data"


WALL_SECONDS: dict[str, float] = {}  # each recipe's train() call, timed from outside


@pytest.fixture(scope="module")
def trained(faces_data, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("models")
    for name in FACES_RECIPES:
        t0 = time.perf_counter()
        train(name, faces_data, out, epochs=1, batch_size=4)
        WALL_SECONDS[name] = time.perf_counter() - t0
    # the faces suite's adversarially trained detector (FGSM with a random start, as the Makefile makes it)
    train("custom_cnn", faces_data, out, epochs=1, batch_size=4,
          adversarial=AdversarialSpec("pgd", 2 / 255, steps=1, step_size=2.5 / 255))
    return out


@pytest.mark.parametrize("recipe", FACES_RECIPES)
def test_each_faces_recipe_writes_a_loadable_checkpoint_and_its_card(trained, faces_data, recipe):
    card = json.loads((trained / f"{recipe}.json").read_text())
    state = torch.load(trained / f"{recipe}.pt", weights_only=True)
    assert isinstance(state, dict) and all(isinstance(v, torch.Tensor) for v in state.values())
    assert card["classes"] == ["fake", "real"] and card["num_classes"] == 2 and card["input_size"] == 96
    assert card["epochs"] == 1 and card["train_images"] == 12 and card["test_images"] == 8
    # the card's numbers are the checkpoint's: reload it and measure the test split again
    model = create_model(ModelSpec(recipe, card["arch"], None, checkpoint=str(trained / f"{recipe}.pt"),
                                   num_classes=2, input_size=96))
    assert model.mean.flatten().tolist() == pytest.approx(card["mean"]) and model.std.flatten().tolist() == pytest.approx(card["std"])
    test_ds = load_dataset(DataSpec("imagefolder", path=str(faces_data / "test"), image_size=96))
    test_acc, per_class = accuracy(model, test_ds)
    assert card["test_acc"] == pytest.approx(test_acc, abs=1e-9)
    assert card["test_acc_per_class"] == pytest.approx(per_class, abs=1e-9)
    assert card["test_acc"] * card["test_images"] == pytest.approx(round(card["test_acc"] * card["test_images"]))
    # training time: part of the train() call, which also loads data, evaluates and saves (rounded to 0.1 s)
    assert 0 <= card["train_seconds"] <= WALL_SECONDS[recipe] + 0.05
    assert card["data_hash"] == json.loads((faces_data / "split.json").read_text())["split_hash"]
    assert len(card["mean"]) == 3 and len(card["std"]) == 3


def test_pretrained_recipes_say_where_their_weights_came_from(trained):
    for recipe in ("resnet18_frozen", "resnet18_finetune"):
        card = json.loads((trained / f"{recipe}.json").read_text())
        if card["arch"] == "efficientnet_lite0":  # offline: the bundled ImageNet model stands in
            assert "instead of resnet18" in card["weights_from"]
        else:
            assert card["arch"] == "resnet18" and "IMAGENET1K_V1" in card["weights_from"]


def test_the_frozen_recipe_trains_only_the_head(faces_data, trained):
    from bench.sources import create_model
    from bench.suite import ModelSpec

    card = json.loads((trained / "resnet18_frozen.json").read_text())
    trained_state = torch.load(trained / "resnet18_frozen.pt", weights_only=True)
    pretrained = create_model(ModelSpec("x", card["arch"], "imagenet", num_classes=1000, input_size=96)).net.state_dict()
    head = "fc" if card["arch"] == "resnet18" else "_fc"
    for key, value in trained_state.items():
        if not key.startswith(head):
            assert torch.equal(value, pretrained[key]), key


@pytest.mark.slow  # make test-slow (CI runs it): keeps make test within its minutes
def test_faces_suite_runs_end_to_end_on_the_trained_detectors(trained, faces_data, tmp_path):
    suite = yaml.safe_load((Path(__file__).resolve().parents[1] / "suites" / "faces.yaml").read_text())
    suite["data"]["path"] = str(faces_data / "test")
    for m in suite["models"]:
        m["checkpoint"] = str(trained / Path(m["checkpoint"]).name)
    suite["attacks"] = [{**a, "eps": "8/255", **({"steps": 2} if "steps" in a else {})} for a in suite["attacks"]]
    suite["defenses"] = ["none", {"type": "jpeg", "quality": 75}]
    path = tmp_path / "faces.yaml"
    path.write_text(yaml.safe_dump(suite))
    result = run_suite(load_suite(path), tmp_path / "results", tmp_path / "reports")
    assert result.counts == {"ok": 4 * 3 * 2}
    report = result.report_path.read_text()
    assert "## Fakes accepted as real" in report and "(no attack)" in report
    assert "| custom-cnn" in report and "| finetuned" in report and "| custom-cnn-pgd" in report
    card = json.loads((trained / "custom_cnn-pgd.json").read_text())
    assert card["adversarial"]["steps"] == 1 and card["robust_test"]["eps"] == pytest.approx(2 / 255)


def test_a_missing_detector_checkpoint_says_which_command_makes_it(tmp_path):
    suite = yaml.safe_load((Path(__file__).resolve().parents[1] / "suites" / "faces.yaml").read_text())
    suite["data"] = {"source": "samples"}
    suite["models"] = [{"checkpoint": str(tmp_path / "resnet18_frozen.pt")}]
    path = tmp_path / "faces.yaml"
    path.write_text(yaml.safe_dump(suite))
    with pytest.raises(SuiteError, match=r"models\[0\].checkpoint: checkpoint not found: .*bench train resnet18_frozen --data"):
        load_suite(path)


def test_nightly_suite_mixes_an_imagenet_model_and_the_detectors_each_on_its_own_data(trained, faces_data, tmp_path):
    suite = yaml.safe_load((Path(__file__).resolve().parents[1] / "suites" / "nightly-gpu.yaml").read_text())
    suite["data"]["path"] = str(faces_data / "test")
    for m in suite["models"]:
        if "checkpoint" in m:
            m["checkpoint"] = str(trained / Path(m["checkpoint"]).name)
    path = tmp_path / "nightly.yaml"
    path.write_text(yaml.safe_dump(suite))
    loaded = load_suite(path)
    by_name = {m.name: m for m in loaded.models}
    assert by_name["resnet18"].data.source == "samples" and by_name["custom-cnn"].data is None
    assert {c.device for c in loaded.cells()} == {"cuda"} and {c.precision for c in loaded.cells()} == {"fp32", "bf16"}
    # 4 models x (2 + 2 + 1 attack cells) x 3 defenses x 2 precisions
    assert len(loaded.cells()) == 4 * 5 * 3 * 2


def test_a_missing_digits_checkpoint_names_the_adversarial_command_and_make_robust(tmp_path):
    suite = yaml.safe_load((Path(__file__).resolve().parents[1] / "suites" / "robust.yaml").read_text())
    suite["models"] = [{"checkpoint": str(tmp_path / "digits_cnn-pgd.pt")}]
    path = tmp_path / "robust.yaml"
    path.write_text(yaml.safe_dump(suite))
    with pytest.raises(SuiteError, match=r"checkpoint not found: .*`bench train digits_cnn --adversarial pgd --train-eps <ε> "
                                         r"--out .*` \(or `make robust`\)"):
        load_suite(path)
    suite["models"] = [{"checkpoint": str(tmp_path / "digits_cnn-fancy.pt")}]  # not a method: no command to suggest
    path.write_text(yaml.safe_dump(suite))
    with pytest.raises(SuiteError, match=r"checkpoint not found: [^;]*$"):
        load_suite(path)
