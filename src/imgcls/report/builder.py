"""report.html: one self-contained page of a training run, to read or send; the stage after training and
evaluation, built from what they computed.

Sections (their HTML ids): a summary of the run (`summary`: task, headline metrics, data, model,
training time and settings), the dataset audit (`audit`), learning curves (`curves`), confusion
matrix (`confusion`), classification report (`report`), most-confused class pairs
(`confused-pairs`), the worst mistakes with their Grad-CAM (`mistakes`), suspect labels
(`suspect-labels`), calibration (`calibration`), a sample of correct predictions (`correct`) and, once
`imgcls export --int8` has run, the int8 model's check against fp32 (`int8`).

`build_report(run, inputs)` takes everything in a ReportInputs: training passes what it holds (the
model, the decoded validation images, their predictions, history, the audit), so nothing is loaded,
decoded or audited twice; `ReportInputs.from_run` reads a finished run from disk for `imgcls report RUN`.
The plots come from the run's evaluation folder. The page has no script and fetches nothing: images
are embedded as data: URIs.
"""
from __future__ import annotations

import json
import logging
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..errors import ImgclsError
from ..evaluate.plots import MIN_BIN_IMAGES
from ..fileio import atomic_write_bytes
from ..models.bundle import CONFIG_FILE, BundleConfig
from ..rundir import DATA_SUMMARY_FILE, HISTORY_FILE, DataSummary, EvaluationDir, RunDir
from . import blocks as H

if TYPE_CHECKING:
    from ..predict.predictor import Predictor

log = logging.getLogger(__name__)

MISTAKES_SHOWN = 12  # the top losses: enough to see a pattern, few enough to look at each
CORRECT_SHOWN = 8
SUSPECTS_SHOWN = 6  # the likeliest wrong labels; the audit's review page has the rest
SAMPLE_SEED = 0  # the same run always shows the same correct examples
LISTED_FILES = 20  # corrupt files and duplicate groups listed by name; the rest are counted
LISTED_CLASSES = 20  # class names in the summary; past this a count says the rest
# The settings the summary shows first, when the bundle stores them; the rest are one click away.
MAIN_SETTINGS = ("model", "mode", "pretrained", "epochs", "batch_size", "lr", "optimizer", "schedule", "weight_decay",
                 "augment", "label_smoothing", "early_stopping", "time_budget_s", "tta", "seed", "val_split", "precision")


@dataclass
class ReportInputs:
    """Everything the report shows, as training and evaluation computed it."""
    bundle: BundleConfig
    metrics: dict  # the validation metrics, as in evaluation/metrics.json
    predictions: list[dict]  # the validation images' rows, as in evaluation/predictions.csv
    history: list[dict]  # one row per epoch, as in history.csv
    data: DataSummary | None  # None: the run recorded no data.json
    audit: dict | None  # data.audit's report of the training data; None: the data folder is not at hand
    predictor: Predictor  # for the Grad-CAM of the images shown
    pixels: dict[str, np.ndarray] = field(default_factory=dict)  # decoded images by path; others are read from file

    @classmethod
    def from_run(cls, run: RunDir, device: str = "cpu") -> ReportInputs:
        """The inputs of a finished run, read from its folder: its bundle, evaluation, history and data.json,
        and an audit of its data folder, split as the run split it, where that folder is still there."""
        from ..data.audit import audit_dataset
        from ..data.folders import discover
        from ..predict.predictor import Predictor

        metrics = run.evaluation.read_metrics()
        if not metrics:
            raise ImgclsError(f"'{run.root}' has no evaluation/metrics.json; is it a finished `imgcls train` run?")
        data = run.read_data_summary()
        data_dir = data.data_dir if data else None
        audited = None
        if data_dir and Path(data_dir).is_dir():
            audited = audit_dataset(discover(data_dir, **data.split_options()))
        predictor = Predictor.load(run.root, device=device)
        return cls(predictor.config, metrics, run.evaluation.read_predictions(), run.read_history(), data, audited,
                   predictor)


def _png(path: Path, caption: str) -> str:
    return H.figure(path.read_bytes(), caption) if path.is_file() else H.note(f"{path.name} was not written for this run.")


def _duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, seconds = divmod(round(seconds), 60)
    return f"{minutes} min {seconds:02d} s" if minutes < 60 else f"{minutes // 60} h {minutes % 60:02d} min"


def _headline_metrics(metrics: dict) -> list[tuple[str, str]]:
    if metrics.get("task") == "multi-label":
        return [("mAP", f"{metrics['mAP']:.3f}" if metrics.get("mAP") is not None else "n/a"),
                ("exact-match accuracy", f"{metrics['accuracy']:.3f}"), ("micro-F1", f"{metrics['micro_f1']:.3f}")]
    return ([("accuracy", f"{metrics['accuracy']:.3f}")]
            + [(f"top-{k} accuracy", f"{v:.3f}") for k, v in metrics.get("top_k_accuracy", {}).items()])


def _data_facts(data: DataSummary, multi_label: bool) -> list[tuple[str, str]]:
    classes, counts = data.classes, data.counts
    names = ", ".join(classes[:LISTED_CLASSES]) + (f" and {len(classes) - LISTED_CLASSES} more"
                                                   if len(classes) > LISTED_CLASSES else "")
    unit = "labels (an image counts once per label)" if multi_label else "images"
    split_sizes = ", ".join(f"{split} {sum(per_class.values())}" for split, per_class in counts.items())
    return [("data folder", data.data_dir or "not recorded"),
            ("classes", f"{len(classes)}: {names}" if classes else "not recorded"),
            (unit, split_sizes or "not recorded")]


def _model_facts(bundle: BundleConfig) -> list[tuple[str, str]]:
    weights = bundle.weights_source
    return [("model", f"{bundle.architecture} at {bundle.img_size} px"),
            ("training mode", bundle.training_mode),
            ("starting weights", "none (random initialisation)" if weights == "none" else weights)]


def _training_time(bundle: BundleConfig, history: list[dict]) -> str:
    """The wall time the bundle stores; else the sum of history.csv's epoch times, said to be that."""
    epochs = f"{len(history)} epoch{'s' * (len(history) != 1)}" if history else "epochs not recorded"
    if isinstance(bundle.wall_time_s, (int, float)):
        return f"{_duration(bundle.wall_time_s)} from start to saved model, {epochs}"
    seconds = [float(row["seconds"]) for row in history if row.get("seconds")]
    if not seconds:
        return f"not recorded, {epochs}"
    return (f"{_duration(sum(seconds))} in {epochs} (the sum of the epoch times in {HISTORY_FILE}; "
            "decoding, evaluation and saving come on top)")


def _settings(bundle: BundleConfig, data: DataSummary) -> str:
    settings = bundle.settings
    if not settings:  # bundles saved before imgcls stored them
        known = [f"{key} {value}" for key in ("seed", "val_split", "test_split") if (value := getattr(data, key)) is not None]
        return H.note(f"The bundle does not store the settings it was trained with ('settings' in {CONFIG_FILE}); "
                      f"{DATA_SUMMARY_FILE} records {', '.join(known) or 'none of them'}.")
    main = [key for key in MAIN_SETTINGS if key in settings]
    rest = sorted(settings.keys() - set(main))

    def pairs(keys: list[str]) -> list[tuple[str, str]]:  # values as config.json spells them: null, true, 0.002
        return [(key, value if isinstance(value := settings[key], str) else json.dumps(value)) for key in keys]

    return (H.facts(pairs(main), "settings")
            + (H.details(f"the other {len(rest)} settings", H.facts(pairs(rest), "settings")) if rest else ""))


def _summary_section(inputs: ReportInputs) -> str:
    """What a reader asks first: which task, how good, on what data, which model, how long, how set up."""
    metrics, data = inputs.metrics, inputs.data or DataSummary()
    multi = metrics.get("task") == "multi-label"
    task = ("multi-label: any number of classes per image" if multi else "single-label: one class per image")
    facts = ([("task", task), ("evaluated on", f"{metrics['n_images']} validation images")]
             + _data_facts(data, multi) + _model_facts(inputs.bundle)
             + [("training time", _training_time(inputs.bundle, inputs.history))])
    return H.headline(_headline_metrics(metrics)) + H.facts(facts) + _settings(inputs.bundle, data)


def _audit_section(report: dict | None, data: DataSummary | None) -> str:
    if report is None:
        data_dir = data.data_dir if data else None
        return H.note(f"The training data folder '{data_dir}' is not available here, so it was not audited.")
    splits = list(report["counts"])
    rows = [[name] + [report["counts"][s][name] for s in splits] for name in report["classes"]]
    near = report["near_duplicates"]
    facts = [f"{report['total_images']} images in {len(report['classes'])} classes under {report['root']} ({report['layout']})",
             f"imbalance: largest/smallest training class = {report['imbalance_ratio']:g} "
             f"({report['largest_class']} / {report['smallest_class']})",
             f"{len(report['corrupt'])} corrupt files; {len(report['exact_duplicates'])} groups of exact duplicates; "
             f"{'not checked' if near is None else len(near)} groups of near duplicates; "
             f"{report['leakage']} groups shared between train and validation/test (leakage)"]
    corrupt = [f"{c['path']}: {c['reason']}" for c in report["corrupt"][:LISTED_FILES]]
    return (H.items(facts) + H.table(["class", *splits], rows)
            + (H.items(report["warnings"], "warn") if report["warnings"] else H.note("No warnings."))
            + (H.items(corrupt) if corrupt else ""))


def _report_section(metrics: dict) -> str:
    pairs = _headline_metrics(metrics)
    if metrics.get("task") != "multi-label":
        pairs[1:1] = [("macro-F1", f"{metrics['macro_avg']['f1']:.3f}"), ("log loss", f"{metrics['log_loss']:.3f}")]
    return H.headline(pairs) + H.note(f"{metrics['n_images']} validation images.") + H.preformatted(metrics["classification_report"])


def _confused_section(metrics: dict) -> str:
    if metrics.get("task") == "multi-label":
        return H.note("Class pairs are confused only in single-label tasks; see the per-class scores above.")
    pairs = metrics.get("most_confused", [])
    if not pairs:
        return H.note("No validation image was given a wrong class.")
    support = {name: scores["support"] for name, scores in metrics["per_class"].items()}
    rows = [[p["true"], p["predicted"], p["count"], f"{p['count'] / max(support[p['true']], 1):.1%}"] for p in pairs]
    return H.table(["true class", "predicted as", "images", "share of the true class"], rows)


def _is_correct(row: dict) -> bool:
    return row["predicted"] in row["true"].split(";")


def _gallery(inputs: ReportInputs, rows: list[dict], empty: str) -> str:
    """Grad-CAM panels of the rows' images (of the predicted class), captioned with the truth. Images training
    decoded are taken from inputs.pixels; the others are read from their files, where those still are."""
    from ..explain.maps import explain
    from ..explain.overlay import to_png

    sources = {row["path"]: inputs.pixels.get(row["path"]) for row in rows}
    rows = [row for row in rows if sources[row["path"]] is not None or Path(row["path"]).is_file()]
    if not rows:
        return H.note(empty)
    panels = {}
    for label in dict.fromkeys(row["predicted"] for row in rows):  # one map per image: its predicted class's
        shown = [row for row in rows if row["predicted"] == label]
        images = [row["path"] if sources[row["path"]] is None else sources[row["path"]] for row in shown]
        for row, item in zip(shown, explain(inputs.predictor, images, "gradcam", class_name=label)):
            panels[row["path"]] = item.panel
    tiles = [H.tile(to_png(panels[row["path"]]), Path(row["path"]).name,
                    f"true {row['true']}, predicted {row['predicted']} ({float(row['score']):.1%})",
                    f"true class scored {float(row['true_score']):.1%}")
             for row in rows]
    return H.gallery(tiles)


def _mistakes_section(inputs: ReportInputs, multi_label: bool) -> str:
    """The wrongly predicted validation images whose true class scored lowest; never a correct one."""
    predictions = inputs.predictions
    wrong = sorted((row for row in predictions if not _is_correct(row)), key=lambda row: float(row["true_score"]))
    if not wrong:
        return H.note(f"No mistakes: the predicted class of every one of the {len(predictions)} validation images "
                      + ("is among its labels." if multi_label else "is its true class."))
    shown = wrong[:MISTAKES_SHOWN]
    which = f"all {len(wrong)}" if len(wrong) == len(shown) else f"the {len(shown)} worst of {len(wrong)}"
    wrong_means = "whose top class is none of their labels" if multi_label else "predicted wrongly"
    return (H.note(f"The validation images {wrong_means} ({which}), lowest score of the true class first, "
                   "with Grad-CAM of the predicted class.")
            + _gallery(inputs, shown, "No validation image files are available to show."))


def _suspect_labels_section(inputs: ReportInputs, multi_label: bool) -> str:
    """Validation images the model gives to another class as confidently as that class's own images
    (confident learning's rule, clean.confident): the likeliest wrong labels among them."""
    from ..clean.confident import suspects_among_predictions

    predictions, data_dir = inputs.predictions, inputs.data.data_dir if inputs.data else None
    advice = f"Run `imgcls audit {data_dir or 'DATA'} --labels` to check every image, with a page to review them."
    if multi_label or not predictions:
        return H.note("Checked for single-label runs. " + advice)
    index = {name: i for i, name in enumerate(inputs.bundle.classes)}
    labels = np.array([index[row["true"]] for row in predictions])
    predicted = np.array([index[row["predicted"]] for row in predictions])
    found = suspects_among_predictions(np.array([float(row["true_score"]) for row in predictions]),
                                       np.array([float(row["score"]) for row in predictions]), labels, predicted)
    rows = [predictions[i] for i in found[:SUSPECTS_SHOWN]]
    summary = (f"{len(found)} of {len(predictions)} validation images look like another class as surely as that "
               f"class's own images do; the labels of the first few may be wrong. ")
    return H.note(summary + advice) + _gallery(inputs, rows, "None of them is available to show.") if rows else \
        H.note(f"No validation image is claimed by another class with confidence. {advice}")


def _calibration_section(metrics: dict, evaluation: EvaluationDir) -> str:
    if metrics.get("task") == "multi-label":
        return H.note("Reliability and ECE are computed for single-label tasks.")
    numbers = [("expected calibration error (15 bins)", f"{metrics['ece']:.3f}")]
    if "ece_before_calibration" in metrics:  # runs whose scores are temperature-scaled
        numbers.append((f"before temperature scaling (T = {metrics['temperature']:.3g})", f"{metrics['ece_before_calibration']:.3f}"))
    return (H.headline(numbers) + _png(evaluation.reliability_png, "reliability diagram: accuracy against confidence")
            + H.note(f"Bins of fewer than {MIN_BIN_IMAGES} images are drawn pale: their accuracy is too uncertain to "
                     "read as miscalibration."))


def _int8_section(record: dict) -> str:
    """export.quantize's int8_export record: what quantisation cost, on the validation split."""
    recall = [[name, f"{value:.3f}"] for name, value in record["per_class_recall"].items()]
    return (H.headline([("top-1 int8", f"{record['top1_int8']:.2f}%"), ("top-1 fp32", f"{record['top1_fp32']:.2f}%"),
                        ("same class as fp32", f"{100 * record['agreement']:.1f}%"), ("ECE int8", f"{record['ece_int8']:.4f}")])
            + H.facts([("validation images", str(record["validation_images"])),
                       ("calibration images", f"{record['calibration_images']} (training split)"),
                       *([("speed", f"{record['speedup']:.2f}x fp32 on the machine that exported it (batch "
                                    f"{record['speed_batch']})")] if "speedup" in record else []),
                       *([("kept in float", ", ".join(record["float_layers"]))] if "float_layers" in record else []),
                       ("ECE", f"fp32 {record['ece_fp32']:.4f}; int8 {record['ece_int8_before_refit']:.4f} at the fp32 "
                               f"temperature, {record['ece_int8']:.4f} at its own ({record['temperature']:.3g})")])
            + H.details("int8 recall per class", H.table(["class", "recall"], recall)))


def build_report(run: RunDir, inputs: ReportInputs) -> str:
    """The report's HTML text for the run in `run` (whose evaluation folder holds the plots)."""
    metrics, predictions, evaluation = inputs.metrics, inputs.predictions, run.evaluation
    correct = [row for row in predictions if _is_correct(row)]
    sample = random.Random(SAMPLE_SEED).sample(correct, min(CORRECT_SHOWN, len(correct)))
    multi = metrics.get("task") == "multi-label"
    sections = [
        ("summary", "Summary", _summary_section(inputs)),
        ("audit", "Dataset audit", _audit_section(inputs.audit, inputs.data)),
        ("curves", "Learning curves", _png(evaluation.learning_curves_png, "loss and accuracy per epoch")),
        ("confusion", "Precision-recall curves" if multi else "Confusion matrix",
         _png(evaluation.pr_curves_png if multi else evaluation.confusion_png, "on the validation images")),
        ("report", "Classification report", _report_section(metrics)),
        ("confused-pairs", "Most confused class pairs", _confused_section(metrics)),
        ("mistakes", "Worst mistakes (top losses)", _mistakes_section(inputs, multi)),
        ("suspect-labels", "Suspect labels", _suspect_labels_section(inputs, multi)),
        ("calibration", "Calibration", _calibration_section(metrics, evaluation)),
        ("correct", "Correct predictions (a random sample)",
         _gallery(inputs, sample, "No correctly predicted validation image is available to show.")),
    ]
    bundle = inputs.bundle
    if bundle.int8_export:
        sections.append(("int8", "int8 model (imgcls export --int8)", _int8_section(bundle.int8_export)))
    subtitle = f"{bundle.architecture} at {bundle.img_size} px, {len(bundle.classes)} classes - {run.root.resolve()}"
    return H.page(f"imgcls report: {run.root.name}", subtitle, sections)


def write_report(run: RunDir, inputs: ReportInputs, out: str | Path | None = None) -> Path:
    """Write the report of `run` to `out` (default RUN_DIR/report.html) and return its path."""
    path = Path(out) if out else run.report
    atomic_write_bytes(path, build_report(run, inputs).encode("utf-8"))
    log.info("report written to %s", path)
    return path


def report_run(run_dir: str | Path, out: str | Path | None = None, device: str = "cpu") -> Path:
    """`imgcls report RUN_DIR`: the report of a finished run, from what its folder holds. Returns the page's path."""
    run = RunDir(Path(run_dir))
    return write_report(run, ReportInputs.from_run(run, device), out)
