"""`imgcls train`: folder of images -> trained, evaluated bundle in RUN_DIR.

RUN_DIR/ model/ (the bundle)  history.csv  checkpoint.pt  data.json  evaluation/
"""
from __future__ import annotations

import json
import logging
import statistics
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..data.audit import find_leakage
from ..data.augment import build_augment
from ..data.cache import decode_cached, default_cache_dir
from ..data.folders import LabelledImages, Sample, discover, multi_hot
from ..data.loader import Batches, to_model_input
from ..errors import ImgclsError
from ..evaluate.evaluation import write_evaluation
from ..evaluate.metrics import tune_thresholds
from ..fileio import atomic_write_bytes
from ..models.bundle import WEIGHTS_FILE, BundleConfig, find_bundle, read_bundle_config, save_bundle
from ..models.builtin import WhiteningConv
from ..models.classifier import IMAGENET_MEAN, IMAGENET_STD, Classifier
from ..models.registry import check_model_name, create_model, default_img_size
from ..models.weights import load_weights
from ..runtime import resolve_device
from .calibration import fit_temperature
from .callbacks import CHECKPOINT_FILE, Checkpoint, EarlyStopping, EpochLog, HistoryCSV, Lookahead, ProgressBar
from .config import TrainConfig
from .loop import Trainer, make_loss, predict_logits
from .transfer import SMALL_BATCH, UnfreezeBackbone, classifier_head, head_inputs, layer_lr_scales, set_backbone_trainable

log = logging.getLogger(__name__)

DEFAULT_MODEL = "cnn-bn"  # strongest built-in from scratch; needs no download
MIN_AUTO_IMG_SIZE = 32  # below this, three pooling stages leave nothing to classify
SIZE_SAMPLE = 200  # image headers read to pick img_size
# Models designed for thumbnails (speedrun-cnn, lenet5: 32 px) given photos this many times larger lose most detail.
THUMBNAIL_PX, SHRINK_WARNING = 64, 4
IMBALANCE_WARNING = 3  # largest/smallest class ratio from which the loss is noticeably biased
FEW_STEPS = 4  # optimizer steps per epoch below which a run barely trains (e.g. a recipe's batch of 1024 on 600 images)


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
    size = max(MIN_AUTO_IMG_SIZE, min(default_img_size(model), -(-median // 8) * 8))
    if size < THUMBNAIL_PX and median >= SHRINK_WARNING * size:
        log.warning("the images are about %d px but %s is designed for %d px, so they are shrunk %dx; "
                    "for detail at that scale pass --img-size or choose a model made for photos", median, model, size,
                    median // size)
    return size


@dataclass
class DecodedSplit:
    pixels: np.ndarray  # (N, H, W, 3) uint8
    samples: list[Sample]  # the readable ones, row for row
    targets: torch.Tensor  # (N, num_classes) one-hot or multi-hot
    failed: list[tuple[Path, str]]


def _decode_split(samples: list[Sample], size: int, num_classes: int, workers: int | None, desc: str) -> DecodedSplit:
    from tqdm.auto import tqdm

    with tqdm(total=len(samples), desc=f"decoding {desc}", unit="img", leave=False, disable=None) as bar:
        decoded = decode_cached([s.path for s in samples], size, default_cache_dir(), workers, on_progress=bar.update)
    kept = [samples[i] for i in decoded.kept]
    if not kept:
        raise ImgclsError(f"none of the {len(samples)} {desc} images could be read")
    if decoded.cached is not None:
        log.info("%s: %d decoded images from cache (%s)", desc, len(kept), decoded.cached)
    return DecodedSplit(decoded.pixels, kept, torch.from_numpy(multi_hot(kept, num_classes)), decoded.failed)


def _class_weights(targets: torch.Tensor, multi_label: bool) -> torch.Tensor:
    positives = targets.sum(0).clamp(min=1)
    if multi_label:  # pos_weight: negatives per positive
        return (len(targets) - positives) / positives
    return len(targets) / (len(positives) * positives)


def _start_config(config: TrainConfig | None, source: BundleConfig | None) -> TrainConfig:
    """Fill what the user left open: the model and image size of an --init-from bundle."""
    config = config or TrainConfig()
    if source is None:
        return replace(config, model=config.model or DEFAULT_MODEL).validate()
    if config.model not in (None, source.architecture):
        raise ImgclsError(f"--init-from bundle is a '{source.architecture}' but --model is '{config.model}'; "
                          "leave --model out to continue its architecture")
    return replace(config, model=source.architecture, img_size=config.img_size or source.img_size).validate()


def _build_model(config: TrainConfig, num_classes: int, img_size: int, source: BundleConfig | None) -> Classifier:
    torch.manual_seed(config.seed)
    net = create_model(config.model, num_classes=num_classes, img_size=img_size, pretrained=config.pretrained,
                       **(source.model_kwargs if source else {}))
    for weights in filter(None, (config.weights, config.init_from and find_bundle(config.init_from) / WEIGHTS_FILE)):
        load_weights(net, weights)
    mean, std = (source.mean, source.std) if source else (IMAGENET_MEAN, IMAGENET_STD)
    pretrained_cfg = getattr(net, "pretrained_cfg", None) or {}
    if config.pretrained and pretrained_cfg.get("mean"):
        mean, std = tuple(pretrained_cfg["mean"]), tuple(pretrained_cfg["std"])
    return Classifier(net, mean, std)


WHITENING_IMAGES = 2000  # enough patches (~2M) for a stable 12x12 covariance; ~1 s


def _fit_whitening(model: Classifier, pixels: np.ndarray, seed: int) -> None:
    """Data-dependent first layers (speedrun-cnn's whitening) start from the training images' patch statistics."""
    layers = [m for m in model.modules() if isinstance(m, WhiteningConv)]
    if layers:
        rows = np.random.default_rng(seed).permutation(len(pixels))[:WHITENING_IMAGES]
        images = model.normalize(to_model_input(torch.from_numpy(pixels[np.sort(rows)])))
        for layer in layers:
            layer.fit(images)


def _resume_state(run_dir: Path) -> dict:
    path = run_dir / CHECKPOINT_FILE
    if not path.is_file():
        raise ImgclsError(f"nothing to resume in '{run_dir}': no {CHECKPOINT_FILE} (was training started there?)")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise ImgclsError(f"checkpoint '{path}' is damaged ({type(err).__name__}); start a new run") from None


def _make_trainer(model: Classifier, config: TrainConfig, train_set: DecodedSplit, val_set: DecodedSplit,
                  run_dir: Path, device: torch.device, progress: bool) -> Trainer:
    """The trainer for the mode: the whole network, or only its head on features computed once
    (frozen backbone, no augmentation: every epoch after the first costs a few matrix products)."""
    mode, num_classes, img_size = config.resolved_mode(), train_set.targets.shape[1], train_set.pixels.shape[1]
    weights = _class_weights(train_set.targets, config.multi_label).to(device) if config.class_weights else None
    callbacks = ([ProgressBar()] if progress else []) + ([Lookahead()] if config.lookahead else []) + [
        EpochLog(), EarlyStopping(config.early_stopping), HistoryCSV(run_dir), Checkpoint(run_dir)]
    augment = build_augment(config.augment, img_size, num_classes, config.multi_label)
    train_batches = Batches(train_set.pixels, train_set.targets, config.batch_size, shuffle=True, device=device,
                            seed=config.seed, alternating_flip=augment.alternating_flip)
    val_batches = Batches(val_set.pixels, val_set.targets, max(config.batch_size, 128), device=device)
    lr_scales = None
    if mode == "freeze":
        set_backbone_trainable(model, False)
        if config.augment == "none" and config.cache_features:
            to_device = lambda features, dev: features.to(dev, non_blocking=True)
            log.info("frozen backbone without augmentation: computing its features once")
            train_batches = Batches(*head_inputs(model, Batches(train_set.pixels, train_set.targets, 256, device=device)),
                                    config.batch_size, shuffle=True, device=device, seed=config.seed, transform=to_device)
            val_batches = Batches(*head_inputs(model, val_batches), val_batches.batch_size, device=device, transform=to_device)
            model = classifier_head(model)
        else:
            log.info("frozen backbone with augmentation runs the backbone every epoch; --augment none trains on cached features")
    elif mode == "finetune":
        callbacks.append(UnfreezeBackbone(config.head_epochs, freeze_batchnorm=config.batch_size < SMALL_BATCH))
        lr_scales = layer_lr_scales(model, config.layer_decay)
    return Trainer(model, config, train_batches, val_batches, augment, make_loss(config, weights), callbacks, device, lr_scales)


def _finish(model: Classifier, config: TrainConfig, dataset: LabelledImages, val_set: DecodedSplit,
            run_dir: Path, device: torch.device) -> tuple[Path, dict]:
    """Calibrate on validation, evaluate, and save the bundle."""
    logits, _ = predict_logits(model, Batches(val_set.pixels, val_set.targets, max(config.batch_size, 128), device=device),
                               tta=config.tta)
    temperature = 1.0 if config.multi_label else fit_temperature(logits, val_set.targets.argmax(1))
    probs = (logits.sigmoid() if config.multi_label else (logits / temperature).softmax(1)).numpy()
    bundle_config = BundleConfig(
        architecture=config.model, classes=dataset.classes, img_size=val_set.pixels.shape[1],
        mean=tuple(model.mean.flatten().tolist()), std=tuple(model.std.flatten().tolist()),
        task="multi-label" if config.multi_label else "single-label", temperature=temperature,
        thresholds=tune_thresholds(val_set.targets.numpy(), probs).tolist() if config.multi_label else None,
        data_fingerprint=dataset.fingerprint(), tta=config.tta,
    )
    metrics = write_evaluation(probs, val_set.samples, bundle_config, run_dir / "evaluation", run_dir / "history.csv",
                               uncalibrated=None if config.multi_label else logits.softmax(1).numpy())
    bundle_config.metrics = {k: metrics[k] for k in ("accuracy", "mAP", "macro_avg", "ece") if k in metrics}
    return save_bundle(model.cpu(), bundle_config, run_dir / "model"), metrics


def train(data_dir: str | Path | None, run_dir: str | Path, config: TrainConfig | None = None,
          resume: bool = False, progress: bool = True) -> TrainResult:
    """Train on `data_dir` and write the bundle and evaluation to `run_dir`.
    With resume=True the configuration and data folder come from run_dir's checkpoint."""
    run_dir = Path(run_dir)
    state = _resume_state(run_dir) if resume else None
    if state is not None:
        config, data_dir = TrainConfig.from_dict(state["config"]), data_dir or state["data_dir"]
    if data_dir is None:
        raise ImgclsError("no data folder given")
    source = read_bundle_config(config.init_from) if config is not None and config.init_from else None
    config = _start_config(config, source)
    check_model_name(config.model)
    device = resolve_device(config.device)

    dataset = discover(data_dir, config.val_split, config.test_split, config.seed, config.multi_label, config.labels_csv)
    _warn_about_data(dataset)
    img_size = (state or {}).get("img_size") or config.img_size or auto_img_size(config.model, dataset.splits["train"])
    log.info("%d classes, %s images; model %s at %d px on %s (%s)", len(dataset.classes),
             {k: len(v) for k, v in dataset.splits.items()}, config.model, img_size, device, config.resolved_mode())
    num_classes = len(dataset.classes)
    train_set = _decode_split(dataset.splits["train"], img_size, num_classes, config.workers, "train")
    val_set = _decode_split(dataset.splits["validation"], img_size, num_classes, config.workers, "validation")
    _warn_about_batch_size(len(train_set.samples), config.batch_size)
    model = _build_model(config, num_classes, img_size, source)
    if state is None and config.resolved_mode() == "scratch":
        _fit_whitening(model, train_set.pixels, config.seed)
    model = model.to(device).to(memory_format=torch.channels_last)
    skipped = [{"path": str(p), "reason": r} for p, r in train_set.failed + val_set.failed]
    run_dir.mkdir(parents=True, exist_ok=True)
    _write_data_summary(run_dir, dataset, data_dir, img_size, skipped, config)

    trainer = _make_trainer(model, config, train_set, val_set, run_dir, device, progress)
    if state is not None:
        trainer.load_state_dict(state)
        log.info("resuming %s after epoch %d of %d", run_dir, trainer.epoch, config.epochs)
    trainer.extra_state = {"data_dir": str(data_dir), "img_size": img_size}
    history = trainer.fit()
    bundle_dir, metrics = _finish(model, config, dataset, val_set, run_dir, device)
    if config.report:
        _write_report(run_dir, device)
    return TrainResult(run_dir, bundle_dir, metrics, history, skipped)


def _write_report(run_dir: Path, device: torch.device) -> None:
    """report.html closes every run; a report problem must not cost the trained model."""
    from ..explain.report import write_report

    try:
        write_report(run_dir, device=str(device))
    except Exception as err:  # the bundle is saved; `imgcls report RUN_DIR` can write it again
        log.warning("report.html not written (%s: %s); run `imgcls report %s`", type(err).__name__, err, run_dir)


def _warn_about_batch_size(images: int, batch_size: int) -> None:
    steps = -(-images // batch_size)
    if steps < FEW_STEPS:
        suggested = max(8, 1 << max(0, (images // 8).bit_length() - 1))  # a power of two giving 8 steps or more
        log.warning("%d training images make %d step%s of batch %d per epoch, too few to learn much; "
                    "use --batch-size %d or smaller", images, steps, "" if steps == 1 else "s", batch_size, suggested)


def _warn_about_data(dataset: LabelledImages) -> None:
    """The cheap part of `imgcls audit`: leakage between splits and class imbalance."""
    counts = dataset.counts()["train"]
    smallest, largest = min(counts, key=counts.get), max(counts, key=counts.get)
    if counts[smallest] * IMBALANCE_WARNING < counts[largest]:
        log.warning("classes are imbalanced: '%s' has %d training images, '%s' %d; consider --class-weights",
                    smallest, counts[smallest], largest, counts[largest])
    leaks = find_leakage(dataset)
    if leaks:
        example = leaks[0]["paths"]
        log.warning("%d images appear in both train and validation/test (e.g. %s); validation accuracy will be "
                    "optimistic. Run `imgcls audit %s` for the full list.", len(leaks), " = ".join(map(str, example[:2])), dataset.root)


def _write_data_summary(run_dir: Path, dataset: LabelledImages, data_dir, img_size: int, skipped: list[dict],
                        config: TrainConfig) -> None:
    """What the run saw, and how it split it, so look-alikes and the report rebuild the same split."""
    summary = {"data_dir": str(data_dir), "classes": dataset.classes, "counts": dataset.counts(),
               "img_size": img_size, "fingerprint": dataset.fingerprint(), "skipped": skipped,
               "val_split": config.val_split, "test_split": config.test_split, "seed": config.seed,
               "multi_label": config.multi_label, "labels_csv": config.labels_csv}
    atomic_write_bytes(run_dir / "data.json", json.dumps(summary, indent=2).encode())
