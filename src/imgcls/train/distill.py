"""Knowledge distillation (Hinton et al. 2015, https://arxiv.org/abs/1503.02531): `imgcls train --distill-from
TEACHER` trains a small model on a larger imgcls bundle's softened answers as well as on the labels.

    loss = alpha * T^2 * KL(softmax(teacher / T) || softmax(student / T)) + (1 - alpha) * hard_loss(student, labels)

T^2 keeps the soft term's gradients on the scale of the hard one's whatever T (Hinton et al., section 2).

The teacher runs once, before training, on the un-augmented training images (from the decode cache, at the
teacher's own image size): its probabilities at T travel beside the labels as extra target columns, so the
training loop, its augmentation and its checkpoints need nothing of their own. The student sees augmented
views whose teacher answer was never computed; the clean image's answer stands in for it. That is close for
the presets' label-preserving changes (shifts, flips, crops, colour), which the teacher was trained to be
invariant to, and it saves a teacher forward pass per step (more than the student's whole step, for a 224 px
teacher and a 32 px student). Mixup and CutMix (--augment strong) mix the teacher's probabilities with the
same weights as the labels, the usual soft-target reading of a mixed image.
"""
from __future__ import annotations

import logging
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..data.cache import DecodeCacheOptions, decode_cached
from ..data.loader import to_model_input
from ..errors import ImgclsError
from ..models.bundle import load_bundle, read_bundle_config

log = logging.getLogger(__name__)

TEACHER_BATCH = 128  # images per teacher forward pass (no gradients: memory is the activations of one batch)


class DistillationLoss(nn.Module):
    """`hard_loss` on the labels, blended with the KL divergence from the teacher's probabilities at
    `temperature`. Targets are (B, 2C): the labels, then the teacher's probabilities (soft_targets); with
    (B, C) targets (validation) the loss is `hard_loss` alone, so val_loss stays comparable across runs."""

    def __init__(self, hard_loss: nn.Module, alpha: float, temperature: float):
        super().__init__()
        self.hard_loss, self.alpha, self.temperature = hard_loss, alpha, temperature

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        classes = logits.shape[1]
        hard = self.hard_loss(logits, targets[:, :classes])
        if targets.shape[1] == classes:
            return hard
        soft = F.kl_div(F.log_softmax(logits / self.temperature, dim=1), targets[:, classes:], reduction="batchmean")
        return self.alpha * self.temperature ** 2 * soft + (1 - self.alpha) * hard


def soft_targets(labels: torch.Tensor, teacher_probabilities: torch.Tensor) -> torch.Tensor:
    """(N, C) labels and (N, C) teacher probabilities -> the (N, 2C) targets DistillationLoss reads."""
    return torch.cat([labels, teacher_probabilities.to(labels.device, labels.dtype)], dim=1)


def _names(classes: list[str], shown: int = 5) -> str:
    return f"{len(classes)}: {', '.join(classes[:shown])}{', ...' if len(classes) > shown else ''}"


def check_teacher(teacher: str | Path, classes: list[str]) -> None:
    """A teacher answers for `classes`, in their order, one class per image: else a one-line error, before any work."""
    config = read_bundle_config(teacher)
    if config.classes != classes:
        raise ImgclsError(f"the teacher '{teacher}' was trained on other classes ({_names(config.classes)}) than this "
                          f"data ({_names(classes)}); distil from a bundle trained on the same class folders")
    if config.multi_label:
        raise ImgclsError(f"the teacher '{teacher}' is multi-label; --distill-from takes a single-label bundle")


@torch.inference_mode()
def teacher_probabilities(teacher: str | Path, classes: list[str], paths: list[Path], labels: torch.Tensor,
                          temperature: float, device: torch.device, cache: DecodeCacheOptions) -> torch.Tensor:
    """(N, C) softmax(teacher logits / temperature) of the un-augmented images at `paths` (the training
    split's readable ones, in order, whose (N, C) one-hot `labels` only go into the log), computed once.
    The teacher must know `classes`, in the same order."""
    check_teacher(teacher, classes)
    model, config = load_bundle(teacher, device)
    decoded = decode_cached(paths, config.img_size, cache)
    if len(decoded.kept) != len(paths):
        raise ImgclsError(f"{len(paths) - len(decoded.kept)} training images do not decode at the teacher's "
                          f"{config.img_size} px (e.g. {decoded.failed[0][0]}); fix or remove them")
    logits = [model(to_model_input(torch.as_tensor(decoded.pixels[start: start + TEACHER_BATCH]), device)).float().cpu()
              for start in range(0, len(paths), TEACHER_BATCH)]
    logits = torch.cat(logits)
    accuracy = (logits.argmax(1) == labels.argmax(1).cpu()).float().mean().item()
    log.info("teacher %s (%s at %d px): %.1f%% right on the %d training images", teacher, config.architecture,
             config.img_size, 100 * accuracy, len(paths))
    return (logits / temperature).softmax(1)

