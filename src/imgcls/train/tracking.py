"""Experiment tracking: `--logger csv` (the default: history.csv, which every run writes anyway),
`tensorboard` or `mlflow`.

A tracker is a training callback on process 0: it records the run's resolved settings when training
starts, every epoch's scalars as they come, and at the end the final metrics and the run's plots
(confusion matrix, learning curves) as images. TensorBoard writes RUN_DIR/tensorboard/; MLflow logs to
$MLFLOW_TRACKING_URI, else to a file store in RUN_DIR/mlruns/ (`mlflow ui --backend-store-uri RUN_DIR/mlruns`).
"""
from __future__ import annotations

import math
import os
from pathlib import Path

from ..choices import LOGGERS  # noqa: F401  (the names; the classes are below)
from ..extras import require
from ..rundir import RunDir
from .callbacks import Callback

MAX_PARAM_CHARS = 250  # MLflow refuses longer parameter values (its limit is 6,000 on servers, 250 on older ones)


def _scalars(values: dict) -> dict[str, float]:
    """The finite numbers of `values` (booleans excluded), for metric logging."""
    return {k: float(v) for k, v in values.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)}


def _flat(settings: dict, prefix: str = "") -> dict[str, str | int | float | bool]:
    """Nested settings as one level of `a.b` keys, lists and None as text: what parameter tables take."""
    flat = {}
    for key, value in settings.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(_flat(value, f"{name}."))
        else:
            flat[name] = value if isinstance(value, (str, int, float, bool)) else str(value)
    return flat


class Tracker(Callback):
    """The csv tracker: history.csv is written by the run itself, so there is nothing more to do."""

    def __init__(self, run_folder: RunDir, settings: dict):
        self.run_folder, self.settings = run_folder, settings

    def finish(self, metrics: dict, images: dict[str, Path]) -> None:
        """The run's final metrics and its plots (name -> PNG), once the bundle is saved."""


class TensorBoardTracker(Tracker):
    def __init__(self, run_folder: RunDir, settings: dict):
        super().__init__(run_folder, settings)
        require("tensorboard", "tensorboard")
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(self.run_folder.tensorboard))
        table = "\n".join(f"| {k} | {v} |" for k, v in _flat(settings).items())
        self.writer.add_text("settings", "| setting | value |\n| --- | --- |\n" + table)

    def on_epoch_end(self, trainer, logs):
        for name, value in _scalars(logs).items():
            if name != "epoch":
                self.writer.add_scalar(name, value, logs["epoch"])
        self.writer.flush()

    def finish(self, metrics, images):
        import numpy as np
        from PIL import Image

        final = _scalars(metrics)
        self.writer.add_hparams(_flat(self.settings), {f"final/{k}": v for k, v in final.items()}, run_name=".")
        for name, path in images.items():
            with Image.open(path) as image:
                self.writer.add_image(name, np.asarray(image.convert("RGB")), dataformats="HWC")
        self.writer.close()


class MLflowTracker(Tracker):
    def __init__(self, run_folder: RunDir, settings: dict):
        super().__init__(run_folder, settings)
        self.mlflow = require("mlflow", "mlflow")
        if not os.environ.get("MLFLOW_TRACKING_URI"):  # a folder beside the run, needing no server or database
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3 asks to opt in to its file store
            self.mlflow.set_tracking_uri(self.run_folder.mlruns.resolve().as_uri())
        self.mlflow.set_experiment(os.environ.get("MLFLOW_EXPERIMENT_NAME", "imgcls"))
        self.run = self.mlflow.start_run(run_name=self.run_folder.root.name)
        self.mlflow.log_params({k: str(v)[:MAX_PARAM_CHARS] for k, v in _flat(settings).items()})

    def on_epoch_end(self, trainer, logs):
        self.mlflow.log_metrics({k: v for k, v in _scalars(logs).items() if k != "epoch"}, step=logs["epoch"])

    def finish(self, metrics, images):
        self.mlflow.log_metrics({f"final_{k}": v for k, v in _scalars(metrics).items()})
        for path in images.values():
            self.mlflow.log_artifact(str(path))
        self.mlflow.end_run()


def make_tracker(name: str, run_folder: RunDir, settings: dict) -> Tracker:
    """The tracker `--logger NAME` asks for (TrainConfig.validate has checked the name)."""
    return {"csv": Tracker, "tensorboard": TensorBoardTracker, "mlflow": MLflowTracker}[name](run_folder, settings)
