"""The Python API: bench.run on a YAML path, a dict or a Suite, with models held in memory."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

import pandas as pd
import pytest
import torch
import torch.nn as nn
import yaml

import bench
from bench.suite import SuiteError

ROOT = Path(__file__).resolve().parents[1]


def _net(classes: int = 10) -> nn.Module:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(3 * 16 * 16, classes))
    net.mean, net.std, net.input_size, net.num_classes = (0.5,) * 3, (0.5,) * 3, 16, classes
    return net


def _doc(**extra) -> dict:
    return {"name": "api", "data": {"source": "digits", "limit": 20, "image_size": 16},
            "attacks": [{"type": "fgsm", "eps": 0.1}], **extra}


def test_the_readme_notebook_example_runs(tmp_path, monkeypatch):
    readme = (ROOT / "README.md").read_text()
    block = re.search(r"<!-- notebook example[^>]*-->\s*```python\n(.*?)```", readme, re.S).group(1)
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    exec(compile(block, "README.md", "exec"), scope)
    table = scope["result"].table
    assert isinstance(table, pd.DataFrame) and list(table["model"]) == ["mine", "mine"]
    assert (table["status"] == "ok").all() and table["robust_acc"].between(0, 1).all()
    assert (tmp_path / "results" / "notebook").is_dir() and scope["result"].report_path.is_file()


def test_a_model_in_memory_runs_as_it_is_and_is_left_as_it_was(tmp_path):
    net = _net()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    result = bench.run(_doc(), models={"mine": net}, progress=False, results_dir=tmp_path / "r", reports_dir=tmp_path / "p")
    row = result.table.iloc[0]
    assert row["status"] == "ok" and row["model_source"] == "memory" and row["input_size"] == 16
    images = result.predictions
    assert len(images) == 20 and set(images.columns) >= {"label", "clean_pred", "robust_pred", "distance"}
    assert net.training and all(p.requires_grad for p in net.parameters())
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    assert result.worst_case is not None and list(result.worst_case["eps"]) == [0.1]


def test_the_entry_of_that_name_gets_the_module_and_keeps_its_preprocessing_keys(tmp_path):
    net = _net()
    del net.mean  # said in the entry instead
    doc = _doc(models=[{"name": "mine", "mean": [0.5, 0.5, 0.5]}])
    result = bench.run(doc, models={"mine": net}, progress=False, results_dir=tmp_path / "r", reports_dir=tmp_path / "p")
    assert result.table.iloc[0]["status"] == "ok"


def test_a_yaml_suite_can_take_a_model_from_memory(tmp_path):
    path = tmp_path / "suite.yaml"
    path.write_text(yaml.safe_dump(_doc(models=[{"name": "mine"}])))
    result = bench.run(path, models={"mine": _net()}, progress=False, results_dir=tmp_path / "r", reports_dir=tmp_path / "p")
    assert result.table.iloc[0]["model"] == "mine"


@pytest.mark.parametrize("models, doc, words", [
    ({"mine": "not a module"}, _doc(), "must be a torch.nn.Module"),
    ({"mine": _net()}, _doc(models=[{"name": "mine", "arch": "resnet18"}]), "models[0].arch: model 'mine' is given in memory"),
    ({"mine": _net()}, {**_doc(), "attacks": [{"type": "pgdd", "eps": 0.1}]}, "did you mean pgd"),
])
def test_bad_input_is_an_error_before_anything_runs(tmp_path, models, doc, words):
    with pytest.raises((SuiteError, TypeError), match=re.escape(words)):
        bench.run(doc, models=models, progress=False, results_dir=tmp_path / "r")
    assert not (tmp_path / "r").exists()


def test_a_module_without_its_preprocessing_names_what_is_missing(tmp_path):
    net = nn.Sequential(nn.Flatten(), nn.Linear(3 * 16 * 16, 10))
    with pytest.raises(SuiteError, match=r"models\[0\]\.mean: is required and not given: give mean: in the suite entry"):
        bench.run(_doc(), models={"mine": net}, progress=False, results_dir=tmp_path / "r")


def test_a_suite_object_runs_too_but_takes_no_models(tmp_path):
    suite = bench.load_suite(ROOT / "suites" / "tutorial.yaml")
    with pytest.raises(TypeError, match="models= needs the suite as a path or a dict"):
        bench.run(suite, models={"x": _net()})


def test_a_model_in_memory_is_known_by_its_weights_not_by_the_object(tmp_path):
    from bench.reporting.compare import compare

    def run(net: nn.Module, out: str):
        result = bench.run(_doc(name="ident"), models={"mine": net}, progress=False, results_dir=tmp_path / out,
                           reports_dir=tmp_path / f"{out}-reports")
        return result, json.loads((result.run_dir / "run.json").read_text())

    first, meta1 = run(_net(), "a")
    again, meta2 = run(_net(), "b")  # a new object with the same weights: the same model
    weights = first.table["weights"].iloc[0]
    assert re.fullmatch(r"memory:sha256:[0-9a-f]{16}", weights) and (again.table["weights"] == weights).all()
    assert meta1["suite_digest"] == meta2["suite_digest"]
    changed = _net()
    with torch.no_grad():
        changed[1].bias.add_(1.0)  # changed in place: another model under the same name
    third, meta3 = run(changed, "c")
    assert third.table["weights"].iloc[0] != weights and meta3["suite_digest"] != meta1["suite_digest"]
    text = compare(first.run_dir, third.run_dir).markdown
    line = next(line for line in text.splitlines() if "**Model `mine` has other weights**" in line)
    assert weights.rpartition(":")[2] in line and third.table["weights"].iloc[0].rpartition(":")[2] in line
    assert "has other weights" not in compare(first.run_dir, again.run_dir).markdown


def test_a_model_in_memory_still_takes_a_checkpoint(tmp_path):
    net = _net()
    path = tmp_path / "other.pt"
    torch.save({k: v + 1 for k, v in net.state_dict().items()}, path)
    doc = _doc(models=[{"name": "mine", "checkpoint": str(path)}])
    result = bench.run(doc, models={"mine": net}, progress=False, results_dir=tmp_path / "r", reports_dir=tmp_path / "p")
    assert result.table["status"].tolist() == ["ok"] and result.table["weights"].iloc[0] == "checkpoint:other.pt"


def test_load_suite_takes_a_dict_and_models_as_run_does(tmp_path):
    suite = bench.load_suite(_doc(), models={"mine": _net()})
    assert [m.name for m in suite.models] == ["mine"] and "@sha256:" in suite.models[0].arch
    with pytest.raises(SuiteError, match="attacks"):
        bench.load_suite({**_doc(), "attacks": [{"type": "nope"}]}, models={"mine": _net()})


def test_progress_false_prints_nothing_and_a_notebook_gets_a_line_per_cell(tmp_path, capsys):
    from rich.console import Console

    from bench.progress import LineProgress, RichProgress, for_console

    bench.run(_doc(), models={"mine": _net()}, progress=False, results_dir=tmp_path / "r", reports_dir=tmp_path / "p")
    out = capsys.readouterr()
    assert out.out == "" and out.err == ""
    assert isinstance(for_console(Console(file=io.StringIO(), force_jupyter=True)), LineProgress)
    assert isinstance(for_console(Console(file=io.StringIO(), force_terminal=True)), RichProgress)
    lines = io.StringIO()
    bar = LineProgress(lines)
    bar.start(2, 4)
    for cell in ("a/fgsm", "a/pgd"):
        bar.cell(type("Cell", (), {"cell_id": cell})())
        bar.batch(2)
        bar.cell_done()
    text = lines.getvalue().splitlines()
    assert len(text) == 3 and text[-1].endswith("cells 2/2 · batches 4/4 · done a/pgd")


def test_dataset_gives_a_sources_splits_as_tensors_to_train_on():
    train = bench.dataset("digits", split="train", image_size=16)
    test = bench.dataset({"source": "digits", "split": "test"}, image_size=16)
    assert (len(train), len(test)) == (1437, 360) and train.images.shape == (1437, 3, 16, 16)
    assert train.labels.dtype == torch.int64 and set(train.labels.tolist()) == set(range(10))
    assert not set(train.ids) & set(test.ids)  # a fixed split: no image in both
    with pytest.raises(SuiteError, match="split"):
        bench.dataset("digits", split="validation")
    with pytest.raises(SuiteError, match="colour"):
        bench.dataset("digits", colour=True)
