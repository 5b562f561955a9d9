"""Attribution maps from Captum, one function per method, each (B, 3, H, W) input -> (B, h, w) map.

  Grad-CAM      Selvaraju et al. 2017, https://arxiv.org/abs/1610.02391 (Captum LayerGradCam)
  Grad-CAM++    Chattopadhay et al. 2018, https://arxiv.org/abs/1710.11063
  saliency      Simonyan et al. 2014, https://arxiv.org/abs/1312.6034 (Captum Saliency)
  SmoothGrad    Smilkov et al. 2017, https://arxiv.org/abs/1706.03825 (Captum NoiseTunnel)
  Integrated    Sundararajan et al. 2017, https://arxiv.org/abs/1703.01365 (Captum IntegratedGradients)
  gradients
Layer methods take the module `layers.hooked` gives (a CNN map or a transformer token grid).
Maps are raw (not normalised); `normalise` brings them to [0, 1] for drawing.
"""
from __future__ import annotations

import torch
from torch import nn

from ..extras import require

SMOOTHGRAD_SAMPLES = 16  # Smilkov et al. see diminishing returns near 50; 16 keeps explain interactive on a CPU
SMOOTHGRAD_NOISE = 0.15  # std of the added noise, as a fraction of the [0, 1] input range (paper: 10-20%)
IG_STEPS = 32  # Gauss-Legendre steps from black; Captum's 50 moved our [0, 1] maps by 0.002 on average (max 0.04)
INTERNAL_BATCH = 64  # noisy or interpolated copies evaluated per forward pass: bounds memory, not results
PIXEL_PERCENTILE = 99.0  # pixel maps have a few extreme values: scale by the 99th percentile, as Captum's plots do



def _captum():
    """captum.attr, imported on first use: at import time it adds 0.4 s to every imgcls command."""
    return require("explain", "captum.attr")

def gradcam(model: nn.Module, layer: nn.Module, images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return _captum().LayerGradCam(model, layer).attribute(images, target=targets, relu_attributions=True)[:, 0]


def gradcam_plus_plus(model: nn.Module, layer: nn.Module, images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    # Hand-written: Captum has no Grad-CAM++, and pytorch-grad-cam needs OpenCV (libGL on servers).
    # Captum still provides the layer's gradients and activations; only the weighting is here.
    grads = _captum().LayerGradientXActivation(model, layer, multiply_by_inputs=False).attribute(images, target=targets)
    acts = _captum().LayerActivation(model, layer).attribute(images)  # (B, C, h, w)
    grads_2, grads_3 = grads.pow(2), grads.pow(3)
    denominator = 2 * grads_2 + acts.sum(dim=(2, 3), keepdim=True) * grads_3
    alpha = grads_2 / torch.where(denominator != 0, denominator, torch.ones_like(denominator))
    weights = (alpha * grads.clamp(min=0)).sum(dim=(2, 3), keepdim=True)  # (B, C, 1, 1)
    return (weights * acts).sum(1).clamp(min=0)


def saliency(model: nn.Module, images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return _captum().Saliency(model).attribute(images, target=targets, abs=True).amax(1)  # max over colour, as Simonyan et al.


def smoothgrad(model: nn.Module, images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    attributions = _captum().NoiseTunnel(_captum().Saliency(model)).attribute(
        images, nt_type="smoothgrad", nt_samples=SMOOTHGRAD_SAMPLES, stdevs=SMOOTHGRAD_NOISE,
        nt_samples_batch_size=max(1, INTERNAL_BATCH // len(images)), target=targets, abs=True)
    return attributions.amax(1)


def integrated_gradients(model: nn.Module, images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    attributions = _captum().IntegratedGradients(model).attribute(
        images, baselines=0.0, target=targets, n_steps=IG_STEPS, internal_batch_size=INTERNAL_BATCH)
    return attributions.sum(1).abs()  # evidence for or against the class both make a pixel important


def activations(model: nn.Module, layer: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """(B, C, h, w) outputs of `layer`."""
    return _captum().LayerActivation(model, layer).attribute(images)


def normalise(maps: torch.Tensor, size: int, percentile: float | None = None) -> torch.Tensor:
    """(B, h, w) raw maps -> (B, size, size) in [0, 1]: bilinear upsampling, then each map divided by
    its maximum (or `percentile`) and clipped. An all-zero map stays zero: nothing was found."""
    maps = maps.detach().float()
    if maps.shape[-2:] != (size, size):
        maps = nn.functional.interpolate(maps[:, None], size=(size, size), mode="bilinear", align_corners=False)[:, 0]
    flat = maps.flatten(1)
    scale = flat.amax(1) if percentile is None else torch.quantile(flat, percentile / 100, dim=1)
    scale = torch.where(scale > 0, scale, flat.amax(1))
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    return (maps / scale[:, None, None]).clamp(0, 1)
