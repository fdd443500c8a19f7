"""Command line: ``bench run SUITE``, ``bench report RUN_DIR``.

Exit status: 0 all cells ran (ok or skipped), 1 some cell failed, 2 bad input (nothing written),
130 interrupted (finished cells kept).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from rich.console import Console
from rich.logging import RichHandler
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

log = logging.getLogger("bench")
EXIT_OK, EXIT_FAILED_CELLS, EXIT_BAD_INPUT, EXIT_INTERRUPTED = 0, 1, 2, 130


class RichProgress:
    """Two bars: cells, and attack batches (the slow part)."""

    def __init__(self, console: Console):
        self._p = Progress(
            TextColumn("[bold]{task.description:<8}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("{task.fields[detail]}"),
            console=console,
            transient=False,
        )

    def start(self, cells: int, batches: int) -> None:
        self._cells = self._p.add_task("cells", total=cells, detail="")
        self._batches = self._p.add_task("batches", total=batches, detail="")
        self._p.start()

    def cell(self, cell) -> None:
        self._p.update(self._cells, detail=cell.cell_id)

    def cell_done(self) -> None:
        self._p.advance(self._cells)

    def batch(self, n: int) -> None:
        self._p.advance(self._batches, n)

    def stop(self) -> None:
        self._p.update(self._cells, detail="")
        self._p.stop()


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="bench", description="Adversarial-robustness benchmark harness.")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run a suite")
    run.add_argument("suite", type=Path, help="suite YAML file")
    run.add_argument("--dry-run", action="store_true", help="validate and print the grid; run nothing")
    run.add_argument("--results-dir", type=Path, default=Path("results"))
    run.add_argument("--reports-dir", type=Path, default=Path("reports"))
    run.add_argument("--no-progress", action="store_true", help="no progress bars (logs only)")
    rep = sub.add_parser("report", help="rebuild the report of a run")
    rep.add_argument("run_dir", type=Path, help="results/<suite>/<run_id>")
    rep.add_argument("--reports-dir", type=Path, default=Path("reports"))
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    console = Console(stderr=True)
    # Other libraries' loggers stay at WARNING (matplotlib's font cache chatter, for one).
    logging.basicConfig(
        level=logging.WARNING,
        format="%(message)s",
        handlers=[RichHandler(console=console, show_path=False, show_time=False)],
        force=True,
    )
    log.setLevel(logging.DEBUG if args.verbose else logging.INFO)
    try:
        if args.command == "run":
            return _run(args, console)
        return _report(args)
    except KeyboardInterrupt:
        log.warning("interrupted: finished cells are kept")
        return EXIT_INTERRUPTED


def _run(args: argparse.Namespace, console: Console) -> int:
    from bench.data import DataError, load_dataset
    from bench.suite import SuiteError, format_eps, load_suite

    try:
        suite = load_suite(args.suite)
    except (SuiteError, ImportError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    cells = suite.cells()
    if args.dry_run:
        print(f"suite {suite.name}: {len(cells)} cells")
        for c in cells:
            print(f"  {c.model.name:<16} {c.attack.name:<14} eps={format_eps(c.attack.eps):<8} {c.defense.label:<9} "
                  f"{c.eval_mode:<10} {c.device:<6} {c.precision}")
        return EXIT_OK
    try:
        dataset = load_dataset(suite.data)
    except DataError as exc:
        print(f"error: {args.suite}: data: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    from bench.runner import run_suite

    log.info("suite %s: %d cells on %d images", suite.name, len(cells), len(dataset))
    progress = None if args.no_progress else RichProgress(console)
    result = run_suite(suite, args.results_dir, args.reports_dir, progress=progress, dataset=dataset)
    counts = result.counts
    print(f"cells: {counts.get('ok', 0)} ok, {counts.get('skipped', 0)} skipped, {counts.get('failed', 0)} failed")
    print(f"table:  {result.run_dir / 'results.parquet'}")
    print(f"report: {result.report_path}")
    return EXIT_FAILED_CELLS if counts.get("failed") else EXIT_OK


def _report(args: argparse.Namespace) -> int:
    from bench.report import write_report
    from bench.results import RUN_FILE

    if not (args.run_dir / RUN_FILE).is_file():
        print(f"error: {args.run_dir}: not a run folder (no {RUN_FILE})", file=sys.stderr)
        return EXIT_BAD_INPUT
    print(f"report: {write_report(args.run_dir, args.reports_dir)}")
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
