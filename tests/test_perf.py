"""`bench perf`: the side-by-side table is built from measurements (no timed assertions here)."""

from __future__ import annotations

from bench.cli import main
from bench.perf import forward_flops, run_perf
from bench.models import CustomCNN, Classifier


def test_perf_measures_plain_and_each_lever_and_writes_the_report(tmp_path):
    path, text = run_perf("cpu", "custom_cnn", batch=4, steps=2, image_size=96, repeats=1, reports_dir=tmp_path)
    assert path == tmp_path / "perf" / f"{path.stem}.md" and path.stem.endswith("-custom_cnn")
    assert path.read_text() == text
    rows = [line for line in text.splitlines() if line.startswith("| A:") or line.startswith("| + ")]
    assert [r.split(" | ")[0] for r in rows] == ["| A: plain torchattacks", "| + frozen weights", "| + BatchNorm folded", "| + channels_last"]
    assert rows[0].split(" | ")[4] == "1.00"  # A against itself
    assert "agree within 2 points" in text  # the levers do not change the attack's result


def test_forward_flops_match_the_architecture():
    net = Classifier(CustomCNN(2, 224), (0, 0, 0), (1, 1, 1), 224, 2)
    # first conv alone: 3->15, k3, 222x222 outputs, 2 FLOPs per multiply-add
    assert forward_flops(net, 224, "cpu") > 2 * 15 * 3 * 9 * 222 * 222


def test_bad_perf_arguments_exit_2(capsys):
    assert main(["perf", "--model", "vgg99", "--eps", "10/0"]) == 2
    err = capsys.readouterr().err
    assert "--model 'vgg99' is unknown" in err and "--eps must be a number" in err
