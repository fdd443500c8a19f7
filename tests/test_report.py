"""The report: pivot tables at a glance, reasons for skipped cells, the environment."""

from __future__ import annotations

import math

from bench.report import render
from bench.results import to_frame


def _row(**kw):
    base = dict(suite="s", run_id="r", status="ok", reason="", model="m", dataset="d", attack="pgd", eps=8 / 255,
                defense="none", eval_mode="oblivious", device="cpu", precision="fp32", batch_size=4, n=10,
                clean_acc=0.9, robust_acc=0.1, attack_success_rate=0.8, targeted_success_rate=math.nan, linf_max=8 / 255,
                l2_mean=1.0, attack_seconds=2.0, attack_images_per_s=5.0, clean_images_per_s=50.0, peak_mem_mb=100.0)
    base.update(kw)
    base["cell_id"] = f"{base['model']}/{base['attack']}/{base['defense']}"
    return base


META = {"suite": "s", "run_id": "r", "status": "complete", "cells": 3, "dataset": {"name": "d", "n": 10},
        "environment": {"torch": "2.x", "gpus": []}, "suite_file": "s.yaml", "suite_digest": "abc"}


def test_rows_are_model_attack_eps_and_columns_are_defenses():
    df = to_frame([_row(), _row(defense="jpeg-q75", robust_acc=0.6, clean_acc=0.8),
                   _row(model="r18", status="skipped", reason="put X at Y", robust_acc=math.nan)])
    text = render(df, META)
    assert "| model   | attack   | ε     | none   | jpeg-q75   |" in text
    assert "| m       | pgd      | 8/255 | 10.0 % | 60.0 %     |" in text
    assert "**skipped**, 1 cells of `r18`" in text and "put X at Y" in text
    assert "Targeted success rate" not in text  # no targeted attack in this run


def test_an_interrupted_run_says_so():
    text = render(to_frame([_row()]), {**META, "status": "interrupted"})
    assert "This run is interrupted" in text
