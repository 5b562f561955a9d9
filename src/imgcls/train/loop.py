"""The training loop: a skeleton of callback hooks around one optimisation step.

Device and precision come from the caller; with precision "auto" the forward runs under bf16
autocast on CUDA and on CPUs that compute bf16 natively, in fp32 elsewhere (runtime.autocast).

With several processes (distributed.Ranks) a step runs through DistributedDataParallel, which
averages the gradients of the processes' parts of the batch; every process validates its block
of the validation images and the logits are gathered, so every process computes the same
metrics and takes the same decisions (early stopping, plateaus), as one process would.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn
from torch.optim.lr_scheduler import ReduceLROnPlateau
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from ..data.loader import Batches
from ..distributed import Ranks, all_reduce_sum, average_buffers, gather_rows
from ..models.classifier import tta_logits
from ..runtime import autocast
from .callbacks import Callback
from .config import TrainConfig
from .schedule import Scheduler, base_lr, build_optimizer, build_scheduler, replan
from .transfer import is_frozen_batchnorm, keep_frozen_batchnorm_in_eval

log = logging.getLogger(__name__)


def make_loss(config: TrainConfig, class_weights: torch.Tensor | None) -> nn.Module:
    if config.data.multi_label:
        return nn.BCEWithLogitsLoss(pos_weight=class_weights)
    return nn.CrossEntropyLoss(weight=class_weights, label_smoothing=config.optimisation.label_smoothing)


def count_correct(logits: torch.Tensor, targets: torch.Tensor, multi_label: bool) -> torch.Tensor:
    """Correct decisions in the batch: top-1 hits, or per-label hits at 0.5 for multi-label."""
    targets = targets[:, : logits.shape[1]]  # the labels: a distilled run's teacher columns follow them (train.distill)
    if multi_label:
        return ((logits > 0) == (targets > 0.5)).float().mean(dim=1).sum()
    return (logits.argmax(1) == targets.argmax(1)).sum()


@torch.inference_mode()
def predict_logits(model: nn.Module, batches: Batches, precision: str = "fp32",
                   tta: str = "none") -> tuple[torch.Tensor, torch.Tensor]:
    """Logits and targets for every image in `batches`, in order, on the CPU."""
    model.eval()
    outputs, targets = [], []
    for images, target in batches:
        with autocast(images.device, precision):
            outputs.append(tta_logits(model, images, tta).cpu())
        targets.append(target.cpu())
    return torch.cat(outputs), torch.cat(targets)


@dataclass
class RunningMetrics:
    """The epoch so far; reading a value syncs with the device, so callbacks read it sparingly."""

    loss_sum: torch.Tensor
    correct: torch.Tensor
    seen: int

    @property
    def loss(self) -> float:
        return self.loss_sum.item() / self.seen

    @property
    def accuracy(self) -> float:
        return self.correct.item() / self.seen


PRECISE_BN_IMAGES = 2048  # enough for stable statistics (Wu & Johnson 2021 use ~1k-10k); ~1 s on CPU
AUGMENT_SEED_STRIDE = 7919  # process r augments with seed + 2 + r * this: different draws for different images


@torch.no_grad()
def recompute_batchnorm(model: nn.Module, batches: Batches, precision: str = "fp32",
                        max_images: int = PRECISE_BN_IMAGES) -> None:
    """Replace BatchNorm running statistics by exact averages over training images ("precise BN",
    https://arxiv.org/abs/2105.07576). Running averages lag behind fast-changing weights: on a few
    hundred images they leave evaluation at chance while batch statistics give a good model.
    With several processes each measures its parts of the same batches and the averages are averaged."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats
             and not is_frozen_batchnorm(m)]  # frozen layers keep pretrained statistics
    if not norms:
        return
    momenta = [m.momentum for m in norms]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # cumulative average over the batches below
    was_training = model.training
    model.train()
    for count, (images, _) in enumerate(batches, 1):
        with autocast(images.device, precision):
            model(images)
        if count * batches.batch_size >= max_images:  # whole batches, so that every process stops at the same one
            break
    for norm, momentum in zip(norms, momenta):
        norm.momentum = momentum
    average_buffers([stat for norm in norms for stat in (norm.running_mean, norm.running_var)], batches.ranks)
    model.train(was_training)


OptimizerFactory = Callable[[nn.Module], torch.optim.Optimizer]
SchedulerFactory = Callable[[torch.optim.Optimizer, int], Scheduler]


@dataclass
class Extensions:
    """What a Python caller adds to a run (imgcls.train(data, callbacks=..., optimizer=..., scheduler=...)):
    code rather than settings, so kept out of TrainConfig, args.yaml and the checkpoint's config."""

    callbacks: list[Callback] = field(default_factory=list)  # run with the built-in ones, in Callback.order
    # model -> optimizer, e.g. lambda model: torch.optim.SGD(model.parameters(), lr=0.01). None: the config's
    # (build_optimizer: per-layer lr scales, no weight decay on biases and norms).
    optimizer: OptimizerFactory | None = None
    # (optimizer, total optimizer steps) -> scheduler, stepped after every optimizer step; a ReduceLROnPlateau
    # is stepped after every epoch with val_loss instead. None: the config's schedule (build_scheduler).
    scheduler: SchedulerFactory | None = None


CHECKPOINT_FORMAT = 2  # Trainer.state_dict's layout; 2: torch schedulers' state under "scheduler"


class Trainer:
    def __init__(self, model: nn.Module, config: TrainConfig, train_batches: Batches, val_batches: Batches,
                 augment, loss_fn: nn.Module, callbacks: list[Callback], device: torch.device,
                 lr_scales: dict[str, float] | None = None, ranks: Ranks = Ranks(),
                 extensions: Extensions | None = None):
        extensions = extensions or Extensions()
        self.model, self.config, self.device, self.ranks = model, config, device, ranks
        self.train_batches, self.val_batches = train_batches, val_batches
        self.augment, self.loss_fn = augment, loss_fn
        self.callbacks = sorted(callbacks + extensions.callbacks, key=lambda callback: callback.order)  # stable
        self.optimizer = (extensions.optimizer(model) if extensions.optimizer is not None
                          else build_optimizer(model, config.optimisation, lr_scales))
        self.step_count, self.total_steps = 0, config.optimisation.epochs * len(train_batches)  # optimizer steps
        self.scheduler = (extensions.scheduler(self.optimizer, self.total_steps) if extensions.scheduler is not None
                          else build_scheduler(self.optimizer, config.optimisation, self.total_steps))
        self.augment_generator = torch.Generator().manual_seed(config.runtime.seed + 2 + AUGMENT_SEED_STRIDE * ranks.rank)
        self.epoch, self.history, self.stop_training = 0, [], False
        self.batchnorm_stale = False  # set by callbacks that change the weights after the last validation
        self.extra_state: dict = {}  # stored with each checkpoint (e.g. the data folder, for --resume)
        self.step_model: nn.Module | None = None  # see prepare_step_model
        self.trains: tuple[bool, ...] = ()
        if device.type == "cuda":  # training batches keep one shape: let cuDNN time its kernels once and keep the fastest
            torch.backends.cudnn.benchmark = True
        # EMA of weights (Polyak averaging): validated, checkpointed for early stopping, and saved in place of the raw weights.
        self.ema = (AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(config.optimisation.ema), use_buffers=True)
                    if config.optimisation.ema else None)

    def fit(self) -> list[dict]:
        self.stop_training = False
        for callback in self.callbacks:
            callback.on_train_begin(self)
        while self.epoch < self.config.optimisation.epochs and not self.stop_training:
            for callback in self.callbacks:
                callback.on_epoch_begin(self)
            logs = self.train_epoch()
            self.epoch += 1
            recompute_batchnorm(self.eval_model, self.train_batches, self.config.runtime.precision)
            logs.update(self.validate(), epoch=self.epoch)
            if isinstance(self.scheduler, ReduceLROnPlateau):
                self.scheduler.step(logs["val_loss"])
            self.history.append(logs)
            for callback in self.callbacks:
                callback.on_epoch_end(self, logs)
        if self.ema is not None:  # validated every epoch, statistics included
            self.model.load_state_dict(self.ema.module.state_dict())
        for callback in self.callbacks:
            callback.on_train_end(self)
        # Only weights that were never validated get new statistics: recomputing those of restored
        # best weights changed what was validated (a pretrained BatchNorm frozen in its best epoch is
        # trainable at the end, so it was recomputed: 72.7% at the best epoch, 54.5% saved).
        if self.batchnorm_stale:
            recompute_batchnorm(self.model, self.train_batches, self.config.runtime.precision)
        return self.history

    def set_epochs(self, epochs: int) -> None:
        """Change the length of the run mid-way (a time budget); the schedule follows, when it can."""
        self.config = self.config.with_options(epochs=epochs)
        self.total_steps = epochs * len(self.train_batches)
        if not replan(self.scheduler, self.total_steps):
            log.debug("the schedule %s keeps its plan for the new length of %d epochs",
                      type(self.scheduler).__name__, epochs)

    @property
    def eval_model(self) -> nn.Module:
        """The weights that are validated and kept: the EMA when there is one."""
        return self.ema.module if self.ema is not None else self.model

    def train_epoch(self) -> dict:
        self.model.train()
        keep_frozen_batchnorm_in_eval(self.model)
        self.train_batches.set_epoch(self.epoch)
        start, seen = time.perf_counter(), 0
        loss_sum = torch.zeros((), device=self.device)  # accumulated on device: no sync per step
        correct = torch.zeros((), device=self.device)
        for images, targets in self.train_batches:
            loss, logits, targets = self.train_step(images, targets)
            seen += len(images)
            loss_sum += loss.detach() * len(images)
            correct += count_correct(logits.detach(), targets, self.config.data.multi_label)
            for callback in self.callbacks:
                callback.on_batch_end(self, RunningMetrics(loss_sum, correct, seen))
        totals = all_reduce_sum(torch.stack([loss_sum, correct.float(), torch.tensor(float(seen), device=self.device)]),
                                self.ranks).tolist()  # every process's images
        return {"epoch": self.epoch, "train_loss": totals[0] / totals[2], "train_accuracy": totals[1] / totals[2],
                "lr": base_lr(self.optimizer), "seconds": time.perf_counter() - start}

    def prepare_step_model(self) -> None:
        """What a step calls: the model, compiled on request, and with several processes wrapped in
        DistributedDataParallel, which is built again when callbacks change which parameters train
        (it reduces the gradients of those that trained when it was built). Parameters are shared,
        so checkpoints and the EMA see the plain module."""
        trains = tuple(parameter.requires_grad for parameter in self.model.parameters())
        if self.step_model is not None and (trains == self.trains or not self.ranks.active):
            return
        self.trains, model = trains, self.model
        if self.ranks.active:
            from torch.nn.parallel import DistributedDataParallel

            model = DistributedDataParallel(model, device_ids=[self.device] if self.device.type == "cuda" else None)
        self.step_model = torch.compile(model) if self.config.runtime.compile else model

    def train_step(self, images: torch.Tensor, targets: torch.Tensor):
        self.prepare_step_model()
        images, targets = self.augment(images, targets, self.augment_generator)
        with autocast(self.device, self.config.runtime.precision):
            logits = self.step_model(images)
        loss = self.loss_fn(logits.float(), targets)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.config.optimisation.grad_clip > 0:
            nn.utils.clip_grad_norm_(self.model.parameters(), self.config.optimisation.grad_clip)
        self.optimizer.step()
        self.step_count += 1
        if self.ema is not None:
            self.ema.update_parameters(self.model)
        if not isinstance(self.scheduler, ReduceLROnPlateau):
            self.scheduler.step()
        return loss, logits, targets

    def validate(self) -> dict:
        logits, targets = predict_logits(self.eval_model, self.val_batches, self.config.runtime.precision)
        logits, targets = gather_rows(logits, self.ranks), gather_rows(targets, self.ranks)
        loss = self.loss_fn(logits.to(self.device), targets.to(self.device)).item()  # class weights live there
        return {"val_loss": loss, "val_accuracy": count_correct(logits, targets, self.config.data.multi_label).item() / len(targets)}

    def state_dict(self) -> dict:
        return {
            **self.extra_state, "format": CHECKPOINT_FORMAT,
            "config": self.config.options(saved_only=True), "epoch": self.epoch, "history": self.history,
            "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
            "ema": self.ema.state_dict() if self.ema is not None else None,
            "scheduler": self.scheduler.state_dict(), "step_count": self.step_count,
            "callbacks": {type(c).__name__: c.state_dict() for c in self.callbacks},
            "rng": {"torch": torch.get_rng_state(), "batches": self.train_batches.generator.get_state(),
                    "augment": self.augment_generator.get_state(),
                    "cuda": torch.cuda.get_rng_state(self.device) if self.device.type == "cuda" else None},
        }

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        if self.ema is not None:
            self.ema.load_state_dict(state["ema"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.step_count = state["step_count"]
        self.epoch, self.history = state["epoch"], state["history"]
        for callback in self.callbacks:
            callback.load_state_dict(state["callbacks"].get(type(callback).__name__, {}))
        torch.set_rng_state(state["rng"]["torch"])
        self.train_batches.generator.set_state(state["rng"]["batches"])
        self.augment_generator.set_state(state["rng"]["augment"])
        if self.ranks.rank > 0:  # the checkpoint holds process 0's draws; the others must differ from them
            self.augment_generator.manual_seed(self.config.runtime.seed + 2 + AUGMENT_SEED_STRIDE * self.ranks.rank + self.epoch)
        if self.device.type == "cuda" and state["rng"].get("cuda") is not None:  # dropout and mixing draw there
            torch.cuda.set_rng_state(state["rng"]["cuda"], self.device)
