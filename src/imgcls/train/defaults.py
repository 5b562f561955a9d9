"""What `imgcls train DIR` decides when the user leaves a choice open: which model, from which
weights, at what size, batch, number of epochs and learning rate.

Photos start from ImageNet weights (a few hundred scraped photos reach 90%+ only that way, as in
every peer tool); thumbnails (CIFAR, MNIST, digits) train a small CNN from scratch, since a
backbone made for 224 px would spend 50x the compute to see upscaled blur.
"""
from __future__ import annotations

import logging
import statistics

from PIL import Image

from ..data.folders import Sample
from ..models.registry import BUILTIN_MODELS, default_img_size
from .config import DEFAULT_LR_AT_64, TrainConfig

log = logging.getLogger(__name__)

SCRATCH_MODEL = "cnn-bn"  # strongest built-in from scratch; needs no download
# ImageNet top-1 75% at 4.7 M parameters with plain ops (no squeeze-excite or swish): the fastest
# accurate backbone to fine-tune on 2 CPU cores, and the one whose weights ship in shared/weights.
PRETRAINED_MODEL = "efficientnet_lite0"
PHOTO_MIN_PX = 64  # median short side from which images are photos, not thumbnails
MIN_AUTO_IMG_SIZE = 32  # below this, three pooling stages leave nothing to classify
SIZE_SAMPLE = 200  # image headers read to measure the images
# Models designed for thumbnails (speedrun-cnn, lenet5: 32 px) given photos this many times larger lose most detail.
THUMBNAIL_PX, SHRINK_WARNING = 64, 4

SCRATCH_EPOCHS = 30
# Transfer: about this many training images seen in all (~6 min for efficientnet_lite0 on 2 CPU
# cores), within these epochs: a tiny folder still gets enough steps, a large one at least a few passes.
TRANSFER_IMAGES, TRANSFER_EPOCHS = 10_000, (5, 30)
SCRATCH_BATCH, TRANSFER_BATCH = 64, 32  # 32: the fastest per image for efficientnet_lite0 on a CPU cache
FINETUNE_LR_AT_64 = 4e-4  # AdamW; a fifth of the scratch rate: the features are already good
MIN_STEPS_PER_EPOCH = 8  # a default batch size is halved (down to MIN_BATCH) until an epoch has this many steps
MIN_BATCH = 8


def median_side(samples: list[Sample]) -> int | None:
    """The median short side of (a sample of) the images, from their headers only."""
    step = max(1, len(samples) // SIZE_SAMPLE)
    sides = []
    for sample in samples[::step]:
        try:
            with Image.open(sample.path) as image:
                sides.append(min(image.size))
        except OSError:
            continue
    return int(statistics.median(sides)) if sides else None


def choose_model(config: TrainConfig, side: int | None) -> TrainConfig:
    """Fill in `model` and `pretrained`. Left open, photos get the pretrained default and
    thumbnails (or --no-pretrained) the scratch one; a timm --model on photos starts from its weights too."""
    photos = side is None or side >= PHOTO_MIN_PX
    wants_weights = config.model.pretrained or (photos and config.model.pretrained is None)
    model = config.model.architecture or (PRETRAINED_MODEL if wants_weights else SCRATCH_MODEL)
    pretrained = config.model.pretrained
    if pretrained is None:
        pretrained = photos and model not in BUILTIN_MODELS and config.model.weights is None and config.model.init_from is None
    return config.with_options(model=model, pretrained=pretrained)


def scratch_fallback(config: TrainConfig) -> TrainConfig:
    """The run when no pretrained weights could be had: the user's --model, else the scratch default."""
    model = config.model.architecture if config.model.architecture not in (None, PRETRAINED_MODEL) else SCRATCH_MODEL
    return config.with_options(model=model, pretrained=False)


def choose_img_size(config: TrainConfig, side: int | None) -> int:
    """Pretrained (timm or --weights): the size its weights were trained at. Scratch: the model's design size, or the
    images' median side when smaller (no upscaling of CIFAR)."""
    design = default_img_size(config.model.architecture)
    if config.data.img_size is not None:
        return config.data.img_size
    if config.model.starts_from_pretrained_weights() or side is None:
        return design
    size = max(MIN_AUTO_IMG_SIZE, min(design, -(-side // 8) * 8))
    if size < THUMBNAIL_PX and side >= SHRINK_WARNING * size:
        log.warning("the images are about %d px but %s is designed for %d px, so they are shrunk %dx; "
                    "for detail at that scale pass --img-size or choose a model made for photos", side,
                    config.model.architecture, size, side // size)
    return size


def choose_schedule(config: TrainConfig, train_images: int) -> TrainConfig:
    """Batch size, epochs and learning rate for the mode, where the user gave none."""
    transfer = config.model.resolved_mode() in ("freeze", "finetune")
    batch_size = config.optimisation.batch_size
    if batch_size is None:  # one given (--batch-size, a recipe's) is kept; train.run warns if it is too large
        batch_size = default_batch = TRANSFER_BATCH if transfer else SCRATCH_BATCH
        while batch_size > MIN_BATCH and -(-train_images // batch_size) < MIN_STEPS_PER_EPOCH:
            batch_size //= 2
        if batch_size != default_batch:
            log.info("batch size %d instead of %d, so that %d training images make %d steps per epoch "
                     "(--batch-size N to choose)", batch_size, default_batch, train_images, -(-train_images // batch_size))
    epochs = config.optimisation.epochs
    if epochs is None:
        low, high = TRANSFER_EPOCHS
        epochs = min(high, max(low, -(-TRANSFER_IMAGES // max(1, train_images)))) if transfer else SCRATCH_EPOCHS
    lr = config.optimisation.lr
    if lr is None and config.model.resolved_mode() == "finetune":
        lr = FINETUNE_LR_AT_64 * DEFAULT_LR_AT_64[config.optimisation.optimizer] / DEFAULT_LR_AT_64["adamw"] * batch_size / 64
    return config.with_options(batch_size=batch_size, epochs=epochs, lr=lr)
