"""Peak memory of a run against the size of its data: an image folder of 2,000 and of 20,000 images at 224 px.

    python benchmarks/data_memory.py [--images 2000,20000] [--root /tmp/bench-memory] [--out reports/memory/latest.md]

Makes (once, kept in ``--root``) an image folder of 10 classes of JPEG photos-like images (smooth random
fields, 256 × 240 px, so that decoding and resizing are real work), then for each size runs ``bench run`` in a fresh
process on a suite over the first n images (``limit``; round-robin across classes): imagefolder at 224 px, a
small linear model (a factory in ``--root``), FGSM at ε 4/255, no defense, shards of 512 images. Each run's peak
resident memory is the child's own ``ru_maxrss`` (``os.wait4``), so runs do not see each other.

Each size runs twice: as bench decodes data now (past ``bench.data.store.SPILL_BYTES`` the decoded images go to a
file read by rows) and with the threshold set out of reach, which is how every dataset was held before (the whole
decoded data in memory). The bar (issue 33): peak RSS at 20,000 images ≤ 1.5 × that at 2,000.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[1]
FACTORY = """
import torch.nn as nn


def build():
    net = nn.Sequential(nn.AvgPool2d(8), nn.Flatten(), nn.Linear(3 * 28 * 28, 10))
    net.mean, net.std, net.input_size, net.num_classes = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25), 224, 10
    return net
"""
RUN = """
import sys
import bench.data.store as store
if sys.argv[1] == "memory":
    store.SPILL_BYTES = 1 << 62  # as before: the whole decoded data in memory
from bench.cli import main
sys.exit(main(sys.argv[2:]))
"""


def make_folder(root: Path, n: int) -> Path:
    from PIL import Image

    folder = root / "images"
    have = sum(1 for _ in folder.rglob("*.jpg")) if folder.exists() else 0
    if have >= n:
        return folder
    rng = np.random.default_rng(0)
    for i in range(have, n):
        cls = folder / f"class{i % 10}"
        cls.mkdir(parents=True, exist_ok=True)
        small = rng.integers(0, 256, (15, 16, 3), dtype=np.uint8)  # a smooth field: upsampled noise
        Image.fromarray(small).resize((256, 240), Image.BICUBIC).save(cls / f"{i:06d}.jpg", quality=90)
    return folder


def run(root: Path, folder: Path, n: int, mode: str) -> dict:
    work = root / f"{mode}-{n}"
    work.mkdir(parents=True, exist_ok=True)
    (root / "linear224.py").write_text(FACTORY)
    suite = {"name": f"memory-{mode}-{n}", "seed": 0,
             "data": {"source": "imagefolder", "path": str(folder), "limit": n, "image_size": 224},
             "models": [{"name": "linear", "factory": f"{root / 'linear224.py'}:build"}],
             "attacks": [{"name": "fgsm", "type": "fgsm", "eps": "4/255"}],
             "batch_size": 128, "shard_size": 512, "unconstrained_check": False}
    path = work / "suite.yaml"
    path.write_text(yaml.safe_dump(suite, sort_keys=False))
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-c", RUN, mode, "run", str(path), "--no-progress", "--results-dir",
                             str(work / "results"), "--reports-dir", str(work / "reports")], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - t0
    err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"bench run ({mode}, {n} images) failed:\n{err[-2000:]}")
    return {"n": n, "mode": mode, "peak_rss_mb": usage.ru_maxrss / 1024, "seconds": seconds}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", default="2000,20000")
    parser.add_argument("--root", type=Path, default=Path("/tmp/bench-memory"))
    parser.add_argument("--out", type=Path, default=ROOT / "reports" / "memory" / "latest.md")
    parser.add_argument("--modes", default="store,memory", help="store (as bench runs now), memory (all in memory, as before)")
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.images.split(",")]
    folder = make_folder(args.root, max(sizes))
    results = [run(args.root, folder, n, mode) for mode in args.modes.split(",") for n in sizes]
    for r in results:
        print(f"{r['mode']:>6} {r['n']:>6} images: peak RSS {r['peak_rss_mb']:8.0f} MB, {r['seconds']:6.1f} s", flush=True)
    lines = ["# Peak memory against the size of the data", "",
             f"`python benchmarks/data_memory.py --images {args.images}` on {platform.node() or 'this machine'} "
             f"({os.cpu_count()} CPUs), {time.strftime('%Y-%m-%d')}. An image folder of JPEGs (256 × 240 px) at 224 px, "
             "a linear model, FGSM, shards of 512 images; peak RSS of each `bench run` process (`ru_maxrss`).", "",
             "| decoded images | images | peak RSS (MB) | seconds |", "|---|---:|---:|---:|"]
    for r in results:
        where = "file read per shard (now)" if r["mode"] == "store" else "all in memory (before)"
        lines.append(f"| {where} | {r['n']:,} | {r['peak_rss_mb']:.0f} | {r['seconds']:.0f} |")
    by = {(r["mode"], r["n"]): r["peak_rss_mb"] for r in results}
    if len(sizes) >= 2:
        small, large = min(sizes), max(sizes)
        lines.append("")
        for mode in args.modes.split(","):
            ratio = by[(mode, large)] / by[(mode, small)]
            verdict = ("meets" if ratio <= 1.5 else "misses") + " the bar of 1.5×" if mode == "store" else "for comparison"
            lines.append(f"- {mode}: {large:,} images use {ratio:.2f}× the peak memory of {small:,} ({verdict}).")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
