"""The ``factory`` model source: ``factory: "file.py:function"`` or ``"pkg.module:function"``.

Specification: the named code is imported and called; the returned network takes normalised images;
its preprocessing comes from the suite entry first, then from what the factory says (a returned dict,
``model.preprocessing``, attributes of the model); every problem is a one-line suite error naming the
entry key and what is wrong.
"""

from __future__ import annotations

import runpy
import textwrap
from pathlib import Path

import pytest
import torch
import torch.nn as nn

from bench import sources
from bench.models import Classifier, ProbeError
from bench.sources import Context, create_model, probe
from bench.sources import factory as factory_source
from bench.specs import ModelSpec

MEAN, STD, SIZE, CLASSES = (0.5, 0.45, 0.4), (0.25, 0.2, 0.3), 64, 10

# A 10-class CNN with no normalisation layer inside, saying its own preprocessing by attributes.
FACTORY_SOURCE = textwrap.dedent(
    """
    import torch
    import torch.nn as nn


    class TinyCNN(nn.Module):
        def __init__(self, width=8):
            super().__init__()
            self.features = nn.Sequential(
                nn.Conv2d(3, width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                nn.Conv2d(width, 16, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(4),
            )
            self.fc = nn.Linear(16 * 4 * 4, 10)
            self.mean = (0.5, 0.45, 0.4)
            self.std = (0.25, 0.2, 0.3)
            self.input_size = 64
            self.num_classes = 10

        def forward(self, x):
            return self.fc(torch.flatten(self.features(x), 1))


    def tiny_cnn(width=8):
        return TinyCNN(width)


    def with_dict(width=8):
        net = TinyCNN(width)
        del net.mean, net.std, net.input_size, net.num_classes
        return net, {"mean": [0.1, 0.2, 0.3], "std": [0.3, 0.3, 0.3], "input_size": 64, "num_classes": 10,
                     "class_names": [f"c{i}" for i in range(10)], "interpolation": "bicubic", "crop_pct": 0.9}


    def with_attribute():
        net = TinyCNN()
        net.preprocessing = {"mean": (0.2, 0.2, 0.2), "std": (0.5, 0.5, 0.5)}  # beats the attributes
        return net


    def bare(classes=10):
        return nn.Sequential(nn.Flatten(), nn.Linear(3 * 64 * 64, classes))


    def bad_std():
        return bare(), {"mean": [0, 0, 0], "std": [1, 1], "input_size": 64, "num_classes": 10}


    def tensor_mean():
        net = TinyCNN()
        del net.mean
        net.register_buffer("mean", torch.zeros(1, 3, 1, 1))
        return net


    def wrong_names():
        return TinyCNN(), {"class_names": ["a", "b"]}


    def fails():
        raise ValueError("no weights here")


    def not_a_module():
        return 42
    """
)


def fail(key: str, message: str) -> Exception:
    return ValueError(f"{key}: {message}")


def context(base: Path, card: dict | None = None) -> Context:
    return Context(key="models[0]", base=base, default_size=224, fail=fail, card=card)


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    (tmp_path / "nets.py").write_text(FACTORY_SOURCE)
    return tmp_path


def resolve(folder: Path, **entry) -> dict:
    return factory_source.resolve(entry, context(folder))


def spec_of(fields: dict, name: str = "mine") -> ModelSpec:
    return ModelSpec(name=name, source="factory", **fields)


def resolve_error(source, folder: Path, **entry) -> str:
    """The one-line suite error ``source`` raises for ``entry`` (shared with the exported source's tests)."""
    with pytest.raises(ValueError) as info:
        source.resolve(entry, context(folder))
    message = str(info.value)
    assert "\n" not in message, "suite errors are one line"
    return message


def error(folder: Path, **entry) -> str:
    return resolve_error(factory_source, folder, **entry)


# ---------------------------------------------------------------------------------------------
# What resolve decides


def test_resolve_reads_the_preprocessing_the_model_carries(folder):
    fields = resolve(folder, factory="nets.py:tiny_cnn", kwargs={"width": 4})
    assert fields["arch"] == f"{(folder / 'nets.py').resolve()}:tiny_cnn"  # an absolute path: the spec stands alone
    assert fields["kwargs"] == (("width", 4),)
    assert fields["weights"] is None
    assert (fields["mean"], fields["std"]) == (MEAN, STD)
    assert (fields["input_size"], fields["num_classes"]) == (SIZE, CLASSES)
    assert fields["class_names"] is None
    assert "resize_size" not in fields and "interpolation" not in fields  # not given: the spec's defaults


def test_kwargs_are_sorted_and_lists_become_tuples(folder):
    (folder / "kw.py").write_text(textwrap.dedent("""
        from nets import TinyCNN

        def make(width=8, sizes=(), name=""):
            assert isinstance(sizes, tuple)
            return TinyCNN(width)
        """))
    fields = resolve(folder, factory="kw.py:make", kwargs={"width": 4, "sizes": [1, [2, 3]], "name": "x"})
    assert fields["kwargs"] == (("name", "x"), ("sizes", (1, (2, 3))), ("width", 4))
    hash(spec_of(fields))  # a spec must hash
    assert isinstance(factory_source.build(spec_of(fields)), nn.Module)


def test_the_suite_entry_wins_over_what_the_factory_says(folder):
    fields = resolve(folder, factory="nets.py:tiny_cnn", mean=[0, 0, 0], std=[1, 1, 1], input_size=96,
                     num_classes=12, crop_pct=0.8, interpolation="nearest")
    assert (fields["mean"], fields["std"], fields["input_size"], fields["num_classes"]) == ((0, 0, 0), (1, 1, 1), 96, 12)
    assert (fields["resize_size"], fields["interpolation"]) == (120, "nearest")


def test_a_checkpoint_card_beats_the_factory_but_not_the_entry(folder):
    card = {"arch": "custom_cnn", "classes": ["fake", "real"], "num_classes": 2, "mean": [0.1, 0.1, 0.1],
            "std": [0.2, 0.2, 0.2], "input_size": 96}
    fields = factory_source.resolve({"factory": "nets.py:tiny_cnn", "input_size": 80}, context(folder, card))
    assert fields["mean"] == (0.1, 0.1, 0.1) and fields["num_classes"] == 2
    assert fields["class_names"] == ("fake", "real")
    assert fields["input_size"] == 80


def test_a_returned_dict_gives_preprocessing_and_build_returns_the_module_part(folder):
    fields = resolve(folder, factory="nets.py:with_dict")
    assert (fields["mean"], fields["std"]) == ((0.1, 0.2, 0.3), (0.3, 0.3, 0.3))
    assert fields["class_names"] == tuple(f"c{i}" for i in range(10))
    assert fields["interpolation"] == "bicubic"
    assert fields["resize_size"] == 71  # floor(64 / 0.9)
    net = factory_source.build(spec_of(fields))
    assert isinstance(net, nn.Module) and not isinstance(net, tuple)


def test_a_preprocessing_attribute_beats_plain_attributes(folder):
    fields = resolve(folder, factory="nets.py:with_attribute")
    assert (fields["mean"], fields["std"]) == ((0.2, 0.2, 0.2), (0.5, 0.5, 0.5))
    assert fields["input_size"] == SIZE  # still from the attribute


def test_a_module_path_target(tmp_path, monkeypatch):
    pkg = tmp_path / "site" / "tinypkg_for_bench"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "nets.py").write_text(FACTORY_SOURCE)
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    fields = resolve(tmp_path, factory="tinypkg_for_bench.nets:tiny_cnn")
    assert fields["arch"] == "tinypkg_for_bench.nets:tiny_cnn"
    assert fields["num_classes"] == CLASSES
    probe(spec_of(fields))


def test_files_with_the_same_name_in_two_folders_do_not_clash(tmp_path):
    for name, classes in (("a", 3), ("b", 5)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "model.py").write_text(textwrap.dedent(f"""
            import torch.nn as nn

            def make():
                net = nn.Sequential(nn.Flatten(), nn.Linear(3 * 16 * 16, {classes}))
                net.mean, net.std, net.input_size, net.num_classes = (0, 0, 0), (1, 1, 1), 16, {classes}
                return net
            """))
    a = resolve(tmp_path, factory="a/model.py:make")
    b = resolve(tmp_path, factory="b/model.py:make")
    assert (a["num_classes"], b["num_classes"]) == (3, 5)
    assert factory_source.build(spec_of(a))[1].out_features == 3
    assert factory_source.build(spec_of(b))[1].out_features == 5


def test_a_file_is_imported_once_and_can_import_files_beside_it(tmp_path):
    (tmp_path / "helper_for_bench_test.py").write_text("WIDTH = 4\n")
    (tmp_path / "counted.py").write_text(textwrap.dedent("""
        from pathlib import Path

        import helper_for_bench_test
        from nets import TinyCNN

        log = Path(__file__).with_name("imports.log")
        log.write_text(log.read_text() + "x" if log.exists() else "x")

        def make():
            return TinyCNN(helper_for_bench_test.WIDTH)
        """))
    (tmp_path / "nets.py").write_text(FACTORY_SOURCE)
    fields = resolve(tmp_path, factory="counted.py:make")
    create_model(spec_of(fields))
    probe(spec_of(fields))
    assert (tmp_path / "imports.log").read_text() == "x"


def test_resolve_calls_the_factory_on_the_cpu_without_touching_the_global_rng(folder):
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    resolve(folder, factory="nets.py:tiny_cnn")
    assert torch.equal(torch.rand(3), expected)


# ---------------------------------------------------------------------------------------------
# What gets built


def test_create_model_gives_a_classifier_that_predicts_as_the_factory_model_on_normalised_input(folder):
    fields = resolve(folder, factory="nets.py:tiny_cnn", kwargs={"width": 6})
    model = create_model(spec_of(fields), seed=3)
    assert isinstance(model, Classifier)
    assert (model.input_size, model.num_classes) == (SIZE, CLASSES)
    assert not model.training and not any(p.requires_grad for p in model.parameters())

    torch.manual_seed(3)  # create_model seeds torch before the factory draws its random init
    reference = runpy.run_path(str(folder / "nets.py"))["tiny_cnn"](width=6).eval()
    for (k, a), (_, b) in zip(model.net.state_dict().items(), reference.state_dict().items()):
        assert torch.equal(a, b), k
    x = torch.rand(4, 3, SIZE, SIZE)
    normalised = (x - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)
    with torch.no_grad():
        torch.testing.assert_close(model(x), reference(normalised), atol=1e-6, rtol=0)


def test_random_init_follows_the_seed(folder):
    spec = spec_of(resolve(folder, factory="nets.py:tiny_cnn"))
    weights = lambda seed: create_model(spec, seed=seed).net.fc.weight  # noqa: E731
    assert torch.equal(weights(0), weights(0))
    assert not torch.equal(weights(0), weights(1))


def test_probe_builds_and_checks_the_output_shape(folder):
    fields = resolve(folder, factory="nets.py:tiny_cnn")
    probe(spec_of(fields))
    with pytest.raises(ProbeError, match=r"output \(1, 10\), expected \(1, 7\)"):
        probe(spec_of({**fields, "num_classes": 7}))


def test_the_registry_routes_factory_entries_here(folder):
    assert sources.source_of({"factory": "nets.py:tiny_cnn"}) is factory_source
    assert sources.SOURCES["factory"] is factory_source
    spec = sources.resolve({"factory": "nets.py:tiny_cnn"}, context(folder), name="mine")
    assert (spec.source, spec.num_classes, spec.input_size, spec.mean) == ("factory", CLASSES, SIZE, MEAN)


# ---------------------------------------------------------------------------------------------
# Errors: one line each, naming the key and what is wrong


def test_a_missing_file_is_named(folder):
    message = error(folder, factory="missing.py:make")
    assert message.startswith("models[0].factory: file not found:")
    assert str((folder / "missing.py").resolve()) in message


@pytest.mark.parametrize("target", ["nets.py", "nets.py:", ":make", 42, "nets.py:not-a-name"])
def test_a_malformed_target_says_the_two_forms(folder, target):
    message = error(folder, factory=target)
    assert message.startswith("models[0].factory: must be 'pkg.module:function' or 'path/to/file.py:function'")


def test_a_module_that_is_not_installed(folder):
    message = error(folder, factory="no_such_pkg_for_bench.nets:make")
    assert message.startswith("models[0].factory: cannot import module 'no_such_pkg_for_bench.nets'")
    assert "ModuleNotFoundError" in message and "file.py:function" in message


@pytest.mark.parametrize("body, what", [
    ("raise RuntimeError('boom at import')\n", "RuntimeError: boom at import"),
    ("def make(:\n    pass\n", "SyntaxError"),
    ("import no_such_module_for_bench\n", "ModuleNotFoundError: No module named 'no_such_module_for_bench'"),
])
def test_a_file_that_fails_to_import_names_the_file_its_line_and_the_exception(folder, body, what):
    (folder / "broken.py").write_text(body)
    message = error(folder, factory="broken.py:make")
    assert message.startswith(f"models[0].factory: importing {(folder / 'broken.py').resolve()}:1 raises")
    assert what in message


def test_an_unknown_function_lists_the_closest_callables(folder):
    message = error(folder, factory="nets.py:tiny_cnm")
    assert message.startswith("models[0].factory: ")
    assert "has no function 'tiny_cnm'; did you mean tiny_cnn" in message
    assert "with_dict" in message  # the module's callables


def test_a_factory_that_raises(folder):
    message = error(folder, factory="nets.py:fails")
    assert message.startswith("models[0].factory: calling ")
    assert "raises ValueError: no weights here" in message


def test_wrong_kwargs_are_reported_as_the_call_failing(folder):
    message = error(folder, factory="nets.py:tiny_cnn", kwargs={"depth": 3})
    assert message.startswith("models[0].factory: calling ") and "depth=3" in message and "TypeError" in message


def test_a_factory_that_returns_something_else(folder):
    message = error(folder, factory="nets.py:not_a_module")
    assert message.startswith("models[0].factory: ") and "returns int, not a torch.nn.Module" in message


@pytest.mark.parametrize("field", ["mean", "std", "input_size", "num_classes"])
def test_required_preprocessing_missing_everywhere(folder, field):
    given = {"mean": [0, 0, 0], "std": [1, 1, 1], "input_size": 64, "num_classes": 10}
    del given[field]
    message = error(folder, factory="nets.py:bare", **given)
    assert message.startswith(f"models[0].{field}: is required")
    assert "suite entry" in message and f"model.{field}" in message


def test_a_bad_value_from_the_factory_blames_the_factory(folder):
    message = error(folder, factory="nets.py:bad_std")
    assert message == ("models[0].factory: std from the dict the factory returned: must be 3 numbers "
                       "(one per RGB channel), got 2 values")


def test_a_bad_value_in_the_entry_blames_the_entry_key(folder):
    assert error(folder, factory="nets.py:tiny_cnn", std=[1, 1, 1, 1]).startswith("models[0].std: must be 3 numbers")
    assert error(folder, factory="nets.py:tiny_cnn", std=[1, 0, 1]).startswith("models[0].std: must be > 0")
    assert error(folder, factory="nets.py:tiny_cnn", input_size=8).startswith("models[0].input_size: must be an integer")
    assert error(folder, factory="nets.py:tiny_cnn", crop_pct=1.5).startswith("models[0].crop_pct: must be a number")
    assert error(folder, factory="nets.py:tiny_cnn", crop_pct=0.001).startswith("models[0].crop_pct: must be a number in [0.25, 1]")
    assert error(folder, factory="nets.py:tiny_cnn", interpolation="lanczos").startswith("models[0].interpolation:")


def test_a_tensor_mean_is_refused_rather_than_normalising_twice(folder):
    message = error(folder, factory="nets.py:tensor_mean")
    assert message.startswith("models[0].factory: mean from the model's attributes: is a tensor")
    assert "mean: [0, 0, 0]" in message


def test_class_names_must_match_the_classes(folder):
    message = error(folder, factory="nets.py:wrong_names")
    assert message.startswith("models[0].factory: class_names from the dict the factory returned: must be a list of 10")


def test_kwargs_must_be_a_mapping_of_plain_values(folder):
    assert error(folder, factory="nets.py:tiny_cnn", kwargs=[1, 2]).startswith("models[0].kwargs: must be a mapping")
    assert error(folder, factory="nets.py:tiny_cnn", kwargs={"cfg": {"a": 1}}).startswith(
        "models[0].kwargs.cfg: must be a plain value")


def test_a_factory_that_loads_a_state_dict_validates_without_a_single_warning(tmp_path):
    import warnings

    import yaml

    from bench.suite import load_suite

    (tmp_path / "trained.py").write_text(
        "import torch, torch.nn as nn\n"
        "def make():\n"
        "    net = nn.Sequential(nn.Flatten(), nn.Linear(3 * 16 * 16, 10))\n"
        "    net.load_state_dict({k: torch.zeros(v.shape) for k, v in net.state_dict().items()})  # the usual way\n"
        "    net.mean, net.std, net.input_size, net.num_classes = (0.5,) * 3, (0.5,) * 3, 16, 10\n"
        "    return net\n")
    doc = {"name": "w", "data": {"source": "digits", "limit": 10, "image_size": 16},
           "models": [{"name": "f", "factory": "trained.py:make"}], "attacks": [{"type": "fgsm", "eps": 0.1}]}
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(doc))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        load_suite(tmp_path / "s.yaml")
    assert [str(w.message)[:80] for w in caught] == []


def test_a_factory_file_that_raises_on_import_names_the_line_in_that_file(tmp_path):
    import yaml

    from bench.suite import SuiteError, load_suite

    (tmp_path / "broken.py").write_text("import torch\n\n\nraise RuntimeError('no GPU here')\n")
    doc = {"name": "b", "data": {"source": "digits", "limit": 4, "image_size": 16},
           "models": [{"factory": "broken.py:make"}], "attacks": [{"type": "fgsm", "eps": 0.1}]}
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(doc))
    with pytest.raises(SuiteError, match=r"models\[0\]\.factory: importing .*broken\.py:4 raises RuntimeError: no GPU here"):
        load_suite(tmp_path / "s.yaml")
    (tmp_path / "broken.py").write_text("def make(:\n    pass\n")
    with pytest.raises(SuiteError, match=r"broken\.py:1 raises SyntaxError"):
        load_suite(tmp_path / "s.yaml")
