"""Pretrained first: photos fine-tune real ImageNet weights from the Hugging Face cache with no flags;
without weights the run says so and trains from scratch; local and corrupt weight files; the time budget."""
from __future__ import annotations

import json
import time

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

import imgcls
from imgcls.cli.main import main
from imgcls.errors import UsageError
from imgcls.train.probe import fit_linear_probe
from imgcls.train.time_budget import parse_duration

from conftest import SHARED_WEIGHTS

SHAPES = ("circle", "square", "triangle", "cross")
PHOTO_PX = 96  # photo-sized for the default choice (>= 64 px), small enough to write fast


def _draw(shape: str, rng: np.random.Generator) -> Image.Image:
    """A coloured shape at a random place and size on a noisy background."""
    image = Image.fromarray(rng.integers(0, 90, (PHOTO_PX, PHOTO_PX, 3), dtype=np.uint8))
    draw = ImageDraw.Draw(image)
    size = int(rng.integers(30, 60))
    x, y = (int(v) for v in rng.integers(4, PHOTO_PX - size - 4, 2))
    colour = tuple(int(v) for v in rng.integers(150, 256, 3))
    box = (x, y, x + size, y + size)
    if shape == "circle":
        draw.ellipse(box, fill=colour)
    elif shape == "square":
        draw.rectangle(box, fill=colour)
    elif shape == "triangle":
        draw.polygon([(x, y + size), (x + size, y + size), (x + size // 2, y)], fill=colour)
    else:
        draw.rectangle((x, y + size // 3, x + size, y + 2 * size // 3), fill=colour)
        draw.rectangle((x + size // 3, y, x + 2 * size // 3, y + size), fill=colour)
    return image


@pytest.fixture(scope="module")
def shapes_dir(tmp_path_factory):
    """ROOT/{train,validation}/<shape>/*.jpg: 12 and 6 photo-sized images per class."""
    root, rng = tmp_path_factory.mktemp("shapes"), np.random.default_rng(0)
    for split, count in (("train", 12), ("validation", 6)):
        for shape in SHAPES:
            folder = root / split / shape
            folder.mkdir(parents=True)
            for i in range(count):
                _draw(shape, rng).save(folder / f"{i}.jpg", quality=90)
    return root


def run_cli(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def _bundle_config(run_dir) -> dict:
    return json.loads((run_dir / "model" / "config.json").read_text())


@pytest.fixture(scope="module")
def default_run(shapes_dir, imagenet_hf_home, tmp_path_factory):
    """`imgcls train DIR --epochs 2` with the shared ImageNet weights in an offline Hugging Face cache."""
    from huggingface_hub import constants

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HF_HOME", str(imagenet_hf_home))
        patch.setattr(constants, "HF_HUB_CACHE", str(imagenet_hf_home / "hub"))
        run_dir = tmp_path_factory.mktemp("runs") / "default"
        code = main(["train", str(shapes_dir), "--out", str(run_dir), "--epochs", "2", "--no-progress", "--no-report"])
    assert code == 0
    return run_dir


def test_photos_with_no_flags_fine_tune_the_cached_imagenet_weights(default_run):
    config = _bundle_config(default_run)
    assert config["architecture"] == "efficientnet_lite0" and config["training_mode"] == "finetune"
    assert config["weights_source"] == "hf-hub:timm/efficientnet_lite0.ra_in1k"
    # the backbone's own input: its pretrained size and normalisation, not the 96 px of the images
    assert config["img_size"] == 224
    assert config["mean"] == pytest.approx([0.485, 0.456, 0.406]) and config["std"] == pytest.approx([0.229, 0.224, 0.225])
    # ImageNet features separate coloured shapes from 12 examples each: far above chance (0.25)
    assert config["metrics"]["linear_probe_accuracy"] >= 0.75 and config["metrics"]["accuracy"] >= 0.75


def test_early_layers_stay_as_pretrained_and_later_ones_are_fine_tuned(default_run):
    from safetensors.torch import load_file

    saved = load_file(str(default_run / "model" / "model.safetensors"))
    imagenet = load_file(str(SHARED_WEIGHTS / "efficientnet_lite0_in1k.safetensors"))
    assert torch.equal(saved["net.conv_stem.weight"], imagenet["conv_stem.weight"])  # frozen: too close to the pixels to move
    assert not torch.equal(saved["net.blocks.6.0.conv_pw.weight"], imagenet["blocks.6.0.conv_pw.weight"])


def test_prediction_applies_the_backbone_preprocessing(default_run, shapes_dir):
    images = sorted((shapes_dir / "validation").rglob("*.jpg"))
    results = imgcls.load(default_run).predict(images, top_k=1)
    accuracy = np.mean([r["labels"][0] == path.parent.name for r, path in zip(results, images)])
    assert accuracy == pytest.approx(_bundle_config(default_run)["metrics"]["accuracy"], abs=1e-9)


def test_without_weights_the_default_says_so_in_one_line_and_trains_from_scratch(shapes_dir, tmp_path, capsys):
    code, _, err = run_cli(capsys, "train", shapes_dir, "--out", tmp_path / "run", "--epochs", "1", "--no-progress", "--no-report")
    assert code == 0
    notes = [line for line in err.splitlines() if "no pretrained weights" in line]
    assert len(notes) == 1 and "--weights FILE" in notes[0] and "network" in notes[0]
    config = _bundle_config(tmp_path / "run")
    assert config["architecture"] == "cnn-bn" and config["training_mode"] == "scratch" and config["weights_source"] == "none"


def test_asking_for_pretrained_weights_that_cannot_be_had_is_a_one_line_error(shapes_dir, tmp_path, capsys):
    code, _, err = run_cli(capsys, "train", shapes_dir, "--out", tmp_path / "run", "--pretrained", "--no-progress")
    assert code == 1 and "Traceback" not in err
    assert "could not get pretrained weights for 'efficientnet_lite0'" in err and "--weights FILE" in err


def test_a_local_weights_file_starts_the_run_and_is_recorded(shapes_dir, tmp_path, capsys):
    weights = SHARED_WEIGHTS / "efficientnet_lite0_in1k.safetensors"
    if not weights.is_file():
        pytest.skip(f"no pretrained weights at {SHARED_WEIGHTS}")
    code, _, err = run_cli(capsys, "train", shapes_dir, "--out", tmp_path / "run", "--model", "efficientnet_lite0",
                           "--weights", weights, "--freeze", "--augment", "none", "--no-progress", "--no-report")
    assert code == 0, err
    config = _bundle_config(tmp_path / "run")
    assert config["weights_source"] == f"file:{weights.resolve()}" and config["training_mode"] == "freeze"
    assert config["img_size"] == 224  # the size the weights were trained at, not the images' 96 px
    assert config["metrics"]["accuracy"] >= 0.75


def test_a_corrupt_weights_file_is_a_clear_error(shapes_dir, tmp_path, capsys):
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(b"\x00not a safetensors file" * 10)
    code, _, err = run_cli(capsys, "train", shapes_dir, "--out", tmp_path / "run", "--model", "efficientnet_lite0",
                           "--weights", broken, "--no-progress")
    assert code == 1 and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert f"could not read weights file '{broken}'" in err


def test_frozen_head_without_augmentation_is_a_linear_probe_fitted_once(digits_dir, trained_run, tmp_path, capsys):
    code, _, err = run_cli(capsys, "train", digits_dir, "--out", tmp_path / "run", "--init-from", trained_run.run_dir,
                           "--freeze", "--augment", "none", "--no-progress", "--no-report")
    assert code == 0, err
    history = (tmp_path / "run" / "history.csv").read_text().splitlines()
    assert len(history) == 2  # header and the probe's one row: no epochs to run
    assert _bundle_config(tmp_path / "run")["metrics"]["accuracy"] > 0.6


def test_the_linear_probe_separates_what_is_linearly_separable():
    generator = torch.Generator().manual_seed(0)
    centres = torch.randn(4, 32, generator=generator) * 3
    labels = torch.arange(400) % 4
    features = centres[labels] + torch.randn(400, 32, generator=generator)
    targets = torch.nn.functional.one_hot(labels, 4).float()
    probe = fit_linear_probe(features[:300], targets[:300])
    held_out = (probe.logits(features[300:]).argmax(1) == labels[300:]).float().mean()
    assert held_out > 0.95 and probe.weight.shape == (4, 32)


def test_fine_tuning_that_never_beats_the_probe_keeps_the_probe(shapes_dir, with_imagenet_weights, tmp_path, capsys):
    code, _, err = run_cli(capsys, "train", shapes_dir, "--out", tmp_path / "run", "--epochs", "1", "--lr", "5",
                           "--no-progress", "--no-report")
    assert code == 0, err
    assert "keeping the starting model" in err
    metrics = _bundle_config(tmp_path / "run")["metrics"]
    # the saved model is exactly what was validated: no BatchNorm statistics recomputed after restoring it
    assert metrics["accuracy"] == pytest.approx(metrics["linear_probe_accuracy"], abs=1e-9)


@pytest.mark.parametrize("text, seconds", [("90s", 90), ("10m", 600), ("1.5h", 5400), ("2", 120), ("3min", 180)])
def test_time_budgets_read_like_durations(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "ten minutes", "-5m", "0"])
def test_a_duration_that_is_not_one_is_a_usage_error(text):
    with pytest.raises(UsageError, match="--time takes a duration"):
        parse_duration(text)


def test_a_time_budget_chooses_the_epochs_and_the_run_ends_within_it(digits_dir, tmp_path, capsys):
    budget = 25
    start = time.perf_counter()
    code, _, err = run_cli(capsys, "train", digits_dir, "--out", tmp_path / "run", "--model", "cnn-bn", "--img-size", "32",
                           "--time", f"{budget}s", "--no-progress", "--no-report", "--device", "cpu")
    elapsed = time.perf_counter() - start
    assert code == 0, err
    history = (tmp_path / "run" / "history.csv").read_text().splitlines()[1:]
    assert "time budget:" in err and len(history) > 1
    assert budget * 0.7 <= elapsed <= budget * 1.1  # the budget is used, and held


def test_no_pretrained_on_photos_trains_the_scratch_default(shapes_dir, tmp_path, capsys):
    code, _, err = run_cli(capsys, "train", shapes_dir, "--out", tmp_path / "run", "--no-pretrained", "--epochs", "1",
                           "--no-progress", "--no-report")
    assert code == 0 and "no pretrained weights" not in err
    config = _bundle_config(tmp_path / "run")
    assert config["architecture"] == "cnn-bn" and config["weights_source"] == "none"


def test_defaults_follow_the_mode_and_the_size_of_the_data():
    from imgcls.train.config import TrainConfig
    from imgcls.train.defaults import choose_schedule

    tiny = choose_schedule(TrainConfig.from_options(model="efficientnet_lite0", pretrained=True), 75)
    assert tiny.optimisation.batch_size == 8 and tiny.optimisation.epochs == 30  # 8 steps per epoch; 30 epochs is the cap
    assert tiny.optimisation.lr == pytest.approx(4e-4 * 8 / 64)  # fine-tuning's rate, scaled to the batch
    large = choose_schedule(TrainConfig.from_options(model="efficientnet_lite0", pretrained=True), 5000)
    assert large.optimisation.batch_size == 32 and large.optimisation.epochs == 5
    scratch = choose_schedule(TrainConfig.from_options(model="cnn-bn", pretrained=False), 5000)
    scratch = scratch.optimisation
    assert (scratch.batch_size, scratch.epochs, scratch.lr) == (64, 30, None)  # lr None: the optimizer's default
    given = dict(batch_size=64, epochs=3, lr=1e-3)
    asked = choose_schedule(TrainConfig.from_options(model="efficientnet_lite0", pretrained=True, **given), 75).optimisation
    assert (asked.batch_size, asked.epochs, asked.lr) == (64, 3, 1e-3)  # what the user gives is kept
