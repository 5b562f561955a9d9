"""Choosing the 'unknown' threshold from data rather than by guess: in-distribution images should
keep their answers, outliers (images of none of the classes) should be answered 'unknown'.

The threshold maximises Youden's J (kept in-distribution rate + rejected outlier rate - 1),
the balanced point of the trade-off; the full trade-off is reported so a user can pick another.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..data.cache import decode_cached
from ..data.folders import expand_inputs, find_evaluation_images
from ..errors import ImgclsError
from ..models.bundle import update_bundle_config
from .predictor import Predictor

REPORTED_THRESHOLDS = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95)


def _top_scores(predictor: Predictor, paths: list[Path], what: str) -> tuple[np.ndarray, list[int]]:
    """Probabilities of the readable images, and which of `paths` they are."""
    decoded = decode_cached(paths, predictor.config.img_size, predictor.decode_cache)
    if not decoded.kept:
        raise ImgclsError(f"none of the {len(paths)} {what} images could be read")
    return predictor.probabilities(decoded.pixels), decoded.kept


def _trade_off(threshold: float, known_top: np.ndarray, known_correct: np.ndarray, outlier_top: np.ndarray) -> dict:
    kept = known_top >= threshold
    return {
        "threshold": float(threshold),  # unrounded: rounding could move it past a score it separates
        "in_distribution_kept": round(float(kept.mean()), 4),
        "accuracy_on_kept": round(float(known_correct[kept].mean()), 4) if kept.any() else None,
        "outliers_rejected": round(float((outlier_top < threshold).mean()), 4),
    }


def youden_threshold(known_top: np.ndarray, outlier_top: np.ndarray) -> float:
    """The top-probability threshold that maximises Youden's J (kept in-distribution rate + rejected
    outlier rate - 1), the lowest of equally good ones, from scikit-learn's ROC curve: one sort, where
    trying every score as a threshold takes N^2 comparisons (10k scores: 2.8 ms instead of 1.06 s, 1 core)."""
    from sklearn.metrics import roc_curve

    is_known = np.r_[np.ones(len(known_top)), np.zeros(len(outlier_top))]
    # Every distinct score a threshold (drop_intermediate=False), highest first; the first, above all, keeps none.
    false_kept, known_kept, thresholds = roc_curve(is_known, np.r_[known_top, outlier_top], drop_intermediate=False)
    # J times both counts, in whole numbers: equally good thresholds compare equal, not by rounding noise.
    known, outliers = len(known_top), len(outlier_top)
    youden = np.rint(known_kept * known) * outliers - np.rint(false_kept * outliers) * known
    best = len(youden) - 1 - int(np.argmax(youden[::-1]))  # the last maximum: the lowest threshold
    # Halfway down to the next lower score: the same images kept, but a score computed in another batch
    # (a last-digit difference) cannot fall on the other side of the threshold.
    return float(thresholds[best] + thresholds[best + 1]) / 2 if best + 1 < len(thresholds) else float(thresholds[best])


def calibrate_unknown(bundle: str | Path, data_dir: str | Path, outliers: str | Path, save: bool = True) -> dict:
    """Pick `unknown_below` for a single-label bundle and store it in the bundle (unless save=False)."""
    from sklearn.metrics import roc_auc_score

    predictor = Predictor.load(bundle)
    if predictor.config.multi_label:
        raise ImgclsError("calibrate-unknown is for single-label bundles; multi-label ones answer 'unknown' "
                          "when no class reaches its tuned threshold")
    samples = find_evaluation_images(data_dir, predictor.classes)
    known_probs, kept = _top_scores(predictor, [s.path for s in samples], "in-distribution")
    labels = np.array([samples[i].labels[0] for i in kept])
    outlier_probs, _ = _top_scores(predictor, expand_inputs([str(outliers)]), "outlier")
    known_top, outlier_top = known_probs.max(1), outlier_probs.max(1)
    known_correct = known_probs.argmax(1) == labels

    chosen = youden_threshold(known_top, outlier_top)
    report = {
        "chosen": _trade_off(chosen, known_top, known_correct, outlier_top),
        "auroc": round(float(roc_auc_score(np.r_[np.ones(len(known_top)), np.zeros(len(outlier_top))],
                                           np.r_[known_top, outlier_top])), 4),
        "trade_off": [_trade_off(t, known_top, known_correct, outlier_top) for t in REPORTED_THRESHOLDS],
        "n_in_distribution": len(known_top), "n_outliers": len(outlier_top), "saved": save,
    }
    if save:
        update_bundle_config(bundle, unknown_below=report["chosen"]["threshold"])
    return report
