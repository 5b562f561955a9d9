"""Transfer learning: the new head, frozen backbones, layer-wise learning rates, and a head
trained on backbone features computed once.

Fine-tuning follows the usual recipe (Howard & Ruder 2018, https://arxiv.org/abs/1801.06146;
layer-wise decay as in BEiT, https://arxiv.org/abs/2106.08254): train the new head first so its
random gradients do not wreck the pretrained features, then unfreeze with lower rates near the input.
"""
from __future__ import annotations

import logging
import re

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from ..errors import ImgclsError
from .callbacks import Callback

log = logging.getLogger(__name__)

SMALL_BATCH = 16  # below this, batch statistics are too noisy: keep pretrained BatchNorm frozen


def classifier_head(model: nn.Module) -> nn.Linear:
    """The final linear layer: timm's get_classifier(), or the last Linear of a built-in."""
    net = getattr(model, "net", model)
    head = net.get_classifier() if hasattr(net, "get_classifier") else None
    if not isinstance(head, nn.Linear):
        linears = [m for m in net.modules() if isinstance(m, nn.Linear)]
        head = linears[-1] if linears else None
    if head is None:
        raise ImgclsError(f"found no linear classifier head in {type(net).__name__}; --freeze and --finetune need one")
    return head


def set_backbone_trainable(model: nn.Module, trainable: bool, freeze_batchnorm: bool = False) -> None:
    """Everything but the head follows `trainable`; BatchNorm stays frozen if asked (small batches)."""
    for param in model.parameters():
        param.requires_grad = trainable
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


def _depth_key(name: str) -> str:
    """'net.blocks.3.conv.weight' -> 'blocks.3'; 'net.conv1.weight' -> 'conv1': one group per stage or block."""
    parts = name.removeprefix("net.").split(".")
    return ".".join(parts[:2]) if len(parts) > 2 and re.fullmatch(r"\d+", parts[1]) else parts[0]


def layer_lr_scales(model: nn.Module, decay: float) -> dict[str, float]:
    """Learning-rate multiplier per parameter name: 1 for the head's group, decay**k k groups before it."""
    keys = list(dict.fromkeys(_depth_key(name) for name, _ in model.named_parameters()))
    depth = {key: i for i, key in enumerate(keys)}
    return {name: decay ** (len(keys) - 1 - depth[_depth_key(name)]) for name, _ in model.named_parameters()}


class UnfreezeBackbone(Callback):
    """Train only the head for `head_epochs`, then the whole network."""

    def __init__(self, head_epochs: int, freeze_batchnorm: bool):
        self.head_epochs, self.freeze_batchnorm = head_epochs, freeze_batchnorm

    def _apply(self, trainer) -> None:
        unfrozen = trainer.epoch >= self.head_epochs
        set_backbone_trainable(trainer.model, unfrozen, self.freeze_batchnorm)
        if unfrozen and trainer.epoch == self.head_epochs:
            log.info("unfreezing the backbone after %d head-only epoch(s)", self.head_epochs)

    def on_train_begin(self, trainer):
        self._apply(trainer)

    def on_epoch_end(self, trainer, logs):
        self._apply(trainer)


@torch.no_grad()
def head_inputs(model: nn.Module, batches) -> tuple[torch.Tensor, torch.Tensor]:
    """The features the head sees for every image in `batches`, computed once (eval mode)."""
    captured = []
    hook = classifier_head(model).register_forward_pre_hook(lambda _, args: captured.append(args[0].float().cpu()))
    model.eval()
    targets = []
    try:
        for images, target in batches:
            model(images)
            targets.append(target.cpu())
    finally:
        hook.remove()
    return torch.cat(captured), torch.cat(targets)
