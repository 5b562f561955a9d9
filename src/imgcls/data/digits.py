"""scikit-learn's bundled handwritten digits (1,797 real 8x8 scans) written out as an image folder:
the embedded demo dataset and the fast real-data fixture of the tests. Needs no download."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

SPLITS = {"train": 0.7, "validation": 0.15, "test": 0.15}


def write_digits_folder(root: str | Path, seed: int = 0, per_class: int | None = None,
                        predict_images: int = 10, size: int = 32) -> Path:
    """Write ROOT/{train,validation,test}/<digit>/*.png and ROOT/predict/*.png (unlabelled).

    The 8x8 scans (16 grey levels) are upscaled to `size` px so they look like what users scrape."""
    from sklearn.datasets import load_digits

    root = Path(root)
    digits = load_digits()
    rng = np.random.default_rng(seed)
    for label in range(10):
        indices = rng.permutation(np.flatnonzero(digits.target == label))[:per_class]
        cuts = np.cumsum([int(len(indices) * f) for f in SPLITS.values()])[:-1]
        for split, part in zip(SPLITS, np.split(indices, cuts)):
            folder = root / split / str(label)
            folder.mkdir(parents=True, exist_ok=True)
            for index in part:
                _to_image(digits.images[index], size).save(folder / f"{index:04d}.png")
    predict = root / "predict"
    predict.mkdir(parents=True, exist_ok=True)
    for index in rng.choice(len(digits.images), predict_images, replace=False):
        _to_image(digits.images[index], size).save(predict / f"digit_{index:04d}.png")
    return root


def _to_image(scan: np.ndarray, size: int) -> Image.Image:
    grey = (255 - scan * (255 / 16)).astype(np.uint8)  # dark ink on white paper, like a real scan
    return Image.fromarray(grey, "L").resize((size, size), Image.BICUBIC)
