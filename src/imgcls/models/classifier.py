"""The trained network with its input normalisation inside it.

Keeping mean/std as buffers of the model means every consumer (predict, explain, ONNX export,
the server) feeds the same thing, RGB in [0, 1], and can never normalise differently.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

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


TTA_MODES = ("none", "flip")  # flip: average with the mirrored image, a cheap and reliable gain for most photos


def tta_logits(model: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor, tta: str) -> torch.Tensor:
    """The model's float logits for (B, 3, H, W) images, averaged over the test-time views."""
    logits = model(images).float()
    if tta == "flip":
        logits = (logits + model(images.flip(3)).float()) / 2
    return logits
