"""The saved model: a folder that reloads anywhere without imgcls's training code or pickle.

  model/config.json        architecture + arguments, input size, normalisation, task, classes, thresholds
  model/model.safetensors  weights
  model/labels.txt         one class name per line, in output order
"""
from __future__ import annotations

import json
import os
import shutil
import uuid
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .. import __version__
from ..errors import ImgclsError
from ..fileio import atomic_write_bytes
from .classifier import Classifier
from .registry import create_model

CONFIG_FILE, WEIGHTS_FILE, LABELS_FILE = "config.json", "model.safetensors", "labels.txt"
TASKS = ("single-label", "multi-label")


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
    imgcls_version: str = __version__

    @property
    def multi_label(self) -> bool:
        return self.task == "multi-label"


def build_classifier(config: BundleConfig) -> Classifier:
    net = create_model(config.architecture, num_classes=len(config.classes), img_size=config.img_size, **config.model_kwargs)
    return Classifier(net, config.mean, config.std)


def save_bundle(model: Classifier, config: BundleConfig, folder: str | Path) -> Path:
    """Write the bundle into a staging folder and swap it in, so an interrupted save never
    leaves a half-written model where a good one was."""
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = folder.with_name(f".{folder.name}.tmp-{uuid.uuid4().hex[:8]}")
    staging.mkdir()  # not tempfile.mkdtemp: its 0700 would hide the bundle from a server run as another user
    try:
        state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
        save_file(state, str(staging / WEIGHTS_FILE), metadata={"format": "pt", "imgcls_version": __version__})
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
    return folder


def find_bundle(path: str | Path) -> Path:
    """Accept the bundle folder itself or a run folder that holds one in model/."""
    path = Path(path).expanduser()
    for candidate in (path, path / "model"):
        if (candidate / CONFIG_FILE).is_file():
            return candidate
    raise ImgclsError(f"'{path}' is not a model bundle (no {CONFIG_FILE} in it or in its model/ folder)")


def read_bundle_config(path: str | Path) -> BundleConfig:
    folder = find_bundle(path)
    try:
        raw = json.loads((folder / CONFIG_FILE).read_text(encoding="utf-8"))
        if not isinstance(raw, dict):
            raise TypeError(f"expected a JSON object, got {type(raw).__name__}")
        config = BundleConfig(**{k: v for k, v in raw.items() if k in BundleConfig.__dataclass_fields__})
    except (ValueError, TypeError) as err:  # ValueError: bad JSON or not UTF-8
        raise ImgclsError(f"bundle config '{folder / CONFIG_FILE}' is damaged: {err}") from None
    if config.task not in TASKS:
        raise ImgclsError(f"bundle '{folder}' has unknown task {config.task!r}; expected one of {TASKS}")
    return config


def update_bundle_config(path: str | Path, **changes) -> BundleConfig:
    """Change fields of a saved bundle's config.json in place (atomically); weights are untouched."""
    folder = find_bundle(path)
    config = replace(read_bundle_config(folder), **changes)
    atomic_write_bytes(folder / CONFIG_FILE, json.dumps(asdict(config), indent=2, ensure_ascii=False).encode())
    return config


def load_bundle(path: str | Path, device: str | torch.device = "cpu") -> tuple[Classifier, BundleConfig]:
    folder = find_bundle(path)
    config = read_bundle_config(folder)
    model = build_classifier(config)
    try:
        model.load_state_dict(load_file(str(folder / WEIGHTS_FILE)))
    except (OSError, RuntimeError, SafetensorError) as err:
        raise ImgclsError(f"weights in '{folder / WEIGHTS_FILE}' do not load: {str(err).splitlines()[0]}") from None
    return model.to(device).eval(), config
