"""`imgcls audit DATA --labels`: the images whose label is probably wrong, that belong to no class,
or that are of poor quality, most suspicious first, each with look-alikes to judge it by.

Every labelled image (all splits: a wrong validation label misleads as much as a wrong training one)
is embedded once by a frozen ImageNet backbone (the default model's pooled features, through the
decode cache), or, where no pretrained weights can be had, by its downscaled pixels. Then:
  - label issues: out-of-fold probabilities from a logistic regression on the features, averaged with
    the vote of each image's nearest neighbours (two views of the features that err differently),
    ranked by confident learning (clean.confident);
  - outliers: images far from every class centre (clean.outliers);
  - quality: clean.quality.
Files are only read.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..data.cache import DecodeCacheOptions, decode_cached
from ..data.folders import LabelledImages, Sample, discover
from ..data.loader import Batches
from ..errors import ImgclsError
from ..models.classifier import Classifier
from ..models.registry import create_model
from ..models.weights import WeightsUnavailable
from ..runtime import keep_freed_memory, resolve_device
from ..train.defaults import PRETRAINED_MODEL
from ..train.probe import out_of_fold_probabilities
from ..train.run import FEATURE_BATCH
from ..train.transfer import head_inputs
from .confident import rank_label_issues
from .neighbours import lookalikes, nearest_neighbours, neighbour_vote
from .outliers import outlier_scores
from .quality import header_sizes, quality_problems

log = logging.getLogger(__name__)

FEATURE_SIZE = 224  # the default backbone's input size
PIXEL_FEATURE_SIZE = 16  # without weights: 16x16x3 pixels, enough to tell colours and coarse shapes apart
LOOKALIKES = 5


@dataclass
class Embedded:
    samples: list[Sample]  # the readable images, row for row
    splits: list[str]
    features: torch.Tensor  # (N, D)
    pixels: np.ndarray  # (N, S, S, 3) uint8, as embedded
    unreadable: list[dict]
    source: str  # what the features are


def _pretrained_backbone(device: torch.device) -> Classifier:
    net = create_model(PRETRAINED_MODEL, num_classes=2, img_size=FEATURE_SIZE, pretrained=True)
    cfg = net.pretrained_cfg
    model = Classifier(net, tuple(cfg["mean"]), tuple(cfg["std"])).to(device).eval()
    return model.to(memory_format=torch.channels_last)  # the layout Batches gives: 2x faster on a CPU (bench/inference.py)


def embed_images(dataset: LabelledImages, device: torch.device, pretrained: bool = True) -> Embedded:
    """Features of every readable labelled image, by the pretrained backbone when its weights are at hand."""
    entries = [(split, sample) for split, samples in dataset.splits.items() for sample in samples]
    backbone, source = None, f"pixels ({PIXEL_FEATURE_SIZE}x{PIXEL_FEATURE_SIZE}, no pretrained backbone)"
    if pretrained:
        try:
            backbone, source = _pretrained_backbone(device), f"{PRETRAINED_MODEL} pooled features (ImageNet weights)"
        except WeightsUnavailable as err:
            log.warning("no pretrained weights for %s, so images are compared by their pixels, which finds far fewer "
                        "wrong labels; pass --no-pretrained to silence this (%s)", PRETRAINED_MODEL, err)
    size = FEATURE_SIZE if backbone is not None else PIXEL_FEATURE_SIZE
    decoded = decode_cached([sample.path for _, sample in entries], size, DecodeCacheOptions.from_environment())
    kept = [entries[i] for i in decoded.kept]
    if backbone is not None:
        dummy = torch.zeros(len(kept), 1)
        features, _ = head_inputs(backbone, Batches(decoded.pixels, dummy, FEATURE_BATCH, device=device))
    else:
        features = torch.from_numpy(decoded.pixels.reshape(len(kept), -1).astype(np.float32) / 255)
    return Embedded([s for _, s in kept], [split for split, _ in kept], features, decoded.pixels,
                    [{"path": str(path), "reason": reason} for path, reason in decoded.failed], source)


def label_probabilities(features: torch.Tensor, labels: np.ndarray, classes: int, folds: int, seed: int,
                        neighbours) -> np.ndarray:
    """(N, C) out-of-sample class probabilities: a cross-fitted logistic regression and the neighbours' vote."""
    targets = torch.nn.functional.one_hot(torch.as_tensor(labels), classes).float()
    regression = out_of_fold_probabilities(features, targets, folds, seed).numpy()
    return (regression + neighbour_vote(neighbours, labels, classes)) / 2


def _names(sample: Sample, classes: list[str]) -> str:
    return ";".join(classes[i] for i in sample.labels)


def audit_labels(root, val_split: float = 0.2, seed: int = 0, folds: int = 5, device: str = "auto",
                 pretrained: bool = True, lookalike_count: int = LOOKALIKES, multi_label: bool = False,
                 labels_csv=None) -> dict:
    """Label issues, outliers and quality problems of the images under root (see the module docstring):
    a JSON-serialisable dict, each list sorted most suspicious first."""
    start = time.perf_counter()
    keep_freed_memory()  # 2.2x faster batches of photo-sized activations on a CPU (runtime.keep_freed_memory)
    dataset = discover(root, val_split=val_split, seed=seed, multi_label=multi_label, labels_csv=labels_csv)
    embedded = embed_images(dataset, resolve_device(device), pretrained)
    samples, classes, features = embedded.samples, dataset.classes, embedded.features
    if len(samples) < 2 * folds:
        raise ImgclsError(f"only {len(samples)} readable images under '{dataset.root}': too few to cross-check labels "
                          f"({2 * folds} at least)")
    single_label = not dataset.multi_label
    labels = np.array([s.labels[0] for s in samples])
    neighbours = nearest_neighbours(features)

    def entry(i: int, **fields) -> dict:
        return {"path": str(samples[i].path), "split": embedded.splits[i], "given": _names(samples[i], classes), **fields}

    def similar(i: int, label: int) -> list[str]:
        found = lookalikes(features, i, np.flatnonzero(labels == label), lookalike_count)
        return [str(samples[j].path) for j in found]

    issues, estimated_noise = [], None
    if single_label:
        probabilities = label_probabilities(features, labels, len(classes), folds, seed, neighbours)
        ranking = rank_label_issues(probabilities, labels)
        estimated_noise = float(ranking.confident_joint.sum() - np.trace(ranking.confident_joint)) / len(samples)
        issues = [entry(i, suggested=classes[ranking.suggested[i]], score=round(float(ranking.scores[i]), 4),
                        lookalikes={"given": similar(i, labels[i]), "suggested": similar(i, ranking.suggested[i])})
                  for i in ranking.issues]
    score, is_outlier = outlier_scores(features, labels, len(classes))
    outliers = [entry(i, score=round(float(score[i]), 4), lookalikes={"given": similar(i, labels[i])})
                for i in sorted(np.flatnonzero(is_outlier), key=lambda i: -score[i])]
    problems = quality_problems(embedded.pixels, header_sizes([s.path for s in samples]))
    quality = [entry(i, problems=found, score=round(len(found) / 3, 4))
               for i, found in sorted(enumerate(problems), key=lambda item: -len(item[1])) if found]
    seconds = time.perf_counter() - start
    log.info("label check of %d images in %.0fs: %d label issues, %d outliers, %d with quality problems",
             len(samples), seconds, len(issues), len(outliers), len(quality))
    return {
        "root": str(dataset.root), "classes": list(classes),
        "label_check": {"images": len(samples), "features": embedded.source, "folds": folds,
                        "label_issues_checked": single_label, "estimated_label_noise": estimated_noise,
                        "seconds": round(seconds, 1)},
        "label_issues": issues, "outliers": outliers, "quality": quality, "unreadable": embedded.unreadable,
    }
