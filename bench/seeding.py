"""Seeds: every random draw of a cell follows from the suite's seed and the cell's identity, so a row does
not depend on which cells ran before it, nor on which process or machine ran it."""

from __future__ import annotations

import contextlib
import hashlib
import random
from typing import Any

import numpy as np
import torch


def seed_of(*parts: Any) -> int:
    """A 63-bit seed from the parts (the suite seed first): stable across processes and runs."""
    digest = hashlib.sha256("/".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


@contextlib.contextmanager
def seeded(seed: int, device: str = "cpu"):
    """Every global random generator an attack may draw from (torch's on the CPU and on the cell's
    GPU, NumPy's, Python's) seeded for the block, and put back as it was after it: an attack's
    randomness depends on its crafting's seed only, and no state leaks into what runs next."""
    devices = [torch.device(device).index or 0] if device.startswith("cuda") and torch.cuda.is_available() else []
    np_state, py_state = np.random.get_state(), random.getstate()
    with torch.random.fork_rng(devices=devices):
        torch.random.default_generator.manual_seed(seed)
        for index in devices:
            with torch.cuda.device(index):
                torch.cuda.manual_seed(seed)
        np.random.seed(seed % 2**32)
        random.seed(seed)
        try:
            yield
        finally:
            np.random.set_state(np_state)
            random.setstate(py_state)
