"""The ``file`` model source: ``file: model.pt2``, a saved ``torch.export`` ExportedProgram.

Specification: a program exported from the factory test's CNN (eval mode, dynamic batch) predicts
exactly as that CNN; its preprocessing comes from the suite entry, then the card beside it
(``model.json``, as ``bench train`` writes), then its own static shapes; a program bench cannot attack
(fixed batch, wrong channels, training mode, not differentiable, …) is a one-line suite error that
says how to re-export it; the built network survives what the harness does to models.
"""

from __future__ import annotations

import copy
import json
import runpy
from pathlib import Path

import pytest
import torch
import torch.nn as nn

from bench import fastpath, sources
from bench.models import Classifier
from bench.sources import create_model, probe
from bench.sources import exported as exported_source
from bench.specs import ModelSpec
from tests.test_sources_factory import CLASSES, FACTORY_SOURCE, MEAN, SIZE, STD, context, resolve_error

BATCH = {"x": {0: torch.export.Dim("batch")}}
CARD = {  # the keys `bench train` writes, and some it does not need here
    "recipe": "tiny", "description": "a test CNN", "arch": "custom_cnn", "classes": [f"class{i}" for i in range(10)],
    "num_classes": CLASSES, "mean": list(MEAN), "std": list(STD), "input_size": SIZE, "weights_from": "random",
    "epochs": 0, "seed": 0, "checkpoint": "model.pt",
}


def export(model: nn.Module, path: Path, card: dict | None = None, size: int = SIZE, channels: int = 3,
           dynamic_shapes=BATCH, decompose: bool = False) -> Path:
    program = torch.export.export(model, (torch.rand(2, channels, size, size),), dynamic_shapes=dynamic_shapes)
    if decompose:
        program = program.run_decompositions()
    torch.export.save(program, str(path))
    if card is not None:
        path.with_suffix(".json").write_text(json.dumps(card))
    return path


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> nn.Module:
    """The factory test's CNN (random init, seed 0), in eval mode."""
    folder = tmp_path_factory.mktemp("factory")
    (folder / "nets.py").write_text(FACTORY_SOURCE)
    torch.manual_seed(0)
    return runpy.run_path(str(folder / "nets.py"))["tiny_cnn"]().eval()


@pytest.fixture(scope="module")
def folder(tmp_path_factory, reference) -> Path:
    """model.pt2 (+ model.json) exported from the reference CNN, and its core-ATen form."""
    folder = tmp_path_factory.mktemp("exported")
    export(reference, folder / "model.pt2", CARD)
    export(reference, folder / "core.pt2", {"mean": list(MEAN), "std": list(STD)}, decompose=True)
    return folder


def resolve(folder: Path, **entry) -> dict:
    return exported_source.resolve(entry, context(folder))


def error(folder: Path, **entry) -> str:
    return resolve_error(exported_source, folder, **entry)


def spec_of(fields: dict, name: str = "exported") -> ModelSpec:
    return ModelSpec(name=name, source="file", **fields)


def normalised(x: torch.Tensor) -> torch.Tensor:
    return (x - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)


# ---------------------------------------------------------------------------------------------
# What resolve decides


def test_resolve_reads_a_bench_train_card_beside_the_program(folder):
    fields = resolve(folder, file="model.pt2")
    assert fields["arch"] == str((folder / "model.pt2").resolve())
    assert fields["weights"] is None
    assert (fields["mean"], fields["std"], fields["input_size"], fields["num_classes"]) == (MEAN, STD, SIZE, CLASSES)
    assert fields["class_names"] == tuple(CARD["classes"])


def test_a_card_with_only_mean_and_std_takes_size_and_classes_from_the_program(folder):
    fields = resolve(folder, file="core.pt2")
    assert (fields["input_size"], fields["num_classes"], fields["class_names"]) == (SIZE, CLASSES, None)


def test_the_suite_entry_wins_over_the_card(folder):
    fields = resolve(folder, file="model.pt2", mean=[0, 0, 0], std=[1, 1, 1], class_names=list("abcdefghij"),
                     crop_pct=0.8, interpolation="bicubic")
    assert (fields["mean"], fields["std"]) == ((0, 0, 0), (1, 1, 1))
    assert fields["class_names"] == tuple("abcdefghij")
    assert (fields["resize_size"], fields["interpolation"]) == (80, "bicubic")


def test_a_program_with_dynamic_height_and_width_needs_an_input_size(tmp_path, reference):
    spatial = {"x": {0: torch.export.Dim("batch"), 2: torch.export.Dim("h", min=16, max=512),
                     3: torch.export.Dim("w", min=16, max=512)}}
    export(reference, tmp_path / "any.pt2", {"mean": list(MEAN), "std": list(STD)}, dynamic_shapes=spatial)
    message = error(tmp_path, file="any.pt2")
    assert message.startswith("models[0].input_size: is required") and "any.json" in message
    assert resolve(tmp_path, file="any.pt2", input_size=96)["input_size"] == 96


def test_the_registry_routes_file_entries_here(folder):
    assert sources.source_of({"file": "model.pt2"}) is exported_source
    assert sources.SOURCES["file"] is exported_source
    spec = sources.resolve({"file": "model.pt2"}, context(folder), name="exported")
    assert (spec.source, spec.num_classes, spec.input_size, spec.mean) == ("file", CLASSES, SIZE, MEAN)


# ---------------------------------------------------------------------------------------------
# What gets built


@pytest.mark.parametrize("name", ["model.pt2", "core.pt2"])
def test_predictions_and_gradients_match_the_model_it_was_exported_from(folder, reference, name):
    model = create_model(spec_of(resolve(folder, file=name)))
    assert isinstance(model, Classifier) and (model.input_size, model.num_classes) == (SIZE, CLASSES)
    x = torch.rand(5, 3, SIZE, SIZE)  # a batch size it was not exported with
    with torch.no_grad():
        torch.testing.assert_close(model(x), reference(normalised(x)), atol=1e-5, rtol=0)
    x.requires_grad_(True)
    (grad,) = torch.autograd.grad(model(x)[:, 3].sum(), x)
    assert grad.abs().sum() > 0
    xr = x.detach().clone().requires_grad_(True)
    (expected,) = torch.autograd.grad(reference(normalised(xr))[:, 3].sum(), xr)
    torch.testing.assert_close(grad, expected, atol=1e-5, rtol=1e-4)


def test_probe_works(folder):
    probe(spec_of(resolve(folder, file="model.pt2")))


def test_the_network_survives_what_the_harness_does_to_models(folder, reference):
    net = exported_source.build(spec_of(resolve(folder, file="model.pt2")))
    net.train()  # a GraphModule's own train() raises: the wrapper only flips its flag
    net.eval()
    assert not any(m.training for m in net.modules())
    copied = copy.deepcopy(net).to("cpu").requires_grad_(False)
    assert not any(p.requires_grad for p in copied.parameters())
    x = torch.rand(3, 3, SIZE, SIZE, requires_grad=True)
    copied(x).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    folded = fastpath.fold_batchnorm(copied)
    with torch.no_grad():
        torch.testing.assert_close(folded(x), reference(x), atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", ["model.pt2", "core.pt2"])
def test_the_fast_path_levers_keep_predictions(folder, reference, name):
    # fold_bn, channels_last, frozen: the core-ATen program's view ops must take channels-last input
    model = fastpath.prepare(create_model(spec_of(resolve(folder, file=name))), "cpu")
    assert not any(m.training for m in model.modules())
    x = torch.rand(4, 3, SIZE, SIZE)
    with torch.no_grad():
        torch.testing.assert_close(model(x), reference(normalised(x)), atol=1e-5, rtol=0)


def test_tensor_constants_move_with_the_network(tmp_path):
    class Scaled(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(3, 4)
            self.scale = torch.tensor([2.0])  # neither parameter nor buffer: a lifted constant

        def forward(self, x):
            return self.fc(x.mean((2, 3))) * self.scale

    export(Scaled().eval(), tmp_path / "scaled.pt2", {"mean": [0, 0, 0], "std": [1, 1, 1]}, size=16)
    net = exported_source.build(spec_of(resolve(tmp_path, file="scaled.pt2")))
    assert {b.device.type for b in net.to("meta").buffers()} == {"meta"}


# ---------------------------------------------------------------------------------------------
# Errors: one line each, naming the key and what is wrong


def test_a_missing_file_is_named(tmp_path):
    message = error(tmp_path, file="nope.pt2")
    assert message == f"models[0].file: file not found: {(tmp_path / 'nope.pt2').resolve()}"


def test_a_file_that_is_not_a_program(tmp_path):
    (tmp_path / "junk.pt2").write_bytes(b"not a zip at all")
    message = error(tmp_path, file="junk.pt2")
    assert message.startswith(f"models[0].file: {(tmp_path / 'junk.pt2').resolve()} cannot be loaded as a torch.export program (")
    assert "torch.export.save" in message


def test_a_card_that_is_not_json(tmp_path, folder):
    (tmp_path / "model.pt2").write_bytes((folder / "model.pt2").read_bytes())
    (tmp_path / "model.json").write_text("{not json")
    assert error(tmp_path, file="model.pt2").startswith(f"models[0].file: the card {tmp_path.resolve() / 'model.json'} is not valid JSON")


def test_a_fixed_batch_size_is_refused_with_how_to_export(tmp_path, reference):
    export(reference, tmp_path / "fixed.pt2", CARD, dynamic_shapes=None)
    message = error(tmp_path, file="fixed.pt2")
    assert message.startswith("models[0].file: the program's batch dimension is fixed at 2")
    assert 'dynamic_shapes={"x": {0: torch.export.Dim("batch")}}' in message


def test_grey_input_is_refused(tmp_path):
    grey = nn.Sequential(nn.Conv2d(1, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 10)).eval()
    export(grey, tmp_path / "grey.pt2", CARD, channels=1, dynamic_shapes={"input": {0: torch.export.Dim("batch")}})
    message = error(tmp_path, file="grey.pt2")
    assert message.startswith("models[0].file: the program's input input has 1 channels") and "(N, 3, H, W)" in message


def test_two_inputs_are_refused(tmp_path):
    class Two(nn.Module):
        def forward(self, x, y):
            return x.mean((2, 3)) + y.mean((2, 3))

    x = torch.rand(2, 3, 16, 16)
    program = torch.export.export(Two(), (x, x), dynamic_shapes={"x": {0: torch.export.Dim("b")}, "y": {0: torch.export.Dim("b")}})
    torch.export.save(program, str(tmp_path / "two.pt2"))
    assert error(tmp_path, file="two.pt2").startswith("models[0].file: the program takes 2 inputs (x, y)")


def test_a_size_that_contradicts_the_program(folder):
    message = error(folder, file="model.pt2", input_size=96)
    assert message.startswith("models[0].input_size: 96 does not fit the program, exported for 64×64 images")
    assert error(folder, file="model.pt2", num_classes=12).startswith(
        "models[0].num_classes: 12 does not fit the program, which returns 10 logits")


def test_mean_and_std_are_required_from_the_entry_or_the_card(tmp_path, reference):
    export(reference, tmp_path / "bare.pt2")
    message = error(tmp_path, file="bare.pt2")
    assert message.startswith("models[0].mean: is required") and "bare.json" in message and "suite entry" in message
    assert resolve(tmp_path, file="bare.pt2", mean=list(MEAN), std=list(STD))["num_classes"] == CLASSES


def test_a_program_exported_in_training_mode_is_refused(tmp_path):
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                        nn.Dropout(0.5), nn.Linear(4, 10))  # left in training mode
    export(net, tmp_path / "train.pt2", CARD, dynamic_shapes={"input": {0: torch.export.Dim("batch")}})
    message = error(tmp_path, file="train.pt2")
    assert message.startswith("models[0].file: the program was exported in training mode (")
    assert "BatchNorm" in message and "dropout" in message and "model.eval()" in message


def test_a_program_that_cannot_be_differentiated_is_refused(tmp_path):
    class Frozen(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.fc = nn.Conv2d(3, 4, 3), nn.Linear(4, 10)

        def forward(self, x):
            with torch.no_grad():  # captured into the graph: no gradient reaches the input
                h = self.conv(x)
            return self.fc(h.mean((2, 3)))

    export(Frozen().eval(), tmp_path / "frozen.pt2", CARD)
    message = error(tmp_path, file="frozen.pt2")
    assert message.startswith("models[0].file: this exported program cannot be differentiated (")
    assert message.endswith("re-export it from a model in eval mode without torch.no_grad / inference_mode")


def test_a_checkpoint_is_refused(folder):
    message = error(folder, file="model.pt2", checkpoint="model.pt")
    assert message.startswith("models[0].checkpoint: an exported program carries its own weights")
