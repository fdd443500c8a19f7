"""The authors' AutoAttack as an attack source (bench/attacks/autoattack_attacks.py): the authors' code run as the
harness runs every attack, the same images a direct call gives, which of its attacks broke each image, and
torchattacks' re-implementation beside it."""

from __future__ import annotations

import copy
import json
import sys

import pandas as pd
import pytest
import torch
import yaml

from bench.attacks import autoattack_attacks as aa
from bench.suite import SuiteError, load_suite
from tests import masked_models as mm

pytest.importorskip("pyautoattack")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return mm.write_images(tmp_path_factory.mktemp("aa") / "data")


def _suite(tmp_path, data, attacks, classes=10, **extra) -> dict:
    model = mm.entry("robust")
    model["kwargs"]["classes"] = classes
    model["num_classes"] = classes
    return {"name": "aa", "seed": 0, "data": {"source": "imagefolder", "path": str(data), "image_size": 16},
            "models": [model], "attacks": attacks, "batch_size": 12, **extra}


def _run(tmp_path, doc):
    from bench.runner import run_suite

    path = tmp_path / "aa.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    result = run_suite(load_suite(path), tmp_path / "results", tmp_path / "reports")
    df = pd.read_parquet(result.run_dir / "results.parquet").set_index("attack")
    return result, df, pd.read_parquet(result.run_dir / "predictions.parquet")


STANDARD = {"name": "aa", "type": "autoattack/standard", "eps": "8/255"}
TORCHATTACKS = {"name": "aa-ta", "type": "autoattack", "eps": "8/255", "version": "standard", "n_classes": 10}


@pytest.fixture(scope="module")
def both(tmp_path_factory, data):
    """The authors' standard AutoAttack and torchattacks' on the model whose robust accuracy at 8/255 is known: 6 of 12."""
    tmp = tmp_path_factory.mktemp("both")
    return _run(tmp, _suite(tmp, data, [STANDARD, TORCHATTACKS]))


@pytest.mark.slow  # make test-slow (CI runs it): keeps make test within its minutes
def test_the_authors_autoattack_finds_exactly_the_images_that_are_not_robust(both):
    _, df, predictions = both
    row = df.loc["aa"]
    assert row["status"] == "ok" and row["attack_source"] == "autoattack" and row["attack_type"] == "autoattack/standard"
    assert row["robust_acc"] == mm.ROBUST_AT_8 and row["clean_acc"] == 1.0 and row["norm"] == "Linf"
    assert row["forward_passes"] > 0 and row["backward_passes"] > 0  # its queries counted by the harness's wrapper
    assert json.loads(row["attack_args"]) == {"eps": 8 / 255, "norm": "Linf", "seed": None, "target": None}


@pytest.mark.slow  # make test-slow (CI runs it): keeps make test within its minutes
def test_each_broken_image_names_the_attack_of_the_ensemble_that_broke_it(both):
    _, df, predictions = both
    mine = predictions[predictions["cell_id"] == df.loc["aa", "cell_id"]]
    broken = mine["robust_pred"] != mine["label"]
    # APGD-CE, the first of the ensemble, breaks every image that can be broken here; the rest stand
    assert mine.loc[broken, "broken_by"].tolist() == ["apgd-ce"] * 6
    assert mine.loc[~broken, "broken_by"].isna().all()
    # other attacks have no ensemble to attribute: empty
    theirs = predictions[predictions["cell_id"] == df.loc["aa-ta", "cell_id"]]
    assert theirs["broken_by"].isna().all()


@pytest.mark.slow  # make test-slow (CI runs it): keeps make test within its minutes
def test_the_report_leads_with_the_authors_figure_and_puts_torchattacks_beside_it(both):
    result, df, _ = both
    text = result.report
    section = text.split("## AutoAttack: the authors' code, the number to cite", 1)[1].split("\n## ", 1)[0]
    assert "| model | defense | ε | norm | version | authors' | torchattacks' |" in " ".join(section.split()).replace(" |", " |")
    assert "50.0 % [25–75]" in section and "| 50.0 %" in section
    assert "initial accuracy 100.0 %; robust accuracy after APGD-CE 50.0 %, after APGD-T 50.0 %, after FAB-T 50.0 %, " \
           "after SQUARE 50.0 %" in " ".join(section.split())


@pytest.mark.slow  # make test-slow (CI runs it): keeps make test within its minutes
def test_torchattacks_and_the_authors_autoattack_are_one_family_for_the_cross_check(both):
    from bench.audit.crosscheck import comparisons

    result, df, predictions = both
    table = comparisons(df.reset_index(), predictions)
    (pair,) = table.to_dict("records")
    assert pair["family"] == "AutoAttack (standard) Linf ε=8/255"
    assert {pair["source_a"], pair["source_b"]} == {"autoattack", "torchattacks"}
    assert pair["only_a"] == pair["only_b"] == 0 and pair["agree"]


def test_a_cell_gives_exactly_what_the_authors_code_gives_called_directly(tmp_path):
    """Same model, images, seed and batch: the float adversarial images are identical to the last bit."""
    from pyautoattack import AutoAttack

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 10)).eval()
    x, y = torch.rand(20, 3, 8, 8), torch.randint(0, 10, (20,))
    y = model(x).argmax(1)  # every image right to begin with
    chosen = ["apgd-ce", "apgd-t", "fab-t"]  # the standard version less Square's 5,000 queries: seconds, not a minute
    ours = aa.AuthorsAutoAttack(model, "custom", 2 / 255, "Linf", 7, chosen, 10)(x, y)
    direct, _ = AutoAttack(model, attacks=chosen, eps=2 / 255, norm="Linf", seed=7, version="custom").run_standard_evaluation(
        x, y, batch_size=20)
    assert torch.equal(ours, direct)
    assert 0 < int((model(direct).argmax(1) != y).sum()) < 20  # neither nothing nor everything broken: a real test


def test_the_harness_seed_reaches_the_authors_code_and_a_suite_may_pin_it(tmp_path, data):
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(_suite(tmp_path, data, [dict(STANDARD, seed=0), dict(STANDARD, name="free")])))
    specs = {c.attack.name: c.attack for c in load_suite(path).cells()}
    built = {n: aa.build(aa.lookup(s.type), s, mm.build("robust", classes=10), seed=1234) for n, s in specs.items()}
    assert built["aa"].seed == 0 and built["free"].seed == 1234


@pytest.mark.parametrize("entry, key, words", [
    ({"type": "autoattack/fast"}, "attacks[0].type", "did you mean autoattack/"),
    ({"norm": "L3"}, "attacks[0]", "norm must be one of Linf, L2, L1"),
    ({"type": "autoattack/custom", "attacks": ["apgd-ce", "pgd"]}, "attacks[0]", "attacks must be a list of distinct names"),
    ({"seed": "zero"}, "attacks[0]", "seed must be an integer"),
    ({"restarts": 3}, "attacks[0].restarts", "no random start"),
])
def test_bad_entries_are_one_line_suite_errors(tmp_path, data, entry, key, words):
    doc = _suite(tmp_path, data, [dict(STANDARD, **entry)])
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(doc))
    with pytest.raises(SuiteError) as err:
        load_suite(path)
    message = str(err.value)
    assert "\n" not in message and f": {key}: " in message and words in message, message


def test_every_version_and_norm_loads(tmp_path, data):
    attacks = [dict(STANDARD, name=f"v-{v}", type=f"autoattack/{v}", **({"attacks": ["apgd-ce", "fab"]} if v == "custom" else {}))
               for v in aa.VERSIONS] + [dict(STANDARD, name=f"n-{n}", norm=n, eps=0.5) for n in ("L2", "L1")]
    path = tmp_path / "all.yaml"
    path.write_text(yaml.safe_dump(_suite(tmp_path, data, attacks)))
    suite = load_suite(path)
    assert {(c.attack.type, c.attack.norm) for c in suite.cells()} == {
        ("autoattack/standard", "Linf"), ("autoattack/plus", "Linf"), ("autoattack/rand", "Linf"),
        ("autoattack/custom", "Linf"), ("autoattack/standard", "L2"), ("autoattack/standard", "L1")}


def test_a_model_with_two_classes_runs_the_targeted_attacks_with_the_one_target_it_has():
    """The standard version's APGD-T and FAB-T target 9 classes; a 2-class model has one other (the authors' code
    would raise)."""
    model = mm.build("robust", classes=2)
    x = torch.stack([torch.full((3, 16, 16), v / 255) for v in (100, 124, 155, 131)])
    y = torch.tensor([0, 0, 1, 1])
    attack = aa.AuthorsAutoAttack(model, "custom", 8 / 255, "Linf", 0, ["apgd-t", "fab-t"], 2)
    adv = attack(x, y)  # APGD-T left out (its DLR loss needs 4 classes): FAB-T with one target class
    assert (model(adv).argmax(1) != y).tolist() == [False, True, False, True]  # 124 and 131 are within 8 levels of ½
    assert attack.broken_by == [None, "fab-t", None, "fab-t"]


def test_without_pyautoattack_the_suite_loads_and_its_cells_are_skipped_with_the_install_command(tmp_path, data, monkeypatch):
    monkeypatch.setitem(sys.modules, "pyautoattack", None)  # import pyautoattack now raises ImportError
    doc = _suite(tmp_path, data, [STANDARD, {"name": "fgsm", "type": "fgsm", "eps": "8/255"}])
    _, df, _ = _run(tmp_path, copy.deepcopy(doc))
    assert df.loc["aa", "status"] == "skipped" and "pip install -e '.[autoattack]'" in df.loc["aa", "reason"]
    assert df.loc["fgsm", "status"] == "ok"
