"""Activation maximisation: inputs synthesised to excite one class, or one filter of a layer.

Gradient ascent on the image (Erhan et al. 2009; Olah et al. 2017, "Feature Visualization",
https://distill.pub/2017/feature-visualization/) with the two regularisers that buy the most for
their cost: pixels parametrised through a sigmoid, so every step is a valid image, and a random
shift each step (transformation robustness: without it the ascent finds high-frequency noise).
Hand-written (~30 lines): Captum's `optim` module was never released, and lucent would add a
dependency for this.
"""
from __future__ import annotations

import torch
from torch import nn

STEPS = 128  # the images stop changing visibly after ~100 Adam steps at this rate
LEARNING_RATE = 0.05  # in sigmoid-logit units per step
INITIAL_NOISE = 0.1  # start near mid-grey: a saturated random start survives as speckle
SMOOTHNESS = 0.05  # weight of the total-variation penalty, per image, against high-frequency noise
JITTER_FRACTION = 1 / 16  # largest random shift, as a fraction of the image side (2 px at 32, 14 at 224)
SEED = 0


def _jitter(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    limit = max(1, int(images.shape[-1] * JITTER_FRACTION))
    dy, dx = torch.randint(-limit, limit + 1, (2,), generator=generator).tolist()
    return torch.roll(images, shifts=(dy, dx), dims=(2, 3))


def maximise(model: nn.Module, layer: nn.Module, class_index: int, channels: list[int], size: int) -> torch.Tensor:
    """(1 + len(channels), 3, size, size) images in [0, 1]: the first maximises the class logit,
    each next one the mean activation of one channel of `layer` (a module `layers.hooked` gives)."""
    device = next(model.parameters()).device
    generator = torch.Generator().manual_seed(SEED)
    count = 1 + len(channels)
    pixels = (INITIAL_NOISE * torch.randn(count, 3, size, size, generator=generator)).to(device).requires_grad_()
    optimiser = torch.optim.Adam([pixels], lr=LEARNING_RATE)
    captured: list[torch.Tensor] = []
    handle = layer.register_forward_hook(lambda _m, _i, output: captured.append(output))
    rows, wanted = torch.arange(1, count, device=device), torch.tensor(channels, dtype=torch.long, device=device)
    try:
        with torch.enable_grad():
            for _ in range(STEPS):
                captured.clear()
                logits = model(_jitter(torch.sigmoid(pixels), generator))
                filters = captured[-1][rows, wanted].mean(dim=(1, 2))  # (len(channels),)
                images = torch.sigmoid(pixels)
                smoothness = (images.diff(dim=2).abs().mean() + images.diff(dim=3).abs().mean()) * count
                objective = logits[0, class_index] + filters.sum() - SMOOTHNESS * smoothness  # each image feeds only its own terms
                # autograd.grad rather than backward(): the model's own .grad buffers stay untouched
                (pixels.grad,) = torch.autograd.grad(-objective, [pixels])
                optimiser.step()
    finally:
        handle.remove()
    return torch.sigmoid(pixels).detach()
