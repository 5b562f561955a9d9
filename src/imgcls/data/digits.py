"""scikit-learn's bundled handwritten digits (1,797 real 8x8 scans) written out as an image folder:
the embedded demo dataset and the fast real-data fixture of the tests. Needs no download.

No two scans are identical, but upscaled, 121 of them fall into 47 groups of near copies (perceptual
hashes within the 4 bits `imgcls audit` uses): written as they are, copies land in train and in
validation/test, and the audit and the report rightly call that leakage. One image of each group
is written (1,723 in all), so the demo's validation accuracy is not flattered.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

# The audit's own test of a near copy (private there), so that what is written here passes it.
from .audit import _close_pairs
from .hashes import phash

SPLITS = {"train": 0.7, "validation": 0.15, "test": 0.15}
NEAR_COPY_BITS = 4  # audit()'s default hash_distance: resized or re-encoded copies


def write_digits_folder(root: str | Path, seed: int = 0, per_class: int | None = None,
                        predict_images: int = 10, size: int = 32) -> Path:
    """Write ROOT/{train,validation,test}/<digit>/*.png and ROOT/predict/*.png (unlabelled).

    `per_class`: at most this many images of each digit over the three splits (None: all, 151-180).
    No image, nor a near copy of it, is written twice, in one split or across splits. The 8x8 scans (16 grey levels) are
    upscaled to `size` px so they look like what users scrape; files are named by scan index."""
    from sklearn.datasets import load_digits

    root = Path(root)
    digits = load_digits()
    images = [_to_image(scan, size) for scan in digits.images]
    unique = _unique_images(images, digits.target)
    rng = np.random.default_rng(seed)
    for label in range(10):
        indices = rng.permutation(unique[digits.target[unique] == label])[:per_class]
        cuts = np.cumsum([int(len(indices) * f) for f in SPLITS.values()])[:-1]
        for split, part in zip(SPLITS, np.split(indices, cuts)):
            folder = root / split / str(label)
            folder.mkdir(parents=True, exist_ok=True)
            for index in part:
                images[index].save(folder / f"{index:04d}.png")
    predict = root / "predict"
    predict.mkdir(parents=True, exist_ok=True)
    for index in rng.choice(unique, predict_images, replace=False):
        images[index].save(predict / f"digit_{index:04d}.png")
    return root


def _unique_images(images: list[Image.Image], targets: np.ndarray) -> np.ndarray:
    """Sorted indices of one image (the first) of each group of near copies, chained as the audit
    chains them; a group filed under more than one digit is left out, as its label is a coin toss."""
    hashes = np.array([phash(np.asarray(image.convert("RGB"))) for image in images], dtype=np.uint64)
    pairs = _close_pairs(hashes, NEAR_COPY_BITS)
    graph = coo_matrix((np.ones(len(pairs)), (pairs[:, 0], pairs[:, 1])), shape=(len(images), len(images)))
    _, group = connected_components(graph, directed=False)
    first = {}
    for index in range(len(images)):
        first.setdefault(group[index], index)
    agreed = {g for g in first if len(set(targets[group == g])) == 1}
    return np.array(sorted(index for g, index in first.items() if g in agreed))


def _to_image(scan: np.ndarray, size: int) -> Image.Image:
    grey = (255 - scan * (255 / 16)).astype(np.uint8)  # dark ink on white paper, like a real scan
    return Image.fromarray(grey, "L").resize((size, size), Image.BICUBIC)
