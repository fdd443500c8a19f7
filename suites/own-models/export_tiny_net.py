"""Export tiny_net.pt2 (and its card tiny_net.json): exactly the model suites/own-models.yaml builds
from ``factory: "own-models/tiny_net.py:build"``, so its ``file:`` cells predict what the factory
cells predict.

bench builds a factory model with torch seeded from the suite's ``seed`` (``torch.manual_seed(seed)``
inside ``torch.random.fork_rng``) and then calls ``build(**kwargs)``; this script does the same, with
the seed and kwargs read from the suite file, and exports it with a dynamic batch dimension.

    python suites/own-models/export_tiny_net.py
"""

import json
import sys
from pathlib import Path

import torch
import yaml

HERE = Path(__file__).resolve().parent
SUITE = HERE.parent / "own-models.yaml"
TARGET = "own-models/tiny_net.py:build"


def suite_settings(suite: Path = SUITE) -> tuple[int, dict]:
    """The suite's seed and the kwargs of its tiny_net factory entry."""
    doc = yaml.safe_load(suite.read_text())
    entry = next(m for m in doc["models"] if m.get("factory") == TARGET)
    return int(doc.get("seed", 0)), dict(entry.get("kwargs") or {})


def make_model(seed: int, kwargs: dict) -> torch.nn.Module:
    """tiny_net as bench builds it: torch seeded, then build(**kwargs), in eval mode."""
    sys.path.insert(0, str(HERE))
    try:
        from tiny_net import build
    finally:
        sys.path.remove(str(HERE))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build(**kwargs)
    return model.eval()


def export(out: Path = HERE / "tiny_net.pt2", seed: int | None = None, kwargs: dict | None = None) -> Path:
    """Write the program to ``out`` and its card beside it (``out`` with .json)."""
    if seed is None or kwargs is None:
        suite_seed, suite_kwargs = suite_settings()
        seed = suite_seed if seed is None else seed
        kwargs = suite_kwargs if kwargs is None else kwargs
    model = make_model(seed, kwargs)
    size = model.input_size
    example = torch.rand(2, 3, size, size)
    program = torch.export.export(model, (example,), dynamic_shapes={"x": {0: torch.export.Dim("batch")}})
    program.example_inputs = None  # the saved sample batch would be two thirds of the file; bench does not read it
    torch.export.save(program, str(out))
    card = {"mean": list(model.mean), "std": list(model.std), "input_size": size, "num_classes": model.num_classes}
    out.with_suffix(".json").write_text(json.dumps(card, indent=2) + "\n")
    return out


if __name__ == "__main__":
    path = export()
    print(f"wrote {path} ({path.stat().st_size / 1024:.0f} KiB) and {path.with_suffix('.json').name}")
