"""Command line: ``bench run SUITE``, ``bench report RUN_DIR``.

Exit status: 0 every cell ran (ok, or some skipped), 1 some cell failed or the run could not be written (a
full disk: one line naming the file), 2 bad input (nothing written: a bad suite, a damaged run folder,
a symbolic link where bench would write), 3 nothing was measured: every cell skipped (or, with ``--require-all``,
any cell skipped), 130 interrupted (finished cells kept). ``bench compare``: 1 means a regression and nothing else,
4 a weaker evaluation (same models, another evaluation, a worst case up) and no regression.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import logging
import signal
import sys
import threading
from pathlib import Path

from rich.console import Console
from rich.logging import RichHandler
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from bench.progress import RichProgress, for_console  # noqa: F401 (RichProgress: where it used to live)

log = logging.getLogger("bench")
EXIT_OK, EXIT_FAILED_CELLS, EXIT_BAD_INPUT, EXIT_INTERRUPTED = 0, 1, 2, 130
EXIT_SKIPPED = 3  # every cell skipped (a nightly job on a machine whose GPU vanished), or any with --require-all
EXIT_WEAKER_EVALUATION = 4  # bench compare: no regression, but a worst case rose because the evaluation got weaker


def _positive(text: str) -> int:
    return _integer(text, 1)


def _non_negative(text: str) -> int:
    return _integer(text, 0)


def _integer(text: str, lo: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer >= {lo}, got {text!r}") from None
    if value < lo:
        raise argparse.ArgumentTypeError(f"must be an integer >= {lo}, got {value}")
    return value


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
    run.add_argument("--require-all", action="store_true",
                     help="exit 3 if any cell is skipped (default: only if every cell is); for nightly jobs")
    run.add_argument("--resume", nargs="?", const="latest", default=None, metavar="RUN_DIR",
                     help="finish an interrupted run: only cells without a row run (default: the suite's latest run)")
    run.add_argument("--retry-failed", action="store_true",
                     help="resume (the latest run, or --resume RUN_DIR) and run its failed cells again too; "
                          "each new row replaces the failed one")
    ex = run.add_argument_group("executor (default: the suite's `executor:`, else local; docs/scaling-out.md)")
    ex.add_argument("--executor", choices=("local", "ray"), default=None, help="where cells run")
    ex.add_argument("--address", default=None, metavar="ADDR",
                    help="ray: 'auto' or 'ray://HOST:10001' to join a cluster (default: start a local Ray instance)")
    ex.add_argument("--workers", type=_positive, default=None, metavar="N", help="ray: CPU worker actors (default: CPUs // cpus per worker)")
    ex.add_argument("--cpus-per-worker", type=_positive, default=None, metavar="N", help="ray: CPUs and torch threads per CPU worker (default 1)")
    ex.add_argument("--max-retries", type=_non_negative, default=None, metavar="N",
                    help="ray: runs of a group again after its worker is lost (default 2)")
    perf = sub.add_parser("perf", help="plain torchattacks PGD against the harness fast path, side by side")
    perf.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu)")
    perf.add_argument("--model", default="resnet18", help="any model a suite can name: resnet18 (default), "
                      "torchvision/<name>, timm/<name>, file.py:function, model.pt2")
    perf.add_argument("--batch", type=int, default=None, help="images per batch (default: 16 on cpu, 256 on cuda)")
    perf.add_argument("--steps", type=int, default=10, help="PGD steps (default: 10)")
    perf.add_argument("--eps", default="4/255", help="L-inf budget, e.g. 4/255 (default)")
    perf.add_argument("--precision", choices=("fp32", "bf16", "fp16"), default=None,
                      help="precision of the last configurations (default: bf16 on cuda, fp32 on cpu)")
    perf.add_argument("--compile", action="store_true", help="add a torch.compile configuration")
    perf.add_argument("--repeats", type=int, default=None, help="timed runs per configuration (median; default 2 cpu, 5 cuda)")
    perf.add_argument("--image-size", type=int, default=None, help="input size (default: the model's own; builtin 224)")
    perf.add_argument("--reports-dir", type=Path, default=Path("reports"))
    data = sub.add_parser("data", help="build data sets")
    data_sub = data.add_subparsers(dest="dataset", required=True)
    faces = data_sub.add_parser("faces", help="the faces protocol: 500 real + 500 fake for training, the rest for testing")
    src = faces.add_mutually_exclusive_group(required=True)
    src.add_argument("--source", type=Path, help="a folder with real/ and fake/ images")
    src.add_argument("--proxy", action="store_true", help="generate the offline proxy data set (see docs/workflows.md)")
    faces.add_argument("--out", type=Path, required=True, help="output folder (new or empty)")
    faces.add_argument("--seed", type=int, default=0)
    faces.add_argument("--train-per-class", type=int, default=500)
    faces.add_argument("--per-class", type=int, default=800, help="--proxy: images per class (>= 400)")
    faces.add_argument("--size", type=int, default=96, help="--proxy: image size in pixels")
    tr = sub.add_parser("train", help="train a recipe (faces detectors, digits), standard or adversarial")
    tr.add_argument("recipe", help="custom_cnn, resnet18_frozen, resnet18_finetune, digits_cnn, or all (the faces recipes)")
    tr.add_argument("--data", default=None, help="a folder made by `bench data faces`, or digits "
                    "(scikit-learn's, the fixed train/test split); default: digits for digits_cnn")
    tr.add_argument("--out", type=Path, default=None, help="where checkpoints and cards go (default: models/faces, models/digits)")
    tr.add_argument("--epochs", type=int, default=None, help="default: the recipe's")
    tr.add_argument("--image-size", type=int, default=None, help="default: the recipe's or the data's own size")
    tr.add_argument("--batch-size", type=int, default=None, help="default: 16 (faces), 64 (digits)")
    tr.add_argument("--seed", type=int, default=0)
    tr.add_argument("--adversarial", choices=("pgd", "trades"), default=None,
                    help="train on L∞ adversarial examples: pgd (Madry et al.) or trades (Zhang et al.); "
                    "the checkpoint is <recipe>-<method>.pt")
    tr.add_argument("--train-eps", default=None, help="the training budget, e.g. 0.1 or 8/255 (required with --adversarial)")
    tr.add_argument("--train-steps", type=int, default=None, help="attack steps per batch (default: the recipe's, 7 or 10)")
    tr.add_argument("--train-step-size", default=None, help="default: 2.5 · ε / steps")
    tr.add_argument("--trades-beta", type=float, default=6.0, help="trades: weight of the robustness term (default 6)")
    tr.add_argument("--eps-warmup", type=int, default=None, help="epochs over which ε rises to its value (default: the recipe's)")
    tr.add_argument("--robust-eps", default=None,
                    help="measure the test accuracy under PGD at this ε after training (default: the training ε, if any)")
    cmp_ = sub.add_parser("compare", help="compare two runs cell by cell; exit 1 on regression")
    cmp_.add_argument("baseline", type=Path, help="run folder (results/<suite>/<run_id>) or results .parquet")
    cmp_.add_argument("candidate", type=Path)
    cmp_.add_argument("--abs-threshold", type=float, default=None,
                      help="a rate regresses only when it moves the bad way by more than this (0.05 = 5 points; default: any amount)")
    cmp_.add_argument("--alpha", type=float, default=0.05,
                      help="significance level of a rate change (McNemar's exact test on the same images; default 0.05)")
    cmp_.add_argument("--min-throughput-ratio", type=float, default=None,
                      help="throughput regression below this ratio on every device (default: per device, see bench/reporting/compare.py)")
    cmp_.add_argument("--out", type=Path, default=None, help="also write the markdown here")
    mod = sub.add_parser("models", help="list the models a suite may name, with the weights on this machine")
    mod.add_argument("--source", choices=("builtin", "torchvision", "timm", "robustbench"), default=None, help="one source only")
    mod.add_argument("--filter", default=None, metavar="TEXT", help="names containing TEXT (case-insensitive)")
    rb = sub.add_parser("robustbench", help="RobustBench's protocol: clean accuracy and the authors' AutoAttack on the "
                        "first n test images, a leaderboard row")
    rb.add_argument("model", help="a RobustBench zoo entry (weights under --model-dir), or any model as bench perf --model "
                    "takes it: file.py:function, model.pt2, timm/<name>, …")
    rb.add_argument("--data", required=True, help="the folder torchvision's CIFAR10/CIFAR100 download=True fills (never downloaded)")
    rb.add_argument("--dataset", default="cifar10", help="cifar10 (default) or cifar100")
    rb.add_argument("--threat-model", default="Linf", help="Linf (ε 8/255, default) or L2 (ε 0.5)")
    rb.add_argument("--n", type=_positive, default=None, help="the first N test images (default: all 10,000, the leaderboard's)")
    rb.add_argument("--model-dir", default="models", help="RobustBench's model_dir: <dir>/<dataset>/<threat_model>/<entry>.pt")
    rb.add_argument("--batch-size", type=_positive, default=500)
    rb.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    rb.add_argument("--precision", choices=("fp32", "bf16", "fp16"), default="fp32")
    rb.add_argument("--seed", type=_non_negative, default=0, help="AutoAttack's seed (default 0, as RobustBench)")
    rb.add_argument("--resume", action="store_true", help="finish this model's interrupted protocol run")
    rb.add_argument("--results-dir", type=Path, default=Path("results"))
    rb.add_argument("--reports-dir", type=Path, default=Path("reports"))
    rb.add_argument("--no-progress", action="store_true")
    rep = sub.add_parser("report", help="rebuild the report of a run")
    rep.add_argument("run_dir", type=Path, help="results/<suite>/<run_id>")
    rep.add_argument("--reports-dir", type=Path, default=Path("reports"))
    hist = sub.add_parser("history", help="a suite's runs over time: trends and change points (history.md)")
    hist.add_argument("suite", help="a suite name, or its YAML file")
    hist.add_argument("--results", type=Path, default=Path("results"), help="where the runs are (default: results)")
    hist.add_argument("--last", type=_positive, default=None, metavar="N", help="only the last N complete runs")
    hist.add_argument("--out", type=Path, default=None, help="output folder (default: reports/<suite>)")
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
        if args.command == "compare":
            return _reading(args, _compare)
        if args.command == "data":
            return _data(args)
        if args.command == "train":
            return _train(args, console)
        if args.command == "models":
            return _models(args)
        if args.command == "history":
            return _reading(args, _history)
        if args.command == "robustbench":
            return _robustbench(args, console)
        return _reading(args, _report)
    except KeyboardInterrupt:
        log.warning("interrupted: finished cells are kept")
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # output piped into `head` and the like
        sys.stderr.close()
        return EXIT_OK


def _reading(args: argparse.Namespace, command) -> int:
    """``bench report``, ``compare`` and ``history`` read run folders that may be damaged in ways no check foresaw (a
    run.json with a doctored value deep inside): one line and exit 2 (bad input) rather than a traceback, which
    ``-v`` shows. ``compare``'s exit 1 stays what it says: a regression."""
    try:
        return command(args)
    except Exception as exc:
        if args.verbose:
            raise
        text = str(exc).strip().splitlines()
        print(f"error: bench {args.command}: cannot read the run folder(s) it was given ({type(exc).__name__}: "
              f"{text[0][:200] if text else ''}); a damaged run.json or table? `bench -v {args.command} …` shows where",
              file=sys.stderr)
        return EXIT_BAD_INPUT


def _run(args: argparse.Namespace, console: Console) -> int:
    from bench.data import DataError
    from bench.suite import SuiteError, format_eps, load_suite

    try:
        suite = load_suite(args.suite)
    except (SuiteError, ImportError) as exc:
        for line in str(exc).splitlines():  # every problem of the suite, one line each
            print(f"error: {line}", file=sys.stderr)
        return EXIT_BAD_INPUT
    cells = suite.cells()
    from bench import executors

    try:  # the suite's executor entry and the command line's options are checked here, --dry-run included
        spec = executors.override(executors.from_suite(suite), type=args.executor, address=args.address, workers=args.workers,
                                  cpus_per_worker=args.cpus_per_worker, max_retries=args.max_retries)
    except SuiteError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except executors.ExecutorError as exc:
        print(f"error: {args.suite}: executor: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    if args.dry_run:
        from bench.cells import shard_plan
        from bench.data import describe

        sizes = {m.name: describe(m.data or suite.data)[0] for m in suite.models}
        print(f"suite {suite.name}: {len(cells)} cells")
        for c in cells:
            shards = shard_plan(sizes[c.model.name], c.batch_size, suite.shard_size)
            print(f"  {c.model.name:<16} {c.attack.name:<14} eps={format_eps(c.attack.eps):<8} {c.defense.label:<9} "
                  f"{c.eval_mode:<10} {c.device:<6} {c.precision:<5} {len(shards)} shard(s) of {shards[0][1] - shards[0][0]} images")
        return EXIT_OK
    from bench.cells import load_datasets
    from bench.runner import run_suite

    try:
        executor = executors.create(spec)
    except executors.ExecutorError as exc:
        print(f"error: {args.suite}: executor: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    try:
        datasets = load_datasets(suite)
    except DataError as exc:
        print(f"error: {args.suite}: data: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    from bench.files import LinkError
    from bench.runner import ResumeError, RunError, latest_run

    resume = None
    if args.retry_failed and not args.resume:
        args.resume = "latest"  # --retry-failed is a kind of resume: of the latest run unless --resume names one
    if args.resume:
        resume = latest_run(args.results_dir, suite.name) if args.resume == "latest" else Path(args.resume)
        if resume is None:
            print(f"error: --resume: no run of suite {suite.name!r} under {args.results_dir}", file=sys.stderr)
            return EXIT_BAD_INPUT
        log.info("resuming %s", resume)
    log.info("suite %s: %d cells on %s images", suite.name, len(cells), " + ".join(str(len(d)) for d in datasets.values()))
    progress = None if args.no_progress else for_console(console, sys.stderr)
    with _stop_on_ctrl_c() as stop:
        try:
            result = run_suite(suite, args.results_dir, args.reports_dir, progress=progress, datasets=datasets,
                               resume=resume, stop=stop.is_set, retry_failed=args.retry_failed, executor=executor)
        except (ResumeError, executors.ExecutorError, LinkError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return EXIT_BAD_INPUT
        except RunError as exc:  # the run itself broke (its folder, say): one line, the log has the traceback
            print(f"error: {exc}", file=sys.stderr)
            return EXIT_FAILED_CELLS
    counts = result.counts
    print(f"cells: {counts.get('ok', 0)} ok, {counts.get('skipped', 0)} skipped, {counts.get('failed', 0)} failed")
    print(f"table:  {result.run_dir / 'results.parquet'}")
    print(f"report: {result.report_path}")
    if counts.get("failed"):
        return EXIT_FAILED_CELLS
    skipped = counts.get("skipped", 0)
    if skipped and (args.require_all or not counts.get("ok")):
        which = "every cell" if not counts.get("ok") else f"{skipped} cell(s)"
        print(f"error: {which} skipped, nothing measured for {'them' if counts.get('ok') else 'the suite'} "
              f"(reasons in the report){'; --require-all' if args.require_all and counts.get('ok') else ''}", file=sys.stderr)
        return EXIT_SKIPPED
    return EXIT_OK


@contextlib.contextmanager
def _stop_on_ctrl_c():
    """First Ctrl-C: finish the current batch, keep every finished cell, write table and report.
    Second Ctrl-C: stop at once (finished cells are still on disk)."""
    stop = threading.Event()

    def handler(signum, frame):
        if stop.is_set():
            signal.signal(signal.SIGINT, signal.default_int_handler)
            raise KeyboardInterrupt
        stop.set()
        log.warning("stopping after the current batch (Ctrl-C again to stop now); resume with --resume")

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield stop
    finally:
        signal.signal(signal.SIGINT, previous)


def _perf(args: argparse.Namespace) -> int:
    from bench.perf import parse_eps, run_perf
    from bench.sources import from_name

    cuda = args.device.startswith("cuda")
    problems = []
    try:
        from_name(args.model, input_size=args.image_size)
    except (ValueError, ImportError) as exc:
        problems.append(f"--model {args.model!r} is unknown or cannot be used: {exc}")
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
    from bench.files import LinkError

    try:
        path, text = run_perf(args.device, args.model, batch, args.steps, eps, args.precision, args.compile, repeats,
                              args.image_size, args.reports_dir)
    except LinkError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except OSError as exc:  # a full disk writing the report: one line naming the file
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILED_CELLS
    print(text)
    print(f"report: {path}")
    return EXIT_OK


def _data(args: argparse.Namespace) -> int:
    from bench.faces import FacesError, make_proxy, split_protocol

    try:
        if args.proxy:
            record = make_proxy(args.out, per_class=args.per_class, size=args.size, seed=args.seed,
                                train_per_class=args.train_per_class)
        else:
            record = split_protocol(args.source, args.out, seed=args.seed, train_per_class=args.train_per_class)
    except FacesError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    counts = ", ".join(f"{k} {v}" for k, v in record["counts"].items())
    print(f"faces data in {args.out}: {counts}; split hash {record['split_hash'][:16]}")
    if record["proxy"]:
        print(record["note"])
    return EXIT_OK


class TrainProgress:
    """One bar per recipe, with epoch, running loss and accuracy."""

    def __init__(self, console: Console):
        self._p = Progress(TextColumn("[bold]{task.description:<18}"), BarColumn(), MofNCompleteColumn(),
                           TimeElapsedColumn(), TextColumn("{task.fields[detail]}"), console=console)

    def start(self, name: str, total: int) -> None:
        self._task = self._p.add_task(name, total=total, detail="")
        self._p.start()

    def step(self, epoch: int, epochs: int, loss: float, acc: float) -> None:
        self._p.update(self._task, advance=1, detail=f"epoch {epoch}/{epochs}  loss {loss:.4f}  acc {acc:.3f}")

    def stop(self) -> None:
        self._p.stop()


def _train(args: argparse.Namespace, console: Console) -> int:
    from bench.adversarial_training import AdversarialSpec
    from bench.faces import FacesError, read_split
    from bench.perf import parse_eps
    from bench.train import RECIPES, output_name, train

    faces = [n for n, r in RECIPES.items() if r.data == "faces"]
    names = faces if args.recipe == "all" else [args.recipe]
    if any(n not in RECIPES for n in names):
        print(f"error: unknown recipe {args.recipe!r}; allowed: {', '.join(RECIPES)}, all", file=sys.stderr)
        return EXIT_BAD_INPUT
    kinds = {RECIPES[n].data for n in names}
    data = args.data or ("digits" if kinds == {"digits"} else None)
    problems = []
    if data is None:
        problems.append("--data is required for the faces recipes: a folder made by `bench data faces`")
    elif (data == "digits") != (kinds == {"digits"}):
        problems.append(f"recipe {args.recipe!r} trains on {' and '.join(sorted(kinds))} data; --data {data!r} is not that")
    elif data != "digits":
        try:
            read_split(Path(data))
        except FacesError as exc:
            problems.append(str(exc))

    def fraction(flag: str, text: str | None) -> float | None:
        if text is None:
            return None
        try:
            return parse_eps(text)
        except (ValueError, ZeroDivisionError, OverflowError):
            problems.append(f"{flag} must be a number or a fraction like 8/255, got {text!r}")
            return None

    train_eps, step_size, robust_eps = (fraction(f, v) for f, v in (("--train-eps", args.train_eps),
                                        ("--train-step-size", args.train_step_size), ("--robust-eps", args.robust_eps)))
    if robust_eps is not None and not 0 < robust_eps <= 1:
        problems.append(f"--robust-eps must be in (0, 1], got {args.robust_eps}")
    adversarial = None
    if args.adversarial is None:
        given = [f for f, v in (("--train-eps", args.train_eps), ("--train-step-size", args.train_step_size),
                                ("--train-steps", args.train_steps), ("--eps-warmup", args.eps_warmup)) if v is not None]
        if given:
            problems.append(f"{', '.join(given)} only appl{'ies' if len(given) == 1 else 'y'} with --adversarial pgd or trades")
    elif train_eps is None:
        if args.train_eps is None:
            problems.append("--adversarial needs --train-eps (e.g. 0.1 or 8/255)")
    else:
        try:
            warmup = args.eps_warmup if args.eps_warmup is not None else max(RECIPES[n].eps_warmup for n in names)
            steps = args.train_steps if args.train_steps is not None else max(RECIPES[n].train_steps for n in names)
            adversarial = AdversarialSpec(args.adversarial, train_eps, steps, step_size, args.trades_beta, warmup)
        except ValueError as exc:
            problems.append(str(exc))
    if args.adversarial != "trades" and args.trades_beta != 6.0:
        problems.append("--trades-beta only applies with --adversarial trades")
    if args.image_size is not None and args.image_size < 8:
        problems.append(f"--image-size must be at least 8 pixels, got {args.image_size}")
    if args.epochs is not None and args.epochs < 1:
        problems.append(f"--epochs must be at least 1, got {args.epochs}")
    if args.batch_size is not None and args.batch_size < 1:
        problems.append(f"--batch-size must be at least 1, got {args.batch_size}")
    if problems:
        for p in problems:
            print(f"error: {p}", file=sys.stderr)
        return EXIT_BAD_INPUT
    out = args.out or Path("models") / ("digits" if data == "digits" else "faces")
    batch_size = args.batch_size or (64 if data == "digits" else 16)
    for name in names:
        card = train(name, data, out, epochs=args.epochs, image_size=args.image_size, seed=args.seed,
                     batch_size=batch_size, progress=TrainProgress(console), adversarial=adversarial, robust_eps=robust_eps)
        robust = card["robust_test"]
        robust_text = f", under PGD at ε {robust['eps']:.4g} {100 * robust['acc']:.1f} %" if robust else ""
        print(f"{output_name(name, adversarial)}: test accuracy {100 * card['test_acc']:.1f} % (train {100 * card['train_acc']:.1f} %)"
              f"{robust_text}, {card['train_seconds']:.0f} s, {card['arch']} from {card['weights_from'].split(' instead of')[0]}; "
              f"{out / card['checkpoint']}")
    return EXIT_OK


def _compare(args: argparse.Namespace) -> int:
    from bench.reporting.compare import compare
    from bench.files import write_atomic
    from bench.results import RunFolderError

    problems = [f"--alpha must be in (0, 1), got {args.alpha}" if not 0 < args.alpha < 1 else "",
                f"--abs-threshold must be in [0, 1] (0.05 = 5 points), got {args.abs_threshold}"
                if args.abs_threshold is not None and not 0 <= args.abs_threshold <= 1 else "",
                f"--min-throughput-ratio must be > 0, got {args.min_throughput_ratio}"
                if args.min_throughput_ratio is not None and not args.min_throughput_ratio > 0 else ""]
    if any(problems):
        print(f"error: {next(p for p in problems if p)}", file=sys.stderr)
        return EXIT_BAD_INPUT
    try:  # a damaged run folder is bad input (2), never a traceback: 1 means a regression only
        result = compare(args.baseline, args.candidate, args.abs_threshold, args.min_throughput_ratio, args.alpha)
    except (FileNotFoundError, RunFolderError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    print(result.markdown)
    if args.out:
        try:
            args.out.parent.mkdir(parents=True, exist_ok=True)
            write_atomic(args.out, result.markdown.encode())
        except OSError as exc:  # a link there, a full disk: the comparison is printed above, its file is not
            print(f"error: {exc}", file=sys.stderr)
            return EXIT_BAD_INPUT
    if result.regressions:
        return EXIT_FAILED_CELLS
    return EXIT_WEAKER_EVALUATION if result.weaker_evaluation else EXIT_OK


def _robustbench(args: argparse.Namespace, console: Console) -> int:
    """Write RobustBench's protocol as a suite (bench/robustbench_protocol.py; kept beside the row, so `bench run` can
    run it again), run it as `bench run` runs one, and print and file the leaderboard row."""
    import yaml

    from bench import files
    from bench import robustbench_protocol as rb

    protocol = rb.Protocol(args.model, args.data, args.dataset, args.threat_model, args.n, args.model_dir, args.batch_size,
                           args.device, args.precision, args.seed)
    try:
        doc = rb.suite(protocol)
    except rb.ProtocolError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    path = rb.suite_path(protocol, args.reports_dir)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        files.write_atomic(path, ("# RobustBench's protocol, written by `bench robustbench`; `bench run` runs it again\n"
                                  + yaml.safe_dump(doc, sort_keys=False)).encode())
    except OSError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    run_args = ["run", str(path), "--results-dir", str(args.results_dir), "--reports-dir", str(args.reports_dir)]
    code = _run(_parser().parse_args(run_args + (["--no-progress"] if args.no_progress else [])
                                     + (["--resume"] if args.resume else [])), console)
    from bench.runner import latest_run

    run_dir = latest_run(args.results_dir, protocol.name)
    if code not in (EXIT_OK, EXIT_FAILED_CELLS, EXIT_SKIPPED) or run_dir is None:  # a skip still gets its row
        return code
    try:
        row = rb.leaderboard_row(protocol, run_dir)
        out = rb.write(protocol, row, args.reports_dir)
    except (rb.ProtocolError, ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    print(rb.markdown(row))
    print(f"row: {out} (and {out.parent / 'leaderboard.csv'})")
    return code


def _models(args: argparse.Namespace) -> int:
    from bench.sources import catalogue

    if args.source == "timm":
        from bench.sources.timm_models import INSTALL_HINT

        try:
            import timm  # noqa: F401
        except ImportError:
            print(f"error: {INSTALL_HINT}", file=sys.stderr)
            return EXIT_BAD_INPUT
    entries = catalogue(args.source, args.filter)
    print("| arch (as a suite names it) | weights: | pretrained weights on this machine |")
    print("|---|---|---|")
    for e in entries:
        print(f"| {e.name} | {e.weights} | {e.available} |")
    print(f"\n{len(entries)} model(s). Weights not on this machine: a suite may still name them; their cells are "
          "skipped with the file to put where. Your own models: `factory:` or `file:` (docs/own-models.md).")
    return EXIT_OK


def _history(args: argparse.Namespace) -> int:
    from bench.reporting.history import HistoryError, load_runs, write_history

    name = args.suite
    if name.endswith((".yaml", ".yml")):  # a suite file: its runs are filed under its name
        import yaml

        try:
            doc = yaml.safe_load(Path(name).read_text(encoding="utf-8"))
            name = doc["name"]
        except (OSError, yaml.YAMLError, KeyError, TypeError) as exc:
            print(f"error: {args.suite}: cannot read the suite's name ({type(exc).__name__}: {exc})", file=sys.stderr)
            return EXIT_BAD_INPUT
    if not isinstance(name, str) or not name or "/" in name or name.startswith("."):
        print(f"error: {args.suite}: not a suite name", file=sys.stderr)
        return EXIT_BAD_INPUT
    try:
        runs = load_runs(args.results, name, args.last)
    except HistoryError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    from bench.files import LinkError

    try:
        path = write_history(runs, args.out or Path("reports") / name)
    except LinkError as exc:  # a link where a file goes: nothing written
        print(f"error: cannot write the history: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except OSError as exc:  # a full disk, a folder that cannot be written
        print(f"error: cannot write the history: {exc}", file=sys.stderr)
        return EXIT_FAILED_CELLS
    print(f"history of {len(runs)} run(s): {path}")
    return EXIT_OK


def _report(args: argparse.Namespace) -> int:
    from bench.files import LinkError
    from bench.reporting.report import write_report
    from bench.results import RUN_FILE

    if not os.path.lexists(args.run_dir / RUN_FILE):  # there but not a regular file: read_json says what it is
        print(f"error: {args.run_dir}: not a run folder (no {RUN_FILE})", file=sys.stderr)
        return EXIT_BAD_INPUT
    try:
        print(f"report: {write_report(args.run_dir, args.reports_dir)}")
    except (ValueError, LinkError) as exc:  # a damaged run folder (RunFolderError names the file), a link where the report goes
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except OSError as exc:  # a full disk: one line naming the file
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILED_CELLS
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
