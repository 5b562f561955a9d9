"""Batched training augmentation: one call per batch, per-sample random parameters, CPU or GPU.

Images are decoded once into a uint8 cache and arrive here as a (B, 3, H, W) float batch in
[0, 1], so augmenting costs a few tensor ops per batch instead of a PIL loop per image, and the
same code runs unchanged on CUDA. Every geometric change of a sample (flip, zoom, shear, crop,
translation, rotation) is folded into one affine matrix and applied by a single `grid_sample`
(spatial-transformer sampling, https://arxiv.org/abs/1506.02025).

Presets:
- none: the identity.
- shift: whole-pixel shifts only, for images whose mirror is another class (digits, text).
- seed: the ImageDataGenerator recipe of Keras's small-data tutorial
  (https://blog.keras.io/building-powerful-image-classification-models-using-very-little-data.html).
- standard: flip plus the Inception random-resized crop (https://arxiv.org/abs/1409.4842) and
  mild colour jitter; on small images, the pad-and-crop shift of ResNet's CIFAR runs
  (https://arxiv.org/abs/1512.03385).
- strong: standard plus one TrivialAugment op per sample (https://arxiv.org/abs/2103.10158) and
  mixup (https://arxiv.org/abs/1710.09412) or CutMix (https://arxiv.org/abs/1905.04899) per batch.
- speedrun: the CIFAR-10 speed-run augmentation (Jordan 2024, https://arxiv.org/abs/2404.00498):
  a 2 px shift on 32 px images and *alternating* flips, each image mirrored in every other epoch
  rather than at random, so no epoch repeats a view. The flips need each image's identity, so
  `Batches` applies them (see `Augment.alternating_flip`).

Every random draw uses the caller's CPU generator, so --seed reproduces a run on any device.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from imgcls.choices import AUGMENT_PRESETS
from imgcls.errors import ImgclsError, did_you_mean

# Below this side (CIFAR, MNIST) a random-resized crop keeps too few pixels of the object to
# recognise it; a small shift is the augmentation that helps there.
SMALL_IMAGE_PX = 64
# Inception's 0.08 area floor is tuned for long ImageNet training from scratch; short fine-tunes
# on small datasets lose the object too often with it.
CROP_AREA = (0.35, 1.0)
CROP_LOG_ASPECT = (math.log(3 / 4), math.log(4 / 3))
JITTER = 0.2  # brightness, contrast and saturation factors in 1 +- 0.2
SMALL_SHIFT = 1 / 8  # of the side: 4 px on 32 px images, the classic pad-4-and-crop
SPEEDRUN_SHIFT = 1 / 16  # 2 px on 32 px images: enough for a 10-epoch run, which underfits rather than overfits
MIXUP_ALPHA, CUTMIX_ALPHA = 0.2, 1.0

# TrivialAugment-Wide's ops and ranges (reached at magnitude 1). Equalize is left out: a
# per-image histogram has no clean batched form.
TRIVIAL_OPS = ("identity", "brightness", "contrast", "saturation", "sharpness", "posterize",
               "solarize", "autocontrast", "rotate", "shear_x", "shear_y", "translate_x",
               "translate_y")
TA_FACTOR = 0.99  # enhance factors in [0.01, 1.99]
TA_ROTATE_DEG = 135.0
TA_SHEAR = 0.99
TA_SHIFT = 1 / 3  # of the side; Wide's 32 px would be a whole CIFAR image


def _uniform(generator: torch.Generator, n: int, low: float, high: float) -> torch.Tensor:
    return torch.empty(n).uniform_(low, high, generator=generator)


def _signs(generator: torch.Generator, n: int) -> torch.Tensor:
    return torch.randint(0, 2, (n,), generator=generator).float() * 2 - 1


def _per_sample(values: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """CPU-drawn (n,) values as an (n, 1, 1, 1) tensor that broadcasts over x's images."""
    return values.to(x.device, x.dtype).view(-1, 1, 1, 1)


def _gray(x: torch.Tensor) -> torch.Tensor:
    return 0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3]  # ITU-R 601, as torchvision


def _blend(x: torch.Tensor, base: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    return torch.lerp(base, x, factor).clamp_(0, 1)  # lerp: one pass instead of three


def _brightness(x, factor):
    return (x * factor).clamp_(0, 1)


def _contrast(x, factor):
    return _blend(x, _gray(x).mean((2, 3), keepdim=True), factor)


def _saturation(x, factor):
    return _blend(x, _gray(x), factor)


def _sharpness(x, factor):
    """PIL's ImageEnhance.Sharpness: factor < 1 blurs towards a 3x3 smoothing, > 1 sharpens."""
    kernel = torch.tensor([[1.0, 1, 1], [1, 5, 1], [1, 1, 1]], device=x.device, dtype=x.dtype) / 13
    smooth = F.conv2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), kernel.expand(3, 1, 3, 3), groups=3)
    return _blend(x, smooth, factor)


def _posterize(x, bits):
    levels = 2.0 ** bits
    return torch.minimum((x * levels).floor(), levels - 1) / levels


def _autocontrast(x):
    low, high = x.amin((2, 3), keepdim=True), x.amax((2, 3), keepdim=True)
    flat = high <= low  # a constant channel has no range to stretch
    return torch.where(flat, x, (x - low) / (high - low).masked_fill(flat, 1))


# Colour ops, given images and a signed magnitude in [-1, 1] per sample.
_TRIVIAL_COLOUR = {
    "brightness": lambda x, m: _brightness(x, 1 + TA_FACTOR * m),
    "contrast": lambda x, m: _contrast(x, 1 + TA_FACTOR * m),
    "saturation": lambda x, m: _saturation(x, 1 + TA_FACTOR * m),
    "sharpness": lambda x, m: _sharpness(x, 1 + TA_FACTOR * m),
    "posterize": lambda x, m: _posterize(x, 8 - (6 * m.abs()).round()),
    "solarize": lambda x, m: torch.where(x >= 1 - m.abs(), 1 - x, x),
    "autocontrast": lambda x, m: _autocontrast(x),
}


def _eye(n: int) -> torch.Tensor:
    return torch.eye(3).repeat(n, 1, 1)  # (n, 3, 3) homogeneous maps from output to input coords


def _flip(generator, n):
    matrix = _eye(n)
    matrix[:, 0, 0] = _signs(generator, n)
    return matrix


def _keras_zoom_shear(generator, n, zoom, shear):
    """Keras draws the x and y zoom apart, which also varies the aspect ratio."""
    matrix = _eye(n)
    matrix[:, 0, 0] = _uniform(generator, n, 1 - zoom, 1 + zoom)
    matrix[:, 1, 1] = _uniform(generator, n, 1 - zoom, 1 + zoom)
    matrix[:, 0, 1] = _uniform(generator, n, -shear, shear)
    return matrix


def _resized_crop(generator, n):
    """A crop of random area and aspect ratio, placed anywhere inside the image, scaled to full size."""
    area = _uniform(generator, n, *CROP_AREA)
    aspect = _uniform(generator, n, *CROP_LOG_ASPECT).exp()
    width, height = (area * aspect).sqrt().clamp(max=1), (area / aspect).sqrt().clamp(max=1)
    matrix = _eye(n)
    matrix[:, 0, 0], matrix[:, 1, 1] = width, height
    matrix[:, 0, 2] = _uniform(generator, n, -1, 1) * (1 - width)
    matrix[:, 1, 2] = _uniform(generator, n, -1, 1) * (1 - height)
    return matrix


def _pixel_shift(generator, n, fraction, height, width):
    """Whole-pixel shifts, so the sampler lands on pixel centres and copies values exactly."""
    matrix = _eye(n)
    for row, side in ((0, width), (1, height)):
        reach = int(side * fraction)
        matrix[:, row, 2] = torch.randint(-reach, reach + 1, (n,), generator=generator) * 2 / side
    return matrix


def _trivial_geometry(ops: torch.Tensor, magnitude: torch.Tensor, aspect: float) -> torch.Tensor:
    """The affine part of each sample's TrivialAugment op; the identity for colour ops."""
    def only(name, value):
        return torch.where(ops == TRIVIAL_OPS.index(name), value, torch.zeros_like(value))

    angle = only("rotate", torch.deg2rad(TA_ROTATE_DEG * magnitude))
    matrix = _eye(len(ops))
    matrix[:, 0, 0] = matrix[:, 1, 1] = angle.cos()
    # The aspect terms rotate in pixels rather than in [-1, 1] coords, which would skew non-squares.
    matrix[:, 0, 1] = -angle.sin() / aspect + only("shear_x", TA_SHEAR * magnitude)
    matrix[:, 1, 0] = angle.sin() * aspect + only("shear_y", TA_SHEAR * magnitude)
    matrix[:, 0, 2] = only("translate_x", 2 * TA_SHIFT * magnitude)
    matrix[:, 1, 2] = only("translate_y", 2 * TA_SHIFT * magnitude)
    return matrix


def _cutmix_box(generator, lam, height, width):
    """timm's box: area 1 - lam, centred anywhere, clipped at the edges (so often smaller)."""
    ratio = math.sqrt(1 - lam)
    cy, cx = (int(torch.randint(side, (1,), generator=generator)) for side in (height, width))
    half_h, half_w = int(height * ratio) // 2, int(width * ratio) // 2
    return max(cy - half_h, 0), min(cy + half_h, height), max(cx - half_w, 0), min(cx + half_w, width)


def _mix(x, targets, generator):
    """Mixup or CutMix (even odds) of each sample with a random partner, targets mixed alike."""
    perm = torch.randperm(len(x), generator=generator)
    # torch's Beta sampler takes no generator; numpy seeded from it keeps --seed reproducible.
    rng = np.random.default_rng(int(torch.randint(2**62, (1,), generator=generator)))
    partner = x[perm.to(x.device)]
    if torch.rand(1, generator=generator).item() < 0.5:
        lam = float(rng.beta(MIXUP_ALPHA, MIXUP_ALPHA))
        x = torch.lerp(partner, x, lam)
    else:
        height, width = x.shape[-2:]
        lam = float(rng.beta(CUTMIX_ALPHA, CUTMIX_ALPHA))
        y0, y1, x0, x1 = _cutmix_box(generator, lam, height, width)
        pasted = torch.zeros(height, width, dtype=torch.bool, device=x.device)
        pasted[y0:y1, x0:x1] = True
        x = torch.where(pasted, partner, x)
        lam = 1 - (y1 - y0) * (x1 - x0) / (height * width)  # the area actually kept, after clipping
    return x, lam * targets + (1 - lam) * targets[perm.to(targets.device)]


def _apply_trivial_colour(x: torch.Tensor, ops: torch.Tensor, magnitude: torch.Tensor) -> torch.Tensor:
    """Each sample's colour op, one sub-batch per op. Writes into x: call it on the warp's output."""
    for name, op in _TRIVIAL_COLOUR.items():
        rows = (ops == TRIVIAL_OPS.index(name)).nonzero().squeeze(1)  # on CPU: no device sync
        if len(rows):
            on_device = rows.to(x.device)
            x[on_device] = op(x[on_device], _per_sample(magnitude[rows], x))
    return x


@dataclass(frozen=True)
class Augment:
    """A preset's switches; calling it augments one batch. Everything off is the identity."""

    num_classes: int
    flip: bool = False
    zoom: float = 0.0  # x and y zoom factors each in 1 +- zoom
    shear: float = 0.0  # shear factor in +- shear
    crop: bool = False  # random-resized crop (CROP_AREA, CROP_LOG_ASPECT)
    shift: float = 0.0  # whole-pixel shift up to this fraction of the side
    jitter: float = 0.0  # brightness, contrast, saturation factors in 1 +- jitter
    trivial: bool = False  # one TrivialAugment op per sample
    mix: bool = False  # mixup or CutMix per batch
    padding: str = "reflection"  # grid_sample's fill for pixels pulled from outside the image
    alternating_flip: bool = False  # mirror each image in every other epoch; done by Batches, which knows the rows

    def __call__(self, images: torch.Tensor, targets: torch.Tensor,
                 generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, 3, H, W) images in [0, 1] and (B, num_classes) targets -> the same, augmented."""
        assert targets.shape == (len(images), self.num_classes), f"targets {tuple(targets.shape)}"
        moves = self.flip or self.zoom or self.shear or self.crop or self.shift or self.trivial
        if not (moves or self.jitter or self.mix):
            return images, targets
        x = images.float()  # the sampler and the colour maths want float32, even for bfloat16 input
        n, height, width = len(x), x.shape[-2], x.shape[-1]
        ops = magnitude = None
        if self.trivial:
            ops = torch.randint(len(TRIVIAL_OPS), (n,), generator=generator)
            magnitude = _uniform(generator, n, 0, 1) * _signs(generator, n)  # signed, in [-1, 1]
        if moves:
            theta = self._geometry(generator, n, height, width, ops, magnitude)
            grid = F.affine_grid(theta[:, :2].to(x.device), list(x.shape), align_corners=False)
            x = F.grid_sample(x, grid, padding_mode=self.padding, align_corners=False)
        if self.jitter:
            bright, contrast, saturation = (
                _per_sample(_uniform(generator, n, 1 - self.jitter, 1 + self.jitter), x) for _ in range(3))
            x = _saturation(_contrast(_brightness(x, bright), contrast), saturation)
        if self.trivial:
            x = _apply_trivial_colour(x, ops, magnitude)
        if self.mix:
            x, targets = _mix(x, targets, generator)
        return x.clamp(0, 1).to(images.dtype), targets

    def _geometry(self, generator, n, height, width, ops, magnitude) -> torch.Tensor:
        """(n, 3, 3) output-to-input maps; later factors act on the image first."""
        matrix = _eye(n)
        if self.crop:
            matrix = matrix @ _resized_crop(generator, n)
        if self.shift:
            matrix = matrix @ _pixel_shift(generator, n, self.shift, height, width)
        if self.zoom or self.shear:
            matrix = matrix @ _keras_zoom_shear(generator, n, self.zoom, self.shear)
        if self.flip:
            matrix = matrix @ _flip(generator, n)
        if self.trivial:
            matrix = matrix @ _trivial_geometry(ops, magnitude, width / height)
        return matrix


def build_augment(preset: str, img_size: int, num_classes: int, multi_label: bool = False) -> Augment:
    """The augmentation for a preset name. multi_label changes nothing: mixing multi-hot targets
    by the same convex combination keeps them in [0, 1]."""
    if preset not in AUGMENT_PRESETS:
        raise ImgclsError(f"unknown augmentation {preset!r}; choose one of {', '.join(AUGMENT_PRESETS)}"
                          + did_you_mean(preset, AUGMENT_PRESETS))
    if preset == "none":
        return Augment(num_classes)
    if preset == "shift":
        return Augment(num_classes, shift=SMALL_SHIFT)
    if preset == "speedrun":
        return Augment(num_classes, shift=SPEEDRUN_SHIFT, alternating_flip=True)
    if preset == "seed":
        # Keras 1, the tutorial's era, read shear_range in radians: sin(0.2) ~ a 0.2 shear factor.
        # Its fill_mode="nearest" is grid_sample's "border".
        return Augment(num_classes, flip=True, zoom=0.2, shear=0.2, padding="border")
    if img_size < SMALL_IMAGE_PX:
        standard = dict(flip=True, shift=SMALL_SHIFT)
    else:
        standard = dict(flip=True, crop=True, jitter=JITTER)
    return Augment(num_classes, **standard, trivial=preset == "strong", mix=preset == "strong")
