"""Optimisers and learning-rate schedules; the schedule is a multiplier on each group's base lr."""
from __future__ import annotations

import math

import torch
from torch import nn

from .config import TrainConfig

NORM_LAYERS = (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.LayerNorm)


def build_optimizer(model: nn.Module, config: TrainConfig, lr_scales: dict[str, float] | None = None) -> torch.optim.Optimizer:
    """One group per (lr scale, decay or not). No weight decay on biases and norm parameters:
    decaying them only hurts (Goyal et al. 2017). Frozen parameters are included: they get no
    gradient, so the optimizer skips them until they are unfrozen."""
    lr, weight_decay = config.resolved_lr(), config.resolved_weight_decay()
    in_norms = {id(p) for m in model.modules() if isinstance(m, NORM_LAYERS) for p in m.parameters(recurse=False)}
    grouped: dict[tuple[float, bool], list] = {}
    for name, param in model.named_parameters():
        scale = (lr_scales or {}).get(name, 1.0) * (config.norm_lr_scale if id(param) in in_norms else 1.0)
        grouped.setdefault((scale, param.ndim > 1), []).append(param)
    groups = [{"params": params, "lr": lr * scale, "weight_decay": weight_decay if decays else 0.0}
              for (scale, decays), params in grouped.items()]
    # fused: one kernel per step rather than a dozen passes over every parameter; on 2 CPU cores the
    # AdamW step of resnet26d takes 5.5 ms instead of 23.5 ms (bench/optimizer.py).
    if config.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=lr, fused=True)
    if config.optimizer == "adam":  # L2 through the gradient, as Keras' kernel_regularizer does
        return torch.optim.Adam(groups, lr=lr, fused=True)
    if config.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=config.momentum, nesterov=config.momentum > 0, fused=True)
    return torch.optim.RMSprop(groups, lr=lr, foreach=True)  # PyTorch has no fused RMSprop


class LrSchedule:
    """onecycle (linear warm-up, cosine decay), triangular (linear warm-up, linear decay: the short
    schedule of the CIFAR-10 speed runs), cosine, constant, or plateau (constant, cut on stalls)."""

    def __init__(self, optimizer: torch.optim.Optimizer, config: TrainConfig, total_steps: int):
        self.optimizer = optimizer
        self.kind, self.warmup_fraction = config.schedule, config.warmup_fraction
        self.set_total_steps(total_steps)
        self.patience, self.factor = config.plateau_patience, config.plateau_factor
        self.step_count, self.plateau_scale, self.best_loss, self.stalled_epochs = 0, 1.0, math.inf, 0
        for group in optimizer.param_groups:
            group.setdefault("base_lr", group["lr"])
        self._apply()

    def set_total_steps(self, total_steps: int) -> None:
        """Plan (or re-plan, mid-run) the schedule over `total_steps`."""
        self.total_steps = max(1, total_steps)
        self.warmup_steps = int(self.warmup_fraction * total_steps) if self.kind in ("onecycle", "triangular") else 0

    def multiplier(self) -> float:
        step = self.step_count
        if self.kind in ("constant", "plateau"):
            return self.plateau_scale
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        progress = min(1.0, (step - self.warmup_steps) / max(1, self.total_steps - self.warmup_steps))
        if self.kind == "triangular":
            return 1 - progress
        return 0.5 * (1 + math.cos(math.pi * progress))

    def _apply(self) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = group["base_lr"] * self.multiplier()

    def step(self) -> None:
        self.step_count += 1
        self._apply()

    def end_epoch(self, val_loss: float) -> None:
        if self.kind != "plateau":
            return
        if val_loss < self.best_loss - 1e-4:
            self.best_loss, self.stalled_epochs = val_loss, 0
        else:
            self.stalled_epochs += 1
            if self.stalled_epochs >= self.patience:
                self.plateau_scale *= self.factor
                self.stalled_epochs = 0
                self._apply()

    def state_dict(self) -> dict:
        return {k: getattr(self, k) for k in ("step_count", "plateau_scale", "best_loss", "stalled_epochs")}

    def load_state_dict(self, state: dict) -> None:
        for key, value in state.items():
            setattr(self, key, value)
        self._apply()
