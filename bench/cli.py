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
    perf = sub.add_parser("perf", help="plain torchattacks PGD against the harness fast path, side by side")
    perf.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu)")
    perf.add_argument("--model", default="resnet18", help="architecture from the model registry (default: resnet18)")
    perf.add_argument("--batch", type=int, default=None, help="images per batch (default: 16 on cpu, 256 on cuda)")
    perf.add_argument("--steps", type=int, default=10, help="PGD steps (default: 10)")
    perf.add_argument("--eps", default="4/255", help="L-inf budget, e.g. 4/255 (default)")
    perf.add_argument("--precision", choices=("fp32", "bf16", "fp16"), default=None,
                      help="precision of the last configurations (default: bf16 on cuda, fp32 on cpu)")
    perf.add_argument("--compile", action="store_true", help="add a torch.compile configuration")
    perf.add_argument("--repeats", type=int, default=None, help="timed runs per configuration (median; default 2 cpu, 5 cuda)")
    perf.add_argument("--image-size", type=int, default=224)
    perf.add_argument("--reports-dir", type=Path, default=Path("reports"))
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
        if args.command == "perf":
            return _perf(args)
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


def _perf(args: argparse.Namespace) -> int:
    from bench.models import ARCHS
    from bench.perf import parse_eps, run_perf

    cuda = args.device.startswith("cuda")
    problems = []
    if args.model not in ARCHS:
        problems.append(f"--model {args.model!r} is unknown; allowed: {', '.join(ARCHS)}")
    if args.device != "cpu" and not cuda:
        problems.append(f"--device {args.device!r} is not allowed; allowed: cpu, cuda, cuda:N")
    try:
        eps = parse_eps(args.eps)
        if not 0 < eps <= 1:
            problems.append(f"--eps must be in (0, 1], got {args.eps}")
    except (ValueError, ZeroDivisionError):
        problems.append(f"--eps must be a number or a fraction like 4/255, got {args.eps!r}")
        eps = 0.0
    batch = args.batch or (256 if cuda else 16)
    repeats = args.repeats or (5 if cuda else 2)
    for flag, value in (("--batch", batch), ("--steps", args.steps), ("--repeats", repeats)):
        if value < 1:
            problems.append(f"{flag} must be >= 1, got {value}")
    if cuda and not problems:
        import torch

        if not torch.cuda.is_available():
            problems.append("--device cuda: CUDA is not available on this machine")
    if problems:
        print("error: " + "; ".join(problems), file=sys.stderr)
        return EXIT_BAD_INPUT
    path, text = run_perf(args.device, args.model, batch, args.steps, eps, args.precision, args.compile, repeats,
                          args.image_size, args.reports_dir)
    print(text)
    print(f"report: {path}")
    return EXIT_OK


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
