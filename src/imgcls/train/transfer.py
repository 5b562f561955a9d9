"""Transfer learning: the new head, frozen backbones, layer-wise learning rates, and a head
trained on backbone features computed once.

Fine-tuning starts from a head fitted as a linear probe (train.probe, LP-FT), then trains the
network with lower rates near the input (layer-wise decay as in BEiT, https://arxiv.org/abs/2106.08254);
groups whose rate would fall under a tenth of the head's stay frozen, since they would hardly move and
their backward pass, at the highest resolutions, is most of a step's cost (efficientnet_lite0 at 224 px
on 2 CPU cores: 14 img/s with everything trained, 36 with the stem and first three blocks frozen).
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
FROZEN_BELOW = 0.1  # layer-decay multiplier under which a group of a pretrained backbone stays frozen


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


def _depth_key(name: str) -> str:
    """'net.blocks.3.conv.weight' -> 'blocks.3'; 'net.conv1.weight' -> 'conv1': one group per stage or block."""
    parts = name.removeprefix("net.").split(".")
    return ".".join(parts[:2]) if len(parts) > 2 and re.fullmatch(r"\d+", parts[1]) else parts[0]


def layer_lr_scales(model: nn.Module, decay: float) -> dict[str, float]:
    """Learning-rate multiplier per parameter name: 1 for the head's group, decay**k k groups before it."""
    keys = list(dict.fromkeys(_depth_key(name) for name, _ in model.named_parameters()))
    depth = {key: i for i, key in enumerate(keys)}
    return {name: decay ** (len(keys) - 1 - depth[_depth_key(name)]) for name, _ in model.named_parameters()}


def frozen_early_layers(lr_scales: dict[str, float]) -> frozenset[str]:
    """The parameters whose layer-decay rate is under FROZEN_BELOW of the head's."""
    return frozenset(name for name, scale in lr_scales.items() if scale < FROZEN_BELOW)


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
    """The features the head sees for every image in `batches`, computed once (eval mode),
    caught at the head's input so every architecture gives what its classifier reads."""
    from tqdm.auto import tqdm

    captured = []
    hook = classifier_head(model).register_forward_pre_hook(lambda _, args: captured.append(args[0].float().cpu()))
    model.eval()
    targets = []
    try:  # a minute or two for thousands of photos on a CPU: worth a bar (shown on terminals only)
        for images, target in tqdm(batches, desc="frozen features", unit="batch", leave=False, disable=None):
            model(images)
            targets.append(target.cpu())
    finally:
        hook.remove()
    return torch.cat(captured), torch.cat(targets)
