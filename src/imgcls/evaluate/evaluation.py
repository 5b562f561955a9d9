"""Scoring a bundle on labelled images and writing what a person reads: metrics.json,
the classification report, the confusion matrix (CSV and PNG), learning and PR curves."""
from __future__ import annotations

import csv
import io
import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..data.cache import decode_cached, default_cache_dir
from ..data.folders import SPLIT_ALIASES, Sample, find_evaluation_images, find_split_folders, multi_hot
from ..errors import UsageError
from ..fileio import atomic_write_bytes, fresh_folder
from ..models.bundle import BundleConfig
from . import metrics as M
from . import plots

if TYPE_CHECKING:
    from ..predict.predictor import Predictor

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
                     history_path: Path | None = None, uncalibrated: np.ndarray | None = None,
                     split: str | None = None) -> dict:
    """Compute every metric for `probs` (N, C) against `samples`' labels and write the files.
    `uncalibrated`: the probabilities before temperature scaling, to report the ECE it fixed.
    `split`: what the images were (test, validation, train, all), first in metrics.json."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    classes, hot = config.classes, multi_hot(samples, len(config.classes))
    metrics = {} if split is None else {"split": split}
    if config.multi_label:
        thresholds = np.asarray(config.thresholds or [0.5] * len(classes))
        metrics.update(M.multi_label_metrics(hot, probs, classes, thresholds))
        plots.plot_pr_curves(hot, probs, classes, out_dir / "pr_curves.png")
    else:
        metrics.update(M.single_label_metrics(hot.argmax(1), probs, classes))
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


# The name of the images scored when they are no split: a plain class-folder tree, or a labels CSV.
ALL_IMAGES = "all"


def _split_scored(data_dir: str | Path, split: str | None, labels_csv: str | Path | None) -> str:
    """The split find_evaluation_images took (it has checked that it exists): the one asked for, else
    test, else validation, as it chooses; ALL_IMAGES when the images are no split."""
    if labels_csv is not None:
        return ALL_IMAGES
    if split is not None:
        return SPLIT_ALIASES.get(split.lower(), split)
    found = find_split_folders(Path(data_dir).expanduser())
    return next((name for name in ("test", "validation") if name in found), ALL_IMAGES)


def evaluate(bundle: str | Path | Predictor, data_dir: str | Path, out_dir: str | Path | None = None,
             split: str | None = None, labels_csv: str | Path | None = None, device: str = "cpu",
             tta: str | None = None, engine: str = "torch") -> tuple[dict, Path]:
    """Score a bundle (run folder, model/ folder, or a loaded Predictor) on the labelled images of `data_dir`:
    its `split`, by default test, else validation, else every image. Returns the metrics, whose 'split' names
    the images scored, and the folder written: by default RUN_DIR/evaluation-<data folder>-<split>, or, when
    that holds an earlier evaluation, the first free one of its -2, -3, ... (said in the log). `engine` (choices.ENGINES)
    runs the model: a loaded Predictor brings its own."""
    from ..predict.predictor import Predictor

    for name, value, default in (("tta", tta, None), ("engine", engine, "torch")):
        if isinstance(bundle, Predictor) and value != default:
            raise UsageError(f"{name} is chosen when the model is loaded: imgcls.load(path, {name}={value!r})")
    predictor = bundle if isinstance(bundle, Predictor) else Predictor.load(bundle, device=device, engine=engine, tta=tta)
    samples = find_evaluation_images(data_dir, predictor.classes, split, predictor.config.multi_label, labels_csv)
    split = _split_scored(data_dir, split, labels_csv)
    run_dir = predictor.run_dir
    if out_dir is None and run_dir is None:
        raise UsageError("this model was not loaded from a folder, so there is no run folder to write into; pass out_dir")
    # Not RUN_DIR/evaluation: that holds the validation results written by training.
    out_dir = Path(out_dir) if out_dir else fresh_folder(run_dir / f"evaluation-{Path(data_dir).resolve().name}-{split}")
    decoded = decode_cached([s.path for s in samples], predictor.config.img_size, default_cache_dir())
    samples = [samples[i] for i in decoded.kept]
    logits = predictor.logits(decoded.pixels)
    metrics = write_evaluation(predictor.scores(logits), samples, predictor.config, out_dir,
                               history_path=run_dir / "history.csv" if run_dir else None, split=split,
                               uncalibrated=None if predictor.config.multi_label else predictor.scores(logits, calibrated=False))
    metrics["skipped"] = [{"path": str(p), "reason": r} for p, r in decoded.failed]
    return metrics, out_dir
