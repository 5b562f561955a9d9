"""The trained network with its input normalisation inside it.

Keeping mean/std as buffers of the model means every consumer (predict, explain, ONNX export,
the server) feeds the same thing, RGB in [0, 1], and can never normalise differently.

`net` is a timm model (imgcls's built-ins are registered with timm): its penultimate features come
from timm's `forward_head(pre_logits=True)`, the same for every architecture.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ..choices import TTA_MODES  # noqa: F401  tta_logits's modes, read from here by bundle and predictor

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class Classifier(nn.Module):
    def __init__(self, net: nn.Module, mean=IMAGENET_MEAN, std=IMAGENET_STD):
        super().__init__()
        self.net = net
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        return (images - self.mean) / self.std

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) RGB in [0, 1] -> (B, num_classes) logits."""
        return self.net(self.normalize(images))

    def pre_logits(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) RGB in [0, 1] -> (B, D) the features the classifier reads: what a linear
        probe is fitted on and look-alikes are compared by."""
        return self.net.forward_head(self.net.forward_features(self.normalize(images)), pre_logits=True)


def tta_logits(model: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor, tta: str) -> torch.Tensor:
    """The model's float logits for (B, 3, H, W) images, averaged over the test-time views (tta: TTA_MODES)."""
    if tta == "none":
        return model(images).float()
    logits = _with_mirror(model, images)
    if tta == "flip-shift":
        step, (height, width) = max(1, round(images.shape[-1] / 32)), images.shape[-2:]
        padded = F.pad(images, (step,) * 4, mode="reflect")
        shifted = [padded[..., :height, :width], padded[..., 2 * step:, 2 * step:]]
        logits = (logits + sum(_with_mirror(model, view) for view in shifted) / len(shifted)) / 2
    return logits


def _with_mirror(model: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor) -> torch.Tensor:
    return (model(images).float() + model(images.flip(3)).float()) / 2
