"""``bench perf``: plain torchattacks PGD as a user writes it, against the harness's fast path,
on the same model, inputs, ε and steps, in one process.

Configuration A is PGD on a model whose weights require grad, in fp32 and the default memory
format, cudnn.benchmark off. The rows after it switch the levers of :mod:`bench.fastpath` on one
at a time, so each row shows the lever's own share and the running total. Each configuration runs
inside :func:`bench.fastpath.backend_flags` (cudnn.benchmark is process-wide state) and starts
from the memory the previous one freed. Every configuration starts PGD's random start from the
same seed, and its robust accuracy is reported next to its speed: a fast path that changes the
answer is not a fast path.
"""

from __future__ import annotations

import gc
import logging
import math
import re
import statistics
from dataclasses import dataclass, replace
from fractions import Fraction
from pathlib import Path

import torch

from bench.data import load_dataset
from bench.fastpath import PLAIN, Levers, backend_flags, prepare
from bench.models import ModelUnavailable
from bench.sources import create_model, from_name
from bench import files
from bench.results import device_name, environment
from bench.specs import DataSpec, format_eps
from bench.timing import Stopwatch, peak_memory_mb, reset_peak_memory

log = logging.getLogger(__name__)

# Dense (not 2:4-sparse) bf16 tensor-core peak from the vendors' data sheets (FLOP/s), for the
# roofline share. Keys are whole words of ``torch.cuda.get_device_name`` (without "NVIDIA"); the
# longest key that matches wins, so "A10" never matches an "A10G" and "H100 PCIe" beats any
# shorter H100 key. An H100 whose form factor the name does not tell gets no roofline at all:
# PCIe (756) and SXM (989) differ too much to guess.
BF16_PEAK = {
    "H100 PCIe": 756e12,
    "H100 80GB HBM3": 989e12,  # the SXM5 board's name
    "H100 SXM5": 989e12,
    "H100 NVL": 835e12,
    "H200": 989e12,
    "H200 NVL": 835e12,
    "GH200": 989e12,
    "A100": 312e12,
    "L40S": 362e12,
    "A10": 125e12,
    "A10G": 70e12,
}


def _words(name: str) -> list[str]:
    return [w for w in re.split(r"[^a-z0-9]+", name.lower()) if w]


def bf16_peak(device_name: str) -> float | None:
    """The data-sheet dense bf16 peak (FLOP/s) of a GPU by its name, or None when unknown."""
    words = _words(device_name)
    best: tuple[int, float] | None = None
    for key, peak in BF16_PEAK.items():
        k = _words(key)
        if any(words[i : i + len(k)] == k for i in range(len(words) - len(k) + 1)):
            if best is None or len(k) > best[0]:
                best = (len(k), peak)
    return best[1] if best else None


@dataclass
class PerfRow:
    name: str
    levers: str
    precision: str
    img_steps_per_s: float
    seconds: float
    robust_acc: float
    peak_mem_mb: float
    warmup_seconds: float
    adv_loss: float  # mean cross-entropy of the adversarial images on the reference fp32 model


def forward_flops(model: torch.nn.Module, size: int, device: str) -> float:
    """FLOPs of one forward pass on one image (2 per multiply-add), counted by PyTorch."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(torch.rand(1, 3, size, size, device=device))
    return float(counter.get_total_flops())


def _configs(device: str, precision: str, compile_: bool) -> list[tuple[str, Levers, str]]:
    steps = [
        ("A: plain torchattacks", PLAIN, "fp32"),
        ("+ frozen weights", replace(PLAIN, frozen=True), "fp32"),
        ("+ BatchNorm folded", replace(PLAIN, frozen=True, fold_bn=True), "fp32"),
        ("+ channels_last", replace(Levers(), cudnn_benchmark=False), "fp32"),
        ("+ cudnn.benchmark", Levers(), "fp32"),
    ]
    if precision != "fp32":
        steps.append((f"+ {precision} autocast", Levers(), precision))
    if compile_:
        steps.append(("+ torch.compile", Levers(compile=True), precision))
    return steps


def _lever_text(levers: Levers) -> str:
    on = [name for name in ("frozen", "fold_bn", "channels_last", "cudnn_benchmark", "compile") if getattr(levers, name)]
    return ", ".join(on) or "none"


def run_perf(device: str = "cpu", arch: str = "resnet18", batch: int = 16, steps: int = 10, eps: float = 4 / 255,
             precision: str | None = None, compile_: bool = False, repeats: int = 2, image_size: int | None = None,
             reports_dir: str | Path = "reports") -> tuple[Path, str]:
    """Measure every configuration, write ``reports/perf/<device-name>.md``; return (path, markdown)."""
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError("--device cuda: CUDA is not available on this machine")
    precision = precision or ("bf16" if device.startswith("cuda") else "fp32")
    dev_name = device_name(device)
    # reports/perf/<device>.md for the default model; other models get their own file beside it
    out = Path(reports_dir) / "perf" / (f"{_slug(dev_name)}.md" if arch == "resnet18" else f"{_slug(dev_name)}-{re.sub(r'[^A-Za-z0-9_.-]+', '-', arch).strip('-')}.md")
    files.check_target(out)  # a link there is refused before minutes of measuring, not after
    spec = from_name(arch, input_size=image_size)  # any source; its own input size unless --image-size
    image_size = spec.input_size
    weights_note = f"{spec.weights} weights" if spec.weights else "random init: no pretrained weights asked for or known"
    try:
        base = create_model(spec)
    except ModelUnavailable as exc:
        spec = replace(spec, weights=None, class_names=None)
        base = create_model(spec)
        weights_note = f"random init, because {exc}"
    trained = spec.weights is not None and spec.num_classes == 1000  # ImageNet labels of the bundled photos apply

    data = load_dataset(DataSpec("samples", image_size=image_size), spec.preprocess)
    reps = math.ceil(batch / len(data))
    x = data.images.repeat(reps, 1, 1, 1)[:batch].float().div_(255).to(device)
    y = data.labels.repeat(reps)[:batch].to(device)
    if not trained:
        y = y % spec.num_classes
    flops = forward_flops(base.to(device), image_size, device)
    base = base.cpu()

    rows: list[PerfRow] = []
    reference = prepare(base, device, "fp32", PLAIN)  # judges every configuration's images alike
    for name, levers, prec in _configs(device, precision, compile_):
        log.info("perf: %s", name)
        with backend_flags(levers):  # cudnn.benchmark for this configuration only
            rows.append(_measure(name, levers, prec, base, reference, x, y, eps, steps, repeats, device))
        _free(device)  # the next configuration's peak memory starts from what this one leaves

    text = render(rows, dev_name, device, arch, weights_note, trained, batch, steps, eps, image_size, repeats, flops)
    out.parent.mkdir(parents=True, exist_ok=True)
    files.write_atomic(out, text.encode())
    return out, text


def _measure(name: str, levers: Levers, prec: str, base: torch.nn.Module, reference: torch.nn.Module, x: torch.Tensor,
             y: torch.Tensor, eps: float, steps: int, repeats: int, device: str) -> PerfRow:
    """One configuration: untimed warm-up, then the median of ``repeats`` timed PGD runs. Its
    model and images are local, so they are garbage once it returns."""
    import torchattacks

    batch = len(x)
    watch_warm = Stopwatch(device)
    with watch_warm.region():
        model = prepare(base, device, prec, levers, sample=x[: min(8, batch)].cpu())
        torchattacks.PGD(model, eps=eps, alpha=eps / 4, steps=1)(x, y)  # warm-up: kernels, cuDNN choice, compile
    warm = watch_warm.seconds
    _free(device)  # the warm-up's leftovers are not this configuration's peak
    reset_peak_memory(device)
    times = []
    for _ in range(repeats):
        torch.manual_seed(0)  # the same random start for every configuration
        attack = torchattacks.PGD(model, eps=eps, alpha=eps / 4, steps=steps)
        watch = Stopwatch(device)
        with watch.region():
            adv = attack(x, y)
        times.append(watch.seconds)
    peak = peak_memory_mb(device)
    with torch.no_grad():
        acc = (model(adv).argmax(1) == y).float().mean().item()
        loss = torch.nn.functional.cross_entropy(reference(adv), y).item()
    t = statistics.median(times)
    return PerfRow(name, _lever_text(levers), prec, batch * steps / t, t, acc, peak, warm, loss)


def _free(device: str) -> None:
    """Return what dropped models and images held, so the next peak-memory reading is its own."""
    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.synchronize(torch.device(device))
        torch.cuda.empty_cache()


def render(rows: list[PerfRow], dev_name: str, device: str, arch: str, weights_note: str, trained: bool, batch: int,
           steps: int, eps: float, image_size: int, repeats: int, flops: float) -> str:
    base = rows[0]
    peak = bf16_peak(dev_name) if device.startswith("cuda") else None
    header = ("| configuration | levers | precision | img·steps/s | × vs A | lever's own × | robust acc | Δ vs A (points) "
              "| adv loss | peak mem MB | warm-up s |")
    sep = "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"
    if peak:
        header += " bf16 roofline |"
        sep += "---:|"
    lines = [header, sep]
    prev = base
    for r in rows:
        delta = 100 * (r.robust_acc - base.robust_acc)
        line = (f"| {r.name} | {r.levers} | {r.precision} | {_rate(r.img_steps_per_s)} | {r.img_steps_per_s / base.img_steps_per_s:.2f} | "
                f"{r.img_steps_per_s / prev.img_steps_per_s:.2f} | {100 * r.robust_acc:.1f} % | {delta:+.1f} | "
                f"{r.adv_loss:.2f} | {r.peak_mem_mb:,.0f} | {r.warmup_seconds:.1f} |")
        if peak:
            # one PGD step ≈ 2 forwards: a forward, and a backward for the input gradient only.
            # Only bf16 rows: an fp32 (or fp16) row measured against the bf16 peak means nothing.
            line += f" {100 * r.img_steps_per_s * 2 * flops / peak:.1f} % |" if r.precision == "bf16" else " – |"
        lines.append(line)
        prev = r
    best = max(rows, key=lambda r: r.img_steps_per_s)
    agree = all(abs(r.robust_acc - base.robust_acc) <= 0.02 for r in rows)
    env = environment()
    summary = [
        f"# `bench perf` on {dev_name}",
        "",
        f"PGD (L∞, ε = {format_eps(eps)}, α = ε/4, {steps} steps, random start from one seed) on `{arch}` ({weights_note}), "
        f"batch {batch} at {image_size} px (the bundled photos, tiled), {device}. Median of {repeats} timed runs after an "
        "untimed warm-up run; warm-up (and compile) time is shown apart and never enters throughput. "
        f"{'CUDA events, synchronised' if device.startswith('cuda') else 'time.perf_counter'} timing. "
        f"Forward pass: {flops / 1e9:.2f} GFLOP per image, counted by torch.utils.flop_counter.",
        "",
        *lines,
        "",
        f"Best: **{best.name}**, {best.img_steps_per_s / base.img_steps_per_s:.2f}× plain torchattacks.",
        "Robust accuracies " + ("agree within 2 points." if agree else "DO NOT agree within 2 points: investigate before trusting the fast path.")
        + " 'adv loss' is the mean cross-entropy of each configuration's adversarial images on the same fp32 reference"
        " model: equal strength shows as equal loss. (The images themselves differ: PGD's sign steps turn float"
        " rounding differences between levers into different, equally strong, paths.)"
        + ("" if trained else " (Random-init weights: accuracy agreement is checked but says little about a trained model.)"),
    ]
    if not device.startswith("cuda"):
        summary.append("cudnn.benchmark acts on cuDNN convolutions only: on CPU its row shows the timer's noise.")
    if peak:
        summary.append(f"Roofline (bf16 rows only; – elsewhere): achieved FLOP/s (2 × forward FLOPs per image-step) over the "
                       f"data-sheet dense bf16 peak of {peak / 1e12:.0f} TFLOP/s.")
    summary += ["", f"torch {env['torch']}, torchvision {env['torchvision']}, torchattacks {env['torchattacks']}, "
                f"{env['cpu']} ({env['cpu_threads']} threads), git {env['git_sha'][:12]}.", ""]
    from bench.reporting.text import wrap

    return wrap("\n".join(summary))


def _rate(value: float) -> str:
    """Three significant figures below 100 (a CPU's 1.23 img·steps/s), whole tenths above."""
    return f"{value:,.1f}" if value >= 100 else f"{value:.3g}"


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", name).strip("-").lower() or "device"


def parse_eps(text: str) -> float:
    """``8/255``, ``2.5/255`` or ``0.03`` as a float (a decimal numerator too, as suites allow); ValueError otherwise."""
    num, sep, den = str(text).partition("/")
    if "/" in den:
        raise ValueError(f"one fraction bar at most: {text!r}")
    return float(Fraction(num.strip()) / Fraction(den.strip())) if sep else float(Fraction(str(text).strip()))
