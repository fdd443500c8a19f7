"""`bench compare`: regressions shout, improvements and noise do not."""

from __future__ import annotations

from bench.cli import main
from bench.compare import compare
from bench.results import to_frame
from bench.stats import wilson


def _row(cell, robust, n=100, tput=10.0, status="ok"):
    lo, hi = wilson(round(robust * n), n)
    return {"cell_id": cell, "status": status, "reason": "", "n": n, "clean_acc": 0.9, "robust_acc": robust,
            "robust_acc_ci_low": lo, "robust_acc_ci_high": hi, "attack_images_per_s": tput}


def _write(tmp_path, name, rows):
    path = tmp_path / f"{name}.parquet"
    to_frame(rows).to_parquet(path)
    return path


def test_a_real_drop_in_robust_accuracy_is_a_regression(tmp_path):
    base = _write(tmp_path, "base", [_row("a", 0.60)])
    cand = _write(tmp_path, "cand", [_row("a", 0.30)])
    result = compare(base, cand)
    assert result.regressions == 1 and "| a      | robust_acc" in result.markdown and "regression" in result.markdown


def test_an_improvement_is_not_a_regression(tmp_path):
    result = compare(_write(tmp_path, "b", [_row("a", 0.30)]), _write(tmp_path, "c", [_row("a", 0.60)]))
    assert result.regressions == 0 and "improvement" in result.markdown


def test_noise_inside_the_intervals_is_not_a_regression_unless_past_the_threshold(tmp_path):
    base, cand = _write(tmp_path, "b", [_row("a", 0.60)]), _write(tmp_path, "c", [_row("a", 0.55)])
    assert compare(base, cand).regressions == 0
    assert compare(base, cand, abs_threshold=0.03).regressions == 1


def test_slower_throughput_and_missing_cells_are_regressions_added_cells_are_listed(tmp_path):
    base = _write(tmp_path, "b", [_row("a", 0.5, tput=10.0), _row("gone", 0.5)])
    cand = _write(tmp_path, "c", [_row("a", 0.5, tput=8.0), _row("new", 0.5)])
    result = compare(base, cand)
    assert result.regressions == 2
    assert "attack_images_per_s" in result.markdown and "`gone`" in result.markdown and "`new`" in result.markdown


def test_cli_exit_status_is_1_on_regression_and_0_otherwise(tmp_path, capsys):
    base = _write(tmp_path, "b", [_row("a", 0.60)])
    assert main(["compare", str(base), str(_write(tmp_path, "c", [_row("a", 0.20)]))]) == 1
    assert main(["compare", str(base), str(_write(tmp_path, "d", [_row("a", 0.62)])), "--out", str(tmp_path / "cmp.md")]) == 0
    assert (tmp_path / "cmp.md").read_text().startswith("# bench compare")
    assert main(["compare", str(tmp_path / "nope"), str(base)]) == 2
