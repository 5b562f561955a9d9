"""Transfer learning: the new head, frozen backbones, layer-wise learning rates, and a head
trained on backbone features computed once.

Every model is a timm model, so all of this reads timm's interface: the head is `get_classifier()`,
the features it reads come from `forward_head(pre_logits=True)` (Classifier.pre_logits), and the
layers from input to head are the model's `group_matcher` groups (timm's fine ones, those of its
`param_groups_layer_decay`: one per block, the stem first, the head last).

Fine-tuning starts from a head fitted as a linear probe (train.probe, LP-FT), then trains the
network with lower rates near the input (layer-wise decay as in BEiT, https://arxiv.org/abs/2106.08254).
Groups in the first third of the backbone whose rate would fall under a tenth of the head's stay
frozen, since they would hardly move and their backward pass, at the highest resolutions, is most of
a step's cost (efficientnet_lite0 at 224 px on 2 CPU cores: 14 img/s with everything trained, 36 with
the stem and first three stages frozen). The first-third bound keeps deep backbones, whose many
fine groups take the rate under a tenth early, from freezing more than their high-resolution part.
"""
from __future__ import annotations

import logging

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from ..errors import ImgclsError
from .callbacks import Callback

log = logging.getLogger(__name__)

SMALL_BATCH = 16  # below this, batch statistics are too noisy: keep pretrained BatchNorm frozen
FROZEN_BELOW = 0.1  # layer-decay multiplier under which a group of a pretrained backbone may stay frozen
FROZEN_DEPTH = 1 / 3  # ... if it lies in this first fraction of the backbone's groups


def classifier_head(model: nn.Module) -> nn.Linear:
    """The classifier of the Classifier's timm model (get_classifier()): the layer a linear probe replaces."""
    head = model.net.get_classifier()
    if not isinstance(head, nn.Linear):
        raise ImgclsError(f"the classifier of {type(model.net).__name__} is a {type(head).__name__}, not the linear "
                          "layer --freeze and --finetune fit; pick another --model, or train it from scratch (--no-pretrained)")
    return head


def set_backbone_trainable(model: nn.Module, trainable: bool, freeze_batchnorm: bool = False,
                           frozen: frozenset[str] = frozenset()) -> None:
    """Everything but the head follows `trainable`, except the parameters named in `frozen`;
    BatchNorm stays frozen if asked (small batches, pretrained statistics)."""
    for name, param in model.named_parameters():
        param.requires_grad = trainable and name not in frozen
    if freeze_batchnorm:
        for module in model.modules():
            if isinstance(module, _BatchNorm):
                module.requires_grad_(False)
    classifier_head(model).requires_grad_(True)


def is_frozen_batchnorm(module: nn.Module) -> bool:
    """A BatchNorm layer none of whose parameters trains: it keeps the statistics it came with.
    One whose scale alone is fixed (speedrun-cnn's) still trains, statistics included."""
    params = list(module.parameters(recurse=False))
    return isinstance(module, _BatchNorm) and bool(params) and not any(p.requires_grad for p in params)


def keep_frozen_batchnorm_in_eval(model: nn.Module) -> None:
    """Call after model.train(): frozen BatchNorm layers keep their pretrained statistics."""
    for module in model.modules():
        if is_frozen_batchnorm(module):
            module.eval()


def parameter_layers(model: nn.Module) -> dict[str, int]:
    """Each parameter name of the Classifier ('net.blocks.3.conv.weight') -> its layer group, from 0
    at the input to the head's, the last: the model's own group_matcher, as timm groups it."""
    from timm.models import group_parameters

    layers = group_parameters(model.net, model.net.group_matcher(coarse=False), reverse=True)
    return {f"net.{name}": layer for name, layer in layers.items()}


def layer_lr_scales(model: nn.Module, decay: float) -> dict[str, float]:
    """Learning-rate multiplier per parameter name: 1 for the head's group, decay**k k groups before it."""
    layers = parameter_layers(model)
    head = max(layers.values())
    return {name: decay ** (head - layer) for name, layer in layers.items()}


def frozen_early_layers(model: nn.Module, decay: float) -> frozenset[str]:
    """The parameters of the first FROZEN_DEPTH of the backbone's groups whose layer-decay rate is
    under FROZEN_BELOW of the head's."""
    layers = parameter_layers(model)
    head = max(layers.values())  # also the number of groups before it, the backbone's
    return frozenset(name for name, layer in layers.items()
                     if layer < head * FROZEN_DEPTH and decay ** (head - layer) < FROZEN_BELOW)


class UnfreezeBackbone(Callback):
    """Train only the head for `head_epochs`, then the network but its `frozen` early layers."""

    def __init__(self, head_epochs: int, freeze_batchnorm: bool, frozen: frozenset[str] = frozenset()):
        self.head_epochs, self.freeze_batchnorm, self.frozen = head_epochs, freeze_batchnorm, frozen

    def _apply(self, trainer) -> None:
        unfrozen = trainer.epoch >= self.head_epochs
        set_backbone_trainable(trainer.model, unfrozen, self.freeze_batchnorm, self.frozen)
        if unfrozen and trainer.epoch == self.head_epochs and self.head_epochs:
            log.info("unfreezing the backbone after %d head-only epoch(s)", self.head_epochs)

    def on_train_begin(self, trainer):
        self._apply(trainer)

    def on_epoch_end(self, trainer, logs):
        self._apply(trainer)


@torch.no_grad()
def head_inputs(model: nn.Module, batches) -> tuple[torch.Tensor, torch.Tensor]:
    """The features the head reads (Classifier.pre_logits) for every image in `batches`, computed once
    (eval mode), with their targets."""
    from tqdm.auto import tqdm

    model.eval()
    features, targets = [], []
    # a minute or two for thousands of photos on a CPU: worth a bar (shown on terminals only)
    for images, target in tqdm(batches, desc="frozen features", unit="batch", leave=False, disable=None):
        features.append(model.pre_logits(images).float().cpu())
        targets.append(target.cpu())
    return torch.cat(features), torch.cat(targets)
