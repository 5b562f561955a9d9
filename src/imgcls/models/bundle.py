"""The saved model: a folder that reloads anywhere without imgcls's training code or pickle.

  model/config.json        architecture + arguments, input size, normalisation, task, classes, thresholds
  model/model.safetensors  weights
  model/labels.txt         one class name per line, in output order

A bundle is data, never instructions: config.json is checked against a schema when read, and its
model_kwargs may hold only architecture arguments (registry.architecture_arguments), so loading a
bundle from anywhere never downloads, never reads a file outside it, and never unpickles code.
"""
from __future__ import annotations

import json
import logging
import math
import os
import re
import reprlib
import shutil
import uuid
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .. import __version__
from ..errors import ImgclsError, did_you_mean
from ..fileio import atomic_write, atomic_write_bytes
from .classifier import TTA_MODES, Classifier
from .registry import architecture_arguments, check_model_name, create_model
from .weights import first_line

log = logging.getLogger(__name__)

CONFIG_FILE, WEIGHTS_FILE, LABELS_FILE = "config.json", "model.safetensors", "labels.txt"
TASKS = ("single-label", "multi-label")
RESIZE_MODES = ("squash",)  # data.images.decode_image's only way to bring an image to img_size
MIN_IMG_SIZE = 8  # below this the built-in CNNs pool their feature maps away
# Training stops at TrainConfig.max_img_size (1024) unless raised; a bundle may declare up to 4096 px
# so a model trained with a raised limit still loads, while a doctored config.json cannot make
# `imgcls predict` allocate more than ~50 MB per decoded image (3 x 4096 x 4096 bytes).
MAX_BUNDLE_IMG_SIZE = 4096
STAGING_SUFFIX_LENGTH = 8  # hex digits of a uuid4 that name one save's staging folder


@dataclass
class BundleConfig:
    architecture: str
    classes: list[str]
    img_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    task: str = "single-label"
    thresholds: list[float] | None = None  # multi-label: per-class, tuned on validation
    temperature: float = 1.0  # single-label: softmax(logits / T) is calibrated (fitted on validation)
    unknown_below: float | None = None  # answer 'unknown' under this top probability (imgcls calibrate-unknown)
    model_kwargs: dict = field(default_factory=dict)  # extra architecture arguments
    resize: str = "squash"  # how images are brought to img_size (see data.images.decode_image)
    tta: str = "none"  # test-time augmentation predict/evaluate/serve use unless told otherwise (classifier.TTA_MODES)
    training_mode: str = "scratch"  # how it was trained: scratch, freeze (linear probe / head) or finetune
    weights_source: str = "none"  # what training started from: hf-hub:<repo>, file:<path>, bundle:<path> or none
    data_fingerprint: str | None = None
    metrics: dict = field(default_factory=dict)  # validation metrics at save time, for `imgcls serve`
    # How it was trained: every option as used, the data folder, versions and start time (train.run); a record
    # only, which loading never acts on. Bundles saved before it have none.
    settings: dict = field(default_factory=dict)
    wall_time_s: float | None = None  # training's duration, from its start to this bundle saved
    # `imgcls export --int8`: how model.int8.onnx did against model.onnx on the validation split, and the
    # temperature fitted on its own logits, which `--engine onnx-int8` uses (export.quantize)
    int8_export: dict | None = None
    imgcls_version: str = __version__

    @property
    def multi_label(self) -> bool:
        return self.task == "multi-label"


def build_classifier(config: BundleConfig) -> Classifier:
    """The architecture with random weights: never timm's pretrained ones, which would mean a download."""
    net = create_model(config.architecture, num_classes=len(config.classes), img_size=config.img_size,
                       pretrained=False, **config.model_kwargs)
    return Classifier(net, config.mean, config.std)


def _staging_prefix(folder: Path) -> str:
    return f".{folder.name}.tmp-"


def save_bundle(model: Classifier, config: BundleConfig, folder: str | Path) -> Path:
    """Write the bundle into a staging folder and swap it in, so an interrupted save never
    leaves a half-written model where a good one was."""
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = folder.with_name(f"{_staging_prefix(folder)}{uuid.uuid4().hex[:STAGING_SUFFIX_LENGTH]}")
    staging.mkdir()  # not tempfile.mkdtemp: its 0700 would hide the bundle from a server run as another user
    try:
        state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
        metadata = {"format": "pt", "imgcls_version": __version__}
        # through atomic_write for its file mode: safetensors alone leaves the weights readable by their owner only
        atomic_write(staging / WEIGHTS_FILE, lambda tmp: save_file(state, tmp, metadata=metadata))
        (staging / LABELS_FILE).write_text("\n".join(config.classes) + "\n", encoding="utf-8")
        (staging / CONFIG_FILE).write_text(json.dumps(asdict(config), indent=2, ensure_ascii=False), encoding="utf-8")
        old = folder.with_name(f".{folder.name}.old")
        if folder.exists():
            shutil.rmtree(old, ignore_errors=True)
            os.replace(folder, old)
        os.replace(staging, folder)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    _remove_stale_staging(folder)
    return folder


def _remove_stale_staging(folder: Path) -> None:
    """A save killed mid-way (Ctrl-C twice, OOM, power) leaves its staging folder behind; the next
    successful save removes them. Only names save_bundle itself makes for this bundle match, so
    nothing else beside it is touched. (Two processes saving one bundle at once would race on the
    swap anyway; this does not make that case any worse.)"""
    pattern = re.compile(re.escape(_staging_prefix(folder)) + f"[0-9a-f]{{{STAGING_SUFFIX_LENGTH}}}")
    for path in folder.parent.iterdir():
        if pattern.fullmatch(path.name) and path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)


HUB_SCHEME = "hf://"  # hf://owner/name[@revision]: a bundle pushed to the Hugging Face Hub (export.hub)
HUB_BUNDLE_FOLDER = "model"  # where a hub repo holds its bundle, as a run folder does


def _hub_snapshot(path: str) -> Path:
    """The bundle of hf://owner/name[@revision], downloaded into (or, offline, found in) the Hugging Face
    cache. Only the bundle's own files are fetched, and the folder is then read like any local bundle."""
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import (GatedRepoError, HFValidationError, HfHubHTTPError, LocalEntryNotFoundError,
                                        RepositoryNotFoundError, RevisionNotFoundError)

    repo_id, _, revision = path.removeprefix(HUB_SCHEME).partition("@")
    if repo_id.count("/") != 1:
        raise ImgclsError(f"'{path}' is not a Hub model: write hf://OWNER/NAME, or hf://OWNER/NAME@REVISION")
    patterns = [f"{HUB_BUNDLE_FOLDER}/{name}" for name in (CONFIG_FILE, WEIGHTS_FILE, LABELS_FILE)]
    try:
        snapshot = Path(snapshot_download(repo_id, revision=revision or None, allow_patterns=patterns))
    except HFValidationError as err:
        raise ImgclsError(f"'{path}' is not a Hub model name ({first_line(err).rstrip('.')})") from None
    except RevisionNotFoundError:
        raise ImgclsError(f"'{path}': {repo_id} has no revision '{revision}'; check the branch, tag or "
                          "commit") from None
    except (GatedRepoError, RepositoryNotFoundError):
        raise ImgclsError(f"'{path}': no model repo {repo_id} on the Hugging Face Hub, or it is private or gated; "
                          "check the name, or log in with `hf auth login` (or set HF_TOKEN)") from None
    except LocalEntryNotFoundError as err:
        if constants.HF_HUB_OFFLINE:
            raise ImgclsError(f"'{path}' is not in the Hugging Face cache and HF_HUB_OFFLINE is set; unset it to "
                              "download the model once") from None
        raise ImgclsError(f"'{path}' could not be downloaded and is not in the Hugging Face cache "
                          f"({first_line(err)}); check the network and try again") from None
    except HfHubHTTPError as err:
        raise ImgclsError(f"'{path}': the Hugging Face Hub answered {first_line(err)}") from None
    if not (snapshot / HUB_BUNDLE_FOLDER / CONFIG_FILE).is_file():
        raise ImgclsError(f"'{path}' holds no imgcls bundle ({HUB_BUNDLE_FOLDER}/{CONFIG_FILE} is missing); "
                          "share one with `imgcls push RUN_DIR OWNER/NAME`")
    return snapshot / HUB_BUNDLE_FOLDER


def outputs_folder(path: str | Path) -> Path:
    """Where commands write what they derive from the bundle at `path` (evaluations, maps, look-alikes): its
    run folder; for a Hub bundle, which lives in the Hugging Face cache, runs/<owner>--<name> here."""
    if isinstance(path, str) and path.startswith(HUB_SCHEME):
        return Path("runs") / path.removeprefix(HUB_SCHEME).partition("@")[0].replace("/", "--")
    return find_bundle(path).parent


def find_bundle(path: str | Path) -> Path:
    """Accept the bundle folder itself, a run folder that holds one in model/, or hf://owner/name[@revision]."""
    if isinstance(path, str) and path.startswith(HUB_SCHEME):
        return _hub_snapshot(path)
    path = Path(path).expanduser()
    for candidate in (path, path / "model"):
        if (candidate / CONFIG_FILE).is_file():
            return candidate
    raise ImgclsError(f"'{path}' is not a model bundle (no {CONFIG_FILE} in it or in its model/ folder)")


REQUIRED_FIELDS = ("architecture", "classes", "img_size", "mean", "std")


def _number(value) -> bool:
    """A finite JSON number; true/false are not numbers here, though Python's bool is an int."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _probability(value) -> bool:
    return _number(value) and 0 <= value <= 1


def _numbers(value) -> bool:
    return isinstance(value, (list, tuple)) and all(map(_number, value))


def _class_names(value) -> bool:
    return (isinstance(value, list) and len(value) > 0 and all(isinstance(name, str) and name for name in value)
            and len(set(value)) == len(value))


def _text(value) -> bool:
    return isinstance(value, str)


# field: (accepts, what it must be). Enumerated fields are checked against CHOICES instead.
FIELD_RULES = {
    "architecture": (lambda v: isinstance(v, str) and bool(v), "a model name"),
    "classes": (_class_names, "a non-empty list of unique, non-empty class names"),
    "img_size": (lambda v: _number(v) and isinstance(v, int) and MIN_IMG_SIZE <= v <= MAX_BUNDLE_IMG_SIZE,
                 f"a whole number of pixels in [{MIN_IMG_SIZE}, {MAX_BUNDLE_IMG_SIZE}]"),
    "mean": (lambda v: _numbers(v) and len(v) in (1, 3), "1 or 3 numbers (one for all channels, or R, G, B)"),
    "std": (lambda v: _numbers(v) and len(v) in (1, 3) and min(v) > 0, "1 or 3 numbers above 0"),
    "temperature": (lambda v: _number(v) and v > 0, "a finite number above 0"),
    "unknown_below": (lambda v: v is None or _probability(v), "null or a probability in [0, 1]"),
    "model_kwargs": (lambda v: isinstance(v, dict), "an object of architecture arguments"),
    "training_mode": (_text, "a string"),
    "weights_source": (_text, "a string"),
    "data_fingerprint": (lambda v: v is None or _text(v), "null or a string"),
    "metrics": (lambda v: isinstance(v, dict), "an object"),
    "settings": (lambda v: isinstance(v, dict), "an object"),
    "wall_time_s": (lambda v: v is None or (_number(v) and v >= 0), "null or a number of seconds, 0 or more"),
    "int8_export": (lambda v: v is None or (isinstance(v, dict) and _number(v.get("temperature")) and v["temperature"] > 0),
                    "null or an object with a temperature above 0"),
    "imgcls_version": (_text, "a string"),
}
CHOICES = {"task": TASKS, "resize": RESIZE_MODES, "tta": TTA_MODES}


def _short(value) -> str:
    """repr, cut to one short line: a doctored field may hold megabytes."""
    return reprlib.repr(value)


def _check_fields(raw: dict, where: Path) -> None:
    for name, (accepts, expected) in FIELD_RULES.items():
        if name in raw and not accepts(raw[name]):
            raise ImgclsError(f"bundle config '{where}': {name} must be {expected}, got {_short(raw[name])}")
    for name, choices in CHOICES.items():
        value = raw.get(name, choices[0])
        if not isinstance(value, str) or value not in choices:
            hint = did_you_mean(value, choices) if isinstance(value, str) else ""
            raise ImgclsError(f"bundle config '{where}': unknown {name} {_short(value)}{hint} "
                              f"(choose from {', '.join(choices)})")
    thresholds, classes = raw.get("thresholds"), len(raw["classes"])
    if thresholds is not None and not (_numbers(thresholds) and len(thresholds) == classes
                                       and all(map(_probability, thresholds))):
        raise ImgclsError(f"bundle config '{where}': thresholds must be null or one probability in [0, 1] "
                          f"per class ({classes}), got {_short(thresholds)}")


def _check_architecture(raw: dict, where: Path) -> None:
    """A known model, built only with arguments that shape it: timm also takes pretrained,
    pretrained_cfg_overlay={'url': ...}, checkpoint_path=..., which would make loading a bundle
    download a URL or read any file the config names."""
    try:
        check_model_name(raw["architecture"])
    except ImgclsError as err:
        raise ImgclsError(f"bundle config '{where}': architecture: {err}") from None
    allowed = architecture_arguments(raw["architecture"])
    for key, value in raw.get("model_kwargs", {}).items():
        if key not in allowed:
            raise ImgclsError(
                f"bundle config '{where}': model_kwargs {_short(key)} refused: bundles may not carry it (a bundle "
                f"is data: it may pass {raw['architecture']} only its shape and regularisation arguments, "
                f"{', '.join(sorted(allowed)) or 'none'}, never one that could download or read a file); "
                "remove it from the file")
        if not (_number(value) or _numbers(value)):
            raise ImgclsError(f"bundle config '{where}': model_kwargs {key!r} must be a number or a list of "
                              f"numbers, got {_short(value)}")


def _check_labels(folder: Path, classes: list[str]) -> None:
    """labels.txt is what tools without imgcls read (see export.onnx), so it must name the outputs
    config.json names. Every bundle imgcls ever saved has one; a hand-made bundle without it is fine."""
    path = folder / LABELS_FILE
    if not path.is_file():
        return
    try:
        # the exact inverse of save_bundle's "\n".join (str.splitlines would also split names at \x1c or \u2028)
        labels = path.read_text(encoding="utf-8").replace("\r\n", "\n").removesuffix("\n").split("\n")
    except (OSError, ValueError) as err:
        raise ImgclsError(f"'{path}' is unreadable ({err}); write config.json's classes into it, one per line") from None
    if labels != classes:
        if len(labels) != len(classes):
            detail = f"{len(labels)} names in {LABELS_FILE}, {len(classes)} classes in {CONFIG_FILE}"
        else:
            line = next(i for i, (a, b) in enumerate(zip(labels, classes)) if a != b)
            detail = f"line {line + 1} is {_short(labels[line])} in {LABELS_FILE}, {_short(classes[line])} in {CONFIG_FILE}"
        raise ImgclsError(f"'{path}' and '{folder / CONFIG_FILE}' disagree on the classes ({detail}); one was edited: "
                          "make both list the same classes in output order")


def _validated(raw, where: Path) -> BundleConfig:
    """The config of a trusted shape, or an ImgclsError naming the file, the field and the value."""
    if not isinstance(raw, dict):
        raise ImgclsError(f"bundle config '{where}' is damaged: expected a JSON object, got {type(raw).__name__}")
    missing = [name for name in REQUIRED_FIELDS if name not in raw]
    if missing:
        raise ImgclsError(f"bundle config '{where}' is damaged: missing {', '.join(missing)}")
    # Unknown fields are ignored, with a warning, not refused: they reach no code (only model_kwargs does,
    # and it is allow-listed), and refusing them would make every bundle a newer imgcls saves unloadable here.
    unknown = sorted(raw.keys() - BundleConfig.__dataclass_fields__.keys())
    if unknown:
        log.warning("bundle config '%s': ignoring unknown fields %s (saved by a newer imgcls?)", where, ", ".join(unknown))
    _check_fields(raw, where)
    _check_architecture(raw, where)
    return BundleConfig(**{k: v for k, v in raw.items() if k not in unknown})


def read_bundle_config(path: str | Path) -> BundleConfig:
    folder = find_bundle(path)
    where = (folder / CONFIG_FILE).absolute()
    try:
        raw = json.loads(where.read_text(encoding="utf-8"))
    except ValueError as err:  # bad JSON or not UTF-8
        raise ImgclsError(f"bundle config '{where}' is damaged: {err}") from None
    config = _validated(raw, where)
    _check_labels(folder, config.classes)
    return config


def update_bundle_config(path: str | Path, **changes) -> BundleConfig:
    """Change fields of a saved bundle's config.json in place (atomically); weights are untouched."""
    folder = find_bundle(path)
    config = _validated(asdict(replace(read_bundle_config(folder), **changes)), (folder / CONFIG_FILE).absolute())
    atomic_write_bytes(folder / CONFIG_FILE, json.dumps(asdict(config), indent=2, ensure_ascii=False).encode())
    return config


def load_bundle(path: str | Path, device: str | torch.device = "cpu") -> tuple[Classifier, BundleConfig]:
    """The bundle's model in eval mode: its architecture with random weights, then model.safetensors."""
    folder = find_bundle(path)
    config = read_bundle_config(folder)
    try:
        model = build_classifier(config)
    except (TypeError, ValueError, RuntimeError) as err:  # arguments the architecture rejects
        raise ImgclsError(f"bundle config '{(folder / CONFIG_FILE).absolute()}': {config.architecture} does not build "
                          f"at img_size {config.img_size} with model_kwargs {_short(config.model_kwargs)}: "
                          f"{first_line(err)}") from None
    weights = (folder / WEIGHTS_FILE).absolute()
    try:
        model.load_state_dict(load_file(str(weights)))
    except (OSError, SafetensorError) as err:
        raise ImgclsError(f"weights in '{weights}' do not load: {first_line(err)}; copy the bundle again") from None
    except RuntimeError as err:  # load_state_dict: the first line only says "Error(s) in loading state_dict"
        raise ImgclsError(f"weights in '{weights}' do not load: they do not fit the {config.architecture} with "
                          f"{len(config.classes)} classes that {CONFIG_FILE} describes ({first_line(err, skip=1)}); "
                          f"was {CONFIG_FILE} edited, or the weights copied from another bundle?") from None
    return model.to(device).eval(), config
