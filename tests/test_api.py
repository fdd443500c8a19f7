"""The Python API: bench.run on a YAML path, a dict or a Suite, with models held in memory."""

from __future__ import annotations

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
