"""The run folder `imgcls train` writes, and the one place that knows its layout.

  RUN_DIR/model/            the bundle (models.bundle owns what is inside)
  RUN_DIR/checkpoint.pt     everything --resume needs, rewritten after every epoch
  RUN_DIR/history.csv       one row per epoch
  RUN_DIR/data.json         what the run saw and how it split it (DataSummary)
  RUN_DIR/args.yaml         the settings, automatic choices resolved: `imgcls train --config` reads it
  RUN_DIR/report.html       the report (imgcls.report)
  RUN_DIR/evaluation/       the validation results of training (EvaluationDir)
  RUN_DIR/evaluation-<data>-<split>/, explanations/, similar/   what later commands derive from the bundle
  RUN_DIR/tensorboard/, mlruns/                                 --logger's records

Every reader and writer of these files asks RunDir for the path (as Ultralytics' trainer decides every
output path once), so a file is renamed here or nowhere. This module imports no torch: the CLI's
Ctrl-C message and argument checks use it.
"""
from __future__ import annotations

import csv
import io
import itertools
import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Iterator

from .errors import ImgclsError, UsageError
from .fileio import atomic_write_bytes, fresh_folder

BUNDLE_FOLDER = "model"  # models.bundle.find_bundle looks for a run's bundle here
CHECKPOINT_FILE, HISTORY_FILE, DATA_SUMMARY_FILE = "checkpoint.pt", "history.csv", "data.json"
ARGS_FILE, REPORT_FILE = "args.yaml", "report.html"
EVALUATION_FOLDER = "evaluation"  # training's validation results; `imgcls evaluate` writes beside it
RUNS_FOLDER = Path("runs")  # where runs go when no folder is chosen


def _read_json(path: Path) -> dict:
    """The JSON object in `path`; {} when it is missing, unreadable or not an object (an older or hand-made run)."""
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def _read_csv(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


@dataclass
class DataSummary:
    """data.json: the data a run trained on and how it split it, so look-alikes, export checks, the report and
    the model card find the same images. Every field may be missing from an older run's file."""
    data_dir: str | None = None
    classes: list[str] = field(default_factory=list)
    counts: dict[str, dict[str, int]] = field(default_factory=dict)  # split -> class -> images
    img_size: int | None = None
    fingerprint: str | None = None
    skipped: list[dict] = field(default_factory=list)  # {"path", "reason"} of the unreadable images
    val_split: float | None = None
    test_split: float | None = None
    seed: int | None = None
    multi_label: bool | None = None
    labels_csv: str | None = None
    manifest: str | None = None
    manifest_sha256: str | None = None

    SPLIT_KEYS = ("val_split", "test_split", "seed", "multi_label", "labels_csv", "manifest")  # data.folders.discover's

    @classmethod
    def from_dict(cls, values: dict) -> DataSummary:
        known = {f.name for f in fields(cls)}
        return cls(**{key: value for key, value in values.items() if key in known and value is not None})

    def split_options(self) -> dict:
        """discover()'s arguments that rebuild the run's split; those not recorded keep discover's defaults."""
        return {key: getattr(self, key) for key in self.SPLIT_KEYS if getattr(self, key) is not None}


@dataclass(frozen=True)
class EvaluationDir:
    """A folder of evaluation results: training's RUN_DIR/evaluation, or one `imgcls evaluate` writes."""
    root: Path

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.json"

    @property
    def predictions(self) -> Path:
        return self.root / "predictions.csv"

    @property
    def classification_report(self) -> Path:
        return self.root / "classification_report.txt"

    @property
    def confusion_csv(self) -> Path:
        return self.root / "confusion_matrix.csv"

    @property
    def confusion_png(self) -> Path:
        return self.root / "confusion_matrix.png"

    @property
    def reliability_png(self) -> Path:
        return self.root / "reliability.png"

    @property
    def pr_curves_png(self) -> Path:
        return self.root / "pr_curves.png"

    @property
    def learning_curves_png(self) -> Path:
        return self.root / "learning_curves.png"

    def read_metrics(self) -> dict:
        return _read_json(self.metrics)

    def read_predictions(self) -> list[dict]:
        """predictions.csv's rows: path, true, predicted, score, true_score (strings)."""
        return _read_csv(self.predictions)


@dataclass(frozen=True)
class RunDir:
    """The paths of one run folder, and typed readers and writers of its files."""
    root: Path

    def __post_init__(self):
        object.__setattr__(self, "root", Path(self.root))

    @property
    def bundle(self) -> Path:
        return self.root / BUNDLE_FOLDER

    @property
    def checkpoint(self) -> Path:
        return self.root / CHECKPOINT_FILE

    @property
    def history(self) -> Path:
        return self.root / HISTORY_FILE

    @property
    def data_summary(self) -> Path:
        return self.root / DATA_SUMMARY_FILE

    @property
    def args(self) -> Path:
        return self.root / ARGS_FILE

    @property
    def report(self) -> Path:
        return self.root / REPORT_FILE

    @property
    def predictions(self) -> Path:
        """The demo's predictions of its unlabelled images."""
        return self.root / "predictions.json"

    @property
    def evaluation(self) -> EvaluationDir:
        """The validation results training wrote."""
        return EvaluationDir(self.root / EVALUATION_FOLDER)

    @property
    def tensorboard(self) -> Path:
        return self.root / "tensorboard"

    @property
    def mlruns(self) -> Path:
        return self.root / "mlruns"

    def new_evaluation(self, data_dir: str | Path, split: str) -> EvaluationDir:
        """Where `imgcls evaluate` writes the scores on `split` of `data_dir`: evaluation-<data>-<split>, or the first
        free -2, -3, ... (never RUN_DIR/evaluation, which holds training's validation results)."""
        return EvaluationDir(fresh_folder(self.root / f"{EVALUATION_FOLDER}-{Path(data_dir).resolve().name}-{split}"))

    def new_explanations(self) -> Path:
        return fresh_folder(self.root / "explanations")

    def new_similar(self) -> Path:
        return fresh_folder(self.root / "similar")

    def holds_run(self) -> bool:
        """Whether a run was trained here: a checkpoint to resume, or a saved bundle."""
        return self.checkpoint.is_file() or self.bundle.is_dir()

    def read_data_summary(self) -> DataSummary | None:
        """data.json, or None where there is none (a bundle copied without its run)."""
        values = _read_json(self.data_summary)
        return DataSummary.from_dict(values) if values else None

    def dataset(self, data_dir: str | Path | None = None):
        """The run's data (data.folders.LabelledImages), split as it trained on it: data.json says where the
        data is and how it was split; `data_dir` stands in for a data folder that moved. Look-alikes and the
        int8 export's calibration read its splits."""
        from .data.folders import discover  # numpy: only for the commands that need the images

        summary = self.read_data_summary() or DataSummary()
        if data_dir is None:
            data_dir = summary.data_dir
            if data_dir is None:
                raise UsageError(f"no training data known for '{self.bundle}' (no {self.data_summary.name} beside "
                                 "it); pass --data TRAIN_DIR")
            if not Path(data_dir).is_dir():
                raise ImgclsError(f"the training data '{data_dir}' recorded in {self.data_summary} is gone; "
                                  "pass --data TRAIN_DIR")
        return discover(data_dir, **summary.split_options())

    def write_data_summary(self, summary: DataSummary) -> None:
        atomic_write_bytes(self.data_summary, json.dumps(asdict(summary), indent=2).encode())

    def read_history(self) -> list[dict]:
        """history.csv's rows (strings), oldest epoch first; [] before the first epoch."""
        return _read_csv(self.history)

    def write_history(self, history: list[dict]) -> None:
        """history.csv, rewritten whole so an interrupted run still has its curves."""
        out = io.StringIO()
        writer = csv.DictWriter(out, fieldnames=list(history[0]))
        writer.writeheader()
        writer.writerows(history)
        atomic_write_bytes(self.history, out.getvalue().encode())


def default_run_dirs(data_dir: str | Path) -> Iterator[RunDir]:
    """Where a run on `data_dir` without a chosen folder may go, in order: runs/<data folder name>, -2, -3, ..."""
    base = RUNS_FOLDER / (Path(data_dir).resolve().name or "run")
    yield RunDir(base)
    for n in itertools.count(2):
        yield RunDir(base.with_name(f"{base.name}-{n}"))


def choose_run_dir(data_dir: str | Path | None, out: str | Path | None) -> RunDir:
    """The folder a new run on `data_dir` writes: `out`, refused when it holds a run already (a new run must
    not mix its files into an old one's, nor overwrite its model), else the first free runs/<data folder name>."""
    if out is None:
        if data_dir is None:
            raise UsageError("train needs a data folder: imgcls train DATA (or --resume RUN_DIR)")
        return next(run for run in default_run_dirs(data_dir) if not run.root.exists())
    run = RunDir(Path(out))
    if run.holds_run():
        raise UsageError(f"'{run.root}' already holds a run; continue it with --resume {run.root} or choose another --out")
    return run
