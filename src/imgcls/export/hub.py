"""`imgcls push`: a bundle shared on the Hugging Face Hub, with a model card written from its run.

  OWNER/NAME (a Hub model repo)
    README.md                the model card: YAML front matter the Hub indexes, then what a reader needs
    model/config.json        the bundle (models/bundle.py's files), so that every command takes
    model/model.safetensors    hf://OWNER/NAME wherever it takes a run folder: find_bundle fetches
    model/labels.txt           these three files and reads them as it reads a local bundle

Weights go as safetensors only, never a pickled checkpoint. The pushed config.json is the bundle's, with
the folders of this machine dropped from the paths its record of the run holds (the data folder, a
--weights file), and the card names only the data folder's own name: what is published says nothing of
the machine it came from.
"""
from __future__ import annotations

import json
import logging
import math
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from .. import __version__
from ..errors import ImgclsError, UsageError
from ..models.bundle import (CONFIG_FILE, HUB_BUNDLE_FOLDER, HUB_SCHEME, LABELS_FILE, WEIGHTS_FILE, BundleConfig,
                             find_bundle, load_bundle, update_bundle_config)
from ..models.weights import first_line
from ..rundir import DATA_SUMMARY_FILE, DataSummary, RunDir

log = logging.getLogger(__name__)

CARD_FILE = "README.md"
LIBRARY_NAME = "imgcls"
CARD_TAGS = ["image-classification", "imgcls", "timm"]
BUNDLE_FILES = (CONFIG_FILE, WEIGHTS_FILE, LABELS_FILE)
# The record of the run (BundleConfig.settings) shown in the card, when present: what a reader
# needs to judge or repeat the training; config.json holds all of it.
CARD_SETTINGS = ("model", "mode", "pretrained", "epochs", "batch_size", "optimizer", "lr", "weight_decay",
                 "schedule", "augment", "label_smoothing", "ema", "img_size", "seed", "precision")
TRAINING_MODES = {"scratch": "from scratch (random initial weights)",
                  "freeze": "a new head on frozen pretrained features (linear probe)",
                  "finetune": "fine-tuned: a new head, then the whole network"}
WILSON_Z = 1.96  # the 95% interval of the validation accuracy shown in the card


@dataclass
class PushResult:
    repo_id: str
    folder: Path  # the staged files: --dry-run's DIR, or a temporary folder already removed
    files: list[str]  # relative to folder, '/'-separated, as in the repo
    url: str | None  # the repo on the Hub; None for a dry run


def check_repo_id(repo_id: str) -> str:
    """OWNER/NAME as the Hub accepts it (an hf:// prefix is allowed), or a UsageError saying how to write it."""
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    name, problem = repo_id.removeprefix(HUB_SCHEME), None
    if name.count("/") != 1:
        problem = "it needs exactly one '/', between the owner and the name"
    else:
        try:
            validate_repo_id(name)
        except HFValidationError as err:
            problem = first_line(err).rstrip(".")
    if problem:
        raise UsageError(f"repo id {repo_id!r} is malformed ({problem}); write OWNER/NAME, e.g. alice/flowers: "
                         "letters, digits, '-', '_' and '.', no '--' or '..'")
    return name


def _public(value):
    """`value` with the folders of this machine dropped from every absolute path in it, the last name kept:
    '/home/me/data/flowers' -> 'flowers', 'file:/home/me/w.safetensors' -> 'file:w.safetensors'."""
    if isinstance(value, dict):
        return {key: _public(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_public(item) for item in value]
    if not isinstance(value, str):
        return value
    scheme, colon, rest = value.partition(":")
    if colon and scheme.isalpha() and len(scheme) > 1 and _is_local_path(rest):  # len > 1: not a drive letter
        return f"{scheme}:{Path(rest).name}"
    return Path(value).name if _is_local_path(value) else value


def _is_local_path(text: str) -> bool:
    return text.startswith("~") or Path(text).is_absolute()


def _cell(value) -> str:
    """A Markdown table cell: pipes and line breaks would end the row."""
    return str(value).replace("|", "\\|").replace("\n", " ")


def _table(head: tuple[str, ...], rows: list) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    return "\n".join(lines + ["| " + " | ".join(map(_cell, row)) + " |" for row in rows])


def _number(value) -> str:
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def _interval(accuracy, n) -> str:
    if not (isinstance(n, int) and n > 0 and isinstance(accuracy, (int, float))):
        return ""
    low, high = _wilson(accuracy, n)
    return f" (95% interval {low:.3f} to {high:.3f} on {n} images)"


def _wilson(accuracy: float, n: int) -> tuple[float, float]:
    """The 95% Wilson score interval of a proportion measured on n images: honest for small n, unlike +-2 SE."""
    z2 = WILSON_Z ** 2
    centre = (accuracy + z2 / (2 * n)) / (1 + z2 / n)
    half = WILSON_Z * math.sqrt(accuracy * (1 - accuracy) / n + z2 / (4 * n * n)) / (1 + z2 / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def _front_matter(config: BundleConfig, license: str | None) -> str:
    """The YAML block the Hub reads: what finds the model in its search, and the base model it was tuned from."""
    from huggingface_hub import ModelCardData

    source = config.weights_source
    data = ModelCardData(library_name=LIBRARY_NAME, tags=list(CARD_TAGS), license=license,
                         pipeline_tag="image-classification",
                         base_model=source.removeprefix("hf-hub:") if source.startswith("hf-hub:") else None)
    return f"---\n{data.to_yaml()}\n---\n"


def _summary_section(config: BundleConfig, repo_id: str) -> str:
    classes = ", ".join(f"`{name}`" for name in config.classes)
    kind = ("any number of them per image (multi-label, a sigmoid score per class)" if config.multi_label
            else "one of them per image (single-label, softmax probabilities)")
    return (f"# {repo_id}\n\nAn image classifier made with [imgcls](https://pypi.org/project/imgcls/). It tells "
            f"{len(config.classes)} classes apart, {kind}:\n\n{classes}\n")


def _model_section(config: BundleConfig) -> str:
    source = _public(config.weights_source)
    rows = [("architecture", f"`{config.architecture}`"),
            ("input", f"RGB, brought to {config.img_size} x {config.img_size} px ({config.resize}), normalised "
                      f"with mean {_numbers(config.mean)} and std {_numbers(config.std)}"),
            ("training", TRAINING_MODES.get(config.training_mode, config.training_mode)
             + ("" if source == "none" else f", starting from `{source}`")),
            ("test-time augmentation", config.tta)]
    if not config.multi_label:
        rows.append(("temperature", f"{config.temperature:.3g} (scores calibrated on the validation images)"))
    if config.unknown_below is not None:
        rows.append(("unknown below", f"{config.unknown_below:.3g}: answers 'unknown' under this top score"))
    rows.append(("files", f"`{HUB_BUNDLE_FOLDER}/{WEIGHTS_FILE}` (weights), `{HUB_BUNDLE_FOLDER}/{CONFIG_FILE}` "
                          f"(everything else), `{HUB_BUNDLE_FOLDER}/{LABELS_FILE}` (class names in output order)"))
    return "## Model\n\n" + _table(("property", "value"), rows) + "\n"


def _numbers(values) -> str:
    return "(" + ", ".join(f"{v:.3f}" for v in values) + ")"


def _folder_name(summary: DataSummary) -> str | None:
    """The training data folder's own name: where it was, relative or absolute, is the trainer's business."""
    return (Path(str(summary.data_dir)).name or None) if summary.data_dir else None


def _data_section(summary: DataSummary) -> str:
    counts = summary.counts
    if not isinstance(counts, dict) or not counts:
        return ("## Training data\n\nNot recorded: the bundle was pushed without the run folder it was trained in "
                f"(its {DATA_SUMMARY_FILE}).\n")
    splits = [split for split, per_class in counts.items() if isinstance(per_class, dict) and per_class]
    classes = list(dict.fromkeys(name for split in splits for name in counts[split]))
    totals = ", ".join(f"{sum(counts[split].values())} {split}" for split in splits)
    folder = _folder_name(summary) or "unnamed"
    text = f"## Training data\n\nThe image folder `{folder}`: {totals} images.\n\n"
    text += _table(("class", *splits), [(name, *(counts[split].get(name, 0) for split in splits)) for name in classes])
    skipped = summary.skipped
    if skipped:
        text += f"\n\n{len(skipped)} unreadable images were left out."
    return text + "\n"


def _metrics_section(config: BundleConfig, metrics: dict) -> str:
    metrics = {**config.metrics, **metrics}
    split, n = metrics.get("split", "validation"), metrics.get("n_images")
    rows = []
    if "mAP" in metrics and metrics["mAP"] is not None:
        rows.append(("mAP", _number(metrics["mAP"])))
    if "accuracy" in metrics:
        interval = "" if config.multi_label else _interval(metrics["accuracy"], n)
        name = "exact-match accuracy" if config.multi_label else "accuracy"
        rows.append((name, _number(metrics["accuracy"]) + interval))
    names = {"micro_f1": "micro-F1", "log_loss": "log loss", "ece": "expected calibration error",
             "linear_probe_accuracy": "accuracy of a linear probe on the starting weights (the floor)"}
    if isinstance(metrics.get("macro_avg"), dict) and "f1" in metrics["macro_avg"]:
        rows.append(("macro-F1", _number(metrics["macro_avg"]["f1"])))
    rows += [(label, _number(metrics[key])) for key, label in names.items() if metrics.get(key) is not None]
    rows += [(f"top-{k} accuracy", _number(v)) for k, v in (metrics.get("top_k_accuracy") or {}).items()]
    if not rows:
        return "## Validation metrics\n\nNone were recorded with this bundle.\n"
    text = f"## Validation metrics\n\nOn the {split} images{f' ({n})' if n else ''}, after training:\n\n"
    text += _table(("metric", "value"), rows)
    per_class = metrics.get("per_class")
    if isinstance(per_class, dict) and per_class:
        text += "\n\n" + _table(("class", "precision", "recall", "F1", "images"), [
            (name, *(_number(row.get(key, "")) for key in ("precision", "recall", "f1", "support")))
            for name, row in per_class.items() if isinstance(row, dict)])
    return text + "\n"


def _settings_section(config: BundleConfig) -> str:
    settings = _public(config.settings)
    rows = [(key, json.dumps(settings[key]) if isinstance(settings[key], (list, dict)) else settings[key])
            for key in CARD_SETTINGS if settings.get(key) is not None]
    if config.wall_time_s is not None:
        rows.append(("training time", f"{config.wall_time_s:.0f} s"))
    if not rows:
        return "## Training settings\n\nNot recorded in this bundle; the model section above says how it was trained.\n"
    return (f"## Training settings\n\nThe main ones; `{HUB_BUNDLE_FOLDER}/{CONFIG_FILE}` holds them all, "
            "under `settings`.\n\n" + _table(("setting", "value"), rows) + "\n")


def _use_section(config: BundleConfig, data_folder: str | None, path: str) -> str:
    seen = f"images like those of `{data_folder}`" if data_folder else "images like its training images"
    unknown = ("It answers 'unknown' when its top score is under its calibrated threshold, which catches some, "
               "not all, images of other things." if config.unknown_below is not None else
               "It has no 'unknown' answer: an image of anything else still gets one of these classes, often "
               "with a high score (`imgcls calibrate-unknown` sets a threshold from example outliers).")
    return ("## Intended use and limitations\n\n"
            f"For sorting {seen} into the {len(config.classes)} classes above. {unknown} The metrics were measured "
            "on held-out images of the same folder: they say how it does on images like those, not on images "
            "taken elsewhere, with other cameras, lighting or subjects, where it can do much worse. Check it on "
            f"your own labelled images first (`imgcls evaluate {path} FOLDER`), and do not use it alone for "
            "decisions about people, health or safety.\n")


def _usage_section(path: str) -> str:
    return ("## How to use\n\n"
            f"```bash\npip install imgcls\nimgcls predict {path} photo.jpg\n```\n\n"
            f"```python\nimport imgcls\nprint(imgcls.load(\"{path}\").predict(\"photo.jpg\"))\n```\n\n"
            "The first use downloads the three files of the bundle into the Hugging Face cache; later ones, "
            "offline too, read them from there. The bundle is data only (no code, no pickle): safetensors weights "
            "and a JSON config that imgcls checks before it builds the model.\n")


def model_card(config: BundleConfig, repo_id: str, revision: str | None = None, data_summary: DataSummary | None = None,
               metrics: dict | None = None, license: str | None = None) -> str:
    """The README.md of a pushed bundle. `data_summary` is the run's data.json, `metrics` its
    evaluation/metrics.json (config.metrics, a subset, stands in without them)."""
    data_summary = data_summary or DataSummary()
    folder = _folder_name(data_summary)
    path = HUB_SCHEME + repo_id + (f"@{revision}" if revision else "")
    sections = [_summary_section(config, repo_id), _model_section(config), _data_section(data_summary),
                _metrics_section(config, metrics or {}), _settings_section(config), _use_section(config, folder, path),
                _usage_section(path)]
    return _front_matter(config, license) + "\n" + "\n".join(sections)


def stage(source: str | Path, folder: str | Path, repo_id: str, revision: str | None = None,
          license: str | None = None) -> list[str]:
    """Write into `folder` what the repo will hold: the bundle of `source` (a run folder or its model/
    folder), checked to load, and its model card. Returns the files written, '/'-separated."""
    bundle = find_bundle(source)
    _, config = load_bundle(bundle)  # a bundle that does not load is not worth sharing
    folder = Path(folder)
    target = folder / HUB_BUNDLE_FOLDER
    target.mkdir(parents=True)
    for name in BUNDLE_FILES:
        if (bundle / name).is_file():  # labels.txt: a hand-made bundle may lack it
            shutil.copyfile(bundle / name, target / name)
    config = update_bundle_config(target, weights_source=_public(config.weights_source),
                                  settings=_public(config.settings))
    run = RunDir(bundle.parent)  # a run folder holds the bundle in model/, data.json and evaluation/ beside it
    summary = run.read_data_summary()
    card = model_card(config, repo_id, revision, summary, run.evaluation.read_metrics() if summary else {}, license)
    (folder / CARD_FILE).write_text(card, encoding="utf-8")
    return sorted(path.relative_to(folder).as_posix() for path in folder.rglob("*") if path.is_file())


def _transport_errors() -> tuple[type[BaseException], ...]:
    """What the Hub client raises when the network is down: its HTTP library's transport errors (httpx2 in
    huggingface_hub 2.x, httpx in 1.x, requests before) and the OS's."""
    import importlib

    errors: list[type[BaseException]] = [ConnectionError, TimeoutError]
    for module, name in (("httpx2", "TransportError"), ("httpx", "TransportError"), ("requests", "ConnectionError")):
        try:
            errors.append(getattr(importlib.import_module(module), name))
        except (ImportError, AttributeError):
            pass
    return tuple(errors)


def _check_can_upload(token: str | None) -> None:
    """Fail before staging anything when an upload cannot happen: offline, or no token."""
    from huggingface_hub import constants, get_token

    if constants.HF_HUB_OFFLINE:
        raise ImgclsError("HF_HUB_OFFLINE is set, so nothing can be uploaded; unset it to push, or write the "
                          "files with --dry-run DIR")
    if not (token or get_token()):
        raise ImgclsError("not logged in to the Hugging Face Hub; run `hf auth login` (a token with write access), "
                          "set HF_TOKEN, or pass --token")


def _upload(folder: Path, repo_id: str, private: bool, token: str | None, revision: str | None,
            message: str) -> str:
    """Create the repo if absent (and the branch), upload the staged folder as one commit; the repo's URL."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError

    api = HfApi(token=token, library_name=LIBRARY_NAME, library_version=__version__)
    try:
        url = str(api.create_repo(repo_id, private=private, exist_ok=True))
        if revision:
            api.create_branch(repo_id, branch=revision, exist_ok=True)
        api.upload_folder(repo_id=repo_id, folder_path=folder, revision=revision, commit_message=message)
    except HfHubHTTPError as err:
        status = getattr(getattr(err, "response", None), "status_code", None)
        if status in (401, 403):
            owner = repo_id.split("/")[0]
            raise ImgclsError(f"the Hugging Face Hub refused the token for {repo_id} ({status}); log in with a token "
                              f"that may write to '{owner}' (`hf auth login`, HF_TOKEN or --token)") from None
        raise ImgclsError(f"the Hugging Face Hub refused the push to {repo_id}: {first_line(err)}") from None
    except _transport_errors() as err:
        raise ImgclsError(f"cannot reach the Hugging Face Hub ({type(err).__name__}: {first_line(err)}); check the "
                          "network, or write the files with --dry-run DIR and upload them later") from None
    return url + (f"/tree/{revision}" if revision else "")


def push(source: str | Path, repo_id: str, private: bool = False, token: str | None = None,
         revision: str | None = None, dry_run: str | Path | None = None, license: str | None = None) -> PushResult:
    """Share the bundle of `source` (a run folder or its model/ folder) as the Hub model repo `repo_id`
    (OWNER/NAME, created if absent; `private` applies only then), on branch `revision` (default main),
    with a model card. `dry_run`: write the files into that folder (new or empty) and upload nothing."""
    repo_id = check_repo_id(repo_id)
    if dry_run is not None:
        folder = Path(dry_run).expanduser()
        if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
            raise UsageError(f"--dry-run folder '{folder}' exists and is not empty; name a new or empty folder")
        return PushResult(repo_id, folder, stage(source, folder, repo_id, revision, license), None)
    _check_can_upload(token)
    with tempfile.TemporaryDirectory(prefix="imgcls-push-") as staging:
        files = stage(source, staging, repo_id, revision, license)
        config = json.loads((Path(staging) / HUB_BUNDLE_FOLDER / CONFIG_FILE).read_text(encoding="utf-8"))
        message = f"imgcls push: {config['architecture']}, {len(config['classes'])} classes"
        url = _upload(Path(staging), repo_id, private, token, revision, message)
    log.info("pushed %s to %s", ", ".join(files), url)
    return PushResult(repo_id, Path(staging), files, url)
