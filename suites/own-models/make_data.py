"""Regenerate data/: a 10-class image folder made from real photos that ship with scikit-image.

Class = which photo; each class holds two crops of its photo (the centre and the top-left corner),
each a square of 60 % of the photo's shorter side, resized to 80 px and saved as PNG. Grey photos
become RGB. The output is the same on every run (no randomness; PNG written without timestamps).

    python suites/own-models/make_data.py      # needs scikit-image (photos bundled, no download)
"""

import shutil
from pathlib import Path

import numpy as np
from PIL import Image

HERE = Path(__file__).resolve().parent
OUT = HERE / "data"
SIZE = 80
FRACTION = 0.6
# skimage.data functions whose photos are bundled with the package (no download).
PHOTOS = ("astronaut", "camera", "chelsea", "coffee", "coins", "hubble_deep_field",
          "immunohistochemistry", "moon", "retina", "rocket")


def crops(image: np.ndarray) -> dict[str, np.ndarray]:
    h, w = image.shape[:2]
    side = int(min(h, w) * FRACTION)
    top, left = (h - side) // 2, (w - side) // 2
    return {"centre": image[top:top + side, left:left + side], "corner": image[:side, :side]}


def main() -> None:
    import skimage.data

    if OUT.exists():
        shutil.rmtree(OUT)
    for name in PHOTOS:
        image = np.asarray(getattr(skimage.data, name)())
        if image.ndim == 2:
            image = np.stack([image] * 3, axis=-1)
        image = image[..., :3].astype(np.uint8)
        folder = OUT / name
        folder.mkdir(parents=True)
        for where, crop in crops(image).items():
            small = Image.fromarray(crop).resize((SIZE, SIZE), Image.Resampling.LANCZOS)
            small.save(folder / f"{name}_{where}.png", optimize=True)
    total = sum(p.stat().st_size for p in OUT.rglob("*.png"))
    print(f"wrote {len(PHOTOS) * 2} images in {len(PHOTOS)} classes to {OUT} ({total / 1024:.0f} KiB)")


if __name__ == "__main__":
    main()
