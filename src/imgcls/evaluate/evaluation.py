"""Scoring a bundle on labelled images and writing what a person reads: metrics.json,
the classification report, the confusion matrix (CSV and PNG), learning and PR curves."""
from __future__ import annotations

import csv
import io
import json
import logging
from pathlib import Path

import numpy as np

from ..data.cache import decode_cached, default_cache_dir
from ..data.folders import Sample, find_evaluation_images, multi_hot
from ..fileio import atomic_write_bytes
from ..models.bundle import BundleConfig, find_bundle
from . import metrics as M
from . import plots

log = logging.getLogger(__name__)


def _read_history(path: Path | None) -> list[dict]:
    if path is None or not path.is_file():
        return []
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def _predictions_csv(samples: list[Sample], probs: np.ndarray, classes: list[str]) -> bytes:
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["path", "true", "predicted", "score", "true_score"])
    for sample, row in zip(samples, probs):
        best = int(row.argmax())
        true_score = max(row[i] for i in sample.labels) if sample.labels else 0.0
        writer.writerow([sample.path, ";".join(classes[i] for i in sample.labels), classes[best],
                         f"{row[best]:.6f}", f"{true_score:.6f}"])
    return out.getvalue().encode()


def write_evaluation(probs: np.ndarray, samples: list[Sample], config: BundleConfig, out_dir: str | Path,
                     history_path: Path | None = None, uncalibrated: np.ndarray | None = None) -> dict:
    """Compute every metric for `probs` (N, C) against `samples`' labels and write the files.
    `uncalibrated`: the probabilities before temperature scaling, to report the ECE it fixed."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    classes, hot = config.classes, multi_hot(samples, len(config.classes))
    if config.multi_label:
        thresholds = np.asarray(config.thresholds or [0.5] * len(classes))
        metrics = M.multi_label_metrics(hot, probs, classes, thresholds)
        plots.plot_pr_curves(hot, probs, classes, out_dir / "pr_curves.png")
    else:
        metrics = M.single_label_metrics(hot.argmax(1), probs, classes)
        plots.write_confusion_csv(metrics["confusion_matrix"], classes, out_dir / "confusion_matrix.csv")
        plots.plot_confusion_matrix(metrics["confusion_matrix"], classes, out_dir / "confusion_matrix.png")
        plots.plot_reliability(M.reliability_bins(hot.argmax(1), probs), out_dir / "reliability.png")
        if uncalibrated is not None:
            metrics["ece_before_calibration"] = M.expected_calibration_error(M.reliability_bins(hot.argmax(1), uncalibrated))
            metrics["temperature"] = config.temperature
    history = _read_history(history_path)
    if history:
        plots.plot_learning_curves(history, out_dir / "learning_curves.png")
    atomic_write_bytes(out_dir / "classification_report.txt", metrics["classification_report"].encode())
    atomic_write_bytes(out_dir / "predictions.csv", _predictions_csv(samples, probs, classes))
    atomic_write_bytes(out_dir / "metrics.json", json.dumps(metrics, indent=2).encode())
    return metrics


def evaluate(bundle: str | Path, data_dir: str | Path, out_dir: str | Path | None = None, split: str | None = None,
             labels_csv: str | Path | None = None, device: str = "cpu", tta: str | None = None) -> tuple[dict, Path]:
    """Evaluate a saved bundle on the test (else validation) images of `data_dir`."""
    from ..predict.predictor import Predictor

    predictor = Predictor.load(bundle, device=device, tta=tta)
    samples = find_evaluation_images(data_dir, predictor.classes, split, predictor.config.multi_label, labels_csv)
    decoded = decode_cached([s.path for s in samples], predictor.config.img_size, default_cache_dir())
    samples = [samples[i] for i in decoded.kept]
    bundle_dir = find_bundle(bundle)
    # Not RUN_DIR/evaluation: that holds the validation results written by training.
    out_dir = Path(out_dir) if out_dir else bundle_dir.parent / f"evaluation-{Path(data_dir).resolve().name}"
    logits = predictor.logits(decoded.pixels)
    metrics = write_evaluation(predictor.scores(logits), samples, predictor.config, out_dir,
                               history_path=bundle_dir.parent / "history.csv",
                               uncalibrated=None if predictor.config.multi_label else predictor.scores(logits, calibrated=False))
    metrics["skipped"] = [{"path": str(p), "reason": r} for p, r in decoded.failed]
    return metrics, out_dir
