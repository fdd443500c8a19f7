"""bench history: change points over a suite's runs, found where they are and nowhere else.

The run folders are synthetic but written by the project's own writer (RowLog, to_frame,
write_table, write_json), so the reader sees exactly what a run leaves behind."""

from __future__ import annotations

import json
import re

import pytest

from bench.cli import main
from bench.reporting.history import change_points, load_runs, rate_series, segments, write_history
from bench.results import COLUMNS, ROWS_FILE, RUN_FILE, TABLE_FILE, RowLog, to_frame, write_json, write_table

N = 16


def cell(defense: str = "none", device: str = "cpu", model: str = "m") -> str:
    return f"{model}/pgd@abc123/eps=4/255/{defense}/oblivious/{device}/fp32"


def write_run(root, i: int, cells: dict[str, tuple[int, float, float]], digest: str = "d1", status: str = "complete"):
    """Run i of suite s: per cell id (images right out of N, attack img·steps/s, clean img/s)."""
    run_id = f"20261101T{i:02d}0000Z-{i:04x}"
    run_dir = root / "s" / run_id
    run_dir.mkdir(parents=True)
    rows = []
    for cell_id, (right, steps, clean) in cells.items():
        model, attack, eps = cell_id.split("/")[0], "pgd", 4 / 255
        defense, mode, device, precision = cell_id.split("/")[-4:]
        row = {c: None for c in COLUMNS}
        row.update(suite="s", run_id=run_id, cell_id=cell_id, status="ok", reason="", model=model, attack=attack, eps=eps,
                   defense=defense, eval_mode=mode, device=device, precision=precision, n=N, robust_acc=right / N,
                   attack_steps_per_s=steps, attack_seconds=5.0, clean_images_per_s=clean, git_sha=f"{i:02d}" * 20)
        rows.append(row)
    log = RowLog(run_dir / ROWS_FILE)
    for row in rows:
        log.append(row)
    log.close()
    write_table(to_frame(rows), run_dir / TABLE_FILE)
    write_json({"suite": "s", "run_id": run_id, "suite_digest": digest, "status": status, "wall_seconds": 60.0,
                "started_at": f"2026-11-01T{i:02d}:00:00+00:00", "environment": {"git_sha": f"{i:02d}" * 20}}, run_dir / RUN_FILE)
    return run_dir


def sha(i: int) -> str:
    return f"{i:02d}" * 6  # the first 12 hex digits, as the commit range shows them


def test_a_step_in_robust_accuracy_at_run_k_is_found_at_run_k(tmp_path):
    for i in range(8):
        write_run(tmp_path, i, {cell("none"): (14 if i < 5 else 4, 100.0, 50.0), cell("jpeg-q50"): (8, 100.0, 50.0)})
    (step,) = change_points(load_runs(tmp_path, "s"))
    assert (step.metric, step.run, step.series) == ("robust_acc", 5, "m · pgd · 4/255 · none · oblivious · cpu · fp32")
    assert (step.before, step.after) == (14 / 16, 4 / 16) and step.commits == f"{sha(4)}..{sha(5)}"


def test_two_steps_are_both_found_and_a_single_odd_run_is_not_a_step(tmp_path):
    rights = [16, 16, 16, 3, 16, 16, 16, 8, 8, 8, 0, 0, 0]  # run 3: one odd run; steps at 7 and at 10
    for i, right in enumerate(rights):
        write_run(tmp_path, i, {cell(): (right, 100.0, 50.0)})
    steps = change_points(load_runs(tmp_path, "s"))
    # before → after: the medians of the runs between one step and the next
    assert [(c.run, c.before, c.after) for c in steps] == [(7, 1.0, 0.5), (10, 0.5, 0.0)]


@pytest.mark.parametrize("rights", [
    [3] + [16] * 8,  # an odd first run
    [16] * 8 + [3],  # an odd last run (the nightly compare's to flag)
    [16, 16, 16, 16, 2, 16, 16, 16, 16],  # an odd run in the middle
], ids=["first", "last", "middle"])
def test_one_odd_run_is_never_a_step(tmp_path, rights):
    for i, right in enumerate(rights):
        write_run(tmp_path, i, {cell(): (right, 100.0, 50.0)})
    assert change_points(load_runs(tmp_path, "s")) == []


def test_an_odd_run_right_after_a_step_does_not_add_a_second_one(tmp_path):
    for i, right in enumerate([16] * 6 + [0] + [8] * 6):
        write_run(tmp_path, i, {cell(): (right, 100.0, 50.0)})
    assert [c.run for c in change_points(load_runs(tmp_path, "s"))] == [6]


def test_a_dip_that_recovers_shows_both_edges(tmp_path):
    for i, right in enumerate([16] * 5 + [8] * 4 + [16] * 5):
        write_run(tmp_path, i, {cell(): (right, 100.0, 50.0)})
    assert [(c.run, c.before, c.after) for c in change_points(load_runs(tmp_path, "s"))] == [(5, 1.0, 0.5), (9, 0.5, 1.0)]


def test_noise_inside_the_intervals_finds_nothing(tmp_path):
    rights = [8, 9, 7, 10, 8, 9, 7, 8, 10, 9, 8, 7]
    speed = [100, 120, 80, 110, 40, 95, 105, 90, 130, 85, 100, 45]  # one slow run at a time: load, not a slowdown
    for i, (right, s) in enumerate(zip(rights, speed)):
        write_run(tmp_path, i, {cell(d): (right, s * f, 50.0 + i % 3) for f, d in ((1, "none"), (1.1, "jpeg-q50"))})
    assert change_points(load_runs(tmp_path, "s")) == []


def test_a_2x_throughput_drop_is_found_where_it_starts(tmp_path):
    for i in range(8):
        slow = 0.5 if i >= 4 else 1.0
        write_run(tmp_path, i, {cell(d): (8, 100.0 * slow * (1 + 0.05 * (i % 2)), 50.0) for d in ("none", "jpeg-q50", "jpeg-q75", "bits-4")})
    (drop,) = change_points(load_runs(tmp_path, "s"))
    assert (drop.metric, drop.run, drop.series, drop.commits) == ("attack_steps_per_s", 4, "m · cpu · fp32", f"{sha(3)}..{sha(4)}")
    assert drop.after / drop.before == pytest.approx(0.5, abs=0.03)


def test_a_throughput_drop_is_found_where_it_starts_despite_a_near_normal_night_and_a_gap_after_it(tmp_path):
    speed = [100] * 6 + [50, 50, 70, None, 50, 50, 100, 100, 100]  # then a fix: the drop stays listed
    for i, v in enumerate(speed):
        write_run(tmp_path, i, {cell(d): (8, v, 50.0) for d in ("none", "jpeg-q50")} if v else {cell("other", model="x"): (8, 1.0, 1.0)})
    drops = [c for c in change_points(load_runs(tmp_path, "s")) if c.metric == "attack_steps_per_s"]
    assert [(c.run, c.commits) for c in drops] == [(6, f"{sha(5)}..{sha(6)}")]


def test_one_model_slowing_down_among_several_is_found_for_that_model(tmp_path):
    for i in range(10):
        write_run(tmp_path, i, {cell(d, "cuda", m): (8, 100.0 * (0.5 if m == "m1" and i >= 5 else 1), 50.0)
                                for m in ("m0", "m1", "m2", "m3") for d in ("none", "jpeg-q50")})
    (drop,) = change_points(load_runs(tmp_path, "s"))
    assert (drop.series, drop.run) == ("m1 · cuda · fp32", 5)


@pytest.mark.parametrize("device,found", [("cuda", True), ("cpu", False)])
def test_a_20_percent_drop_is_beyond_the_noise_on_cuda_and_within_it_on_cpu(tmp_path, device, found):
    for i in range(10):
        write_run(tmp_path, i, {cell(d, device): (8, 100.0 * (0.8 if i >= 5 else 1), 50.0) for d in ("none", "jpeg-q50")})
    assert [c.run for c in change_points(load_runs(tmp_path, "s"))] == ([5] if found else [])


def test_runs_without_ok_cells_and_sparse_run_json_make_a_history_too(tmp_path):
    for i in range(3):
        run_dir = write_run(tmp_path, i, {})
        meta = json.loads((run_dir / RUN_FILE).read_text())
        meta["environment"] = None
        del meta["started_at"], meta["wall_seconds"]
        write_json(meta, run_dir / RUN_FILE)
    runs = load_runs(tmp_path, "s")
    assert change_points(runs) == []
    assert "No ok cells." in write_history(runs, tmp_path / "out").read_text()


def test_a_drop_in_the_latest_run_alone_is_not_yet_sustained(tmp_path):
    for i in range(6):
        write_run(tmp_path, i, {cell(): (8, 100.0 if i < 5 else 40.0, 50.0)})
    assert change_points(load_runs(tmp_path, "s")) == []


def test_a_suite_change_splits_the_series(tmp_path):
    """Runs 0-3 and 4-9 ran different suites: their difference is not a step; a step inside the
    second suite's runs still is, and the runs table marks the change."""
    for i in range(10):
        right = 16 if i < 4 else (8 if i < 7 else 0)  # 16 → 8 would be a step within one suite
        write_run(tmp_path, i, {cell(): (right, 100.0 if i < 4 else 30.0, 50.0)}, digest="d1" if i < 4 else "d2")
    runs = load_runs(tmp_path, "s")
    assert [list(s) for s in segments(runs)] == [[0, 1, 2, 3], [4, 5, 6, 7, 8, 9]]
    assert [(c.metric, c.run) for c in change_points(runs)] == [("robust_acc", 7)]
    text = write_history(runs, tmp_path / "out").read_text()
    assert text.count("**suite changed**") == 1
    assert re.search(r"\| +4 \| 20261101T040000Z-0004 \|.*\| d2 \*\*suite changed\*\* +\|", text)


def test_cells_missing_from_runs_are_gaps_not_zeros(tmp_path):
    for i in range(8):
        cells = {cell("none"): (12, 100.0, 50.0)}
        if i not in (2, 4):
            cells[cell("jpeg-q50")] = (12 if i < 5 else 3, 100.0, 50.0)
        write_run(tmp_path, i, cells)
    runs = load_runs(tmp_path, "s")
    series = rate_series(runs)[cell("jpeg-q50")]
    assert series[2] is None and series[4] is None and series[3] == (12, N)
    (step,) = change_points(runs)
    assert step.run == 5 and step.commits == f"{sha(3)}..{sha(5)}"  # from the last run that had the cell
    text = write_history(runs, tmp_path / "out").read_text()
    row = next(line for line in text.splitlines() if line.startswith("| m · pgd · 4/255 · jpeg-q50"))
    assert [c.strip() for c in row.strip("|").split("|")][1:] == ["75.0", "75.0", "—", "75.0", "—", "18.8", "18.8", "18.8"]


def test_bench_history_writes_the_markdown_and_its_plots_from_complete_runs_only(tmp_path, capsys):
    for i in range(4):
        write_run(tmp_path, i, {cell(): (10, 100.0, 50.0)}, status="complete" if i != 2 else "interrupted")
    code = main(["history", "s", "--results", str(tmp_path), "--out", str(tmp_path / "out")])
    assert code == 0, capsys.readouterr().err
    text = (tmp_path / "out" / "history.md").read_text()
    assert "3 complete run(s)" in text and "T020000Z" not in text  # the interrupted run is left out
    for section in ("## Change points", "## Robust accuracy over runs", "## Throughput over runs", "## Runs"):
        assert section in text
    for png in ("history-robust.png", "history-throughput.png"):
        assert (tmp_path / "out" / png).stat().st_size > 5000 and f"]({png})" in text
    assert main(["history", "s", "--results", str(tmp_path), "--last", "1", "--out", str(tmp_path / "one")]) == 0
    assert "1 complete run(s)" in (tmp_path / "one" / "history.md").read_text()
    assert main(["history", "nobody", "--results", str(tmp_path)]) == 2
    assert "no complete run of suite 'nobody'" in capsys.readouterr().err


def test_three_runs_of_a_real_suite_make_a_history_without_change_points(tmp_path, tiny_suite, write_suite, capsys):
    from bench.runner import run_suite
    from bench.suite import load_suite

    tiny_suite["attacks"], tiny_suite["defenses"] = [{"name": "fgsm", "type": "fgsm", "eps": "8/255"}], ["none", "bit_depth"]
    suite = load_suite(write_suite(tiny_suite))
    for _ in range(3):
        assert run_suite(suite, tmp_path / "results", tmp_path / "reports").complete
    assert main(["history", str(write_suite(tiny_suite)), "--results", str(tmp_path / "results"),
                 "--out", str(tmp_path / "reports" / "tiny")]) == 0
    text = (tmp_path / "reports" / "tiny" / "history.md").read_text()
    assert "3 complete run(s)" in text and "Not looked for yet: a change point needs 3 runs" in text, text
    assert len([line for line in text.split("## Runs")[1].splitlines() if line.startswith("| ")]) == 1 + 3


# --- paired: every run scores the same images -----------------------------------------------------


def _with_predictions(run_dir, cell_id: str, survived: set[int], n: int):
    """Add per-image predictions (n images of class 0, clean right) and the matching rate to a run."""
    import pandas as pd

    from bench.results import PREDICTIONS_FILE

    robust = [0 if i in survived else 1 for i in range(n)]
    write_table(pd.DataFrame({"cell_id": cell_id, "image": range(n), "label": 0, "clean_pred": 0, "robust_pred": robust,
                              "robust_all": [r == 0 for r in robust], "attacked": True}), run_dir / PREDICTIONS_FILE)
    df = pd.read_parquet(run_dir / TABLE_FILE)
    df.loc[df["cell_id"] == cell_id, ["robust_acc", "n", "norm"]] = [len(survived) / n, n, "Linf"]
    write_table(df, run_dir / TABLE_FILE)


def test_a_step_on_the_same_images_is_found_by_mcnemars_test_where_intervals_overlap(tmp_path):
    # 100 images; from run 4 on, ten images that survived no longer do: 60 % → 50 %. The medians'
    # Wilson intervals (50–69, 40–60) overlap, but the same ten images flipped, none the other way
    n = 100
    for i in range(8):
        run = write_run(tmp_path, i, {cell(): (0, 100.0, 50.0)})
        _with_predictions(run, cell(), set(range(60 if i < 4 else 50)), n)
    steps = [c for c in change_points(load_runs(tmp_path, "s")) if c.metric == "robust_acc" and "worst case" not in c.series]
    assert [(c.run, c.before, c.after) for c in steps] == [(4, 0.6, 0.5)]
    assert steps[0].p == pytest.approx(2 / 2**10)
    # without per-image predictions the same rates are within the intervals: no step
    from bench.results import PREDICTIONS_FILE

    for run_dir in (tmp_path / "s").iterdir():
        (run_dir / PREDICTIONS_FILE).unlink()
    runs = load_runs(tmp_path, "s")
    assert [p[0] / p[1] for p in rate_series(runs)[cell()]] == [0.6] * 4 + [0.5] * 4
    assert not [c for c in change_points(runs) if c.metric == "robust_acc"]


def test_the_worst_case_over_all_attacks_is_a_series_like_any_cell(tmp_path):
    for i in range(6):
        run = write_run(tmp_path, i, {cell(): (0, 100.0, 50.0)})
        _with_predictions(run, cell(), set(range(10)), N)
    series = rate_series(load_runs(tmp_path, "s"))
    worst = [c for c in series if "/worst-case/" in c]
    assert worst == ["m/worst-case/Linf/eps=4/255/none/cpu/fp32"]
    assert series[worst[0]] == [(10, N)] * 6
    write_history(load_runs(tmp_path, "s"), tmp_path / "out")
    text = (tmp_path / "out" / "history.md").read_text()
    assert "m · worst case · 4/255 · none · cpu · fp32" in text
    assert "| 1 / 0 / 0 " in text  # the runs index counts the run's cells, not its worst cases


def test_two_evaluations_under_one_attack_name_get_two_labels():
    from bench.reporting.history import labels

    import pandas as pd

    class _Run:
        def __init__(self, cell_id):
            self.df = pd.DataFrame([{"cell_id": cell_id, "model": "m", "attack": "pgd", "eps": 0.1, "defense": "none",
                                     "eval_mode": "oblivious", "device": "cpu", "precision": "fp32", "status": "ok"}])
            self.series = self.df.iloc[:0]

    names = labels([_Run("m/pgd@aaaa11/eps=0.1/none/oblivious/cpu/fp32"), _Run("m/pgd@bbbb22/eps=0.1/none/oblivious/cpu/fp32")])
    assert len(set(names.values())) == 2 and all("@" in v for v in names.values())


def test_the_history_prose_fits_a_terminal():
    from bench.reporting.history import render

    class _Run:
        run_id, sha, digest, meta = "r1", "a" * 40, "d" * 16, {"suite": "s", "started_at": "2026-12-07T00:00:00", "status": "complete"}

        def __init__(self):
            import pandas as pd

            self.df = pd.DataFrame([{"cell_id": "m/pgd@aa/eps=0.1/none/oblivious/cpu/fp32", "model": "m", "attack": "pgd",
                                     "eps": 0.1, "defense": "none", "eval_mode": "oblivious", "device": "cpu",
                                     "precision": "fp32", "status": "ok", "robust_acc": 0.5, "n": 10}])
            self.ok, self.series = self.df, self.df.iloc[:0]

    text = render([_Run()], [], [])
    prose = [line for line in text.splitlines() if not line.startswith(("|", "#", "!["))]
    assert max(len(line) for line in prose) <= 120
