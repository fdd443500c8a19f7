"""Attack sources: torchattacks, foolbox, ART and the user's own python attack, through one harness path."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import pandas as pd
import pytest
import yaml

from bench import attacks
from bench.runner import run_suite
from bench.suite import SuiteError, load_suite

README_ATTACK = Path(__file__).resolve().parent.parent / "suites" / "attacks" / "margin_pgd.py"


def _suite(tmp_path: Path, attack_entries: list[dict], limit: int = 12, **extra) -> Path:
    doc = {"name": "sources", "seed": 1, "data": {"source": "digits", "limit": limit, "image_size": 16},
           "models": [{"name": "m", "arch": "small_cnn", "num_classes": 10}], "attacks": attack_entries,
           "batch_size": limit, **extra}
    path = tmp_path / "suite.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def _run(tmp_path: Path, path: Path) -> tuple[pd.DataFrame, pd.DataFrame, Path]:
    result = run_suite(load_suite(path), tmp_path / "results", tmp_path / "reports")
    table = pd.read_parquet(result.run_dir / "results.parquet").set_index("attack")
    return table, pd.read_parquet(result.run_dir / "predictions.parquet"), result.run_dir


def _error(path: Path) -> str:
    with pytest.raises(SuiteError) as info:
        load_suite(path)
    return str(info.value)


# --- the registry ---------------------------------------------------------------------------------


def test_a_type_names_its_source_and_a_bare_type_stays_torchattacks():
    assert attacks.source_name("pgd") == "torchattacks"
    assert attacks.source_name("torchattacks/PGD") == "torchattacks"
    assert attacks.source_name("foolbox/LinfPGD") == "foolbox"
    assert attacks.source_name("art/SquareAttack") == "art"
    assert attacks.source_name("python") == "python"
    assert attacks.lookup("torchattacks/PGD") is attacks.lookup("pgd")
    assert attacks.lookup("foolbox/linfpgd").name == "foolbox/LinfPGD"  # case-insensitive, canonical spelling kept


@pytest.mark.parametrize("type_name, hint", [
    ("pgdd", "did you mean pgd"),
    ("foolbox/LinfPDG", "did you mean foolbox/LinfPGD"),
    ("art/ProjectedGradientDescnt", "did you mean art/ProjectedGradientDescent"),
    ("cleverhans/PGD", "allowed: a torchattacks class"),
])
def test_an_unknown_attack_names_the_line_the_key_and_the_closest_match(tmp_path, type_name, hint):
    message = _error(_suite(tmp_path, [{"type": type_name, "eps": 0.1}]))
    assert "suite.yaml:" in message and "attacks[0].type" in message and hint in message, message


@pytest.mark.parametrize("entry, key, words", [
    ({"type": "foolbox/LinfPGD", "eps": 0.1, "stepz": 5}, "attacks[0].stepz", "unknown key; allowed:"),
    ({"type": "foolbox/LinfPGD", "eps": 0.1, "steps": "many"}, "attacks[0].steps", "must be an integer"),
    ({"type": "foolbox/LinfPGD"}, "attacks[0].eps", "is required"),
    ({"type": "foolbox/LinfPGD", "eps": 2}, "attacks[0].eps", "must be in (0, 1]"),
    ({"type": "art/ProjectedGradientDescent", "eps": 0.1, "norm": 3}, "attacks[0].norm", "must be inf, 2 or 1"),
    ({"type": "art/ProjectedGradientDescent", "eps": 0.1, "eps_step": -1}, "attacks[0]", "invalid arguments"),
    ({"type": "art/HopSkipJump", "eps": 0.1}, "attacks[0].eps", "takes no budget"),
    ({"type": "art/HopSkipJump", "norm": "Linf2"}, "attacks[0].norm", "must be inf, 2 or 1"),
    ({"type": "foolbox/L2DeepFoolAttack", "target": 1}, "attacks[0].target", "no targeted mode"),
    ({"type": "python", "eps": 0.1}, "attacks[0].fn", "is required"),
    ({"type": "python", "fn": "nowhere.py:f", "eps": 0.1}, "attacks[0].fn", "file not found"),
    ({"type": "python", "fn": f"{README_ATTACK}:margin_pdg", "eps": 0.1}, "attacks[0].fn", "did you mean margin_pgd"),
    ({"type": "python", "fn": f"{README_ATTACK}:margin_pgd", "eps": 0.1, "stride": 2}, "attacks[0].stride", "unknown key"),
    ({"type": "python", "fn": f"{README_ATTACK}:margin_pgd", "eps": 0.1, "steps": 1.5}, "attacks[0].steps", "must be an integer"),
    ({"type": "python", "fn": f"{README_ATTACK}:margin_pgd", "eps": 0.1, "norm": "L7"}, "attacks[0].norm", "allowed: Linf, L2, L1"),
    ({"type": "python", "fn": f"{README_ATTACK}:margin_pgd", "eps": 0.1, "target": 3}, "attacks[0].target", "no targeted mode"),
])
def test_bad_arguments_of_any_source_are_suite_errors_before_any_compute(tmp_path, entry, key, words):
    message = _error(_suite(tmp_path, [entry]))
    assert f": {key}:" in message and words in message, message


def test_a_python_attack_must_take_the_documented_arguments_and_its_required_ones(tmp_path):
    (tmp_path / "mine.py").write_text(textwrap.dedent("""
        def no_generator(model, images, labels, eps):
            return images

        def needs_rate(model, images, labels, eps, generator, rate):
            return images
    """))
    message = _error(_suite(tmp_path, [{"type": "python", "fn": "mine.py:no_generator"}]))
    assert "attacks[0].fn" in message and "generator" in message, message
    message = _error(_suite(tmp_path, [{"type": "python", "fn": "mine.py:needs_rate"}]))
    assert "attacks[0].rate" in message and "is required" in message, message
    assert load_suite(_suite(tmp_path, [{"type": "python", "fn": "mine.py:needs_rate", "rate": 2}])).attacks[0][0].name == "needs_rate"


def test_a_python_attack_file_that_raises_on_import_names_the_file(tmp_path):
    (tmp_path / "broken.py").write_text("import torch\nraise RuntimeError('no GPU here')\n")
    message = _error(_suite(tmp_path, [{"type": "python", "fn": "broken.py:attack", "eps": 0.1}]))
    assert "attacks[0].fn" in message and "broken.py:2 raises RuntimeError: no GPU here" in message, message


def test_an_art_norm_is_read_whatever_the_type_of_its_default(tmp_path):
    """HopSkipJump's default norm is 2 (an integer): inf must still be allowed, and it makes an L∞ search."""
    (spec,) = load_suite(_suite(tmp_path, [{"type": "art/HopSkipJump", "norm": "inf"}])).attacks[0]
    assert dict(spec.params)["norm"] == "inf" and spec.minimum_norm == "Linf" and attacks.norm(spec) == "none"


def test_without_torchattacks_a_bare_type_is_a_suite_error_with_the_install_command(tmp_path, monkeypatch):
    from bench.attacks import torchattacks_attacks

    torchattacks_attacks.registry.cache_clear()
    monkeypatch.setitem(sys.modules, "torchattacks", None)
    try:
        message = _error(_suite(tmp_path, [{"type": "pgd", "eps": 0.1}]))
    finally:
        torchattacks_attacks.registry.cache_clear()
    assert "attacks[0].type: torchattacks is not installed: pip install --no-deps" in message, message


def test_the_python_attack_keeps_the_path_as_written_in_its_identity(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "mine.py").write_text(README_ATTACK.read_text())
    spec = load_suite(_suite(tmp_path, [{"type": "python", "fn": "a/mine.py:margin_pgd", "eps": 0.1}])).attacks[0][0]
    assert dict(spec.params)["fn"] == "a/mine.py:margin_pgd" and spec.path == f"{tmp_path / 'a' / 'mine.py'}:margin_pgd"
    moved = tmp_path / "elsewhere"
    (moved / "a").mkdir(parents=True)
    (moved / "a" / "mine.py").write_text(README_ATTACK.read_text())
    again = load_suite(_suite(moved, [{"type": "python", "fn": "a/mine.py:margin_pgd", "eps": 0.1}])).attacks[0][0]
    assert again.digest == spec.digest  # a clone elsewhere keeps its cell ids


@pytest.mark.parametrize("row, family", [
    (("pgd", {"eps": 0.1, "steps": 20, "alpha": 0.01, "random_start": True}), ("pgd", "Linf", 0.1, 20, 0.01, 1, None, 1)),
    (("foolbox/LinfPGD", {"eps": 0.1, "steps": 20, "abs_stepsize": 0.01, "rel_stepsize": 0.5, "random_start": True}),
     ("pgd", "Linf", 0.1, 20, 0.01, 1, None, 1)),
    (("foolbox/LinfPGD", {"eps": 0.3, "steps": 20, "abs_stepsize": None, "rel_stepsize": 0.1, "random_start": True}),
     ("pgd", "Linf", 0.3, 20, 0.03, 1, None, 1)),
    (("art/ProjectedGradientDescent", {"eps": 0.1, "max_iter": 20, "eps_step": 0.01, "num_random_init": 1, "norm": "inf"}),
     ("pgd", "Linf", 0.1, 20, 0.01, 1, None, 1)),
    (("art/ProjectedGradientDescent", {"eps": 0.5, "max_iter": 20, "eps_step": 0.1, "num_random_init": 0, "norm": 2, "target": 3}),
     ("pgd", "L2", 0.5, 20, 0.1, 0, 3, 1)),
    (("fgsm", {"eps": 0.1}), ("fgsm", "Linf", 0.1, None, 1)),
    (("foolbox/FGSM", {"eps": 0.1}), ("fgsm", "Linf", 0.1, None, 1)),
    (("art/FastGradientMethod", {"eps": 0.1, "norm": "inf", "num_random_init": 0, "minimal": False}), ("fgsm", "Linf", 0.1, None, 1)),
    (("art/FastGradientMethod", {"eps": 0.1, "norm": "inf", "num_random_init": 0, "minimal": True}), None),
    (("pgd", {"eps": 0.1, "steps": 20, "alpha": 0.01, "random_start": True, "restarts": 5}),
     ("pgd", "Linf", 0.1, 20, 0.01, 1, None, 5)),
    (("art/ProjectedGradientDescent", {"eps": 0.1, "max_iter": 20, "eps_step": 0.01, "num_random_init": 5, "norm": "inf"}),
     ("pgd", "Linf", 0.1, 20, 0.01, 5, None, 1)),
    (("apgd", {"eps": 0.1}), None),
    (("python", {"eps": 0.1}), None),
])
def test_the_family_says_what_an_attack_computes_from_its_row_alone(row, family):
    assert attacks.family(row[0], {"target": None, **row[1]}) == family


# --- every source through the same harness path ----------------------------------------------------


@pytest.fixture(scope="module")
def every_source(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("every_source")
    entries = [
        {"name": "fgsm", "type": "fgsm", "eps": 0.1},
        {"name": "fb-fgsm", "type": "foolbox/FGSM", "eps": 0.1},
        {"name": "art-fgsm", "type": "art/FastGradientMethod", "eps": 0.1},
        {"name": "pgd", "type": "pgd", "eps": 0.1, "steps": 5, "alpha": 0.03},
        {"name": "fb-pgd", "type": "foolbox/LinfPGD", "eps": 0.1, "steps": 5, "abs_stepsize": 0.03},
        {"name": "art-pgd", "type": "art/ProjectedGradientDescent", "eps": 0.1, "max_iter": 5, "eps_step": 0.03, "num_random_init": 1},
        {"name": "fmn", "type": "foolbox/L2FMNAttack", "steps": 20},
        {"name": "ddn", "type": "foolbox/DDNAttack", "steps": 20},
        {"name": "mine", "type": "python", "fn": str(README_ATTACK) + ":margin_pgd", "eps": 0.1, "steps": 5},
    ]
    return _run(tmp, _suite(tmp, entries, limit=24))


@pytest.mark.parametrize("attack", ["fgsm", "fb-fgsm", "art-fgsm", "pgd", "fb-pgd", "art-pgd", "fmn", "ddn", "mine"])
def test_every_source_gives_an_ok_row_with_its_queries_counted_by_the_model_wrapper(every_source, attack):
    table, predictions, _ = every_source
    row = table.loc[attack]
    assert row["status"] == "ok", row["reason"]
    assert row["attack_source"] == {"fb": "foolbox", "fm": "foolbox", "dd": "foolbox", "ar": "art", "mi": "python"}.get(
        attack[:2], "torchattacks")
    steps = {"fgsm": 1, "pgd": 5, "fmn": 20, "ddn": 20, "mine": 5}[attack.split("-")[-1]]
    assert row["backward_passes"] == steps  # one input gradient per step, per image, whichever library took it
    assert row["forward_passes"] >= steps
    assert row["attack_seconds"] > 0 and row["attack_images_per_s"] > 0


def test_fgsm_from_three_libraries_breaks_the_same_images_and_the_report_says_they_agree(every_source):
    table, predictions, run_dir = every_source
    robust = {a: predictions[predictions["cell_id"] == table.loc[a, "cell_id"]]["robust_pred"].tolist()
              for a in ("fgsm", "fb-fgsm", "art-fgsm")}
    assert robust["fgsm"] == robust["fb-fgsm"] == robust["art-fgsm"]  # deterministic: the same images, the same answers
    report = (run_dir.parent.parent.parent / "reports" / "sources" / "latest.md").read_text()
    section = report.split("## Implementations side by side")[1].split("\n## ")[0]
    assert section.count("| agree") == 6  # three FGSM pairs, three PGD pairs
    assert "implementations-disagree" not in "".join(table["flags"].fillna(""))


def test_a_minimum_norm_attack_runs_unbounded_and_records_each_images_smallest_perturbation(every_source):
    table, predictions, run_dir = every_source
    for attack in ("fmn", "ddn"):
        row = table.loc[attack]
        assert row["norm"] == "none" and row["minimum_norm"] == "L2" and pd.isna(row["eps"])
        own = predictions[predictions["cell_id"] == row["cell_id"]]
        broke = (own["clean_pred"] == own["label"]) & (own["robust_pred"] != own["label"])
        assert broke.any() and (own.loc[broke, "distance"] > 0).all()
        assert row["distance_median"] == pytest.approx(own.loc[broke, "distance"].median())
    report = (run_dir.parent.parent.parent / "reports" / "sources" / "latest.md").read_text()
    assert "## Minimum-norm attacks" in report and "latest-curves.png" in report
    assert (run_dir.parent.parent.parent / "reports" / "sources" / "latest-curves.png").stat().st_size > 1000


def test_a_bounded_attack_records_its_measured_perturbation_within_the_budget(every_source):
    table, predictions, _ = every_source
    own = predictions[predictions["cell_id"] == table.loc["fb-pgd", "cell_id"]]
    assert own["distance"].notna().all() and own["distance"].max() <= 0.1 + 1 / 510 + 1e-6


# --- what goes wrong ----------------------------------------------------------------------------


def test_an_attack_that_leaves_its_budget_fails_its_cell_and_the_run_goes_on(tmp_path):
    (tmp_path / "greedy.py").write_text(textwrap.dedent("""
        def too_far(model, images, labels, eps, generator):
            return (images + 3 * eps).clamp(0, 1)
    """))
    table, _, _ = _run(tmp_path, _suite(tmp_path, [{"name": "greedy", "type": "python", "fn": "greedy.py:too_far", "eps": 0.05},
                                                   {"name": "fgsm", "type": "fgsm", "eps": 0.05}]))
    assert table.loc["greedy", "status"] == "failed" and "broke its budget" in table.loc["greedy", "reason"]
    assert table.loc["fgsm", "status"] == "ok"


@pytest.mark.parametrize("body, words", [
    ("return images[:1]", "expected a tensor of shape"),
    ("return images * 2 + 1", "outside [0, 1]"),
    ("raise ValueError('step size too large')", "ValueError: step size too large"),
])
def test_a_python_attack_that_returns_nonsense_or_raises_fails_its_cell_with_the_reason(tmp_path, body, words):
    (tmp_path / "bad.py").write_text(f"def attack(model, images, labels, eps, generator):\n    {body}\n")
    table, _, _ = _run(tmp_path, _suite(tmp_path, [{"name": "bad", "type": "python", "fn": "bad.py:attack", "eps": 0.05}]))
    assert table.loc["bad", "status"] == "failed" and words in table.loc["bad", "reason"], table.loc["bad", "reason"]


def test_a_missing_optional_library_skips_its_cells_with_the_install_command(tmp_path, monkeypatch):
    from bench.attacks import foolbox_attacks

    foolbox_attacks.registry.cache_clear()
    monkeypatch.setitem(sys.modules, "foolbox", None)  # import foolbox → ImportError, as without the extra
    try:
        path = _suite(tmp_path, [{"name": "fb-pgd", "type": "foolbox/LinfPGD", "eps": 0.1, "steps": 5, "restarts": 2},
                                 {"name": "fgsm", "type": "fgsm", "eps": 0.1}])
        table, _, _ = _run(tmp_path, path)
        unchecked = load_suite(path).attacks[0][0]
    finally:
        foolbox_attacks.registry.cache_clear()
    assert table.loc["fb-pgd", "status"] == "skipped"
    assert "pip install -e '.[foolbox]'" in table.loc["fb-pgd", "reason"]
    assert table.loc["fgsm", "status"] == "ok"
    monkeypatch.delitem(sys.modules, "foolbox")
    # resolved without foolbox, its arguments were never checked: it does not run even where foolbox is back
    assert "not installed where the suite was loaded" in attacks.unavailable(unchecked)
    assert attacks.unavailable(load_suite(path).attacks[0][0]) is None


# --- the user's own attack, as the README shows it ----------------------------------------------------


def test_the_readme_attack_runs_and_gives_the_same_images_twice(tmp_path):
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    assert "suites/attacks/margin_pgd.py" in readme and "type: python" in readme
    (tmp_path / "attacks").mkdir()
    (tmp_path / "attacks" / "margin_pgd.py").write_text(README_ATTACK.read_text())
    entry = {"name": "margin-pgd", "type": "python", "fn": "attacks/margin_pgd.py:margin_pgd", "eps": 0.1, "steps": 10,
             "step_size": 0.02}
    first, p1, _ = _run(tmp_path / "one", _suite(tmp_path, [entry]))
    second, p2, _ = _run(tmp_path / "two", _suite(tmp_path, [entry]))
    assert first.loc["margin-pgd", "status"] == "ok"
    assert p1["robust_pred"].tolist() == p2["robust_pred"].tolist()
    assert p1["distance"].tolist() == p2["distance"].tolist()  # the seeded generator: the same start, the same images
