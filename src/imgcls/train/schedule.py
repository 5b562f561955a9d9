"""Optimisers and learning-rate schedules: torch's schedulers, LambdaLR over our multiplier for the
step-wise schedules and ReduceLROnPlateau for plateau."""
from __future__ import annotations

import math
from typing import Union

import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR, LRScheduler, ReduceLROnPlateau

from .config import OptimisationOptions

NORM_LAYERS = (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.LayerNorm)


def build_optimizer(model: nn.Module, options: OptimisationOptions,
                    lr_scales: dict[str, float] | None = None) -> torch.optim.Optimizer:
    """One group per (lr scale, decay or not). No weight decay on biases and norm parameters:
    decaying them only hurts (Goyal et al. 2017). Frozen parameters are included: they get no
    gradient, so the optimizer skips them until they are unfrozen."""
    lr, weight_decay = options.resolved_lr(), options.resolved_weight_decay()
    in_norms = {id(p) for m in model.modules() if isinstance(m, NORM_LAYERS) for p in m.parameters(recurse=False)}
    grouped: dict[tuple[float, bool], list] = {}
    for name, param in model.named_parameters():
        scale = (lr_scales or {}).get(name, 1.0) * (options.norm_lr_scale if id(param) in in_norms else 1.0)
        grouped.setdefault((scale, param.ndim > 1), []).append(param)
    groups = [{"params": params, "lr": lr * scale, "lr_scale": scale, "weight_decay": weight_decay if decays else 0.0}
              for (scale, decays), params in grouped.items()]
    # fused: one kernel per step rather than a dozen passes over every parameter; on 2 CPU cores the
    # AdamW step of resnet26d takes 5.5 ms instead of 23.5 ms (bench/optimizer.py).
    if options.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=lr, fused=True)
    if options.optimizer == "adam":  # L2 through the gradient, as Keras' kernel_regularizer does
        return torch.optim.Adam(groups, lr=lr, fused=True)
    if options.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=options.momentum, nesterov=options.momentum > 0, fused=True)
    return torch.optim.RMSprop(groups, lr=lr, foreach=True)  # PyTorch has no fused RMSprop


def base_lr(optimizer: torch.optim.Optimizer) -> float:
    """The rate --lr sets, where the schedule has brought it: the epoch line's and history.csv's lr. Not a
    group's own: under layer-wise rates the first group is the stem's, lower by up to a few hundred times. A caller's
    optimizer, whose groups carry no lr_scale, reports its first group's rate."""
    group = optimizer.param_groups[0]
    return group["lr"] / group.get("lr_scale", 1.0)


PLATEAU_THRESHOLD = 1e-4  # a val_loss must beat the best by this much to count as progress


class LrMultiplier:
    """The multiplier on each group's base lr after `step` optimizer steps: onecycle (linear warm-up,
    cosine decay), triangular (linear warm-up, linear decay: the short schedule of the CIFAR-10 speed
    runs), cosine, or constant. A callable object rather than a closure: LambdaLR checkpoints an
    object's attributes, so a resumed run continues the plan it was on (re-planned by a time budget)."""

    def __init__(self, kind: str, warmup_fraction: float, total_steps: int):
        self.kind, self.warmup_fraction = kind, warmup_fraction
        self.set_total_steps(total_steps)

    def set_total_steps(self, total_steps: int) -> None:
        """Plan (or re-plan, mid-run) the schedule over `total_steps`."""
        self.total_steps = max(1, total_steps)
        self.warmup_steps = int(self.warmup_fraction * total_steps) if self.kind in ("onecycle", "triangular") else 0

    def __call__(self, step: int) -> float:
        if self.kind == "constant":
            return 1.0
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        progress = min(1.0, (step - self.warmup_steps) / max(1, self.total_steps - self.warmup_steps))
        if self.kind == "triangular":
            return 1 - progress
        return 0.5 * (1 + math.cos(math.pi * progress))


Scheduler = Union[LRScheduler, ReduceLROnPlateau]  # Union: the alias is evaluated at import, on Python 3.9 too


def build_scheduler(optimizer: torch.optim.Optimizer, options: OptimisationOptions, total_steps: int) -> Scheduler:
    """The schedule `options.schedule` names: LambdaLR over LrMultiplier, stepped after every optimizer
    step, or for plateau a constant lr cut by ReduceLROnPlateau, stepped after every epoch on val_loss."""
    if options.schedule == "plateau":
        # Cut on the plateau_patience-th epoch without progress: torch counts the epochs it waits past patience.
        return ReduceLROnPlateau(optimizer, mode="min", factor=options.plateau_factor,
                                 patience=max(0, options.plateau_patience - 1), threshold=PLATEAU_THRESHOLD,
                                 threshold_mode="abs")
    return LambdaLR(optimizer, LrMultiplier(options.schedule, options.warmup_fraction, total_steps))


def replan(scheduler: Scheduler, total_steps: int) -> bool:
    """Stretch or shrink the schedule to `total_steps`; False for a schedule that cannot be re-planned
    (a caller's own, or plateau, which has no length)."""
    multipliers = [fn for fn in getattr(scheduler, "lr_lambdas", []) if isinstance(fn, LrMultiplier)]
    for multiplier in multipliers:
        multiplier.set_total_steps(total_steps)
    return bool(multipliers)
