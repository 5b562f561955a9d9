"""Transfer learning: --init-from, frozen backbones with cached features, fine-tuning, calibration."""
from __future__ import annotations

import json

import pytest
import torch

from imgcls.errors import ImgclsError
from imgcls.models.builtin import CnnBn
from imgcls.models.classifier import Classifier
from imgcls.models.registry import create_model
from imgcls.train.calibration import fit_temperature
from imgcls.train.config import TrainConfig
from imgcls.train.run import train
from imgcls.train.transfer import classifier_head, frozen_early_layers, layer_lr_scales, set_backbone_trainable

from conftest import FAST_CONFIG

TRANSFER = {k: v for k, v in FAST_CONFIG.items() if k not in ("model", "img_size")}


def _weights(run_dir):
    from safetensors.torch import load_file

    return load_file(str(run_dir / "model" / "model.safetensors"))


def test_init_from_continues_the_source_architecture_size_and_weights(trained_run, digits_dir, tmp_path):
    config = TrainConfig.from_options(TRANSFER, epochs=1, init_from=str(trained_run.run_dir), mode="freeze")
    result = train(digits_dir, tmp_path / "run", config,
                   progress=False)
    config = json.loads((result.bundle_dir / "config.json").read_text())
    assert config["architecture"] == "cnn-bn" and config["img_size"] == 32
    source, moved = _weights(trained_run.run_dir), _weights(result.run_dir)
    backbone = [k for k in source if k.startswith("net.blocks")]
    assert backbone and all(torch.equal(source[k], moved[k]) for k in backbone)  # frozen: untouched


def test_init_from_with_another_architecture_is_a_clear_error(trained_run, digits_dir, tmp_path):
    with pytest.raises(ImgclsError, match="is a 'cnn-bn' but --model is 'lenet5'"):
        train(digits_dir, tmp_path / "run", TrainConfig.from_options(**TRANSFER, model="lenet5", init_from=str(trained_run.run_dir)))


def test_frozen_backbone_without_augmentation_fits_the_head_on_features_computed_once(trained_run, digits_dir, tmp_path, monkeypatch):
    from imgcls.train.run import FEATURE_BATCH

    calls = {"backbone": 0}
    original_forward = CnnBn.forward_features

    def counting_forward(self, x):
        calls["backbone"] += 1
        return original_forward(self, x)

    monkeypatch.setattr(CnnBn, "forward_features", counting_forward)
    config = TrainConfig.from_options(**{**TRANSFER, "epochs": 6}, init_from=str(trained_run.run_dir), mode="freeze", augment="none")
    result = train(digits_dir, tmp_path / "cached", config, progress=False)
    batches_per_pass = -(-210 // FEATURE_BATCH) + -(-40 // FEATURE_BATCH)  # train + validation features, once each
    final_pass = -(-40 // 128)  # validation predictions of the saved model
    assert calls["backbone"] == batches_per_pass + final_pass
    assert len(result.history) == 1 and result.metrics["accuracy"] > 0.5  # a linear probe: fitted, not trained in epochs


def test_finetune_trains_the_head_first_then_everything_with_layer_wise_rates(trained_run, digits_dir, tmp_path):
    config = TrainConfig.from_options(TRANSFER, epochs=2, init_from=str(trained_run.run_dir), mode="finetune", head_epochs=1,
                                      schedule="constant")
    result = train(digits_dir, tmp_path / "run", config, progress=False)
    checkpoint = torch.load(result.run_dir / "checkpoint.pt", weights_only=True)
    rates = sorted({group["initial_lr"] for group in checkpoint["optimizer"]["param_groups"]})  # before the schedule
    assert len(rates) > 2  # one rate per depth
    # The epoch line and history.csv show the rate --lr sets (the head's), not the stem's, far lower.
    assert [h["lr"] for h in result.history] == pytest.approx([rates[-1]] * 2)
    # unfrozen in epoch 2: the checkpoint holds the weights epoch 2 ended on (the bundle may hold an earlier,
    # better-validated epoch's)
    source = _weights(trained_run.run_dir)
    assert not torch.equal(source["net.blocks.0.0.weight"], checkpoint["model"]["net.blocks.0.0.weight"])


def test_layer_rates_decay_towards_the_input():
    model = Classifier(CnnBn(3, img_size=32))
    scales = layer_lr_scales(model, decay=0.5)
    assert scales["net.head.3.weight"] == 1.0
    assert scales["net.blocks.2.0.weight"] == 0.5 and scales["net.blocks.0.0.weight"] == 0.125


def test_a_residual_network_gets_one_rate_per_block_from_its_group_matcher():
    model = Classifier(create_model("resnet18", num_classes=3, img_size=224))
    scales = layer_lr_scales(model, decay=0.5)
    assert scales["net.fc.weight"] == 1.0
    assert scales["net.layer4.1.conv2.weight"] == 0.5 and scales["net.layer4.0.downsample.1.bias"] == 0.25
    assert scales["net.layer2.0.conv1.weight"] == 0.5 ** 6 and scales["net.conv1.weight"] == scales["net.bn1.weight"] == 0.5 ** 9


# What fine-tuning a pretrained backbone keeps frozen with the default layer decay: its stem and the
# high-resolution blocks, where the backward pass costs most and the rate would be under a tenth.
# Pinned to what the name-based grouping froze before rates came from timm's group_matcher.
FROZEN_WHEN_FINETUNING = {
    "efficientnet_lite0": ("conv_stem.", "bn1.", "blocks.0.", "blocks.1.", "blocks.2."),
    "resnet18": ("conv1.", "bn1.", "layer1."),
}


@pytest.mark.parametrize("name", FROZEN_WHEN_FINETUNING)
def test_finetuning_a_pretrained_backbone_freezes_its_stem_and_first_blocks(name):
    model = Classifier(create_model(name, num_classes=3, img_size=224))
    frozen = frozen_early_layers(model, TrainConfig().model.layer_decay)
    expected = {n for n, _ in model.named_parameters() if n.removeprefix("net.").startswith(FROZEN_WHEN_FINETUNING[name])}
    assert frozen == expected


def test_freezing_leaves_only_the_head_trainable_and_batchnorm_can_stay_frozen():
    model = Classifier(CnnBn(3, img_size=32))
    set_backbone_trainable(model, False)
    assert [n for n, p in model.named_parameters() if p.requires_grad] == ["net.head.3.weight", "net.head.3.bias"]
    set_backbone_trainable(model, True, freeze_batchnorm=True)
    assert not model.net.blocks[0][2].weight.requires_grad and model.net.blocks[0][0].weight.requires_grad
    assert classifier_head(model) is model.net.head[3]


def test_temperature_scaling_recovers_the_temperature_that_made_logits_overconfident():
    torch.manual_seed(0)
    true_logits = torch.randn(4000, 5) * 2
    labels = torch.distributions.Categorical(logits=true_logits).sample()
    assert fit_temperature(true_logits * 3, labels) == pytest.approx(3, rel=0.1)


def test_training_stores_a_temperature_and_reports_calibration_before_and_after(trained_run):
    config = json.loads((trained_run.bundle_dir / "config.json").read_text())
    metrics = json.loads((trained_run.run_dir / "evaluation" / "metrics.json").read_text())
    assert config["temperature"] > 0 and metrics["temperature"] == config["temperature"]
    # T minimises validation NLL, not ECE, so on 40 images ECE may move either way: both are reported.
    assert 0 <= metrics["ece"] <= 1 and 0 <= metrics["ece_before_calibration"] <= 1
