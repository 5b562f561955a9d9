"""Evaluation metrics for single-label and multi-label classifiers, as JSON-ready dicts.

Everything that scikit-learn computes comes from scikit-learn; this module only chooses the
metrics, fixes the label set (so a class absent from the test split still gets its row and
column), and turns numpy values into plain Python ones so the result can go straight to JSON.

Written by hand, because scikit-learn has no equivalent:
  * expected calibration error and its reliability bins, as in Guo et al. 2017,
    "On Calibration of Modern Neural Networks" (https://arxiv.org/abs/1706.04599);
  * the "most confused pairs" list and per-class F1-optimal thresholds (built on
    `precision_recall_curve`).
"""
from __future__ import annotations

import numpy as np
from sklearn.metrics import (
    accuracy_score,
    average_precision_score,
    classification_report,
    confusion_matrix,
    f1_score,
    log_loss,
    precision_recall_curve,
    precision_recall_fscore_support,
    top_k_accuracy_score,
)

ECE_BINS = 15  # Guo et al. 2017 use 15 equal-width bins; keeps our ECE comparable to theirs
MOST_CONFUSED_LIMIT = 10  # enough to act on; a longer list repeats the confusion matrix
PROB_SUM_TOLERANCE = 1e-3  # rows further than this from 1 are logits or sigmoid scores, not softmax
THRESHOLD_MARGIN = 1e-6  # keeps tuned thresholds strictly inside (0, 1)


def _check_single_label(y_true: np.ndarray, probs: np.ndarray, classes: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Validated int labels (N,) and float64 probabilities (N, C) whose rows sum to 1."""
    y_true = np.asarray(y_true).astype(int, copy=False)
    probs = np.asarray(probs, dtype=np.float64)
    if probs.ndim != 2 or probs.shape[1] != len(classes):
        raise ValueError(f"probs must have shape (N, {len(classes)}) for {len(classes)} classes; got {probs.shape}")
    if y_true.shape != (probs.shape[0],):
        raise ValueError(f"y_true must have shape ({probs.shape[0]},) to match probs; got {y_true.shape}")
    if probs.shape[0] == 0:
        raise ValueError("no images to evaluate: y_true and probs are empty")
    if y_true.min() < 0 or y_true.max() >= len(classes):
        raise ValueError(f"y_true holds class indices outside 0..{len(classes) - 1}: {sorted(set(y_true.tolist()))}")
    row_sums = probs.sum(axis=1)
    if probs.min() < 0 or not np.allclose(row_sums, 1.0, atol=PROB_SUM_TOLERANCE):
        raise ValueError(
            "probs must be softmax probabilities (non-negative, rows summing to 1); "
            f"got row sums from {row_sums.min():.4g} to {row_sums.max():.4g}; apply softmax to the logits first"
        )
    # float32 softmax rows are off by ~1e-7, which sklearn's log_loss warns about in float64
    return y_true, probs / row_sums[:, None]


def _check_multi_label(y_true: np.ndarray, probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Validated 0/1 int targets (N, C) and float64 scores (N, C)."""
    y_true = np.asarray(y_true).astype(int, copy=False)
    probs = np.asarray(probs, dtype=np.float64)
    if probs.ndim != 2 or y_true.shape != probs.shape:
        raise ValueError(f"y_true and probs must both have shape (N, C); got {y_true.shape} and {probs.shape}")
    if probs.shape[0] == 0:
        raise ValueError("no images to evaluate: y_true and probs are empty")
    return y_true, probs


def _scores(precision, recall, f1, support) -> dict:
    return {"precision": float(precision), "recall": float(recall), "f1": float(f1), "support": int(support)}


def _averages(y_true: np.ndarray, y_pred: np.ndarray, labels: np.ndarray) -> dict:
    """'macro_avg' and 'weighted_avg' entries, each with the total support like sklearn's report."""
    averages = {}
    for average in ("macro", "weighted"):
        precision, recall, f1, _ = precision_recall_fscore_support(
            y_true, y_pred, labels=labels, average=average, zero_division=0
        )
        averages[f"{average}_avg"] = _scores(precision, recall, f1, len(y_true))
    return averages


def _most_confused(confusion: np.ndarray, classes: list[str]) -> list[dict]:
    """Off-diagonal cells with a count, largest first (ties in class order, so the list is stable)."""
    off_diagonal = confusion.copy()
    np.fill_diagonal(off_diagonal, 0)
    true_idx, pred_idx = np.nonzero(off_diagonal)
    counts = off_diagonal[true_idx, pred_idx]
    order = np.lexsort((pred_idx, true_idx, -counts))[:MOST_CONFUSED_LIMIT]
    return [
        {"true": classes[true_idx[i]], "predicted": classes[pred_idx[i]], "count": int(counts[i])} for i in order
    ]


def _top_k_accuracy(y_true: np.ndarray, probs: np.ndarray, top_k: tuple[int, ...]) -> dict[str, float]:
    """Top-k accuracy for 1 < k < C: k = 1 is 'accuracy', and k >= C is 1 by definition."""
    labels = np.arange(probs.shape[1])
    return {
        str(k): float(top_k_accuracy_score(y_true, probs, k=k, labels=labels))
        for k in sorted(set(top_k))
        if 1 < k < probs.shape[1]
    }


def reliability_bins(y_true: np.ndarray, probs: np.ndarray, n_bins: int = ECE_BINS) -> dict:
    """Top-1 confidence against accuracy in `n_bins` equal-width bins over [0, 1].

    A bin holds confidences in (lower, upper]; an empty bin has confidence and accuracy None.
    """
    y_true = np.asarray(y_true).astype(int, copy=False)
    probs = np.asarray(probs, dtype=np.float64)
    confidence = probs.max(axis=1)
    correct = probs.argmax(axis=1) == y_true
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    # side="left" puts a confidence equal to an upper edge in that bin; 0 joins the first bin
    bin_of = np.clip(np.searchsorted(edges, confidence, side="left") - 1, 0, n_bins - 1)
    count = np.bincount(bin_of, minlength=n_bins)
    conf_sum = np.bincount(bin_of, weights=confidence, minlength=n_bins)
    correct_sum = np.bincount(bin_of, weights=correct, minlength=n_bins)
    return {
        "bin_edges": edges.tolist(),
        "confidence": [float(s / n) if n else None for s, n in zip(conf_sum, count)],
        "accuracy": [float(s / n) if n else None for s, n in zip(correct_sum, count)],
        "count": count.tolist(),
    }


def expected_calibration_error(bins: dict) -> float:
    """Count-weighted mean gap between accuracy and confidence over the bins of `reliability_bins`."""
    total = sum(bins["count"])
    gaps = (
        n * abs(acc - conf) for n, acc, conf in zip(bins["count"], bins["accuracy"], bins["confidence"]) if n
    )
    return float(sum(gaps) / total) if total else 0.0


def single_label_metrics(
    y_true: np.ndarray, probs: np.ndarray, classes: list[str], top_k: tuple[int, ...] = (1, 3, 5)
) -> dict:
    """Accuracy, top-k, per-class and averaged precision/recall/F1, confusion, log loss and ECE.

    y_true (N,) holds class indices and probs (N, C) softmax probabilities. Every class in
    `classes` gets a row and column of the confusion matrix, even when absent from y_true.
    """
    y_true, probs = _check_single_label(y_true, probs, classes)
    labels = np.arange(len(classes))
    y_pred = probs.argmax(axis=1)
    precision, recall, f1, support = precision_recall_fscore_support(
        y_true, y_pred, labels=labels, average=None, zero_division=0
    )
    confusion = confusion_matrix(y_true, y_pred, labels=labels)
    return {
        "task": "single-label",
        "n_images": int(len(y_true)),
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "top_k_accuracy": _top_k_accuracy(y_true, probs, top_k),
        "per_class": {name: _scores(*row) for name, *row in zip(classes, precision, recall, f1, support)},
        **_averages(y_true, y_pred, labels),
        "confusion_matrix": confusion.tolist(),
        "classification_report": classification_report(
            y_true, y_pred, labels=labels, target_names=classes, zero_division=0
        ),
        "most_confused": _most_confused(confusion, classes),
        "log_loss": float(log_loss(y_true, probs, labels=labels)),
        "ece": expected_calibration_error(reliability_bins(y_true, probs)),
    }


def multi_label_metrics(y_true: np.ndarray, probs: np.ndarray, classes: list[str], thresholds: np.ndarray) -> dict:
    """mAP, exact-match accuracy, micro/macro F1 and per-class scores at the given thresholds.

    y_true (N, C) is 0/1, probs (N, C) sigmoid scores, and a class is predicted when its score
    reaches its threshold (score >= threshold, the convention of `precision_recall_curve`).
    AP is undefined for a class with no positive image: its 'ap' is None and it is left out of mAP.
    """
    y_true, probs = _check_multi_label(y_true, probs)
    thresholds = np.asarray(thresholds, dtype=np.float64)
    if thresholds.shape != (probs.shape[1],) or len(classes) != probs.shape[1]:
        raise ValueError(
            f"need one class name and one threshold per column of probs ({probs.shape[1]}); "
            f"got {len(classes)} classes and thresholds of shape {thresholds.shape}"
        )
    y_pred = (probs >= thresholds).astype(int)
    ap = [
        float(average_precision_score(y_true[:, c], probs[:, c])) if y_true[:, c].any() else None
        for c in range(len(classes))
    ]
    defined_ap = [value for value in ap if value is not None]
    precision, recall, f1, support = precision_recall_fscore_support(y_true, y_pred, average=None, zero_division=0)
    per_class = {
        name: {"ap": ap[c], **_scores(precision[c], recall[c], f1[c], support[c]), "threshold": float(thresholds[c])}
        for c, name in enumerate(classes)
    }
    return {
        "task": "multi-label",
        "n_images": int(len(y_true)),
        "mAP": float(np.mean(defined_ap)) if defined_ap else None,
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "micro_f1": float(f1_score(y_true, y_pred, average="micro", zero_division=0)),
        "macro_f1": float(f1_score(y_true, y_pred, average="macro", zero_division=0)),
        "per_class": per_class,
        "classification_report": classification_report(y_true, y_pred, target_names=classes, zero_division=0),
    }


def _best_f1_threshold(y_true: np.ndarray, scores: np.ndarray) -> float:
    """The score threshold with the highest F1 for one class (which has at least one positive)."""
    precision, recall, thresholds = precision_recall_curve(y_true, scores)
    # the last (precision=1, recall=0) point has no threshold
    precision, recall = precision[:-1], recall[:-1]
    denominator = precision + recall
    f1 = np.divide(2 * precision * recall, denominator, out=np.zeros_like(denominator), where=denominator > 0)
    return float(thresholds[np.argmax(f1)])


def tune_thresholds(y_true: np.ndarray, probs: np.ndarray, default: float = 0.5) -> np.ndarray:
    """Per-class F1-optimal thresholds on validation scores; a class with no positives keeps `default`.

    Tune on the validation split and report on the test split, or the F1 is optimistic.
    """
    y_true, probs = _check_multi_label(y_true, probs)
    thresholds = np.full(probs.shape[1], float(default))
    for c in range(probs.shape[1]):
        if y_true[:, c].any():
            thresholds[c] = _best_f1_threshold(y_true[:, c], probs[:, c])
    return np.clip(thresholds, THRESHOLD_MARGIN, 1.0 - THRESHOLD_MARGIN)
