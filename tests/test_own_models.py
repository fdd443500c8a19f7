"""suites/own-models.yaml: the worked example of docs/own-models.md.

The factory (own-models/tiny_net.py:build) and the exported program (own-models/tiny_net.pt2) are the
same network, so their cells must agree image by image; and the committed .pt2 must be what
export_tiny_net.py makes from tiny_net.py today, so the two cannot drift apart silently.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
from pathlib import Path

import pandas as pd
import pytest
import torch

from bench.results import PREDICTIONS_FILE
from bench.runner import run_suite
from bench.sources import create_model
from bench.sources.exported import load_program
from bench.suite import load_suite

ROOT = Path(__file__).resolve().parents[1]
SUITE = ROOT / "suites" / "own-models.yaml"
FOLDER = ROOT / "suites" / "own-models"


@pytest.fixture(scope="module")
def suite():
    return load_suite(SUITE)


def by_source(suite, source: str):
    (spec,) = [m for m in suite.models if m.source == source]
    return spec


def test_the_suite_names_every_source(suite):
    assert {m.source for m in suite.models} == {"torchvision", "timm", "factory", "file"}
    assert suite.seed == 0
    factory, file = by_source(suite, "factory"), by_source(suite, "file")
    for spec in (factory, file):  # the preprocessing the model (or its card) carries, not ImageNet's
        assert (spec.mean, spec.std, spec.input_size, spec.num_classes) == ((0.5,) * 3, (0.25,) * 3, 64, 10)
        assert spec.data is not None and spec.data.source == "imagefolder"
    assert factory.preprocess == file.preprocess


def test_the_factory_and_the_file_model_predict_the_same(suite, tmp_path):
    own = tuple(m for m in suite.models if m.source in ("factory", "file"))
    small = dataclasses.replace(suite, models=own)
    result = run_suite(small, results_root=tmp_path / "results", reports_root=tmp_path / "reports")
    assert len(result.rows) == len(small.cells()) == 16
    assert result.counts == {"ok": 16}, [r["reason"] for r in result.rows if r["status"] != "ok"]

    preds = pd.read_parquet(result.run_dir / PREDICTIONS_FILE)
    model, rest = preds["cell_id"].str.split("/", n=1).str[0], preds["cell_id"].str.split("/", n=1).str[1]
    preds = preds.assign(model=model, rest=rest)
    factory, file = (by_source(suite, s).name for s in ("factory", "file"))
    a = preds[preds.model == factory].set_index(["rest", "image"]).sort_index()
    b = preds[preds.model == file].set_index(["rest", "image"]).sort_index()
    assert len(a) == len(b) == 8 * 20  # 8 cells × 20 images each
    assert a.index.equals(b.index)
    assert (a["label"] == b["label"]).all()
    assert (a["clean_pred"] == b["clean_pred"]).all()
    assert (a["robust_pred"] == b["robust_pred"]).all()
    assert (a["clean_pred"] != a["robust_pred"]).any()  # the attacks did something: the check is not vacuous


def _export_script():
    spec = importlib.util.spec_from_file_location("_own_models_export_tiny_net", FOLDER / "export_tiny_net.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_committed_program_is_a_fresh_export_of_the_factory(suite, tmp_path):
    fresh = _export_script().export(tmp_path / "fresh.pt2")
    assert json.loads(fresh.with_suffix(".json").read_text()) == json.loads((FOLDER / "tiny_net.json").read_text())

    committed, again = load_program(FOLDER / "tiny_net.pt2").module(), load_program(fresh).module()
    # and bench's own build of both suite entries (seeded from the suite's seed, normalising inside)
    factory = create_model(by_source(suite, "factory"), seed=suite.seed)
    file = create_model(by_source(suite, "file"), seed=suite.seed)
    gen = torch.Generator().manual_seed(1)
    x = torch.rand(5, 3, 64, 64, generator=gen)
    with torch.no_grad():
        want = committed((x - 0.5) / 0.25)
        torch.testing.assert_close(again((x - 0.5) / 0.25), want, atol=1e-5, rtol=0)
        torch.testing.assert_close(factory(x), want, atol=1e-5, rtol=0)
        torch.testing.assert_close(file(x), want, atol=1e-5, rtol=0)
    assert want.shape == (5, 10)


def test_the_bundled_image_folder_is_small_and_balanced():
    data = FOLDER / "data"
    classes = sorted(p for p in data.iterdir() if p.is_dir())
    assert len(classes) == 10
    assert all(len(list(c.glob("*.png"))) == 2 for c in classes)
    assert sum(p.stat().st_size for p in data.rglob("*") if p.is_file()) < 500_000
