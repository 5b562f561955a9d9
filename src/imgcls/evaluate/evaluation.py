"""Scoring a bundle on labelled images and writing what a person reads: metrics.json,
the classification report, the confusion matrix (CSV and PNG), learning and PR curves."""
from __future__ import annotations

import csv
import io
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..data.cache import decode_cached
from ..data.folders import SPLIT_ALIASES, Sample, find_evaluation_images, find_split_folders, multi_hot
from ..errors import UsageError
from ..fileio import atomic_write_bytes
from ..models.bundle import BundleConfig
from ..rundir import EvaluationDir, RunDir
from . import metrics as M
from . import plots

if TYPE_CHECKING:
    from ..predict.predictor import Predictor

log = logging.getLogger(__name__)


PREDICTION_COLUMNS = ("path", "true", "predicted", "score", "true_score")


def prediction_rows(samples: list[Sample], probs: np.ndarray, classes: list[str]) -> list[dict]:
    """One row per image, as predictions.csv holds them: its path, true classes (';'-joined), the predicted
    class, its score and the best score of a true class (numbers as the CSV writes them)."""
    rows = []
    for sample, row in zip(samples, probs):
        best = int(row.argmax())
        true_score = max(row[i] for i in sample.labels) if sample.labels else 0.0
        rows.append(dict(zip(PREDICTION_COLUMNS, (str(sample.path), ";".join(classes[i] for i in sample.labels),
                                                  classes[best], f"{row[best]:.6f}", f"{true_score:.6f}"))))
    return rows


def _predictions_csv(rows: list[dict]) -> bytes:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=PREDICTION_COLUMNS)
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue().encode()


@dataclass
class Evaluation:
    """What write_evaluation computed: the metrics (metrics.json) and the rows of predictions.csv."""
    metrics: dict
    predictions: list[dict]


def write_evaluation(probs: np.ndarray, samples: list[Sample], config: BundleConfig, out: EvaluationDir,
                     history: list[dict] | None = None, uncalibrated: np.ndarray | None = None,
                     split: str | None = None) -> Evaluation:
    """Compute every metric for `probs` (N, C) against `samples`' labels and write the files into `out`.
    `history`: the run's epochs, drawn as learning curves. `uncalibrated`: the probabilities before temperature
    scaling, to report the ECE it fixed. `split`: what the images were (test, validation, train, all), first in
    metrics.json."""
    out.root.mkdir(parents=True, exist_ok=True)
    classes, hot = config.classes, multi_hot(samples, len(config.classes))
    metrics = {} if split is None else {"split": split}
    if config.multi_label:
        thresholds = np.asarray(config.thresholds or [0.5] * len(classes))
        metrics.update(M.multi_label_metrics(hot, probs, classes, thresholds))
        plots.plot_pr_curves(hot, probs, classes, out.pr_curves_png)
    else:
        metrics.update(M.single_label_metrics(hot.argmax(1), probs, classes))
        plots.write_confusion_csv(metrics["confusion_matrix"], classes, out.confusion_csv)
        plots.plot_confusion_matrix(metrics["confusion_matrix"], classes, out.confusion_png)
        plots.plot_reliability(M.reliability_bins(hot.argmax(1), probs), out.reliability_png)
        if uncalibrated is not None:
            metrics["ece_before_calibration"] = M.expected_calibration_error(M.reliability_bins(hot.argmax(1), uncalibrated))
            metrics["temperature"] = config.temperature
    if history:
        plots.plot_learning_curves(history, out.learning_curves_png)
    rows = prediction_rows(samples, probs, classes)
    atomic_write_bytes(out.classification_report, metrics["classification_report"].encode())
    atomic_write_bytes(out.predictions, _predictions_csv(rows))
    atomic_write_bytes(out.metrics, json.dumps(metrics, indent=2).encode())
    return Evaluation(metrics, rows)


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
    run = RunDir(predictor.run_dir) if predictor.run_dir is not None else None
    if out_dir is None and run is None:
        raise UsageError("this model was not loaded from a folder, so there is no run folder to write into; pass out_dir")
    out = EvaluationDir(Path(out_dir)) if out_dir else run.new_evaluation(data_dir, split)
    decoded = decode_cached([s.path for s in samples], predictor.config.img_size, predictor.decode_cache)
    samples = [samples[i] for i in decoded.kept]
    logits = predictor.logits(decoded.pixels)
    metrics = write_evaluation(predictor.scores(logits), samples, predictor.config, out,
                               history=run.read_history() if run else None, split=split,
                               uncalibrated=None if predictor.config.multi_label else predictor.scores(logits, calibrated=False)).metrics
    metrics["skipped"] = [{"path": str(p), "reason": r} for p, r in decoded.failed]
    return metrics, out.root
