"""`imgcls train`: folder of images -> trained, evaluated bundle in RUN_DIR.

RUN_DIR/ model/ (the bundle)  history.csv  checkpoint.pt  data.json  evaluation/
"""
from __future__ import annotations

import json
import logging
import statistics
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..data.audit import find_leakage
from ..data.augment import build_augment
from ..data.cache import decode_all
from ..data.folders import LabelledImages, Sample, discover
from ..data.loader import Batches
from ..errors import ImgclsError
from ..evaluate.evaluation import write_evaluation
from ..evaluate.metrics import tune_thresholds
from ..fileio import atomic_write_bytes
from ..models.bundle import BundleConfig, save_bundle
from ..models.classifier import IMAGENET_MEAN, IMAGENET_STD, Classifier
from ..models.registry import check_model_name, create_model, default_img_size
from ..models.weights import load_weights
from ..runtime import resolve_device
from .callbacks import CHECKPOINT_FILE, Checkpoint, EarlyStopping, HistoryCSV, ProgressBar
from .config import TrainConfig
from .loop import Trainer, make_loss, predict_logits

log = logging.getLogger(__name__)

MIN_AUTO_IMG_SIZE = 32  # below this, three pooling stages leave nothing to classify
SIZE_SAMPLE = 200  # image headers read to pick img_size


@dataclass
class TrainResult:
    run_dir: Path
    bundle_dir: Path
    metrics: dict  # validation metrics of the saved model
    history: list[dict]
    skipped: list[dict]


def auto_img_size(model: str, samples: list[Sample]) -> int:
    """The model's design size, or the images' median short side when smaller (no upscaling of CIFAR)."""
    step = max(1, len(samples) // SIZE_SAMPLE)
    sides = []
    for sample in samples[::step]:
        try:
            with Image.open(sample.path) as image:
                sides.append(min(image.size))
        except OSError:
            continue
    median = int(statistics.median(sides)) if sides else default_img_size(model)
    return max(MIN_AUTO_IMG_SIZE, min(default_img_size(model), -(-median // 8) * 8))


def _decode_split(samples: list[Sample], size: int, workers: int | None, desc: str):
    from tqdm.auto import tqdm

    with tqdm(total=len(samples), desc=f"decoding {desc}", unit="img", leave=False, disable=None) as bar:
        decoded = decode_all([s.path for s in samples], size, workers, on_progress=bar.update)
    kept = [samples[i] for i in decoded.kept]
    if not kept:
        raise ImgclsError(f"none of the {len(samples)} {desc} images could be read")
    return decoded.pixels, kept, decoded.failed


def _one_hot(samples: list[Sample], num_classes: int) -> torch.Tensor:
    hot = torch.zeros(len(samples), num_classes)
    for row, sample in enumerate(samples):
        hot[row, list(sample.labels)] = 1
    return hot


def _class_weights(targets: torch.Tensor, multi_label: bool) -> torch.Tensor:
    positives = targets.sum(0).clamp(min=1)
    if multi_label:  # pos_weight: negatives per positive
        return (len(targets) - positives) / positives
    return len(targets) / (len(positives) * positives)


def _build_model(config: TrainConfig, num_classes: int, img_size: int) -> Classifier:
    torch.manual_seed(config.seed)
    net = create_model(config.model, num_classes=num_classes, img_size=img_size, pretrained=config.pretrained)
    if config.weights:
        load_weights(net, config.weights)
    mean, std = IMAGENET_MEAN, IMAGENET_STD
    pretrained_cfg = getattr(net, "pretrained_cfg", None) or {}
    if config.pretrained and pretrained_cfg.get("mean"):
        mean, std = tuple(pretrained_cfg["mean"]), tuple(pretrained_cfg["std"])
    return Classifier(net, mean, std)


def _resume_state(run_dir: Path) -> dict:
    path = run_dir / CHECKPOINT_FILE
    if not path.is_file():
        raise ImgclsError(f"nothing to resume in '{run_dir}': no {CHECKPOINT_FILE} (was training started there?)")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise ImgclsError(f"checkpoint '{path}' is damaged ({type(err).__name__}); start a new run") from None


def train(data_dir: str | Path | None, run_dir: str | Path, config: TrainConfig | None = None,
          resume: bool = False, progress: bool = True) -> TrainResult:
    """Train on `data_dir` and write the bundle and evaluation to `run_dir`.
    With resume=True the configuration and data folder come from run_dir's checkpoint."""
    run_dir = Path(run_dir)
    state = _resume_state(run_dir) if resume else None
    if state is not None:
        config = TrainConfig.from_dict(state["config"])
        data_dir = data_dir or state["data_dir"]
    config = (config or TrainConfig()).validate()
    if data_dir is None:
        raise ImgclsError("no data folder given")
    check_model_name(config.model)
    device = resolve_device(config.device)

    dataset = discover(data_dir, config.val_split, config.test_split, config.seed, config.multi_label, config.labels_csv)
    _warn_leakage(dataset)
    img_size = (state or {}).get("img_size") or config.img_size or auto_img_size(config.model, dataset.splits["train"])
    log.info("%d classes, %s images; model %s at %d px on %s", len(dataset.classes),
             {k: len(v) for k, v in dataset.splits.items()}, config.model, img_size, device)

    train_pixels, train_samples, train_failed = _decode_split(dataset.splits["train"], img_size, config.workers, "train")
    val_pixels, val_samples, val_failed = _decode_split(dataset.splits["validation"], img_size, config.workers, "validation")
    num_classes = len(dataset.classes)
    train_targets, val_targets = _one_hot(train_samples, num_classes), _one_hot(val_samples, num_classes)

    model = _build_model(config, num_classes, img_size).to(device).to(memory_format=torch.channels_last)
    weights = _class_weights(train_targets, config.multi_label).to(device) if config.class_weights else None
    train_batches = Batches(train_pixels, train_targets, config.batch_size, shuffle=True, device=device, seed=config.seed)
    val_batches = Batches(val_pixels, val_targets, max(config.batch_size, 128), device=device)
    callbacks = ([ProgressBar()] if progress else []) + [EarlyStopping(config.early_stopping), HistoryCSV(run_dir), Checkpoint(run_dir)]
    trainer = Trainer(model, config, train_batches, val_batches,
                      build_augment(config.augment, img_size, num_classes, config.multi_label),
                      make_loss(config, weights), callbacks, device)
    run_dir.mkdir(parents=True, exist_ok=True)
    skipped = [{"path": str(p), "reason": r} for p, r in train_failed + val_failed]
    _write_data_summary(run_dir, dataset, data_dir, img_size, skipped)
    if state is not None:
        trainer.load_state_dict(state)
        log.info("resuming %s after epoch %d of %d", run_dir, trainer.epoch, config.epochs)
    trainer.extra_state = {"data_dir": str(data_dir), "img_size": img_size}
    history = trainer.fit()

    val_probs = _probabilities(model, val_batches, config.multi_label)
    bundle_config = BundleConfig(
        architecture=config.model, classes=dataset.classes, img_size=img_size,
        mean=tuple(model.mean.flatten().tolist()), std=tuple(model.std.flatten().tolist()),
        task="multi-label" if config.multi_label else "single-label",
        thresholds=tune_thresholds(val_targets.numpy(), val_probs).tolist() if config.multi_label else None,
        data_fingerprint=dataset.fingerprint(),
    )
    metrics = write_evaluation(val_probs, val_samples, bundle_config, run_dir / "evaluation", run_dir / "history.csv")
    bundle_config.metrics = {k: metrics[k] for k in ("accuracy", "mAP", "macro_avg") if k in metrics}
    bundle_dir = save_bundle(model.cpu(), bundle_config, run_dir / "model")
    return TrainResult(run_dir, bundle_dir, metrics, history, skipped)


def _probabilities(model, batches: Batches, multi_label: bool) -> np.ndarray:
    logits, _ = predict_logits(model, batches)
    return (logits.sigmoid() if multi_label else logits.softmax(1)).numpy()


def _warn_leakage(dataset: LabelledImages) -> None:
    leaks = find_leakage(dataset)
    if leaks:
        example = leaks[0]["paths"]
        log.warning("%d images appear in both train and validation/test (e.g. %s); validation accuracy will be "
                    "optimistic. Run `imgcls audit %s` for the full list.", len(leaks), " = ".join(map(str, example[:2])), dataset.root)


def _write_data_summary(run_dir: Path, dataset: LabelledImages, data_dir, img_size: int, skipped: list[dict]) -> None:
    summary = {"data_dir": str(data_dir), "classes": dataset.classes, "counts": dataset.counts(),
               "img_size": img_size, "fingerprint": dataset.fingerprint(), "skipped": skipped}
    atomic_write_bytes(run_dir / "data.json", json.dumps(summary, indent=2).encode())
