"""The defense registry and every defense in it: each maps the 8-bit grid to the 8-bit grid with the
batch's shape, dtype and device; seeded draws repeat to the bit; EOT averages single-draw gradients;
each defense is the transformation its paper describes; and every bad entry is refused before any
compute with ``FILE:LINE: KEY: …`` (which the CLI prints and exits 2 on: tests/test_cli.py)."""

from __future__ import annotations

import re
import textwrap

import numpy as np
import pytest
import scipy.ndimage
import torch
import torch.nn as nn

from bench import defenses as D
from bench.suite import SuiteError, load_suite

USER_DEFENSES = '''
import torch

def blur(x):
    return torch.nn.functional.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)

def jitter(x, generator=None):
    return (x + 0.02 * torch.randn(x.shape, generator=generator, device=x.device)).clamp(0, 1)

def unseeded(x):
    return (x + 0.02 * torch.randn_like(x)).clamp(0, 1)

def smaller(x):
    return x[..., 1:, 1:]

def brighter(x):
    return x * 2

def broken(x):
    raise RuntimeError("no such filter")
'''


@pytest.fixture(scope="module")
def user_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("user") / "my_defenses.py"
    path.write_text(USER_DEFENSES)
    return path


def every_defense(user_file) -> list:
    return [
        D.spec("none"),
        D.spec("jpeg", quality=50),
        D.spec("bit_depth", bits=3),
        D.spec("median", size=2),
        D.spec("median", size=3),
        D.spec("resize_pad", max_scale=1.1),
        D.spec("gaussian_noise", sigma=0.05),
        D.spec("chain", of=[D.spec("bit_depth", bits=5), D.spec("jpeg", quality=75)]),
        D.spec("python", fn=f"{user_file}:blur", differentiable=True),
        D.spec("python", fn=f"{user_file}:jitter", randomized=True),
    ]


@pytest.fixture
def images():
    g = torch.Generator().manual_seed(0)
    return D.quantize(torch.rand(3, 3, 48, 48, generator=g))


def test_every_type_is_covered(user_file):
    assert {s.type for s in every_defense(user_file)} == set(D.DEFENSES)


def test_each_defense_keeps_shape_dtype_device_and_the_8bit_grid(images, user_file):
    for spec in every_defense(user_file):
        out = D.build(spec)(images, D.generator("cpu", 1))
        assert out.shape == images.shape and out.dtype == images.dtype and out.device == images.device, spec.label
        assert torch.equal(out * 255, (out * 255).round()) and 0 <= out.min() and out.max() <= 1, spec.label
        if spec.type != "none":
            assert not torch.equal(out, images), f"{spec.label} did nothing"


def test_reruns_give_the_same_bits_and_randomized_ones_change_with_the_seed(images, user_file):
    for spec in every_defense(user_file):
        defense = D.build(spec)
        a, b = defense(images, D.generator("cpu", 7)), defense(images, D.generator("cpu", 7))
        assert torch.equal(a, b), spec.label
        other = defense(images, D.generator("cpu", 8))
        assert defense.randomized == (not torch.equal(a, other)), spec.label
    assert {s.label for s in every_defense(user_file) if D.randomized(s)} == {"resize_pad-1.1", "noise-0.05", "python-jitter"}


def test_labels_are_short_and_spell_out_every_parameter(user_file):
    assert [s.label for s in every_defense(user_file)] == [
        "none", "jpeg-q50", "bits-3", "median-2", "median-3", "resize_pad-1.1", "noise-0.05",
        "chain(bits-5,jpeg-q75)", "python-blur", "python-jitter",
    ]
    assert D.spec("jpeg", quality=75, subsampling=444).label == "jpeg-q75-444"


def test_bit_depth_leaves_at_most_2_to_the_bits_levels(images):
    for bits in (1, 3, 5):
        out = D.build(D.spec("bit_depth", bits=bits))(images)
        assert len(torch.unique(out)) <= 2**bits
    assert torch.equal(D.build(D.spec("bit_depth", bits=8))(images), images)  # 8 bits is the grid itself


@pytest.mark.parametrize("size", [2, 3, 4, 5, 6, 7])
def test_median_is_xu_et_al_s_scipy_median_filter_with_reflect_padding(images, size):
    out = D.build(D.spec("median", size=size))(images)
    expected = scipy.ndimage.median_filter(images.numpy(), size=(1, 1, size, size), mode="reflect")
    assert np.array_equal(out.numpy(), expected)


def test_resize_pad_draws_each_image_its_own_size_and_offset_and_returns_the_input_size():
    x = D.quantize(torch.rand(6, 3, 40, 40, generator=torch.Generator().manual_seed(1)))
    one = D.build(D.spec("resize_pad", max_scale=1.2))(x, D.generator("cpu", 3))
    assert one.shape == x.shape
    # the same image in every slot still comes out different: the draws are per image
    same = x[:1].expand(6, -1, -1, -1).contiguous()
    out = D.build(D.spec("resize_pad", max_scale=1.2))(same, D.generator("cpu", 3))
    assert len({o.numpy().tobytes() for o in out}) > 1
    # zero padding shows: some border rows or columns turn dark on a bright image
    bright = torch.ones(4, 3, 40, 40)
    padded = D.build(D.spec("resize_pad", max_scale=1.2))(bright, D.generator("cpu", 3))
    assert padded.min() < 0.5


def test_gaussian_noise_has_the_asked_standard_deviation():
    x = torch.full((4, 3, 64, 64), 0.5)
    out = D.build(D.spec("gaussian_noise", sigma=0.05))(x, D.generator("cpu", 0))
    assert abs((out - x).std().item() - 0.05) < 0.003


def test_a_chain_applies_its_parts_in_order(images):
    bits, jpeg = D.spec("bit_depth", bits=3), D.spec("jpeg", quality=50)
    chained = D.build(D.spec("chain", of=[bits, jpeg]))(images)
    assert torch.equal(chained, D.build(jpeg)(D.build(bits)(images)))
    assert not torch.equal(chained, D.build(D.spec("chain", of=[jpeg, bits]))(images))


def test_adaptive_methods_bpda_everywhere_diff_where_natural(user_file):
    methods = {s.label: D.methods(s) for s in every_defense(user_file)}
    assert methods["none"] == ()
    assert methods["bits-3"] == ("bpda",) and methods["python-jitter"] == ("bpda",)
    for label in ("jpeg-q50", "median-3", "resize_pad-1.1", "noise-0.05", "chain(bits-5,jpeg-q75)", "python-blur"):
        assert methods[label] == ("bpda", "diff"), label


def test_diff_runs_the_real_defense_forward_and_a_gradient_backward(images):
    for spec in (D.spec("median", size=3), D.spec("resize_pad"), D.spec("gaussian_noise")):
        x = images.clone().requires_grad_(True)
        out = D.attack_path(spec, "adaptive-diff")(x, D.generator("cpu", 5))
        assert torch.equal(out.detach(), D.build(spec)(images, D.generator("cpu", 5))), spec.label
        (g,) = torch.autograd.grad((out * torch.linspace(0, 1, out.numel()).view_as(out)).sum(), x)
        assert (g != 0).float().mean() > 0.3, spec.label


def test_diff_of_a_chain_goes_straight_through_its_parts_without_one(images):
    spec = D.spec("chain", of=[D.spec("bit_depth", bits=4), D.spec("median", size=3)])
    x = images.clone().requires_grad_(True)
    out = D.attack_path(spec, "adaptive-diff")(x)
    assert torch.equal(out.detach(), D.build(spec)(images))
    (g,) = torch.autograd.grad(out.sum(), x)
    assert (g != 0).any()


class _Linear(nn.Module):
    def __init__(self, size: int):
        super().__init__()
        self.fc = nn.Linear(3 * size * size, 4)
        torch.nn.init.normal_(self.fc.weight, generator=torch.Generator().manual_seed(0))

    def forward(self, x):
        return torch.tanh(self.fc(x.flatten(1)))


@pytest.mark.parametrize("spec", [D.spec("resize_pad", max_scale=1.2), D.spec("gaussian_noise", sigma=0.1)], ids=lambda s: s.label)
@pytest.mark.parametrize("mode", ["adaptive-bpda", "adaptive-diff"])
def test_the_eot_gradient_over_k_draws_is_the_mean_of_the_k_single_draw_gradients(spec, mode):
    k, x = 5, D.quantize(torch.rand(2, 3, 24, 24, generator=torch.Generator().manual_seed(2)))
    model, upstream = _Linear(24), torch.randn(2, 4, generator=torch.Generator().manual_seed(3))

    def grad(wrapped):
        xg = x.clone().requires_grad_(True)
        return torch.autograd.grad((wrapped(xg) * upstream).sum(), xg)[0]

    eot = D.attack_model(model, spec, mode, eot_samples=k, generator=D.generator("cpu", 11))
    assert isinstance(eot, D.EOT)
    g = D.generator("cpu", 11)  # the same stream of draws, one draw per call
    singles = [grad(D.attack_model(model, spec, mode, eot_samples=1, generator=g)) for _ in range(k)]
    assert torch.allclose(grad(eot), torch.stack(singles).mean(0), atol=1e-6)
    assert not torch.allclose(singles[0], singles[1])  # the draws differ, so the average is not one of them


def test_deterministic_defenses_get_no_eot(images):
    model = _Linear(48)
    assert isinstance(D.attack_model(model, D.spec("median"), "adaptive-diff", eot_samples=8), D.Defended)
    assert D.attack_model(model, D.spec("median"), "oblivious", eot_samples=8) is model


def test_a_randomized_python_defense_without_a_generator_argument_is_seeded_through_torch(user_file, images):
    spec = D.spec("python", fn=f"{user_file}:unseeded", randomized=True)
    a = D.build(spec)(images, D.generator("cpu", 1))
    assert torch.equal(a, D.build(spec)(images, D.generator("cpu", 1)))
    assert not torch.equal(a, D.build(spec)(images, D.generator("cpu", 2)))


# -- suite entries: accepted forms and every error, before any compute ---------------------------


def _load(write_suite, tiny_suite, defenses, **extra):
    tiny_suite["defenses"] = defenses
    tiny_suite.update(extra)
    return load_suite(write_suite(tiny_suite))


def test_lists_expand_and_chains_take_every_combination(write_suite, tiny_suite):
    suite = _load(write_suite, tiny_suite, [
        "none", {"type": "median", "size": [2, 3]},
        {"type": "chain", "of": [{"type": "bit_depth", "bits": [4, 5]}, "jpeg"]},
    ])
    assert [d.label for d in suite.defenses] == [
        "none", "median-2", "median-3", "chain(bits-4,jpeg-q75)", "chain(bits-5,jpeg-q75)"]


def test_adaptive_cells_follow_the_methods_each_defense_has(write_suite, tiny_suite):
    suite = _load(write_suite, tiny_suite, ["none", "bit_depth", "resize_pad"], eval_mode=["oblivious", "adaptive"],
                  eot_samples=3, eval_draws=2)
    modes = {(c.defense.label, c.eval_mode) for c in suite.cells() if c.attack.name == "pgd"}
    assert modes == {("none", "oblivious"), ("bits-5", "oblivious"), ("resize_pad-1.1", "oblivious"),
                     ("bits-5", "adaptive-bpda"), ("resize_pad-1.1", "adaptive-bpda"), ("resize_pad-1.1", "adaptive-diff")}
    assert {(c.eot_samples, c.eval_draws) for c in suite.cells()} == {(3, 2)}
    only_diff = _load(write_suite, tiny_suite, ["none", "bit_depth", "resize_pad"], adaptive_method="diffjpeg")
    assert {c.eval_mode for c in only_diff.cells()} == {"oblivious", "adaptive-diff"}


BAD = [
    ({"type": "bit_depth", "bits": 0}, "defenses[1].bits", "between 1 and 8, got 0"),
    ({"type": "median", "size": 1}, "defenses[1].size", "between 2 and 7 (window side in pixels), got 1"),
    ({"type": "gaussian_noise", "sigma": -0.1}, "defenses[1].sigma", ">= 0"),
    ({"type": "resize_pad", "max_scale": 1}, "defenses[1].max_scale", "> 1"),
    ({"type": "blur"}, "defenses[1].type", "unknown defense 'blur'; allowed: none, jpeg, bit_depth"),
    ({"type": "median", "radius": 2}, "defenses[1].radius", "unknown key; allowed: type, size"),
    ({"type": "chain", "of": []}, "defenses[1].of", "non-empty list"),
    ({"type": "chain"}, "defenses[1].of", "is required"),
    ({"type": "chain", "of": [{"type": "chain", "of": [{"type": "chain", "of": [{"type": "chain", "of": [
        {"type": "chain", "of": ["jpeg"]}]}]}]}]}, "defenses[1].of[0].of[0].of[0].of[0].of", "at most 4 deep"),
    ({"type": "python", "fn": "no_such_module_xyz:blur"}, "defenses[1].fn", "cannot import module 'no_such_module_xyz'"),
    ({"type": "python", "fn": "blur"}, "defenses[1].fn", "must be 'pkg.module:function'"),
    ({"type": "python", "fn": "USER:nothing"}, "defenses[1].fn", "has no function 'nothing'"),
    ({"type": "python", "fn": "USER:smaller"}, "defenses[1].fn", "changed the batch's shape"),
    ({"type": "python", "fn": "USER:brighter"}, "defenses[1].fn", "leaves [0, 1]"),
    ({"type": "python", "fn": "USER:broken"}, "defenses[1].fn", "RuntimeError: no such filter"),
    ({"type": "python", "fn": "USER:unseeded"}, "defenses[1].randomized", "say `randomized: true`"),
    ({"type": "python", "fn": "USER:jitter", "differentiable": True, "randomized": True}, "defenses[1]", None),
    ({"type": "chain", "of": ["jpeg", {"type": "python", "fn": "USER:brighter"}]}, "defenses[1]", "leaves [0, 1]"),
]


@pytest.mark.parametrize("entry,key,words", BAD, ids=[f"{b[1]}:{b[2]}" for b in BAD])
def test_a_bad_defense_is_one_line_naming_file_line_and_key(write_suite, tiny_suite, user_file, entry, key, words):
    text = repr(entry).replace("USER", str(user_file))
    tiny_suite["defenses"] = ["none", eval(text)]
    path = write_suite(tiny_suite)
    if words is None:  # a good entry: differentiable and randomized, it loads
        assert load_suite(path).defenses[1].label == "python-jitter"
        return
    with pytest.raises(SuiteError) as err:
        load_suite(path)
    msg = str(err.value)
    assert re.match(rf"{re.escape(str(path))}:\d+: {re.escape(key)}: ", msg), msg
    assert words in msg and "\n" not in msg, msg


def test_resize_pad_that_leaves_no_room_at_the_model_size_is_refused(write_suite, tiny_suite):
    tiny_suite["defenses"] = ["none", {"type": "resize_pad", "max_scale": 1.005}]  # ⌊96 · 1.005⌋ = 96
    with pytest.raises(SuiteError, match=r":\d+: defenses\[1\]\.max_scale: resize_pad-1.005 at 96 px: max_scale 1.005 leaves no room"):
        load_suite(write_suite(tiny_suite))


def test_a_user_defense_written_as_in_the_readme_runs(tmp_path):
    """The README's example, verbatim in spirit: a module with a seeded random transform."""
    (tmp_path / "squash.py").write_text(textwrap.dedent('''
        import torch

        def squash(x, generator=None):
            shift = torch.rand(x.shape[0], 1, 1, 1, generator=generator, device=x.device) * 0.1
            return (x * 0.9 + shift).clamp(0, 1)
    '''))
    spec = D.spec("python", fn=f"{tmp_path / 'squash.py'}:squash", randomized=True, differentiable=True)
    D.probe(spec, 32)
    assert D.methods(spec) == ("bpda", "diff") and D.randomized(spec)
