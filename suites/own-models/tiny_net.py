"""A tiny CNN for 10 classes at 64 px: the `factory:` example of suites/own-models.yaml.

bench imports this file and calls ``build(**kwargs)`` (``factory: "own-models/tiny_net.py:build"``).
The network takes *normalised* images (N, 3, 64, 64) and returns logits (N, 10); bench wraps it so
attacks see images in [0, 1] and normalises with the ``mean``/``std`` the model carries below.

It has no normalisation layer (no BatchNorm, no LayerNorm) and draws its random initialisation from
torch's global RNG, which bench seeds (the suite's ``seed``) before it calls ``build``: do not seed
here. ``export_tiny_net.py`` exports exactly this model, under the same seed, to ``tiny_net.pt2``.
"""

import torch
import torch.nn as nn


class TinyNet(nn.Module):
    def __init__(self, width: int = 8, num_classes: int = 10):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, width, 3, stride=2, padding=1), nn.ReLU(),              # 64 → 32
            nn.Conv2d(width, 2 * width, 3, stride=2, padding=1), nn.ReLU(),      # 32 → 16
            nn.Conv2d(2 * width, 4 * width, 3, stride=2, padding=1), nn.ReLU(),  # 16 → 8
        )
        self.head = nn.Linear(4 * width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).mean(dim=(2, 3)))


def build(width: int = 8) -> nn.Module:
    model = TinyNet(width)
    # The preprocessing this model expects, read by bench's factory source (plain numbers, not tensors).
    model.mean = (0.5, 0.5, 0.5)
    model.std = (0.25, 0.25, 0.25)
    model.input_size = 64
    model.num_classes = 10
    return model
