"""Low-quality images: blurry, too dark or bright, nearly uniform, tiny, or of an extreme shape.

Measured on the decoded (resized) pixels and the file's header. Blur is judged against the dataset
itself, since the variance of the Laplacian (Pech-Pacheco et al., ICPR 2000) depends on content and
size: an image is blurry when its sharpness is a small fraction of the folder's median.
"""
from __future__ import annotations

import numpy as np
from PIL import Image

DARK, BRIGHT = 0.12, 0.92  # mean luminance in [0, 1] outside which a photo is hard to read
UNIFORM_STD = 0.02  # luminance spread below which an image is (nearly) one colour
BLUR_FRACTION = 0.1  # sharpness below this share of the folder's median is blurry
TINY_PX = 32  # a short side below this holds little to learn from, whatever the folder's size
TINY_FRACTION = 0.25  # ... as does one a quarter of the folder's median short side
EXTREME_ASPECT = 3.0  # long side over short side: banners, strips, screenshots of pages


def _luminance(pixels: np.ndarray) -> np.ndarray:
    """(N, H, W, 3) uint8 -> (N, H, W) float in [0, 1] (ITU-R BT.601 weights)."""
    return (pixels.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)) / 255


def sharpness(luminance: np.ndarray) -> np.ndarray:
    """(N,) variance of the 4-neighbour Laplacian of each image."""
    laplacian = (luminance[:, 1:-1, :-2] + luminance[:, 1:-1, 2:] + luminance[:, :-2, 1:-1] + luminance[:, 2:, 1:-1]
                 - 4 * luminance[:, 1:-1, 1:-1])
    return laplacian.reshape(len(luminance), -1).var(1)


def header_sizes(paths: list) -> list[tuple[int, int] | None]:
    """(width, height) of each file from its header (nothing decoded); None where unreadable."""
    sizes = []
    for path in paths:
        try:
            with Image.open(path) as image:
                sizes.append(image.size)
        except OSError:
            sizes.append(None)
    return sizes


def quality_problems(pixels: np.ndarray, sizes: list[tuple[int, int] | None], chunk: int = 512) -> list[list[str]]:
    """The problems of each image, from its decoded pixels (N, H, W, 3) and its original size."""
    brightness, spread, sharp = [], [], []
    for start in range(0, len(pixels), chunk):  # float copies of a chunk only: 10k images at 224 px stay small
        luminance = _luminance(pixels[start:start + chunk])
        brightness.append(luminance.mean((1, 2)))
        spread.append(luminance.std((1, 2)))
        sharp.append(sharpness(luminance))
    brightness, spread, sharp = (np.concatenate(v) if v else np.zeros(0) for v in (brightness, spread, sharp))
    short_sides = [min(size) for size in sizes if size]
    tiny = max(TINY_PX, TINY_FRACTION * float(np.median(short_sides))) if short_sides else TINY_PX
    blurry = BLUR_FRACTION * float(np.median(sharp)) if len(sharp) else 0.0
    problems = []
    for i, size in enumerate(sizes):
        found = []
        if spread[i] < UNIFORM_STD:
            found.append("uniform")
        elif sharp[i] < blurry:
            found.append("blurry")
        if brightness[i] < DARK:
            found.append("dark")
        elif brightness[i] > BRIGHT:
            found.append("bright")
        if size and min(size) < tiny:
            found.append(f"tiny ({size[0]}x{size[1]})")
        if size and max(size) > EXTREME_ASPECT * min(size):
            found.append(f"extreme shape ({size[0]}x{size[1]})")
        problems.append(found)
    return problems
