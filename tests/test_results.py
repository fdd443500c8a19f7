"""The results table: the contract's columns and types, and rows that survive a crash."""

from __future__ import annotations

import json
import math

import pandas as pd

from bench.results import COLUMNS, RowLog, read_rows, to_frame


def test_table_has_exactly_the_contract_columns_in_order():
    assert list(COLUMNS)[:6] == ["suite", "run_id", "cell_id", "status", "reason", "model"]
    df = to_frame([{"suite": "s", "status": "skipped", "eps": math.nan, "n": 4}])
    assert list(df.columns) == list(COLUMNS)
    assert df["n"].dtype == pd.Int64Dtype() and df["eps"].dtype == "float64" and df["suite"].dtype == "string"


def test_row_log_keeps_every_finished_row_and_ignores_a_torn_last_line(tmp_path):
    log = RowLog(tmp_path / "rows.jsonl")
    log.append({"cell_id": "a", "robust_acc": 0.5})
    log.append({"cell_id": "b", "robust_acc": math.nan})
    log.close()
    with (tmp_path / "rows.jsonl").open("a") as f:
        f.write('{"cell_id": "c", "rob')  # killed mid-write
    rows = read_rows(tmp_path)
    assert [r["cell_id"] for r in rows] == ["a", "b"] and math.isnan(rows[1]["robust_acc"])
    assert json.loads((tmp_path / "rows.jsonl").read_text().splitlines()[0])["robust_acc"] == 0.5


def test_a_row_appended_after_a_torn_line_is_not_glued_to_it(tmp_path):
    """Resume after a kill mid-write: the first new row must land on a line of its own."""
    (tmp_path / "rows.jsonl").write_text('{"cell_id": "a"}\n{"cell_id": "b", "rob')
    log = RowLog(tmp_path / "rows.jsonl")
    log.append({"cell_id": "b", "robust_acc": 0.25})
    log.close()
    assert [(r["cell_id"], r.get("robust_acc")) for r in read_rows(tmp_path)] == [("a", None), ("b", 0.25)]
