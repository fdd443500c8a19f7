"""Defenses: identity, and a real JPEG round trip on 8-bit images, 4:2:0 or 4:4:4 chroma, the same
transformation on every device."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

import torchvision.io
from PIL import JpegImagePlugin

from bench.defenses import spec as defense_spec
from bench.defenses import JPEG, DiffJPEG, attack_path, build, quantize, to_uint8
from bench.suite import DefenseSpec


@pytest.fixture
def images():
    g = torch.Generator().manual_seed(0)
    smooth = torch.nn.functional.interpolate(torch.rand(3, 3, 8, 8, generator=g), size=64, mode="bilinear")
    return quantize(smooth)


def test_none_is_the_identity(images):
    assert build(DefenseSpec("none"))(images) is images


def test_jpeg_equals_a_pil_save_and_load_at_that_quality(images):
    out = build(defense_spec("jpeg", quality=30))(images)
    arr = to_uint8(images[1]).permute(1, 2, 0).numpy()
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=30)
    expected = torch.from_numpy(np.array(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))).permute(2, 0, 1)
    assert torch.equal(to_uint8(out[1]), expected)


def test_jpeg_output_is_on_the_8bit_grid_and_lower_quality_changes_more(images):
    hi, lo = JPEG(95)(images), JPEG(10)(images)
    assert torch.allclose(hi * 255, (hi * 255).round(), atol=1e-4)
    err_hi, err_lo = (hi - images).abs().mean(), (lo - images).abs().mean()
    assert 0 < err_hi < err_lo


def test_quantize_rounds_to_the_nearest_level():
    x = torch.tensor([0.0, 0.5 / 255 + 1e-4, 1.2, -0.1])
    assert (quantize(x) * 255).round().tolist() == [0, 1, 255, 0]


def _pil_roundtrip(img: torch.Tensor, quality: int, pil_subsampling: int) -> torch.Tensor:
    buf = io.BytesIO()
    Image.fromarray(to_uint8(img).permute(1, 2, 0).numpy()).save(buf, format="JPEG", quality=quality, subsampling=pil_subsampling)
    return torch.from_numpy(np.array(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))).permute(2, 0, 1)


@pytest.mark.parametrize("subsampling,pil_subsampling", [(420, 2), (444, 0)])
def test_subsampling_is_what_pil_saves_with_it(images, subsampling, pil_subsampling):
    jpeg = build(defense_spec("jpeg", quality=50, subsampling=subsampling))
    assert jpeg.subsampling == subsampling
    assert torch.equal(to_uint8(jpeg(images)[2]), _pil_roundtrip(images[2], 50, pil_subsampling))


def test_the_default_is_420_what_pil_saves_without_being_asked(images):
    assert JPEG().subsampling == 420 and build(defense_spec("jpeg", quality=50)).subsampling == 420
    default = build(defense_spec("jpeg", quality=50))(images)
    assert torch.equal(default, build(defense_spec("jpeg", quality=50, subsampling=420))(images))
    assert not torch.equal(default, build(defense_spec("jpeg", quality=50, subsampling=444))(images))


def _checkerboard(size: int = 64) -> torch.Tensor:
    """One-pixel checkerboard of a red and a blue: all of its colour is at the finest scale."""
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    red, blue = torch.tensor([0.9, 0.1, 0.1]).view(3, 1, 1), torch.tensor([0.1, 0.1, 0.9]).view(3, 1, 1)
    return quantize(torch.where(((yy + xx) % 2).bool(), red, blue))[None]


def test_444_keeps_fine_chroma_that_420_averages_away():
    board = _checkerboard()
    err420 = (JPEG(75, 420)(board) - board).abs().mean()
    err444 = (JPEG(75, 444)(board) - board).abs().mean()
    assert err420 > 40 / 255  # 2x2 chroma averaging turns red and blue into one purple (measured 74/255)
    assert err444 < err420 / 4  # measured 9/255


def test_420_and_444_agree_on_a_grey_image(images):
    grey = images.mean(1, keepdim=True).expand(-1, 3, -1, -1)  # no chroma to subsample
    grey = quantize(grey.contiguous())
    assert (JPEG(75, 420)(grey) - JPEG(75, 444)(grey)).abs().max() <= 1 / 255  # measured: identical


def test_a_subsampling_that_jpeg_does_not_offer_is_refused():
    with pytest.raises(ValueError, match="420"):
        JPEG(75, 422)
    with pytest.raises(ValueError, match="pil"):
        JPEG(75, cuda_420="nvjpeg")


def test_diff_is_kornias_420_model_of_the_codec_for_both_subsamplings(images):
    # kornia has no 4:4:4 mode: the differentiable stand-in is the same function for both
    d420 = attack_path(defense_spec("jpeg", quality=50, subsampling=420), "adaptive-diff")
    d444 = attack_path(defense_spec("jpeg", quality=50, subsampling=444), "adaptive-diff")
    assert torch.equal(d420(images), d444(images))
    assert torch.equal(d420(images), DiffJPEG(50)(images))
    assert attack_path(defense_spec("jpeg", quality=50), "adaptive-diffjpeg")(images).equal(d420(images))  # the old name


# -- the CUDA paths, run on CPU tensors with torchvision's codecs faked ----------------------


def _sampling(data: torch.Tensor) -> int:
    """420 or 444, read from a JPEG bitstream's frame header."""
    with Image.open(io.BytesIO(data.numpy().tobytes())) as im:
        return {2: 420, 0: 444}[JpegImagePlugin.get_sampling(im)]


@pytest.fixture
def fake_nvjpeg(monkeypatch):
    """torchvision.io's encode_jpeg/decode_jpeg replaced by recorders that do what nvjpeg does
    (encode 4:4:4 whatever is asked, decode on the given device), with PIL."""
    calls = {"encode": [], "decode": []}

    def encode_jpeg(images, quality=75):
        assert isinstance(images, list), "the batch goes to nvjpeg as one list"
        calls["encode"].append({"n": len(images), "quality": quality, "dtypes": {t.dtype for t in images},
                                "shapes": {tuple(t.shape) for t in images}})
        out = []
        for t in images:
            buf = io.BytesIO()
            Image.fromarray(t.permute(1, 2, 0).numpy()).save(buf, format="JPEG", quality=quality, subsampling=0)
            out.append(torch.frombuffer(bytearray(buf.getvalue()), dtype=torch.uint8))
        return out

    def decode_jpeg(data, device="cpu"):
        assert isinstance(data, list), "the batch goes to nvjpeg as one list"
        assert all(d.device.type == "cpu" and d.dtype == torch.uint8 and d.dim() == 1 for d in data)
        calls["decode"].append({"n": len(data), "device": torch.device(device), "sampling": {_sampling(d) for d in data}})
        decoded = [torch.from_numpy(np.array(Image.open(io.BytesIO(d.numpy().tobytes())).convert("RGB"))).permute(2, 0, 1) for d in data]
        return [t.to(device) for t in decoded]

    monkeypatch.setattr(torchvision.io, "encode_jpeg", encode_jpeg)
    monkeypatch.setattr(torchvision.io, "decode_jpeg", decode_jpeg)
    return calls


def test_cuda_444_is_one_batched_nvjpeg_encode_and_decode(images, fake_nvjpeg):
    out = JPEG(60, 444)._cuda(images)
    assert fake_nvjpeg["encode"] == [{"n": 3, "quality": 60, "dtypes": {torch.uint8}, "shapes": {(3, 64, 64)}}]
    assert fake_nvjpeg["decode"] == [{"n": 3, "device": images.device, "sampling": {444}}]
    assert out.dtype == torch.float32 and out.shape == images.shape
    assert torch.equal(out, JPEG(60, 444)(images))  # the fake is PIL at 4:4:4, so this checks the plumbing


def test_cuda_420_runs_the_cpu_path_and_never_nvjpeg_by_default(images, fake_nvjpeg):
    out = JPEG(60, 420)._cuda(images)
    assert fake_nvjpeg == {"encode": [], "decode": []}
    assert torch.equal(out, JPEG(60, 420)(images))


def test_cuda_420_pil_nvjpeg_decodes_pil_420_bitstreams_in_one_batch(images, fake_nvjpeg):
    out = JPEG(60, 420, cuda_420="pil+nvjpeg")._cuda(images)
    assert fake_nvjpeg["encode"] == []  # nvjpeg cannot write 4:2:0
    assert fake_nvjpeg["decode"] == [{"n": 3, "device": images.device, "sampling": {420}}]
    assert torch.equal(out, JPEG(60, 420)(images))  # same bitstream; the fake decoder is libjpeg's


def test_nvjpeg_is_refused_for_420(images, fake_nvjpeg):
    with pytest.raises(ValueError, match="4:4:4"):
        JPEG(60, 420)._nvjpeg(images)
    assert fake_nvjpeg == {"encode": [], "decode": []}


def test_cuda_tensors_go_to_the_cuda_dispatch(monkeypatch):
    seen = []
    monkeypatch.setattr(JPEG, "_cuda", lambda self, x: seen.append(x) or "cuda path")
    monkeypatch.setattr(JPEG, "_pil", lambda self, x: "pil path")

    class OnCuda:
        is_cuda = True

    assert JPEG(75, 444).transform(OnCuda()) == "cuda path" and len(seen) == 1
    assert JPEG(75, 444).transform(torch.zeros(1, 3, 8, 8)) == "pil path"


needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def _bundled_photos() -> torch.Tensor:
    from bench.data import load_dataset
    from bench.suite import DataSpec

    return load_dataset(DataSpec("samples")).images.float() / 255


@pytest.mark.gpu
@needs_cuda
def test_gpu_jpeg_is_the_cpu_transformation_at_420_and_444():
    """On the bundled photos at q75, 420 against 444 moves pixels by 1.92/255 mean (measured on
    CPU). The CUDA path must be the CPU transformation well inside that: 420 exactly (it is the CPU
    path), 444 (nvjpeg against libjpeg) within half of it."""
    x = _bundled_photos()
    cpu = {s: JPEG(75, s)(x) for s in (420, 444)}
    gap = (cpu[420] - cpu[444]).abs().mean().item()
    assert gap > 1 / 255, gap
    gpu420 = JPEG(75, 420)(x.cuda())
    assert gpu420.is_cuda and torch.equal(to_uint8(gpu420).cpu(), to_uint8(cpu[420]))  # the same 8-bit image
    gpu444 = JPEG(75, 444)(x.cuda())
    assert gpu444.is_cuda and gpu444.shape == x.shape
    d444 = (gpu444.cpu() - cpu[444]).abs().mean().item()
    print(f"q75 bundled photos: |420-444| {gap * 255:.3f}/255, |cuda444-cpu444| {d444 * 255:.3f}/255")
    assert d444 <= gap / 2, f"nvjpeg 444 is {d444 * 255:.3f}/255 from PIL 444; 420 vs 444 is {gap * 255:.3f}/255"


@pytest.mark.gpu
@needs_cuda
def test_gpu_pil_encode_nvjpeg_decode_residual():
    """Measures the alternative 420 CUDA path (libjpeg bitstream, nvjpeg decoder): run with -s to
    see the residual before considering it as the default. It must at least be nearer CPU 420 than
    444 is; an estimate of nvjpeg's replicated chroma upsampling alone is 0.71/255."""
    x = _bundled_photos()
    cpu420, cpu444 = JPEG(75, 420)(x), JPEG(75, 444)(x)
    hybrid = JPEG(75, 420, cuda_420="pil+nvjpeg")(x.cuda())
    assert hybrid.is_cuda
    residual = (hybrid.cpu() - cpu420).abs().mean().item()
    gap = (cpu420 - cpu444).abs().mean().item()
    print(f"q75 bundled photos: |pil+nvjpeg - cpu420| {residual * 255:.3f}/255 (|420-444| {gap * 255:.3f}/255)")
    assert residual < gap
