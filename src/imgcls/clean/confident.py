"""Confident learning: which given labels disagree with what the images look like.

Northcutt, Jiang & Chuang, "Confident Learning: Estimating Uncertainty in Dataset Labels" (JAIR 2021),
https://arxiv.org/abs/1911.00068. From out-of-sample probabilities p (N, C) and given labels y:
  - each class j gets a threshold t_j, the mean probability of j over the images labelled j
    (a per-class bar: a hard class's own images score low, so a fixed 0.5 would flag them all);
  - an image "confidently belongs" to the classes whose probability clears their threshold, and is
    counted under the likeliest of them: the confident joint C[y, j];
  - the off-diagonal C[i, j] estimates how many images labelled i are really j, and the issues are,
    in each (i, j) cell, that many images labelled i ranked by the margin p_j - p_i ("prune by noise rate").
Issues are then ranked by the normalised margin of the given label (how far another class beats it).

Written here (a few dozen lines of numpy) because the maintained implementation, cleanlab, is AGPL-3.0,
which a permissively licensed project cannot depend on.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class LabelRanking:
    issues: np.ndarray  # indices of the images found mislabelled, most suspicious first
    suggested: np.ndarray  # (N,) the class each image most likely is
    scores: np.ndarray  # (N,) in [0, 1]: 0.5 where the given label is as likely as the best other, 1 when certainly wrong
    confident_joint: np.ndarray  # (C, C) counts: given label x confident class


def per_class_thresholds(probabilities: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """t_j: the average probability of class j over the images labelled j (1.0 for an empty class)."""
    classes = probabilities.shape[1]
    thresholds = np.ones(classes)
    for j in range(classes):
        own = labels == j
        if own.any():
            thresholds[j] = probabilities[own, j].mean()
    return thresholds


def confident_classes(probabilities: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """(N,) the likeliest class among those whose probability clears their threshold; -1 where none does."""
    above = probabilities >= thresholds - 1e-12
    masked = np.where(above, probabilities, -np.inf)
    return np.where(above.any(1), masked.argmax(1), -1)


def mislabel_scores(probabilities: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """(1 - normalised margin) / 2: how far the best other class beats the given one, in [0, 1]."""
    given = probabilities[np.arange(len(labels)), labels]
    others = probabilities.copy()
    others[np.arange(len(labels)), labels] = -np.inf
    return (1 - (given - others.max(1))) / 2


def rank_label_issues(probabilities: np.ndarray, labels: np.ndarray) -> LabelRanking:
    """The images whose given label is likely wrong (see the module docstring), most suspicious first."""
    probabilities, labels = np.asarray(probabilities, dtype=np.float64), np.asarray(labels)
    n, classes = probabilities.shape
    confident = confident_classes(probabilities, per_class_thresholds(probabilities, labels))
    joint = np.zeros((classes, classes), dtype=np.int64)
    counted = confident >= 0
    np.add.at(joint, (labels[counted], confident[counted]), 1)
    flagged = []
    for i in range(classes):
        for j in range(classes):
            if i == j or joint[i, j] == 0:
                continue
            candidates = np.flatnonzero(labels == i)
            margin = probabilities[candidates, j] - probabilities[candidates, i]
            flagged.extend(candidates[np.argsort(-margin, kind="stable")[:joint[i, j]]])
    issues = np.unique(np.array(flagged, dtype=np.int64))
    scores = mislabel_scores(probabilities, labels)
    others = probabilities.copy()
    others[np.arange(n), labels] = -np.inf
    issues = issues[scores[issues] > 0.5]  # another class must actually beat the given one
    issues = issues[np.argsort(-scores[issues], kind="stable")]
    return LabelRanking(issues, others.argmax(1), scores, joint)


def suspects_among_predictions(given_scores: np.ndarray, predicted_scores: np.ndarray, labels: np.ndarray,
                               predicted: np.ndarray) -> np.ndarray:
    """The same rule on what an evaluation keeps of each image (the scores of its given and of its predicted
    class): images another class claims at least as confidently as that class's own images score on average.
    Indices, most suspicious first."""
    classes = int(max(labels.max(), predicted.max())) + 1
    counts = np.bincount(labels, minlength=classes)
    thresholds = np.bincount(labels, weights=given_scores, minlength=classes) / np.maximum(counts, 1)
    thresholds[counts == 0] = 1.0  # as per_class_thresholds: a class with no images claims nothing
    claimed = (predicted != labels) & (predicted_scores >= thresholds[predicted])
    scores = (1 - (given_scores - predicted_scores)) / 2
    found = np.flatnonzero(claimed)
    return found[np.argsort(-scores[found], kind="stable")]
