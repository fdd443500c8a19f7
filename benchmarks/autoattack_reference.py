"""AutoAttack reference: the authors' code beside torchattacks' re-implementation, on the very images and
model a bench suite uses.

    python benchmarks/autoattack_reference.py --checkpoint models/digits/digits_cnn-pgd.pt --eps 0.15 \
        [--seed 0] [--batch-size 360] [--which authors,torchattacks,torchattacks-100] --out DIR

Implementations (``--which``, run in the order given):

- ``authors``: the authors' AutoAttack (Croce & Hein; PyPI ``pyautoattack``), standard version, L∞:
  APGD-CE (100 iterations, 1 restart), APGD-T (100 iterations, 9 target classes), FAB-T (100
  iterations, 9 target classes), Square (5000 queries, p schedule not rescaled), each on the images
  still standing;
- ``torchattacks``: ``torchattacks.AutoAttack(model, norm='Linf', eps, version='standard', n_classes=10,
  seed)``, exactly as bench builds its ``type: autoattack`` attack (bench/attacks/torchattacks_attacks.py
  passes the suite's entry plus ``eps`` and ``seed``) and calls it (``attack(x, y)`` per batch);
- ``torchattacks-100``: torchattacks' own APGD / APGDT / FAB / Square in a ``torchattacks.MultiAttack``, in
  the standard order, with the authors' settings instead of torchattacks' defaults: 100 steps for
  APGD-CE, APGD-T and FAB-T (torchattacks' AutoAttack leaves them at 10), one restart each, 9 target
  classes, Square with 5000 queries and ``resc_schedule=False`` (torchattacks' default rescales it).

Data and model as a suite has them: the digits test split at 16 px as bench decodes it
(``bench.data.load_dataset``), the model resolved from the checkpoint and its card by bench's suite
loader and built by ``bench.sources.create_model`` (normalisation inside, so attacks see [0, 1];
eval mode; fp32 on the CPU). ``--bench-levers`` also applies the fast-path levers a suite cell applies
(``bench.fastpath.prepare``: BatchNorm folding, channels-last), which change float rounding only.

Randomness: every implementation runs inside its own ``bench.seeding.seeded(seed)`` block (torch's, NumPy's
and Python's generators seeded, put back after) and gets
the same ``seed`` argument, so its numbers do not depend on which implementations ran before it.
``--seed bench`` uses the seed a suite cell would (``CellSpec.attack_seed`` of the robust suite's
``autoattack`` cell for this model name, ε, cpu, fp32). Torch's thread count is left as bench's local
executor leaves it unless ``--threads`` says otherwise; it is recorded.

Outputs in ``--out``: ``<which>.csv`` (one row per image: index, id, label, clean prediction, robust
prediction before and after rounding to the 8-bit grid, L∞ size of the perturbation),
``<which>.json`` (that implementation's numbers) and ``summary.json`` (all of them, plus McNemar
discordant counts for every pair). An implementation whose ``<which>.json`` is already there for the
same settings is not run again (``--force`` runs it again), so a broken run can be finished.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import logging
import math
import platform
import re
import sys
import time
from fractions import Fraction
from itertools import combinations
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench.defenses import quantize
from bench.seeding import seeded

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

IMPLEMENTATIONS = ("authors", "torchattacks", "torchattacks-100")
SUITE_SEED = 0  # the robust suite's seed (suites/robust.yaml): what --seed bench derives the cell's seed from
ATTACK_NAME = "autoattack"  # the robust suite's attack entry name (part of a cell's seed)
N_CLASSES = 10


# -- the run's inputs, as a suite has them ------------------------------------------------------

def parse_eps(text: str) -> float:
    m = re.fullmatch(r"\s*([0-9.]+)\s*/\s*([0-9.]+)\s*", text)
    value = float(Fraction(m.group(1)) / Fraction(m.group(2))) if m else float(text)
    if not (0 < value <= 1):
        raise argparse.ArgumentTypeError(f"eps must be in (0, 1], got {text!r}")
    return value


def default_model_name(checkpoint: Path) -> str:
    """The robust suite's names for the two digits models (a cell's seed depends on the model name)."""
    return "pgd-trained" if checkpoint.stem.endswith("-pgd") else "standard"


def load_suite_model(checkpoint: Path, model_name: str, eps: float, batch_size: int):
    """The suite bench would run, reduced to this model and the torchattacks AutoAttack entry of
    suites/robust.yaml: (suite, model spec, the cell's attack seed)."""
    from bench.suite import parse_suite

    doc = {
        "name": "autoattack-reference",
        "seed": SUITE_SEED,
        "data": {"source": "digits", "split": "test", "image_size": 16},
        "models": [{"name": model_name, "checkpoint": str(checkpoint.resolve())}],
        "attacks": [{"name": ATTACK_NAME, "type": "autoattack", "eps": [eps], "version": "standard",
                     "n_classes": N_CLASSES}],
        "devices": ["cpu"],
        "precisions": ["fp32"],
        "batch_size": batch_size,
    }
    # a path inside suites/ so that anything relative resolves as it would for suites/robust.yaml
    suite = parse_suite(doc, ROOT / "suites" / "autoattack-reference.yaml")
    cells = [c for c in suite.cells() if c.eval_mode == "oblivious"]
    return suite, suite.models[0], cells[0].attack_seed


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@torch.no_grad()
def predict(model, x: torch.Tensor, batch_size: int) -> torch.Tensor:
    return torch.cat([model(x[i : i + batch_size]).argmax(1) for i in range(0, len(x), batch_size)])


# -- the three implementations ------------------------------------------------------------------

class _Capture(logging.Handler):
    """Keeps the authors' log lines (logger 'auto-attack') and echoes them to stdout."""

    def __init__(self):
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record):
        line = record.getMessage()
        self.lines.append(line)
        print(f"    [auto-attack] {line}", flush=True)


def run_authors(model, x, y, eps, seed, batch_size) -> tuple[torch.Tensor, dict[str, Any]]:
    import pyautoattack
    from pyautoattack import AutoAttack

    logger = logging.getLogger("auto-attack")
    capture = _Capture()
    old_level, old_propagate = logger.level, logger.propagate
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    logger.addHandler(capture)
    try:
        aa = AutoAttack(model, norm="Linf", eps=eps, version="standard", seed=seed, device="cpu")
        settings = {
            "package": f"pyautoattack {pyautoattack.__version__}",
            "attacks": list(aa.attacks_to_run),
            "apgd-ce": {"n_iter": aa.apgd.n_iter, "n_restarts": aa.apgd.n_restarts, "rho": aa.apgd.thr_decr},
            "apgd-t": {"n_iter": aa.apgd_targeted.n_iter, "n_restarts": aa.apgd_targeted.n_restarts,
                       "n_target_classes": aa.apgd_targeted.n_target_classes},
            "fab-t": {"n_iter": aa.fab.n_iter, "n_restarts": 1, "n_target_classes": aa.fab.n_target_classes},
            "square": {"n_queries": aa.square.n_queries, "p_init": aa.square.p_init,
                       "resc_schedule": aa.square.rescale_schedule, "n_restarts": aa.square.n_restarts},
        }
        x_adv, _ = aa.run_standard_evaluation(x, y, batch_size=batch_size)
    finally:
        logger.removeHandler(capture)
        logger.setLevel(old_level)
        logger.propagate = old_propagate
    stages = {}
    for line in capture.lines:
        m = re.match(r"robust accuracy after (\S+): ([0-9.]+)%", line)
        if m:
            stages[m.group(1).lower()] = round(float(m.group(2)) / 100 * len(x))
    if stages and list(stages.values())[-1] == 0:  # it stops once no image is standing: the rest stand at 0 too
        stages.update({name: 0 for name in aa.attacks_to_run if name not in stages})
    return x_adv, {"settings": settings, "standing_after": stages, "log": capture.lines}


def _torchattacks_stages(multi, names: list[str]):
    """Let a torchattacks MultiAttack count the images standing after each of its attacks."""
    multi._accumulate_multi_atk_records = True
    multi._multi_atk_records = [0.0] * (len(names) + 1)

    def read() -> dict[str, int]:
        records = multi._multi_atk_records
        return {name: int(records[i + 1]) for i, name in enumerate(names) if i + 1 < len(records)}

    return read


def _attack_settings(attack) -> dict[str, Any]:
    keep = ("steps", "n_restarts", "n_target_classes", "n_queries", "p_init", "rescale_schedule", "loss",
            "multi_targeted", "eot_iter", "thr_decr", "seed")
    return {k: getattr(attack, k) for k in keep if hasattr(attack, k)}


def run_torchattacks(model, x, y, eps, seed, batch_size, authors_settings: bool):
    import torchattacks

    names = ["apgd-ce", "apgd-t", "fab-t", "square"]
    if not authors_settings:
        attack = torchattacks.AutoAttack(model, norm="Linf", eps=eps, version="standard", n_classes=N_CLASSES, seed=seed)
        multi = attack._autoattack
    else:
        multi = torchattacks.MultiAttack([
            torchattacks.APGD(model, norm="Linf", eps=eps, steps=100, n_restarts=1, seed=seed, loss="ce"),
            torchattacks.APGDT(model, norm="Linf", eps=eps, steps=100, n_restarts=1, seed=seed, n_classes=N_CLASSES),
            torchattacks.FAB(model, norm="Linf", eps=eps, steps=100, n_restarts=1, seed=seed, multi_targeted=True,
                             n_classes=N_CLASSES),
            torchattacks.Square(model, norm="Linf", eps=eps, n_queries=5000, n_restarts=1, p_init=0.8, seed=seed,
                                resc_schedule=False),
        ])
        attack = multi
    read_stages = _torchattacks_stages(multi, names)
    settings = {"package": f"torchattacks {torchattacks.__version__}", "attacks": names,
                **{n: _attack_settings(a) for n, a in zip(names, multi.attacks)}}
    out = []
    for i in range(0, len(x), batch_size):  # as a bench cell calls it: attack(x, y) per batch
        out.append(attack(x[i : i + batch_size], y[i : i + batch_size]).detach())
    return torch.cat(out), {"settings": settings, "standing_after": read_stages()}


RUNNERS = {
    "authors": lambda m, x, y, e, s, b: run_authors(m, x, y, e, s, b),
    "torchattacks": lambda m, x, y, e, s, b: run_torchattacks(m, x, y, e, s, b, authors_settings=False),
    "torchattacks-100": lambda m, x, y, e, s, b: run_torchattacks(m, x, y, e, s, b, authors_settings=True),
}


# -- comparisons -------------------------------------------------------------------------------

def mcnemar_p(b: int, c: int) -> float:
    """Exact two-sided McNemar p-value (binomial on the discordant pairs)."""
    n = b + c
    if n == 0:
        return 1.0
    k = min(b, c)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2**n
    return min(1.0, 2 * tail)


def pair_counts(a: dict[str, Any], b: dict[str, Any], key: str) -> dict[str, Any]:
    """Images broken (robust prediction != label) by one implementation and not the other."""
    label = np.array(a["labels"])
    broken_a = np.array(a[key]) != label
    broken_b = np.array(b[key]) != label
    only_a, only_b = int((broken_a & ~broken_b).sum()), int((~broken_a & broken_b).sum())
    return {"only_" + a["which"]: only_a, "only_" + b["which"]: only_b, "both": int((broken_a & broken_b).sum()),
            "neither": int((~broken_a & ~broken_b).sum()), "mcnemar_p": mcnemar_p(only_a, only_b),
            "only_a_indices": np.flatnonzero(broken_a & ~broken_b).tolist(),
            "only_b_indices": np.flatnonzero(~broken_a & broken_b).tolist()}


# -- main ------------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", type=Path, required=True, help="a bench checkpoint with its card (.json) beside it")
    p.add_argument("--eps", type=parse_eps, required=True, help="L∞ budget in [0, 1] pixel units (0.15 or 8/255)")
    p.add_argument("--seed", default="0", help="an integer, or 'bench': the seed a robust-suite cell would use (default 0)")
    p.add_argument("--batch-size", type=int, default=360)
    p.add_argument("--which", default=",".join(IMPLEMENTATIONS), help=f"comma-separated, run in this order: {', '.join(IMPLEMENTATIONS)}")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--model-name", help="the model's name in the suite (a cell's seed depends on it); default: the robust "
                   "suite's (pgd-trained for *-pgd.pt, else standard)")
    p.add_argument("--limit", type=int, help="only the first N images (a smoke run; the reference uses all)")
    p.add_argument("--threads", type=int, help="torch threads (default: torch's own, as bench's local executor leaves it)")
    p.add_argument("--bench-levers", action="store_true", help="also apply a suite cell's fast-path levers (bench.fastpath.prepare)")
    p.add_argument("--force", action="store_true", help="run implementations again even if their results are in --out")
    args = p.parse_args(argv)

    which = [w.strip() for w in args.which.split(",") if w.strip()]
    unknown = [w for w in which if w not in IMPLEMENTATIONS]
    if unknown or not which:
        p.error(f"--which: unknown {', '.join(unknown) or '(empty)'}; allowed: {', '.join(IMPLEMENTATIONS)}")
    if not args.checkpoint.is_file():
        p.error(f"--checkpoint: file not found: {args.checkpoint}")
    if args.threads:
        torch.set_num_threads(args.threads)

    from bench.data import load_dataset
    from bench.sources import create_model
    from bench.specs import DataSpec

    model_name = args.model_name or default_model_name(args.checkpoint)
    suite, spec, bench_seed = load_suite_model(args.checkpoint, model_name, args.eps, args.batch_size)
    if args.seed == "bench":
        seed = bench_seed
    elif re.fullmatch(r"\d+", args.seed):
        seed = int(args.seed)
    else:
        p.error(f"--seed: an integer or 'bench', got {args.seed!r}")

    data_spec = DataSpec("digits", split="test", image_size=16)
    ds = load_dataset(data_spec, spec.preprocess)
    images, labels, ids = ds.images, ds.labels, list(ds.ids)
    if args.limit:
        images, labels, ids = images[: args.limit], labels[: args.limit], ids[: args.limit]
    x = images.float().div(255)
    y = labels.clone().long()
    model = create_model(spec, seed=suite.seed)  # as a suite's workspace builds it (bench/cells.py)
    if args.bench_levers:
        from bench.fastpath import Levers, prepare

        model = prepare(model, "cpu", "fp32", Levers(), sample=x[:8])
    model.eval()
    clean = predict(model, x, args.batch_size)

    config = {
        "checkpoint": str(args.checkpoint.resolve()),
        "checkpoint_sha256": sha256_file(args.checkpoint),
        "model": {"name": spec.name, "arch": spec.arch, "num_classes": spec.num_classes, "input_size": spec.input_size,
                  "mean": spec.mean, "std": spec.std, "bench_levers": args.bench_levers},
        "data": {"source": "digits", "split": "test", "image_size": 16, "images": len(x),
                 "split_info": getattr(ds, "split", None), "preprocess": spec.preprocess.label},
        "eps": args.eps,
        "norm": "Linf",
        "seed": seed,
        "bench_cell_seed": bench_seed,
        "batch_size": args.batch_size,
        "limit": args.limit,
    }
    env = {"python": platform.python_version(), "torch": torch.__version__, "threads": torch.get_num_threads(),
           "machine": platform.machine(), "processor": platform.processor() or None}
    try:
        import torchattacks

        env["torchattacks"] = torchattacks.__version__
    except ImportError:
        pass
    try:
        import pyautoattack

        env["pyautoattack"] = pyautoattack.__version__
    except ImportError:
        pass

    args.out.mkdir(parents=True, exist_ok=True)
    clean_acc = float((clean == y).float().mean())
    print(f"model {spec.name} ({spec.arch}, {args.checkpoint.name}), digits test {len(x)} images at 16 px, clean accuracy "
          f"{clean_acc:.1%}; L∞ ε {args.eps:g}; seed {seed} (a robust-suite cell's: {bench_seed}); batch {args.batch_size}; "
          f"{torch.get_num_threads()} torch threads", flush=True)

    results: dict[str, dict[str, Any]] = {}
    for w in IMPLEMENTATIONS:  # earlier runs with the same settings (a finished or interrupted run)
        path = args.out / f"{w}.json"
        if path.is_file():
            try:
                old = json.loads(path.read_text())
            except ValueError:
                continue
            if old.get("config") == config:
                results[w] = old
    for w in which:
        if w in results and not args.force:
            print(f"{w}: already in {args.out / (w + '.json')} for these settings; not run again (--force runs it)", flush=True)
            continue
        print(f"{w}: running on {len(x)} images …", flush=True)
        with seeded(seed):  # bench.seeding.seeded, as a cell seeds its crafting
            t0 = time.perf_counter()
            x_adv, info = RUNNERS[w](model, x.clone(), y.clone(), args.eps, seed, args.batch_size)
            seconds = time.perf_counter() - t0
        x_adv = x_adv.detach().float().cpu()
        q = quantize(x_adv)
        pred_float, pred_q = predict(model, x_adv, args.batch_size), predict(model, q, args.batch_size)
        linf = (x_adv - x).abs().flatten(1).max(1).values
        linf_q = (q - x).abs().flatten(1).max(1).values
        record = {
            "which": w,
            "config": config,
            "env": env,
            "seconds": round(seconds, 1),
            "clean_accuracy": clean_acc,
            "robust_accuracy": float((pred_float == y).float().mean()),
            "robust_accuracy_quantized": float((pred_q == y).float().mean()),
            "robust": int((pred_float == y).sum()),
            "robust_quantized": int((pred_q == y).sum()),
            "images": len(x),
            "max_linf": float(linf.max()),
            "max_linf_quantized": float(linf_q.max()),
            "over_budget": int((linf > args.eps + 1e-6).sum()),
            **info,
            "labels": y.tolist(),
            "clean_pred": clean.tolist(),
            "robust_pred": pred_float.tolist(),
            "robust_pred_quantized": pred_q.tolist(),
        }
        with open(args.out / f"{w}.csv", "w", newline="") as f:
            out = csv.writer(f)
            out.writerow(["index", "id", "label", "clean_pred", "robust_pred_quantized", "robust_pred", "linf"])
            for i in range(len(x)):
                out.writerow([i, ids[i], int(y[i]), int(clean[i]), int(pred_q[i]), int(pred_float[i]), f"{float(linf[i]):.6f}"])
        (args.out / f"{w}.json").write_text(json.dumps(record, indent=1))
        results[w] = record
        print(f"{w}: robust {record['robust_accuracy']:.1%} before quantisation, {record['robust_accuracy_quantized']:.1%} "
              f"after; {seconds:.0f} s; standing after each attack: {info.get('standing_after')}", flush=True)

    order = [w for w in IMPLEMENTATIONS if w in results]
    pairs = {}
    for a, b in combinations(order, 2):
        pairs[f"{a} vs {b}"] = {"quantized": pair_counts(results[a], results[b], "robust_pred_quantized"),
                                "float": pair_counts(results[a], results[b], "robust_pred")}
    summary = {
        "config": config,
        "env": env,
        "results": {w: {k: v for k, v in results[w].items()
                        if k not in ("labels", "clean_pred", "robust_pred", "robust_pred_quantized", "log", "config")}
                    for w in order},
        "pairs": pairs,
        "note": "robust_accuracy: on the float adversarial images; robust_accuracy_quantized: after rounding them to "
                "the 8-bit grid (round(x*255)/255, as bench stores them). Pairs: images broken by one implementation "
                "only (McNemar discordant counts), with an exact two-sided McNemar p.",
    }
    (args.out / "summary.json").write_text(json.dumps(summary, indent=1))
    print_summary(summary, args.out)
    return 0


def print_summary(summary: dict[str, Any], out: Path) -> None:
    c = summary["config"]
    print()
    print(f"AutoAttack reference — {c['model']['name']} ({Path(c['checkpoint']).name}), {c['data']['images']} digits, "
          f"L∞ ε {c['eps']:g}, seed {c['seed']}, batch {c['batch_size']}, {summary['env']['threads']} threads")
    print(f"{'implementation':<18} {'robust':>8} {'8-bit':>8} {'seconds':>9}   standing after apgd-ce / apgd-t / fab-t / square")
    for w, r in summary["results"].items():
        st = r.get("standing_after") or {}
        stages = " / ".join(str(st.get(k, "-")) for k in ("apgd-ce", "apgd-t", "fab-t", "square"))
        print(f"{w:<18} {r['robust_accuracy']:>8.1%} {r['robust_accuracy_quantized']:>8.1%} {r['seconds']:>9.0f}   {stages}")
    for name, pair in summary["pairs"].items():
        a, b = name.split(" vs ")
        q, f = pair["quantized"], pair["float"]
        print(f"{name}: broken only by {a} {q['only_' + a]}, only by {b} {q['only_' + b]} (McNemar p {q['mcnemar_p']:.3g}; "
              f"before quantisation {f['only_' + a]} / {f['only_' + b]})")
    print(f"per-image rows: {out}/<implementation>.csv; all numbers: {out}/summary.json")


if __name__ == "__main__":
    sys.exit(main())
