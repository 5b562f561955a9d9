"""The speed-run recipe's parts: whitening, alternating flips, triangular schedule, stored TTA, precision."""
from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from imgcls.cli.main import main
from imgcls.data.augment import build_augment
from imgcls.data.loader import Batches
from imgcls.errors import UsageError
from imgcls.models.builtin import SpeedrunCNN, WhiteningConv
from imgcls.models.bundle import load_bundle
from imgcls.predict.predictor import Predictor
from imgcls.models.classifier import tta_logits
from imgcls.runtime import compute_dtype
from imgcls.train.callbacks import Lookahead
from imgcls.train.config import OptimisationOptions, TrainConfig
from imgcls.train.run import train
from imgcls.train.schedule import build_optimizer, build_scheduler
from imgcls.train.transfer import keep_frozen_batchnorm_in_eval


def test_whitening_layer_decorrelates_and_equalises_image_patches():
    generator = torch.Generator().manual_seed(0)
    smooth = torch.nn.functional.avg_pool2d(torch.rand(64, 3, 36, 36, generator=generator), 5, 1)  # correlated neighbours
    images = (smooth - 0.5) * torch.tensor([10.0, 5.0, 20.0]).view(1, 3, 1, 1)  # as normalised images: unit-ish scale
    layer = WhiteningConv(3)
    layer.fit(images)
    responses = layer(images)[:, :12].permute(0, 2, 3, 1).reshape(-1, 12)  # the first sign of each direction
    covariance = responses.T @ responses / len(responses)
    assert torch.allclose(covariance - torch.diag(covariance.diag()), torch.zeros(12, 12), atol=1e-3)  # decorrelated
    assert covariance.diag().min() > 0.8 and covariance.diag().max() < 1.0  # equal variances, up to the eps guard
    assert not layer.weight.requires_grad


def test_alternating_flips_show_every_image_both_ways_in_any_two_epochs():
    rows = torch.arange(8 * 4 * 3, dtype=torch.uint8).view(8, 1, 4, 3).expand(8, 4, 4, 3).contiguous()  # (N, H, W, 3)
    batches = Batches(rows.numpy(), torch.eye(8), batch_size=8, alternating_flip=True)
    views = []
    for epoch in range(3):
        batches.set_epoch(epoch)
        (images, _), = list(batches)
        views.append(images)
    original = rows.permute(0, 3, 1, 2).float() / 255
    flipped_first = (views[0] == original.flip(3)).flatten(1).all(1)
    assert 0 < flipped_first.sum() < 8  # a random half, not all or none
    assert torch.equal((views[1] == original.flip(3)).flatten(1).all(1), ~flipped_first)  # then the other half
    assert torch.equal(views[2], views[0])
    assert torch.equal(torch.from_numpy(batches.inputs.numpy()), rows)  # the decoded cache is never flipped in place


def test_shift_preset_moves_digits_without_mirroring_them():
    augment = build_augment("shift", 28, num_classes=2)
    image = torch.zeros(1, 3, 28, 28)
    image[..., 10:18, 6:9] = 1.0  # a bar left of centre
    moved, _ = augment(image.repeat(64, 1, 1, 1), torch.eye(2)[[0] * 64], torch.Generator().manual_seed(0))
    columns = moved[:, 0].sum(1).argmax(1)  # where the bar is in each sample
    assert (columns < 14).all()  # still on the left: never mirrored
    assert len(columns.unique()) > 3  # but shifted around


def test_triangular_schedule_rises_linearly_then_falls_to_zero():
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.4)
    schedule = build_scheduler(optimizer, OptimisationOptions(schedule="triangular", warmup_fraction=0.2), total_steps=100)
    lrs = []
    for _ in range(100):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        schedule.step()
    assert max(lrs) == pytest.approx(0.4) and int(np.argmax(lrs)) == 19
    assert lrs[60] == pytest.approx(0.4 * (1 - 40 / 80))
    assert optimizer.param_groups[0]["lr"] == 0


def test_recipe_gives_defaults_and_explicit_options_win():
    config = TrainConfig.from_options(recipe="speedrun", epochs=3, batch_size=64)
    assert (config.model.architecture, config.data.augment, config.model.tta) == ("speedrun-cnn", "speedrun", "flip-shift")
    assert config.optimisation.schedule == "triangular"
    assert (config.optimisation.epochs, config.optimisation.batch_size) == (3, 64)
    recipe = TrainConfig.from_options(recipe="speedrun")
    # the recipe's lr follows its batch size
    assert config.optimisation.lr == pytest.approx(recipe.optimisation.lr * 64 / recipe.optimisation.batch_size)
    assert TrainConfig.from_options(recipe="speedrun", batch_size=64, lr=0.1).optimisation.lr == 0.1  # unless lr is given
    with pytest.raises(UsageError, match="unknown recipe 'sppedrun'.*did you mean 'speedrun'"):
        TrainConfig.from_options(recipe="sppedrun")


def test_speedrun_recipe_trains_a_bundle_that_predicts_with_its_tta(digits_dir, tmp_path, capsys):
    run_dir = tmp_path / "run"
    assert main(["--quiet", "train", str(digits_dir), "--recipe", "speedrun", "--epochs", "4", "--batch-size", "32",
                 "--out", str(run_dir), "--no-report", "--no-progress"]) == 0
    saved = json.loads((run_dir / "model" / "config.json").read_text())
    assert (saved["architecture"], saved["tta"], saved["img_size"]) == ("speedrun-cnn", "flip-shift", 32)
    assert saved["metrics"]["accuracy"] > 0.3  # 10 digits: chance is 0.1
    images = sorted((digits_dir / "test").rglob("*.png"))[:6]
    with_flip, without = Predictor.load(run_dir), Predictor.load(run_dir, tta="none")
    assert with_flip.tta == "flip-shift" and without.tta == "none"
    pixels = np.stack([np.asarray(Image.open(p).convert("RGB").resize((32, 32))) for p in images])
    assert not np.allclose(with_flip.logits(pixels), without.logits(pixels))


def test_flip_shift_tta_averages_the_mirrored_pairs_of_the_image_and_of_two_shifted_copies():
    images = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    corner = lambda x: x[:, :, 0, 0]  # a "model" that sees only the top-left pixel: every view differs
    padded = torch.nn.functional.pad(images, (2, 2, 2, 2), mode="reflect")  # 2 px = a 32nd of 64
    views = [images, padded[..., :64, :64], padded[..., 4:, 4:]]
    pairs = [(corner(v) + corner(v.flip(3))) / 2 for v in views]
    assert torch.allclose(tta_logits(corner, images, "flip-shift"), pairs[0] / 2 + (pairs[1] + pairs[2]) / 4)
    assert torch.allclose(tta_logits(corner, images, "flip"), pairs[0])
    assert torch.equal(tta_logits(corner, images, "none"), corner(images))


def test_speedrun_cnn_starts_as_identity_convs_and_trains_only_batchnorm_shifts():
    model = SpeedrunCNN(num_classes=10)
    conv = model.blocks[1][0]  # 64 -> 256
    passthrough = torch.zeros_like(conv.weight[:64])
    passthrough[torch.arange(64), torch.arange(64), 1, 1] = 1
    assert torch.equal(conv.weight[:64], passthrough)
    norms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    optimizer = build_optimizer(model, TrainConfig.from_options(recipe="speedrun").optimisation)
    before = [(n.weight.clone(), n.bias.clone()) for n in norms]
    model.train()
    keep_frozen_batchnorm_in_eval(model)
    assert all(n.training for n in norms)  # a fixed scale is not a frozen layer: statistics still follow the batches
    model(torch.randn(8, 3, 32, 32)).logsumexp(1).mean().backward()
    optimizer.step()
    assert all(torch.equal(n.weight, w) and not torch.equal(n.bias, b) for n, (w, b) in zip(norms, before))
    assert {g["lr"] for g in optimizer.param_groups} == {0.75, 0.75 * 64}  # BatchNorm shifts at norm_lr_scale
    assert optimizer.param_groups[0]["momentum"] == 0.85


def test_lookahead_pulls_weights_to_their_slow_average_and_ends_on_it():
    model = torch.nn.Linear(1, 1, bias=False)
    torch.nn.init.zeros_(model.weight)
    trainer = SimpleNamespace(model=model, epoch=0, step_count=0, total_steps=10)
    lookahead = Lookahead(every=5, decay=0.9)
    lookahead.on_train_begin(trainer)  # slow average: 0
    for step in range(1, 11):
        model.weight.data += 1  # a "step" of the fast weights
        trainer.step_count = step
        lookahead.on_batch_end(trainer, None)
        if step == 5:  # pulled to 0.9**5 * 0.5**3 of the way back to the average of 0
            assert model.weight.item() == pytest.approx(5 * (1 - 0.9 ** 5 * 0.5 ** 3))
    slow = lookahead.slow[0].item()
    model.weight.data += 3
    lookahead.on_train_end(trainer)
    assert model.weight.item() == pytest.approx(slow)  # the run ends on the average
    resumed = Lookahead()
    resumed.load_state_dict(lookahead.state_dict())  # --resume keeps the average rather than restarting it
    trainer.epoch = 1  # as a resumed run's trainer is
    resumed.on_train_begin(trainer)
    assert torch.equal(resumed.slow[0], lookahead.slow[0])


def test_too_few_steps_per_epoch_are_flagged_with_a_batch_size_that_fits(caplog):
    from imgcls.train.run import _warn_about_batch_size

    _warn_about_batch_size(600, 1024)
    assert "600 training images make 1 step of batch 1024 per epoch" in caplog.text
    assert "--batch-size 64 or smaller" in caplog.text
    caplog.clear()
    _warn_about_batch_size(45000, 1024)
    assert caplog.text == ""


def test_whitening_is_fitted_from_the_training_images_before_training(digits_dir, tmp_path):
    config = TrainConfig.from_options(recipe="speedrun", epochs=1, batch_size=32, report=False)
    model, _ = load_bundle(train(digits_dir, tmp_path / "run", config, progress=False).bundle_dir)
    fresh = SpeedrunCNN(num_classes=10)
    assert not torch.allclose(model.net.whiten.weight, fresh.whiten.weight)
    whiten = model.net.whiten.weight.flatten(1)
    assert torch.allclose(whiten[:12], -whiten[12:])  # each direction with both signs


def test_precision_follows_the_device_and_the_users_choice():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert compute_dtype(cpu, "fp32") is None and compute_dtype(cuda, "fp32") is None
    assert compute_dtype(cpu, "bf16") is torch.bfloat16 and compute_dtype(cuda, "auto") is torch.bfloat16
    with pytest.raises(UsageError, match="unknown precision 'fp8'"):
        compute_dtype(cpu, "fp8")
    with pytest.raises(UsageError, match="unknown precision"):
        TrainConfig.from_options(precision="half").validate()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_small_datasets_live_on_the_gpu_and_give_the_same_batches():
    pixels = torch.randint(0, 256, (50, 8, 8, 3), dtype=torch.uint8).numpy()
    targets = torch.eye(5)[torch.arange(50) % 5]
    on_gpu = Batches(pixels, targets, 16, shuffle=True, device="cuda", seed=3, alternating_flip=True)
    on_cpu = Batches(pixels, targets, 16, shuffle=True, device="cpu", seed=3, alternating_flip=True)
    assert on_gpu.inputs.is_cuda and on_gpu.targets.is_cuda
    for (gpu_images, gpu_targets), (cpu_images, cpu_targets) in zip(on_gpu, on_cpu):
        assert gpu_images.is_cuda
        torch.testing.assert_close(gpu_images.cpu(), cpu_images, atol=1e-6, rtol=0)  # CUDA divides by a reciprocal
        assert torch.equal(gpu_targets.cpu(), cpu_targets)
