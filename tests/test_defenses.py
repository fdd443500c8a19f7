"""Defenses: identity, and a real JPEG round trip on 8-bit images."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from bench.defenses import JPEG, build, quantize, to_uint8
from bench.suite import DefenseSpec


@pytest.fixture
def images():
    g = torch.Generator().manual_seed(0)
    smooth = torch.nn.functional.interpolate(torch.rand(3, 3, 8, 8, generator=g), size=64, mode="bilinear")
    return quantize(smooth)


def test_none_is_the_identity(images):
    assert build(DefenseSpec("none"))(images) is images


def test_jpeg_equals_a_pil_save_and_load_at_that_quality(images):
    out = build(DefenseSpec("jpeg", 30))(images)
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


needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.mark.gpu
@needs_cuda
def test_gpu_jpeg_agrees_with_pil_on_the_bundled_photos():
    from bench.data import load_dataset
    from bench.suite import DataSpec

    x = load_dataset(DataSpec("samples")).images.float() / 255
    pil, gpu = JPEG(75)(x), JPEG(75)(x.cuda()).cpu()
    assert gpu.shape == pil.shape
    assert (gpu - pil).abs().mean() <= 2 / 255
