"""Models: the registry, the [0,1]-in wrapper, the offline ImageNet model, checkpoints."""

from __future__ import annotations

import os
import pickle
import urllib.error

import pytest
import torch

from bench.data import load_dataset
from bench.models import (
    ARCHS,
    CheckpointError,
    Classifier,
    CustomCNN,
    ModelUnavailable,
    load_checkpoint,
)
from bench.sources import create_model
from bench.suite import DataSpec, ModelSpec


def test_bundled_imagenet_model_classifies_the_cat_photo_as_a_cat():
    model = create_model(ModelSpec("lite0", "efficientnet_lite0", "imagenet", num_classes=1000, input_size=224))
    ds = load_dataset(DataSpec("samples", limit=4))
    cat = ds.ids.index("chelsea:full")
    with torch.no_grad():
        logits = model(ds.images[cat : cat + 1].float() / 255)
    assert 281 <= int(logits.argmax()) <= 285  # tabby, tiger cat, Persian, Siamese, Egyptian cat
    assert model.class_names[int(logits.argmax())].endswith("cat") or "tabby" in model.class_names[int(logits.argmax())]


def test_bundled_imagenet_model_gets_the_espresso_right():
    model = create_model(ModelSpec("lite0", "efficientnet_lite0", "imagenet", num_classes=1000, input_size=224))
    ds = load_dataset(DataSpec("samples", limit=4))
    i = ds.ids.index("coffee:full")
    with torch.no_grad():
        assert int(model(ds.images[i : i + 1].float() / 255).argmax()) == 967


def test_models_are_frozen_and_in_eval_mode():
    model = create_model(ModelSpec("cnn", "custom_cnn", None, num_classes=2, input_size=96))
    assert not model.training
    assert not any(p.requires_grad for p in model.parameters())


def test_random_init_is_repeatable_with_the_seed():
    spec = ModelSpec("cnn", "custom_cnn", None, num_classes=2, input_size=96)
    a, b, c = create_model(spec, seed=1), create_model(spec, seed=1), create_model(spec, seed=2)
    wa, wb, wc = (m.net.classifier[-1].weight for m in (a, b, c))
    assert torch.equal(wa, wb) and not torch.equal(wa, wc)


def test_wrapper_normalises_inside_with_its_own_mean_and_std():
    net = torch.nn.Identity()
    model = Classifier(net, mean=(0.5, 0.25, 0.0), std=(0.5, 0.25, 1.0), input_size=4, num_classes=3)
    x = torch.ones(1, 3, 2, 2)
    out = model(x)
    assert torch.allclose(out[0, :, 0, 0], torch.tensor([1.0, 3.0, 1.0]))


def test_custom_cnn_matches_the_seed_architecture_at_224():
    net = CustomCNN(num_classes=2, input_size=224)
    assert net.classifier[1].in_features == 300 * 5 * 5 == 7500
    assert net(torch.zeros(2, 3, 224, 224)).shape == (2, 2)
    assert [m.out_channels for m in net.features if isinstance(m, torch.nn.Conv2d)] == [15, 75, 150, 300, 300]


def test_resnet18_without_weights_on_disk_says_which_file_to_put_where(monkeypatch, tmp_path):
    def offline(*args, **kwargs):
        raise urllib.error.URLError("Name or service not known")

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))  # an empty hub cache
    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    with pytest.raises(ModelUnavailable) as err:
        create_model(ModelSpec("r18", "resnet18", "imagenet", num_classes=1000, input_size=224))
    msg = str(err.value)
    assert "resnet18-f37072fd.pth" in msg and "put https://download.pytorch.org/models/resnet18-f37072fd.pth at" in msg
    assert os.path.join("hub", "checkpoints") in msg


def test_resnet18_random_init_needs_no_download():
    model = create_model(ModelSpec("r18", "resnet18", None, num_classes=10, input_size=64))
    assert model(torch.zeros(1, 3, 64, 64)).shape == (1, 10)


def test_registry_names_the_four_architectures():
    assert set(ARCHS) == {"resnet18", "efficientnet_lite0", "custom_cnn", "small_cnn"}


def test_small_cnn_takes_the_digits_sizes_and_refuses_too_small_ones():
    from bench.models import SmallCNN

    for size in (8, 16, 32):
        assert SmallCNN(10, size)(torch.zeros(2, 3, size, size)).shape == (2, 10)
    with pytest.raises(ValueError, match="input_size 4 is too small for small_cnn"):
        SmallCNN(10, 4)


def test_checkpoint_round_trip(tmp_path):
    spec = ModelSpec("cnn", "custom_cnn", None, num_classes=2, input_size=96)
    trained = create_model(spec, seed=5)
    path = tmp_path / "cnn.pt"
    torch.save(trained.net.state_dict(), path)
    loaded = create_model(ModelSpec("cnn", "custom_cnn", None, checkpoint=str(path), num_classes=2, input_size=96), seed=9)
    assert torch.equal(loaded.net.classifier[-1].weight, trained.net.classifier[-1].weight)


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


def test_a_pickle_that_runs_code_is_refused(tmp_path):
    path = tmp_path / "evil.pt"
    with path.open("wb") as f:
        pickle.dump({"weight": _Evil()}, f)
    with pytest.raises(CheckpointError, match="cannot be loaded safely"):
        load_checkpoint(CustomCNN(2, 96), path)


def test_a_mismatched_checkpoint_names_missing_and_unexpected_keys(tmp_path):
    state = CustomCNN(2, 96).state_dict()
    state["extra.weight"] = torch.zeros(1)
    del state["classifier.1.bias"]
    path = tmp_path / "bad.pt"
    torch.save(state, path)
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(CustomCNN(2, 96), path)
    assert "missing keys: classifier.1.bias" in str(err.value) and "unexpected keys: extra.weight" in str(err.value)


def test_a_truncated_checkpoint_is_a_clear_error(tmp_path):
    path = tmp_path / "cut.pt"
    torch.save(CustomCNN(2, 96).state_dict(), path)
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="cut.pt"):
        load_checkpoint(CustomCNN(2, 96), path)


def test_probe_builds_without_weights_and_catches_shape_problems_before_anything_runs():
    from bench.models import ProbeError
    from bench.sources import probe
    from bench.suite import ModelSpec

    probe(ModelSpec("cnn", "custom_cnn", None, num_classes=2, input_size=96))
    probe(ModelSpec("lite0", "efficientnet_lite0", "imagenet", num_classes=1000, input_size=224))  # weights not loaded
    with pytest.raises(ProbeError, match=r"1×3×64×64 probe batch fails: ValueError: input_size 64 is too small"):
        probe(ModelSpec("cnn", "custom_cnn", None, num_classes=2, input_size=64))


def test_probe_checks_the_output_shape(monkeypatch):
    from bench import models
    from bench.models import ArchInfo, ProbeError
    from bench.sources import probe
    from bench.suite import ModelSpec

    wrong = lambda spec: torch.nn.Sequential(torch.nn.Flatten(), torch.nn.LazyLinear(spec.num_classes + 1))
    monkeypatch.setitem(models.ARCHS, "wrong", ArchInfo(wrong, (None,), 2))
    with pytest.raises(ProbeError, match=r"gives output \(1, 3\), expected \(1, 2\)"):
        probe(ModelSpec("w", "wrong", None, num_classes=2, input_size=16))
