"""Suite files: the documented example works as written; every bad input is one clear error."""

from __future__ import annotations

import copy
import math
import re
from pathlib import Path

import pytest

from bench.suite import SuiteError, format_eps, load_suite

TUTORIAL = Path(__file__).resolve().parents[1] / "suites" / "tutorial.yaml"


def test_the_tutorial_suite_expands_to_its_full_grid():
    suite = load_suite(TUTORIAL)
    cells = suite.cells()
    # 2 models x (3 attacks x 2 eps) x 5 defenses
    assert len(cells) == 60
    assert {c.defense.label for c in cells} == {"none", "jpeg-q90", "jpeg-q75", "jpeg-q50", "jpeg-q25"}
    sgd = [c for c in cells if c.attack.name == "sgd-goldfish"]
    assert {c.attack.eps for c in sgd} == {2 / 255, 10 / 255}
    assert all(c.attack.target == 1 and c.attack.kwargs == {"steps": 30, "lr": 0.1, "momentum": 0.1} for c in sgd)
    pgd = next(c for c in cells if c.attack.name == "pgd")
    assert pgd.attack.kwargs["alpha"] == pytest.approx(1 / 255)
    assert len({c.cell_id for c in cells}) == 60


def test_fractions_and_numbers_both_work_for_eps(write_suite, tiny_suite):
    tiny_suite["attacks"][0]["eps"] = [0.5, "1/4", 1]
    cells = load_suite(write_suite(tiny_suite)).cells()
    assert sorted({c.attack.eps for c in cells if c.attack.name == "fgsm"}) == [0.25, 0.5, 1.0]


def test_include_and_exclude_prune_the_grid(write_suite, tiny_suite):
    full = len(load_suite(write_suite(tiny_suite)).cells())
    assert full == 3 * 2
    tiny_suite["exclude"] = [{"attack": "fgsm", "eps": "8/255"}]
    assert len(load_suite(write_suite(tiny_suite)).cells()) == full - 2
    tiny_suite["include"] = [{"defense": "jpeg"}]
    cells = load_suite(write_suite(tiny_suite)).cells()
    assert {c.defense.label for c in cells} == {"jpeg-q50"} and len(cells) == 2


def test_attack_seed_ignores_the_defense_but_not_the_attack(write_suite, tiny_suite):
    cells = load_suite(write_suite(tiny_suite)).cells()
    by_attack = {}
    for c in cells:
        by_attack.setdefault((c.attack.name, c.attack.eps), set()).add(c.attack_seed)
    assert all(len(seeds) == 1 for seeds in by_attack.values())
    assert len({next(iter(s)) for s in by_attack.values()}) == len(by_attack)


def test_format_eps_reads_as_a_fraction_of_255():
    assert format_eps(10 / 255) == "10/255"
    assert format_eps(0.3) == "0.3"
    assert format_eps(math.nan) == "-"


BAD = [
    # (mutation, key path expected in the message, words expected in the message)
    (lambda d: d.update(colour="red"), "colour", "allowed"),
    (lambda d: d.update(seed="zero"), "seed", "integer"),
    (lambda d: d.update(batch_size=0), "batch_size", ">= 1"),
    (lambda d: d["models"][0].update(arch="vgg99"), "models[0].arch", "custom_cnn"),
    (lambda d: d["models"][0].update(weights="imagenet"), "models[0].weights", "allowed: null"),
    (lambda d: d["models"].append(dict(d["models"][0])), "models[1].name", "duplicate"),
    (lambda d: d["models"][0].update(num_classes=1), "models[0].num_classes", ">= 2"),
    (lambda d: d["attacks"][0].update(type="teleport"), "attacks[0].type", "pgd"),
    (lambda d: d["attacks"][1].update(eps=0), "attacks[1].eps", "(0, 1]"),
    (lambda d: d["attacks"][1].update(eps=1.5), "attacks[1].eps", "(0, 1]"),
    (lambda d: d["attacks"][0].update(eps=["2/255", "10/0"]), "attacks[0].eps[1]", "division by zero"),
    (lambda d: d["attacks"][0].update(eps="lots"), "attacks[0].eps", "fraction"),
    (lambda d: d["attacks"][1].update(steps="ten"), "attacks[1].steps", "integer"),
    (lambda d: d["attacks"][1].update(gamma=3), "attacks[1].gamma", "allowed"),
    (lambda d: d["attacks"][1].pop("eps"), "attacks[1].eps", "required"),
    (lambda d: d["attacks"][1].update(target=5), "attacks[1].target", "does not exist"),
    (lambda d: d.update(defenses=["none", {"type": "jpeg", "quality": 101}]), "defenses[1].quality", "between 1 and 100"),
    (lambda d: d.update(defenses=["none", {"type": "jpeg", "quality": [50, 0]}]), "defenses[1].quality[1]", "between 1 and 100"),
    (lambda d: d.update(defenses=["blur"]), "defenses[0].type", "jpeg"),
    (lambda d: d.update(defenses=["none", "none"]), "defenses", "duplicate"),
    (lambda d: d.update(devices=["tpu"]), "devices[0]", "cuda"),
    (lambda d: d.update(precisions=["fp8"]), "precisions[0]", "bf16"),
    (lambda d: d.update(name="../escape"), "name", "letters"),
    (lambda d: d.update(name="tiny\n"), "name", "letters"),  # a trailing newline would make a folder named so
    (lambda d: d.update(devices=["cuda:0\n"]), "devices[0]", "allowed"),
    (lambda d: d["models"][0].update(crop_pct=0.001), "models[0].crop_pct", "[0.25, 1]"),  # one image at 96,000 px
    (lambda d: d["models"][0].update(crop_pct=1e-6), "models[0].crop_pct", "[0.25, 1]"),
    (lambda d: d["models"][0].update(input_size=4096, crop_pct=0.3), "models[0].crop_pct", "must be <= 8192"),
    (lambda d: d["data"].update(max_pixels=10), "data.max_pixels", "4096"),
    # allowed one by one, but every image would be skipped: 8192² is over the default 64 M pixels
    (lambda d: d["models"][0].update(input_size=4096, crop_pct=0.5), "models[0].crop_pct", "over the data's pixel budget"),
    (lambda d: d["data"].update(max_pixels=5000), "data.max_pixels", "over the data's pixel budget"),
    (lambda d: d["data"].update(path="/no/such/folder"), "data.path", "not found"),
    (lambda d: d["data"].update(source="kaggle"), "data.source", "imagefolder"),
    (lambda d: d["data"].update(source="digit"), "data.source", "did you mean digits?"),
    (lambda d: d.update(defenses=["none", "jpg"]), "defenses[1].type", "did you mean jpeg?"),
    (lambda d: d.update(include=[{"model": "nobody"}]), "include/exclude", "empty grid"),
    (lambda d: d.pop("models"), "models", "required"),
]

# The executor's own keys are checked where the executor is chosen (bench.executors.from_suite: the CLI, --dry-run
# included, and run_suite), with the suite file's line, before anything runs.
BAD_EXECUTOR = [
    ("slurm", "executor.type", "allowed: local, ray"),
    ({"type": "ray", "workers": 0}, "executor.workers", ">= 1"),
    ({"type": "ray", "max_retries": -1}, "executor.max_retries", ">= 0"),
    ({"type": "ray", "gpus": 2}, "executor.gpus", "allowed: type, address"),
    ({"type": "local", "workers": 2}, "executor.workers", "ray executor only"),
    ({"workers": 2}, "executor.type", "required"),
]


def _assert_one_line_error(path, key: str, words: str) -> None:
    """Loading ``path`` fails with one line: ``FILE[:LINE]: KEY: …`` containing ``words``."""
    with pytest.raises(SuiteError) as err:
        load_suite(path)
    msg = str(err.value)
    assert re.match(rf"{re.escape(str(path))}(:\d+)?: {re.escape(key)}: ", msg), msg
    assert words in msg, msg
    assert "\n" not in msg


@pytest.mark.parametrize("mutate,key,words", BAD, ids=[b[1] + ":" + b[2] for b in BAD])
def test_bad_input_names_the_file_the_key_and_what_is_allowed(write_suite, tiny_suite, mutate, key, words):
    doc = copy.deepcopy(tiny_suite)
    mutate(doc)
    path = write_suite(doc)
    _assert_one_line_error(path, key, words)


@pytest.mark.parametrize("entry,key,words", BAD_EXECUTOR, ids=[b[1] + ":" + b[2] for b in BAD_EXECUTOR])
def test_a_bad_executor_entry_names_the_file_the_line_and_the_key_where_the_executor_is_chosen(
        write_suite, tiny_suite, entry, key, words):
    from bench import executors
    from bench.runner import run_suite

    tiny_suite["executor"] = entry
    path = write_suite(tiny_suite)
    suite = load_suite(path)
    with pytest.raises(SuiteError) as err:
        executors.from_suite(suite)
    msg = str(err.value)
    assert re.match(rf"{re.escape(str(path))}:\d+: {re.escape(key)}: ", msg) and words in msg, msg
    with pytest.raises(SuiteError):  # and the run refuses before it makes a results folder
        run_suite(suite, path.parent / "results", path.parent / "reports")
    assert not (path.parent / "results").exists()


def test_the_suite_loader_does_not_import_the_executors():
    """No import circle suite → executors → cells → suite: loading a suite never imports an executor."""
    import subprocess
    import sys

    code = "import sys, bench.suite; print(sorted(m for m in sys.modules if m.startswith(('bench.executors', 'bench.cells'))))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True).stdout
    assert out.strip() == "[]"


def test_empty_dataset_is_an_error(write_suite, tiny_suite, tmp_path):
    empty = tmp_path / "empty"
    (empty / "a").mkdir(parents=True)
    tiny_suite["data"]["path"] = str(empty)
    with pytest.raises(SuiteError, match="dataset is empty"):
        load_suite(write_suite(tiny_suite))


def test_labels_beyond_the_models_classes_are_an_error(write_suite, tiny_suite, image_folder):
    (image_folder / "third").mkdir()
    (image_folder / "third" / "x.png").write_bytes((image_folder / "real" / "000.png").read_bytes())
    with pytest.raises(SuiteError, match=r"models\[0\].num_classes: .*labels up to 2"):
        load_suite(write_suite(tiny_suite))


@pytest.mark.parametrize(
    "text,words",
    [("name: [unclosed\n", "invalid YAML at line"), ("- just\n- a list\n", "must be a mapping"), ("", "empty")],
)
def test_yaml_that_is_not_a_suite(write_suite, text, words):
    with pytest.raises(SuiteError, match=words):
        load_suite(write_suite(text))


def test_relative_paths_resolve_against_the_suite_file(tmp_path, write_suite, tiny_suite, image_folder):
    tiny_suite["data"]["path"] = "imgs"  # image_folder is tmp_path/imgs, the suite sits in tmp_path
    suite = load_suite(write_suite(tiny_suite))
    assert suite.data.path == str(image_folder.resolve())


def test_compile_is_set_for_the_suite_and_overridden_per_model(write_suite, tiny_suite):
    tiny_suite["compile"] = True
    tiny_suite["models"].append({"name": "cnn2", "arch": "custom_cnn", "num_classes": 2, "compile": False})
    suite = load_suite(write_suite(tiny_suite))
    assert [m.compile for m in suite.models] == [True, False]
    tiny_suite["compile"] = "yes"
    with pytest.raises(SuiteError, match="compile: must be true or false"):
        load_suite(write_suite(tiny_suite))


def test_errors_point_at_the_line_of_the_key(write_suite):
    text = (TUTORIAL.read_text()).replace("eps: [2/255, 10/255]}", "eps: [2/255, 10/0]}", 1)
    path = write_suite(text)
    with pytest.raises(SuiteError) as err:
        load_suite(path)
    line = next(i for i, l in enumerate(text.splitlines(), 1) if "10/0" in l)
    assert str(err.value).startswith(f"{path}:{line}: attacks[1].eps[1]: division by zero")  # the fgsm line


@pytest.mark.parametrize(
    "subsampling,key,words",
    [
        (422, "defenses[1].subsampling", "got 422; allowed: 420 (4:2:0 chroma, what PIL and libjpeg save), 444"),
        ([420, "444"], "defenses[1].subsampling[1]", "allowed: 420 (4:2:0 chroma, what PIL and libjpeg save), 444"),
        (True, "defenses[1].subsampling", "must be 420 or 444, got True"),
        ("4:2:0", None, None),  # YAML reads an unquoted 4:2:0 as the base-60 number 14520
        ([], "defenses[1].subsampling", "must not be empty"),
    ],
)
def test_jpeg_subsampling_must_be_420_or_444(write_suite, tiny_suite, subsampling, key, words):
    import yaml

    tiny_suite["defenses"] = ["none", {"type": "jpeg", "quality": 50, "subsampling": subsampling}]
    text = yaml.safe_dump(tiny_suite, sort_keys=False)
    if subsampling == "4:2:0":
        text = text.replace("subsampling: '4:2:0'", "subsampling: 4:2:0")
        assert "subsampling: 4:2:0\n" in text
        key, words = "defenses[1].subsampling", "write 420, not 4:2:0"
    path = write_suite(text)
    _assert_one_line_error(path, key, words)


def test_jpeg_subsampling_defaults_to_420_and_lists_expand_with_quality(write_suite, tiny_suite):
    suite = load_suite(write_suite(tiny_suite))
    assert [(d.label, d.kwargs.get("subsampling")) for d in suite.defenses] == [("none", None), ("jpeg-q50", 420)]
    tiny_suite["defenses"] = ["none", {"type": "jpeg", "quality": [50, 75], "subsampling": [420, 444]}]
    suite = load_suite(write_suite(tiny_suite))
    assert [d.label for d in suite.defenses] == ["none", "jpeg-q50", "jpeg-q50-444", "jpeg-q75", "jpeg-q75-444"]
    assert {c.defense.label for c in suite.cells()} >= {"jpeg-q50-444", "jpeg-q75"}
    tiny_suite["defenses"] = ["none", {"type": "jpeg", "quality": 50, "subsampling": [444, 444]}]
    with pytest.raises(SuiteError, match="duplicate defenses: jpeg-q50-444"):
        load_suite(write_suite(tiny_suite))


def test_eps_is_validated_in_the_attacks_own_norm(write_suite, tiny_suite):
    tiny_suite["attacks"] = [{"name": "l2", "type": "pgdl2", "eps": [0.5, 2.0]}, {"name": "df", "type": "deepfool", "steps": 3}]
    suite = load_suite(write_suite(tiny_suite))
    assert [c.attack.eps for c in suite.cells() if c.attack.name == "l2"][::2] == [0.5, 2.0]
    assert {c.attack.eps for c in suite.cells() if c.attack.name == "df"} == {None}
    tiny_suite["attacks"] = [{"name": "l2", "type": "pgdl2", "eps": -1}]
    with pytest.raises(SuiteError, match=r"attacks\[0\]\.eps: must be > 0 \(L2 budget"):
        load_suite(write_suite(tiny_suite))
    tiny_suite["attacks"] = [{"name": "linf", "type": "apgd", "eps": 2.0}]  # apgd's default norm is Linf
    with pytest.raises(SuiteError, match=r"attacks\[0\]\.eps: must be in \(0, 1\] for an L-inf attack"):
        load_suite(write_suite(tiny_suite))
    tiny_suite["attacks"] = [{"name": "l2", "type": "apgd", "norm": "L2", "eps": 2.0}]
    assert load_suite(write_suite(tiny_suite)).cells()[0].attack.eps == 2.0


def test_a_model_that_cannot_take_its_input_size_is_a_suite_error(write_suite, tiny_suite):
    tiny_suite["data"]["image_size"] = 64
    with pytest.raises(SuiteError, match=r":\d+: data\.image_size: model 'cnn' \(custom_cnn\) at 64 px: a 1×3×64×64 probe batch fails"):
        load_suite(write_suite(tiny_suite))


def test_a_model_name_no_source_claims_is_a_suite_error(write_suite, tiny_suite):
    tiny_suite["models"] = [{"arch": "torchvison/resnet18"}]  # a typo in the source prefix
    with pytest.raises(SuiteError, match=r"models\[0\]\.arch: unknown model 'torchvison/resnet18'; allowed: resnet18, .*torchvision/<name>"):
        load_suite(write_suite(tiny_suite))


def test_the_executor_is_not_part_of_the_suite_digest(write_suite, tiny_suite):
    """The same grid gives the same table on any executor, so a run started locally resumes on Ray."""
    local = load_suite(write_suite(tiny_suite))
    tiny_suite["executor"] = {"type": "ray", "address": "auto", "workers": 3, "max_retries": 1}
    ray = load_suite(write_suite(tiny_suite, "ray.yaml"))
    from bench.executors import from_suite

    spec = from_suite(ray)
    assert spec.type == "ray" and spec.address == "auto" and spec.workers == 3
    assert spec.max_retries == 1 and spec.cpus_per_worker == 1
    assert from_suite(local).type == "local" and ray.digest() == local.digest()


def test_every_mistake_of_a_suite_is_found_in_one_pass_each_on_its_own_line(write_suite, tiny_suite):
    from bench.suite import SuiteErrors

    tiny_suite["models"].append({"arch": "tiny_cnn", "num_classes": 2})
    tiny_suite["attacks"][0]["type"] = "pgdd"
    tiny_suite["defenses"] = ["none", {"type": "jpeg", "quality": 150}]
    path = write_suite(tiny_suite)
    with pytest.raises(SuiteErrors) as err:
        load_suite(path)
    keys = [e.key for e in err.value.errors]
    assert keys == ["models[1].arch", "attacks[0].type", "defenses[1].quality"]
    lines = str(err.value).splitlines()
    assert len(lines) == 3 and all(re.match(rf"{re.escape(str(path))}:\d+: ", line) for line in lines)
    assert "did you mean pgd" in lines[1]


def test_the_cli_prints_one_error_line_per_mistake(write_suite, tiny_suite, capsys):
    from bench.cli import main

    tiny_suite["attacks"][0]["type"] = "pgdd"
    tiny_suite["devices"] = ["tpu"]
    assert main(["run", str(write_suite(tiny_suite)), "--dry-run"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and all(line.startswith("error: ") for line in err), err
