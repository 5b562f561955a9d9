"""`--time 10m`: the number of epochs that ends the whole run within a wall-clock budget.

Like Ultralytics' `time=`, but the schedule is planned for the epochs that fit rather than cut
short: a few optimisation and inference steps are timed on this machine first, so the learning
rate still warms up and decays over the whole run; after each epoch the plan is corrected with the
epochs' real duration (first steps run slower or faster than later ones; other processes come and go).
"""
from __future__ import annotations

import copy
import io
import logging
import math
import re
import time
from typing import Callable

import torch

from ..distributed import broadcast_object
from ..errors import UsageError
from .callbacks import Callback
from .loop import PRECISE_BN_IMAGES, Trainer
from .transfer import is_frozen_batchnorm, keep_frozen_batchnorm_in_eval

log = logging.getLogger(__name__)

TIMED_STEPS = 3  # after one warm-up step (first-call allocations, oneDNN kernel choice)
# After the last epoch: calibration and evaluation share one validation pass (two with TTA), then plots, the
# bundle and the report, which reads the predictions back and audits from the file hashes the decode pass kept
# (data.hashes) rather than reading every image again: its Grad-CAM tiles and the rest fit in the fixed seconds.
FINISH_VALIDATION_PASSES, FINISH_FIXED_S = 2, 5.0
SAFETY = 0.95  # plan for 95% of the budget: the estimate is within a few percent, the contract within 10%

_UNITS = {"s": 1, "m": 60, "min": 60, "h": 3600}


def parse_duration(text: str) -> float:
    """'90s', '10m', '1.5h' -> seconds; a bare number is minutes."""
    found = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(s|m|min|h)?\s*", str(text))
    if not found or float(found[1]) <= 0:
        raise UsageError(f"--time takes a duration such as 90s, 10m or 1.5h; got '{text}'")
    return float(found[1]) * _UNITS[found[2] or "m"]


def _seconds_per_step(trainer: Trainer) -> float:
    """The mean time of TIMED_STEPS real training steps (augmentation included) after a warm-up step."""
    trainer.model.train()
    keep_frozen_batchnorm_in_eval(trainer.model)
    trainer.train_batches.set_epoch(0)
    batches = iter(trainer.train_batches)
    times = []
    for _ in range(TIMED_STEPS + 1):
        try:
            images, targets = next(batches)
        except StopIteration:
            batches = iter(trainer.train_batches)
            images, targets = next(batches)
        start = time.perf_counter()
        loss, _, _ = trainer.train_step(images, targets)
        loss.item()  # wait for the device
        times.append(time.perf_counter() - start)
    return sum(times[1:]) / TIMED_STEPS


@torch.inference_mode()
def _seconds_per_image(trainer: Trainer) -> float:
    """Inference cost of one validation image (validation, precise BN, evaluation, report)."""
    trainer.model.eval()
    images, _ = next(iter(trainer.val_batches))
    trainer.model(images)
    start = time.perf_counter()
    trainer.model(images).float().sum().item()
    return (time.perf_counter() - start) / len(images)


def estimate_epoch_seconds(trainer: Trainer) -> tuple[float, float]:
    """(seconds per epoch, seconds per validation pass), measured on this machine. The model's
    weights are put back afterwards: timing must not train."""
    saved = copy.deepcopy(trainer.model.state_dict())
    for callback in trainer.callbacks:  # e.g. which layers are frozen, as in the real first epoch
        callback.on_train_begin(trainer)
    try:
        step_s = _seconds_per_step(trainer)
        image_s = _seconds_per_image(trainer)
        start = time.perf_counter()
        torch.save(trainer.state_dict(), io.BytesIO())  # the checkpoint written after every epoch
        checkpoint_s = time.perf_counter() - start
    finally:
        trainer.model.load_state_dict(saved)
        trainer.optimizer.zero_grad(set_to_none=True)
    val_s = image_s * len(trainer.val_batches.targets)
    updates_batchnorm = any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and not is_frozen_batchnorm(m)
                            for m in trainer.model.modules())
    precise_bn_s = image_s * min(PRECISE_BN_IMAGES, len(trainer.train_batches.targets)) if updates_batchnorm else 0.0
    return step_s * len(trainer.train_batches) + val_s + precise_bn_s + checkpoint_s, val_s


class TimeBudget(Callback):
    """After each epoch, re-plan the number of epochs from the measured pace so the run ends by
    `deadline` (time.perf_counter()), `finish_s` being kept for evaluation and the report. The
    schedule is stretched or shrunk to the new total, so it still ends at a learning rate of zero."""

    def __init__(self, deadline: float, finish_s: float):
        self.deadline, self.finish_s, self.started = deadline, finish_s, None

    def on_train_begin(self, trainer):
        self.started = time.perf_counter()

    def on_epoch_end(self, trainer, logs):
        now = time.perf_counter()
        epoch_s = (now - self.started) / trainer.epoch
        epochs = max(trainer.epoch, trainer.epoch + math.floor((SAFETY * (self.deadline - now) - self.finish_s) / epoch_s))
        epochs = broadcast_object(epochs, trainer.ranks)  # every process runs process 0's plan
        if epochs != trainer.config.optimisation.epochs:
            log.debug("time budget: %d epochs instead of %d (an epoch takes %.1fs)", epochs, trainer.config.optimisation.epochs, epoch_s)
            trainer.set_epochs(epochs)


def fit_epochs_to_budget(trainer: Trainer, remaining_s: float, rebuild: Callable[[int], Trainer]) -> Trainer:
    """A trainer rebuilt (fresh optimiser and schedule) for the epochs that fit in `remaining_s`,
    with a TimeBudget callback that keeps the plan on time."""
    deadline = time.perf_counter() + remaining_s
    epoch_s, val_s = estimate_epoch_seconds(trainer)
    finish_s = FINISH_VALIDATION_PASSES * val_s + FINISH_FIXED_S
    epochs = broadcast_object(max(1, math.floor((SAFETY * remaining_s - finish_s) / epoch_s)), trainer.ranks)
    if epochs == 1 and SAFETY * remaining_s < finish_s + epoch_s:
        log.warning("the time budget is too short: one epoch takes about %.0fs and evaluation %.0fs more, "
                    "%.0fs were left; training 1 epoch", epoch_s, finish_s, remaining_s)
    log.info("time budget: %d epochs of about %.1fs fit in the %.0fs left", epochs, epoch_s, remaining_s)
    trainer = rebuild(epochs)
    trainer.callbacks.append(TimeBudget(deadline, finish_s))
    return trainer
