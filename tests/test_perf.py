"""`bench perf`: the side-by-side table is built from measurements (no timed assertions here)."""

from __future__ import annotations

import dataclasses
import weakref

import pytest
import torch
import torch.nn.functional as F

import bench.perf
from bench.cli import main
from bench.data import load_dataset
from bench.fastpath import PLAIN, Levers
from bench.models import Classifier, CustomCNN
from bench.sources import create_model
from bench.perf import PerfRow, _configs, bf16_peak, forward_flops, render, run_perf
from bench.suite import DataSpec, ModelSpec

NAMES = ["A: plain torchattacks", "+ frozen weights", "+ BatchNorm folded", "+ channels_last", "+ cudnn.benchmark"]


def _table(text: str) -> list[dict[str, str]]:
    """The report's table as one dict per row, keyed by the header's column names."""
    lines = [line for line in text.splitlines() if line.startswith("| ")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    return [dict(zip(header, (c.strip() for c in line.strip("|").split("|")))) for line in lines[1:]]


@pytest.fixture(scope="module")
def lite0_run(tmp_path_factory):
    """One real run on a trained model (EfficientNet-Lite0, bundled ImageNet weights) at a tiny
    size, recording whether each configuration's model was freed before the next one's peak
    memory was reset."""
    prepared: list[tuple[str, weakref.ref]] = []
    alive_at_reset: list[list[str]] = []
    real_prepare, real_reset = bench.perf.prepare, bench.perf.reset_peak_memory

    def prepare(base, device, precision, levers, sample=None):
        model = real_prepare(base, device, precision, levers, sample=sample)
        if sample is not None:  # a configuration's model, not the fp32 reference
            prepared.append((str(levers), weakref.ref(model)))
        return model

    def reset_peak_memory(device):
        # earlier configurations' models must be gone: only the current one may be alive
        alive_at_reset.append([name for name, ref in prepared[:-1] if ref() is not None])
        real_reset(device)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(bench.perf, "prepare", prepare)
        mp.setattr(bench.perf, "reset_peak_memory", reset_peak_memory)
        path, text = run_perf("cpu", "efficientnet_lite0", batch=4, steps=1, eps=4 / 255, image_size=96, repeats=1,
                              reports_dir=tmp_path_factory.mktemp("reports"))
    return path, text, alive_at_reset


def test_perf_runs_plain_then_one_lever_per_row_and_writes_the_report(lite0_run, tmp_path):
    path, text, _ = lite0_run
    assert path.name.endswith("-efficientnet_lite0.md") and path.read_text() == text
    rows = _table(text)
    assert [r["configuration"] for r in rows] == NAMES
    # cudnn.benchmark is its own lever: off in A and in every row before its own
    assert rows[0]["levers"] == "none"
    assert all("cudnn_benchmark" not in r["levers"] for r in rows[:4])
    assert rows[4]["levers"] == "frozen, fold_bn, channels_last, cudnn_benchmark"


def test_the_fast_path_attacks_as_hard_as_plain_torchattacks(lite0_run):
    """Same robust accuracy as A within 2 points, and an attack that really worked: every image the
    model got right clean is broken by A, so a fast path with broken gradients would show."""
    _, text, _ = lite0_run
    rows = _table(text)
    acc = [float(r["robust acc"].rstrip(" %")) for r in rows]
    loss = [float(r["adv loss"]) for r in rows]
    assert all(abs(a - acc[0]) <= 2 for a in acc), acc
    assert all(abs(float(r["Δ vs A (points)"]) - (a - acc[0])) < 0.051 for r, a in zip(rows, acc))
    assert all(abs(v - loss[0]) <= 0.05 * loss[0] for v in loss), loss
    assert "agree within 2 points" in text

    model = create_model(ModelSpec("m", "efficientnet_lite0", "imagenet", num_classes=1000, input_size=96))
    data = load_dataset(DataSpec("samples", image_size=96))
    x, y = data.images[:4].float() / 255, data.labels[:4]
    with torch.no_grad():
        logits = model(x)
    clean_acc = 100 * (logits.argmax(1) == y).float().mean().item()
    assert clean_acc > acc[0]  # the attack broke images the model had right
    assert loss[0] > 2 * F.cross_entropy(logits, y).item()


def test_each_configuration_is_freed_before_the_next_peak_memory_reset(lite0_run):
    _, _, alive_at_reset = lite0_run
    assert len(alive_at_reset) == len(NAMES)
    assert alive_at_reset == [[]] * len(NAMES)


def test_ratios_come_from_the_measured_rows_and_each_runs_under_its_own_cudnn_flag(monkeypatch, tmp_path):
    """Throughputs are faked (10, 20, 15, 30, 60 img·steps/s) so the ratio columns have one right
    answer; the real loop still runs every configuration inside backend_flags."""
    speeds = iter([10.0, 20.0, 15.0, 30.0, 60.0])
    seen = []

    def measure(name, levers, prec, base, reference, x, y, eps, steps, repeats, device):
        seen.append((name, levers, torch.backends.cudnn.benchmark))
        return PerfRow(name, bench.perf._lever_text(levers), prec, next(speeds), 1.0, 0.5, 100.0, 0.1, 1.0)

    monkeypatch.setattr(bench.perf, "_measure", measure)
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)
    _, text = run_perf("cpu", "custom_cnn", batch=2, steps=1, image_size=96, repeats=1, reports_dir=tmp_path)
    rows = _table(text)
    assert [r["img·steps/s"] for r in rows] == ["10", "20", "15", "30", "60"]
    assert [r["× vs A"] for r in rows] == ["1.00", "2.00", "1.50", "3.00", "6.00"]
    assert [r["lever's own ×"] for r in rows] == ["1.00", "2.00", "0.75", "2.00", "2.00"]
    assert [flag for _, levers, flag in seen] == [levers.cudnn_benchmark for _, levers, _ in seen] == [False] * 4 + [True]
    assert torch.backends.cudnn.benchmark is False  # restored after the run
    assert "Best: **+ cudnn.benchmark**, 6.00× plain torchattacks." in text


def test_configurations_switch_one_lever_at_a_time():
    configs = _configs("cuda", "bf16", compile_=True)
    assert [name for name, _, _ in configs] == NAMES + ["+ bf16 autocast", "+ torch.compile"]
    assert configs[0][1] == PLAIN and not PLAIN.cudnn_benchmark
    for (_, before, p0), (name, after, p1) in zip(configs, configs[1:]):
        changed = [f.name for f in dataclasses.fields(Levers) if getattr(before, f.name) != getattr(after, f.name)]
        assert len(changed) + (p0 != p1) == 1, name


@pytest.mark.parametrize("name,tflops", [
    ("NVIDIA H100 PCIe", 756),
    ("NVIDIA H100 80GB HBM3", 989),
    ("NVIDIA H100 NVL", 835),
    ("NVIDIA H200", 989),
    ("NVIDIA A100-SXM4-80GB", 312),
    ("NVIDIA A100 80GB PCIe", 312),
    ("NVIDIA A10G", 70),
    ("NVIDIA A10", 125),
    ("NVIDIA L40S", 362),
    ("NVIDIA H100", None),  # form factor unknown: no guess
    ("NVIDIA GeForce RTX 4090", None),
    ("AMD EPYC", None),
])
def test_bf16_peak_matches_whole_words_longest_first(name, tflops):
    peak = bf16_peak(name)
    assert (peak / 1e12 if peak else None) == tflops


def test_roofline_share_is_only_for_bf16_rows():
    rows = [PerfRow("A: plain torchattacks", "none", "fp32", 1000.0, 1.0, 0.5, 100.0, 0.1, 1.0),
            PerfRow("+ bf16 autocast", "frozen", "bf16", 4000.0, 1.0, 0.5, 100.0, 0.1, 1.0)]
    text = render(rows, "NVIDIA H100 PCIe", "cuda", "resnet18", "w", True, 256, 10, 4 / 255, 224, 5, flops=3.6e9)
    table = _table(text)
    assert table[0]["bf16 roofline"] == "–"
    assert table[1]["bf16 roofline"] == f"{100 * 4000 * 2 * 3.6e9 / 756e12:.1f} %"
    assert "756 TFLOP/s" in text


def test_forward_flops_match_the_architecture():
    net = Classifier(CustomCNN(2, 224), (0, 0, 0), (1, 1, 1), 224, 2)
    # first conv alone: 3->15, k3, 222x222 outputs, 2 FLOPs per multiply-add
    assert forward_flops(net, 224, "cpu") > 2 * 15 * 3 * 9 * 222 * 222


def test_bad_perf_arguments_exit_2(capsys):
    assert main(["perf", "--model", "vgg99", "--eps", "10/0"]) == 2
    err = capsys.readouterr().err
    assert "--model 'vgg99' is unknown" in err and "--eps must be a number" in err


@pytest.mark.parametrize("text, value", [("8/255", 8 / 255), ("2.5/255", 2.5 / 255), ("0.03", 0.03), (" 1/4 ", 0.25)])
def test_eps_on_the_command_line_reads_like_in_a_suite(text, value):
    """make faces passes --train-step-size 2.5/255: a decimal numerator must parse."""
    from bench.perf import parse_eps

    assert parse_eps(text) == pytest.approx(value)


@pytest.mark.parametrize("text", ["8/0", "eight", "1/2/3", ""])
def test_a_bad_eps_on_the_command_line_is_a_value_error(text):
    from bench.perf import parse_eps

    with pytest.raises((ValueError, ZeroDivisionError)):
        parse_eps(text)
