"""The one model interface every consumer codes against: timm's, for the built-ins as for timm's families.

Transfer learning, layer-wise rates, feature caching, look-alikes, explain and export read only
`forward_features`, `forward_head(pre_logits=True)`, `get_classifier`/`reset_classifier`,
`group_matcher` and `pretrained_cfg`; each model here, at random init, must give them (as timm's
own tests check its registry).
"""
from __future__ import annotations

import pytest
import torch
from timm.models import group_parameters
from torch import nn

from imgcls.models.bundle import BundleConfig, load_bundle, save_bundle
from imgcls.models.classifier import Classifier
from imgcls.models.registry import BUILTIN_MODELS, create_model, default_img_size

# The built-ins and one cheap member of each timm family imgcls suggests or tests with: a ResNet,
# an EfficientNet, a ConvNeXt and a ViT (timm's 0.3M-parameter test ViT).
MODELS = [*BUILTIN_MODELS, "resnet18", "efficientnet_lite0", "convnext_atto", "test_vit"]
IMG_SIZE = 64  # fast for every model, and none's design size, as a user's often is not


def build(name: str, num_classes: int = 3) -> nn.Module:
    torch.manual_seed(0)
    return create_model(name, num_classes=num_classes, img_size=IMG_SIZE).eval()


def images(batch: int = 2) -> torch.Tensor:
    return torch.rand(batch, 3, IMG_SIZE, IMG_SIZE, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("name", MODELS)
def test_features_then_head_give_the_logits_and_pre_logits_of_the_advertised_width(name):
    model = build(name)
    with torch.no_grad():
        features = model.forward_features(images())
        pre_logits = model.forward_head(features, pre_logits=True)
        assert pre_logits.shape == (2, getattr(model, "head_hidden_size", model.num_features))
        assert torch.equal(model.forward_head(features), model(images()))


@pytest.mark.parametrize("name", MODELS)
def test_reset_classifier_gives_a_new_linear_head_of_the_asked_width(name):
    model = build(name)
    model.reset_classifier(7)
    assert isinstance(model.get_classifier(), nn.Linear) and model.get_classifier().out_features == 7
    with torch.no_grad():
        assert model.eval()(images()).shape == (2, 7)


@pytest.mark.parametrize("name", MODELS)
def test_group_matcher_orders_every_parameter_from_the_stem_to_the_classifier(name):
    model = build(name)
    groups = group_parameters(model, model.group_matcher(coarse=False), reverse=True)
    names = [n for n, _ in model.named_parameters()]
    assert set(groups) == set(names)
    in_order = [groups[n] for n in names]
    assert in_order == sorted(in_order) and in_order[0] == 0  # registration order is forward order here
    head = max(in_order)
    classifier = {id(p) for p in model.get_classifier().parameters()}
    assert head >= 2 and all(groups[n] == head for n, p in model.named_parameters() if id(p) in classifier)


@pytest.mark.parametrize("name", MODELS)
def test_pretrained_cfg_gives_the_design_size_and_normalisation(name):
    cfg = build(name).pretrained_cfg
    assert cfg["input_size"][0] == 3 and cfg["input_size"][-1] == default_img_size(name)
    assert len(cfg["mean"]) == len(cfg["std"]) == 3


@pytest.mark.parametrize("name", MODELS)
def test_a_saved_bundle_reloads_with_the_same_outputs(name, tmp_path):
    model = Classifier(build(name)).eval()
    config = BundleConfig(architecture=name, classes=["a", "b", "c"], img_size=IMG_SIZE,
                          mean=tuple(model.mean.flatten().tolist()), std=tuple(model.std.flatten().tolist()))
    save_bundle(model, config, tmp_path / "model")
    loaded, _ = load_bundle(tmp_path / "model")
    with torch.no_grad():
        assert torch.equal(loaded(images()), model(images()))
        assert torch.equal(loaded.pre_logits(images()), model.pre_logits(images()))


def test_a_data_dependent_initialisation_is_a_method_of_the_model_that_has_one():
    offering = [name for name in BUILTIN_MODELS if hasattr(build(name), "init_from_data")]
    assert offering == ["speedrun-cnn"]
    model = build("speedrun-cnn")
    before = model.whiten.weight.clone()
    model.init_from_data(images(8))
    assert not torch.equal(before, model.whiten.weight) and not model.whiten.weight.requires_grad
