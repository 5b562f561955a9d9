"""Evaluation figures (PNG) and the confusion matrix as CSV.

Figures are built on `matplotlib.figure.Figure` with an Agg canvas rather than pyplot, so
plotting holds no global state, needs no display and can run in worker threads. Sizes and
fonts scale with the number of classes so the same code serves 2 classes and ~100.

Every writer creates the parent folder and writes atomically (temporary file in the same
folder, then `os.replace`), so a crash never leaves a half-written file behind.
"""
from __future__ import annotations

import csv
import logging
import math
from pathlib import Path

import numpy as np
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from sklearn.metrics import average_precision_score, precision_recall_curve

from ..fileio import atomic_write
from .metrics import expected_calibration_error

log = logging.getLogger(__name__)

DPI = 120
ANNOTATE_MAX_CLASSES = 20  # beyond this, counts in cells are too small to read
MAX_LABEL_CHARS = 24  # longer class names are shortened so they do not squeeze the plot
MATRIX_INCHES_PER_CLASS = 0.3
MATRIX_MIN_INCHES, MATRIX_MAX_INCHES = 5.0, 32.0  # 32 in at 120 dpi is ~3800 px, still opens anywhere
LEGEND_ROWS_PER_COLUMN = 30
LEARNING_CURVE_PANELS = (("loss", "Loss"), ("accuracy", "Accuracy"))
MIN_BIN_IMAGES = 5  # reliability bins with fewer images are shown pale: one image moves their accuracy by >= 20 points
SPARSE_FILL, SPARSE_EDGE = "#e6e8ec", "#9aa1ad"  # pale grey: visibly there, visibly not a measurement


def _save_figure(fig: Figure, path) -> Path:
    FigureCanvasAgg(fig)
    fig.tight_layout()
    return atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=DPI))


def _font_size(n_classes: int) -> float:
    """10 pt up to 20 classes, shrinking to 7 pt (fits a 0.3 in matrix row) by 29."""
    return float(np.clip(200 / max(n_classes, 1), 7, 10))


def _short(name: str) -> str:
    return name if len(name) <= MAX_LABEL_CHARS else name[: MAX_LABEL_CHARS - 1] + "…"


def _row_normalise(confusion: np.ndarray) -> np.ndarray:
    """Each row as fractions of its true class; a class with no images stays all zeros."""
    totals = confusion.sum(axis=1, keepdims=True)
    return np.divide(confusion, totals, out=np.zeros(confusion.shape), where=totals > 0)


def _as_confusion(confusion, classes: list[str]) -> np.ndarray:
    matrix = np.asarray(confusion, dtype=np.int64)
    if matrix.shape != (len(classes), len(classes)):
        n = len(classes)
        raise ValueError(f"confusion must be {n}x{n} for {n} classes; got shape {matrix.shape}")
    return matrix


def _annotate_counts(ax, counts: np.ndarray, shade: np.ndarray, font_size: float) -> None:
    """Write non-zero counts in their cells, white on dark cells so they stay legible."""
    dark = shade > shade.max() / 2 if shade.max() > 0 else np.zeros(shade.shape, dtype=bool)
    for (row, col), count in np.ndenumerate(counts):
        if count:
            colour = "white" if dark[row, col] else "black"
            ax.text(col, row, str(count), ha="center", va="center", fontsize=font_size, color=colour)


def plot_confusion_matrix(confusion, classes: list[str], path, normalize: bool = True) -> Path:
    """Heat map with rows = true class, columns = predicted; `normalize` shades by row fraction (recall)."""
    counts = _as_confusion(confusion, classes)
    shade = _row_normalise(counts) if normalize else counts
    n = len(classes)
    side = float(np.clip(MATRIX_INCHES_PER_CLASS * n + 2, MATRIX_MIN_INCHES, MATRIX_MAX_INCHES))
    font = _font_size(n)
    heading = 10 + side / 4  # headings grow with the figure so they survive viewing it scaled down
    fig = Figure(figsize=(side + 1, side))
    ax = fig.add_subplot()
    image = ax.imshow(shade, cmap="Blues", vmin=0, vmax=1 if normalize else None, interpolation="nearest")
    colorbar = fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    colorbar.set_label("fraction of true class" if normalize else "images", fontsize=heading)
    colorbar.ax.tick_params(labelsize=heading - 2)
    labels = [_short(name) for name in classes]
    few = n <= ANNOTATE_MAX_CLASSES
    # 45 degrees reads easily for a few labels; many need 90 so neighbours do not overlap
    ax.set_xticks(range(n), labels, rotation=45 if few else 90, ha="right" if few else "center", fontsize=font)
    ax.set_yticks(range(n), labels, fontsize=font)
    ax.set_xlabel("predicted", fontsize=heading)
    ax.set_ylabel("true", fontsize=heading)
    ax.set_title("Confusion matrix" + (" (row-normalised)" if normalize else ""), fontsize=heading + 2)
    if few:
        _annotate_counts(ax, counts, shade, font)
    return _save_figure(fig, path)


def _number(value) -> float | None:
    """A float from a CSV cell or a number; None for a missing or empty cell."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    return float(value)


def _series(history: list[dict], key: str) -> tuple[list[float], list[float]]:
    """(epochs, values) for the rows that have `key`; rows without an 'epoch' count from 1."""
    epochs, values = [], []
    for row_number, row in enumerate(history, start=1):
        value = _number(row.get(key))
        if value is not None:
            epoch = _number(row.get("epoch"))
            epochs.append(row_number if epoch is None else epoch)
            values.append(value)
    return epochs, values


def plot_learning_curves(history: list[dict], path) -> Path:
    """Loss and accuracy against epoch, train and validation, from history.csv rows (strings or numbers)."""
    fig = Figure(figsize=(11, 4.5))
    for index, (metric, title) in enumerate(LEARNING_CURVE_PANELS, start=1):
        ax = fig.add_subplot(1, len(LEARNING_CURVE_PANELS), index)
        for split, style in (("train", "-o"), ("val", "-s")):
            epochs, values = _series(history, f"{split}_{metric}")
            if values:
                ax.plot(epochs, values, style, markersize=3, label="validation" if split == "val" else split)
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend()
        else:
            ax.text(0.5, 0.5, f"no {metric} recorded", ha="center", va="center", transform=ax.transAxes)
    return _save_figure(fig, path)


def plot_pr_curves(y_true: np.ndarray, probs: np.ndarray, classes: list[str], path) -> Path:
    """Multi-label precision-recall curves, one per class with AP in the legend, plus the micro-average.

    A class with no positive image has no curve (AP is undefined) and is left out.
    """
    y_true = np.asarray(y_true).astype(int, copy=False)
    probs = np.asarray(probs, dtype=np.float64)
    if y_true.shape != probs.shape or probs.ndim != 2 or probs.shape[1] != len(classes):
        raise ValueError(
            f"y_true and probs must both have shape (N, {len(classes)}); got {y_true.shape} and {probs.shape}"
        )
    n = len(classes)
    legend_columns = math.ceil((n + 1) / LEGEND_ROWS_PER_COLUMN)
    fig = Figure(figsize=(7 + 2.5 * legend_columns, 6))
    ax = fig.add_subplot()
    # tab20 keeps neighbours distinct while it lasts; past 20 classes a continuous map at least varies
    colours = colormaps["tab20"](np.arange(n)) if n <= 20 else colormaps["turbo"](np.linspace(0, 1, n))
    for c, name in enumerate(classes):
        if not y_true[:, c].any():
            log.debug("no positive images for %r; its PR curve is skipped", name)
            continue
        precision, recall, _ = precision_recall_curve(y_true[:, c], probs[:, c])
        ap = average_precision_score(y_true[:, c], probs[:, c])
        ax.step(recall, precision, where="post", linewidth=1, color=colours[c], label=f"{_short(name)} (AP {ap:.2f})")
    if y_true.any():
        precision, recall, _ = precision_recall_curve(y_true.ravel(), probs.ravel())
        ap = average_precision_score(y_true, probs, average="micro")
        ax.step(recall, precision, where="post", linewidth=2.5, color="black", label=f"micro-average (AP {ap:.2f})")
    ax.set(xlabel="recall", ylabel="precision", xlim=(0, 1), ylim=(0, 1.02), title="Precision-recall per class")
    ax.grid(alpha=0.3)
    if ax.lines:
        ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1), ncol=legend_columns, fontsize=min(9, _font_size(n) + 2))
    return _save_figure(fig, path)


def reliability_figure(bins: dict, min_count: int = MIN_BIN_IMAGES) -> Figure:
    """Reliability diagram (accuracy against confidence per bin) over a histogram of bin counts.

    Bins holding fewer than `min_count` images are drawn pale and without their gap: an accuracy
    over 1-4 images swings by 25-100 points and would read as miscalibration. The legend says how
    many bins and images that is; ECE in the title still counts every image."""
    edges = np.asarray(bins["bin_edges"], dtype=np.float64)
    widths = np.diff(edges)
    counts = bins["count"]
    shown = [i for i, n in enumerate(counts) if n >= min_count]
    sparse = [i for i, n in enumerate(counts) if 0 < n < min_count]
    fig = Figure(figsize=(6, 7))
    top, bottom = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": (3, 1)})
    top.plot([0, 1], [0, 1], "--", color="grey", label="perfect calibration")
    top.bar(edges[shown], [bins["accuracy"][i] for i in shown], width=widths[shown], align="edge",
            edgecolor="black", color="tab:blue", label="accuracy")
    top.bar(edges[shown], [bins["confidence"][i] - bins["accuracy"][i] for i in shown], width=widths[shown],
            bottom=[bins["accuracy"][i] for i in shown], align="edge", fill=False, hatch="//",
            edgecolor="tab:red", label="gap to confidence")
    if sparse:
        top.bar(edges[sparse], [bins["accuracy"][i] for i in sparse], width=widths[sparse], align="edge",
                edgecolor=SPARSE_EDGE, color=SPARSE_FILL,
                label=f"under {min_count} images, too few to judge "
                      f"({len(sparse)} bin{'s' * (len(sparse) > 1)}, {sum(counts[i] for i in sparse)} images)")
    top.set(ylabel="accuracy", xlim=(0, 1), ylim=(0, 1),
            title=f"Reliability (ECE {expected_calibration_error(bins):.3f})")
    top.legend(loc="upper left", fontsize=9)
    bottom.bar(edges[:-1], counts, width=widths, align="edge", edgecolor="black",
               color=[SPARSE_FILL if n < min_count else "tab:blue" for n in counts])
    bottom.set(xlabel="confidence (top-1 probability)", ylabel="images")
    return fig


def plot_reliability(bins: dict, path, min_count: int = MIN_BIN_IMAGES) -> Path:
    """The reliability diagram of `reliability_figure` as a PNG."""
    return _save_figure(reliability_figure(bins, min_count), path)


def write_confusion_csv(confusion, classes: list[str], path) -> Path:
    """Confusion matrix as CSV: header 'true\\predicted,<classes>', then one row per true class."""
    matrix = _as_confusion(confusion, classes)

    def write(tmp: str) -> None:
        with open(tmp, "w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(["true\\predicted", *classes])
            writer.writerows([name, *row] for name, row in zip(classes, matrix.tolist()))

    return atomic_write(path, write)
