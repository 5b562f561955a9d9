"""Drawing explanations: heatmaps blended over images, and titled tiles laid out in a grid.

Figures use matplotlib's `Figure` with an Agg canvas (no pyplot: no global state, safe in worker
threads), like evaluate/plots.py, and come back as (h, w, 3) uint8 arrays ready for `to_png`.
"""
from __future__ import annotations

import io
import math

import numpy as np
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image

HEATMAP_COLOURS = "jet"  # the Grad-CAM papers' colour map: readers already know red = important
ACTIVATION_COLOURS = "viridis"  # feature maps are magnitudes, not importance: a perceptually uniform map
OVERLAY_ALPHA = 0.5
TILE_INCHES = 2.0
DPI = 100  # 200 px tiles: a 32 px CIFAR image is still visible, a 224 px photo barely shrinks
MAX_CAPTION_CHARS = 30  # of a tile's caption; a title may run over its whole row (~22 characters per tile)


def overlay(image: np.ndarray, heatmap: np.ndarray, alpha: float = OVERLAY_ALPHA) -> np.ndarray:
    """(H, W, 3) uint8 image and (H, W) map in [0, 1] -> (H, W, 3) uint8 blend."""
    colours = colormaps[HEATMAP_COLOURS](heatmap)[..., :3]
    blend = (1 - alpha) * image.astype(np.float32) / 255 + alpha * colours
    return np.clip(blend * 255 + 0.5, 0, 255).astype(np.uint8)


def colourise(values: np.ndarray) -> np.ndarray:
    """(h, w) activations -> (h, w, 3) uint8, scaled to the map's own range."""
    low, high = float(values.min()), float(values.max())
    scaled = (values - low) / (high - low) if high > low else np.zeros_like(values)
    return (colormaps[ACTIVATION_COLOURS](scaled)[..., :3] * 255 + 0.5).astype(np.uint8)


def _short(text: str, limit: int = MAX_CAPTION_CHARS) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def tiles(items: list[tuple[np.ndarray, str]], title: str | None = None, columns: int | None = None) -> np.ndarray:
    """Images with a caption each, in a grid (one row unless `columns`), under an optional title."""
    columns = columns or len(items)
    rows = math.ceil(len(items) / columns)
    fig = Figure(figsize=(columns * TILE_INCHES, rows * TILE_INCHES + (0.35 if title else 0)), dpi=DPI, layout="constrained")
    canvas = FigureCanvasAgg(fig)
    for ax in fig.subplots(rows, columns, squeeze=False).ravel():
        ax.set_axis_off()
    for ax, (image, caption) in zip(fig.axes, items):
        ax.imshow(image)
        ax.set_title(_short(caption), fontsize=9)
    if title:
        fig.suptitle(_short(title, 22 * columns), fontsize=11, fontweight="bold")
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


def to_png(array: np.ndarray) -> bytes:
    """(h, w, 3) uint8 -> PNG bytes."""
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(array, dtype=np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()
