"""Extending training from Python: callbacks, a caller's optimizer and schedule, and the built-in
schedules on torch's schedulers."""
from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

import imgcls
from imgcls.errors import ImgclsError
from imgcls.rundir import RunDir
from imgcls.train.callbacks import EarlyStopping
from imgcls.train.config import OptimisationOptions
from imgcls.train.schedule import build_scheduler, replan

from conftest import FAST_CONFIG


class Recorder(imgcls.Callback):
    """Records the hooks it sees; stops training after `stop_after` epochs."""

    def __init__(self, stop_after: int | None = None):
        self.stop_after, self.events = stop_after, []

    def on_train_begin(self, trainer):
        self.events.append("train_begin")

    def on_epoch_begin(self, trainer):
        self.events.append(f"epoch_begin {trainer.epoch + 1}")

    def on_epoch_end(self, trainer, logs):
        self.events.append(f"epoch_end {logs['epoch']}")
        if logs["epoch"] == self.stop_after:
            trainer.stop_training = True

    def on_train_end(self, trainer):
        self.events.append("train_end")


def test_a_user_callback_sees_each_epoch_begin_and_end_and_can_stop_training(digits_dir, tmp_path):
    recorder = Recorder(stop_after=2)
    result = imgcls.train(digits_dir, tmp_path / "run", progress=False, callbacks=[recorder], **FAST_CONFIG)
    assert recorder.events == ["train_begin", "epoch_begin 1", "epoch_end 1", "epoch_begin 2", "epoch_end 2",
                               "train_end"]
    assert [h["epoch"] for h in result.history] == [1, 2]  # of 3: the callback stopped it
    assert (result.bundle_dir / "model.safetensors").is_file()


def test_a_passed_optimizer_and_schedule_train_the_model(digits_dir, tmp_path):
    planned = []

    def halved(optimizer, total_steps):
        planned.append(total_steps)
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 0.5)

    result = imgcls.train(digits_dir, tmp_path / "run", progress=False, **{**FAST_CONFIG, "epochs": 2},
                          optimizer=lambda model: torch.optim.Adam(model.parameters(), lr=0.004), scheduler=halved)
    assert [h["lr"] for h in result.history] == [0.002, 0.002]  # the Adam's lr, halved by the schedule
    steps_per_epoch = -(-len(list((digits_dir / "train").rglob("*.png"))) // FAST_CONFIG["batch_size"])
    assert planned == [2 * steps_per_epoch]
    assert result.history[1]["train_loss"] < result.history[0]["train_loss"]  # it trained


def test_early_stopping_starts_afresh_in_each_fit_and_a_resumed_fit_keeps_its_count():
    model = torch.nn.Linear(2, 2)
    trainer = SimpleNamespace(model=model, eval_model=model, stop_training=False, history=[], epoch=0)
    stopper = EarlyStopping(patience=2)
    stopper.on_train_begin(trainer)
    for epoch, val_loss in enumerate([0.5, 0.7], start=1):
        stopper.on_epoch_end(trainer, {"epoch": epoch, "val_loss": val_loss})
    assert (stopper.best_loss, stopper.wait) == (0.5, 1)

    trainer.epoch = 2  # a resumed run: the checkpoint's count goes on
    stopper.on_train_begin(trainer)
    assert (stopper.best_loss, stopper.wait) == (0.5, 1)

    trainer.epoch = 0  # a new fit: nothing of the last one is left to stop it early or restore its weights
    stopper.on_train_begin(trainer)
    assert (stopper.best_loss, stopper.best_epoch, stopper.wait, stopper.best_state) == (math.inf, 0, 0, None)
    stopper.on_epoch_end(trainer, {"epoch": 1, "val_loss": 0.9})
    assert not trainer.stop_training and stopper.best_loss == 0.9

    stopper.start_from(0.3, model)  # a probe head: epoch 0 of every fit
    stopper.on_epoch_end(trainer, {"epoch": 1, "val_loss": 0.4})
    stopper.on_train_begin(trainer)
    assert (stopper.best_loss, stopper.wait) == (0.3, 0) and stopper.best_state is not None


def hand_written_multiplier(kind: str, step: int, total: int, warmup_fraction: float) -> float:
    """The schedule as imgcls computed it before it used torch's LambdaLR: the reference."""
    warmup = int(warmup_fraction * total) if kind in ("onecycle", "triangular") else 0
    if kind == "constant":
        return 1.0
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return 1 - progress if kind == "triangular" else 0.5 * (1 + math.cos(math.pi * progress))


@pytest.mark.parametrize("kind", ["onecycle", "triangular", "cosine", "constant"])
def test_the_built_in_schedules_give_the_learning_rates_they_always_gave(kind):
    groups = [{"params": [torch.nn.Parameter(torch.zeros(1))], "lr": 0.4},
              {"params": [torch.nn.Parameter(torch.zeros(1))], "lr": 0.04}]  # e.g. layer-wise lr scales
    optimizer = torch.optim.SGD(groups, lr=0.4)
    scheduler = build_scheduler(optimizer, OptimisationOptions(schedule=kind, warmup_fraction=0.15), total_steps=100)
    for step in range(101):
        for group, base in zip(optimizer.param_groups, (0.4, 0.04)):
            assert group["lr"] == pytest.approx(base * hand_written_multiplier(kind, step, 100, 0.15), abs=1e-12)
        optimizer.step()
        scheduler.step()


def test_a_replanned_schedule_still_ends_at_zero():
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    scheduler = build_scheduler(optimizer, OptimisationOptions(schedule="onecycle"), total_steps=100)
    for _ in range(30):
        optimizer.step()
        scheduler.step()
    assert replan(scheduler, 60)  # a time budget found that only 60 steps fit
    for _ in range(30):
        optimizer.step()
        scheduler.step()
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.0, abs=1e-12)


def test_the_plateau_schedule_cuts_the_lr_on_the_patience_th_epoch_without_progress():
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    scheduler = build_scheduler(optimizer, OptimisationOptions(schedule="plateau", plateau_patience=2, plateau_factor=0.5),
                                total_steps=100)
    rates = []
    for val_loss in [1.0, 0.9, 0.95, 0.96, 0.90005, 0.8, 0.85, 0.86]:  # 0.90005: not better by 1e-4
        scheduler.step(val_loss)
        rates.append(optimizer.param_groups[0]["lr"])
    assert rates == [1.0, 1.0, 1.0, 0.5, 0.5, 0.5, 0.5, 0.25]


def test_a_checkpoint_of_an_older_imgcls_is_a_one_line_error_on_resume(tmp_path):
    tmp_path.mkdir(exist_ok=True)
    torch.save({"config": {}, "epoch": 1, "schedule": {"step_count": 3}}, RunDir(tmp_path).checkpoint)
    with pytest.raises(ImgclsError, match="written by another version of imgcls.*cannot resume; start a new run") as error:
        imgcls.train(None, tmp_path, resume=True)
    assert "\n" not in str(error.value)
