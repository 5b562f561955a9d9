"""One way to build any model by name: imgcls's built-in CNNs, or any timm architecture.

A bundle stores the name, the class count and the input size: create_model rebuilds the trained
architecture from them.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable

from torch import nn

from ..errors import ImgclsError, did_you_mean
from . import builtin

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BuiltinModel:
    build: Callable[..., nn.Module]
    default_img_size: int  # the size the architecture was designed for
    summary: str


BUILTIN_MODELS = {
    "seed-cnn": BuiltinModel(builtin.SeedCNN, 150, "Keras tutorial CNN: 3 conv blocks 32/32/64, dense 64, dropout 0.5"),
    "lenet5": BuiltinModel(builtin.LeNet5, 32, "LeNet-5 (LeCun 1998) with ReLU and max-pool"),
    "cnn-bn": BuiltinModel(builtin.CnnBn, 128, "conv-BN-GELU blocks 64/128/256, dropout: strong from scratch"),
    "speedrun-cnn": BuiltinModel(builtin.SpeedrunCNN, 32, "whitening + conv-BN-GELU blocks 64/256/256, for --recipe speedrun"),
}
# timm architectures are designed for 224 px; a from-scratch user on CPU rarely wants more.
TIMM_DEFAULT_IMG_SIZE = 224
# What `imgcls models` suggests to start from, per device: timm architectures with ImageNet weights that
# fine-tune well where they run. Parameter counts are timm's, for the 1000-class ImageNet model.
STARTING_POINTS = {
    "CPU": (
        ("efficientnet_lite0", "the default for photos: 4.7 M parameters of plain ops, the fastest accurate "
                               "fine-tune on a few cores"),
        ("mobilenetv3_large_100", "5.5 M parameters: the cheapest to serve, down to phones and small boards"),
        ("resnet18", "11.7 M parameters of plain convolutions: robust at any image size, simple to explain"),
    ),
    "GPU": (
        ("convnext_tiny", "28.6 M parameters: a modern CNN that fine-tunes to high accuracy"),
        ("efficientnet_b0", "5.3 M parameters: accurate for its size, with short epochs"),
        ("resnet50", "25.6 M parameters: the standard baseline, with strong timm weights"),
    ),
}


def _timm():
    import timm  # imported lazily: it is slow to import and only some commands need it

    return timm


def default_img_size(name: str) -> int:
    if name in BUILTIN_MODELS:
        return BUILTIN_MODELS[name].default_img_size
    check_model_name(name)
    config = _timm().get_pretrained_cfg(name)
    return config.input_size[-1] if config is not None and config.input_size else TIMM_DEFAULT_IMG_SIZE


def check_model_name(name: str) -> None:
    if name in BUILTIN_MODELS:
        return
    timm = _timm()
    if not timm.is_model(name):
        raise ImgclsError(
            f"unknown model '{name}'{did_you_mean(name, [*BUILTIN_MODELS, *timm.list_models()])} "
            f"(built-in: {', '.join(BUILTIN_MODELS)}; or any name from `imgcls models`)"
        )


def create_model(name: str, num_classes: int, img_size: int, in_chans: int = 3,
                 pretrained: bool = False, **kwargs) -> nn.Module:
    """Build `name` with a `num_classes` head for `img_size` inputs; weights are random unless
    `pretrained` (timm weights from the Hugging Face hub or the local cache)."""
    check_model_name(name)
    if name in BUILTIN_MODELS:
        if pretrained:
            raise ImgclsError(f"built-in model '{name}' has no pretrained weights; pick a timm model "
                              "(e.g. --model mobilenetv2_100) or pass --weights FILE")
        return BUILTIN_MODELS[name].build(num_classes=num_classes, in_chans=in_chans, img_size=img_size, **kwargs)
    from .weights import pretrained_timm_model

    build = pretrained_timm_model if pretrained else _timm().create_model
    model_kwargs = dict(num_classes=num_classes, in_chans=in_chans, **kwargs)
    try:  # transformers need their patch grid sized for the input (timm resamples pretrained position embeddings)
        return build(name, img_size=img_size, **model_kwargs)
    except TypeError:  # CNNs take any size and have no img_size argument
        return build(name, **model_kwargs)


def list_models(pattern: str = "") -> list[tuple[str, str, str]]:
    """(name, source, pretrained weights): built-in models with a summary, then timm names matching the wildcard
    `pattern`. The weights say how many sets timm has (its pretrained tags) and which --pretrained loads."""
    timm, wildcard = _timm(), f"*{pattern}*" if pattern else "*"
    rows = [(name, spec.summary, "none: trains from scratch") for name, spec in BUILTIN_MODELS.items()
            if not pattern or pattern in name]
    weight_sets: dict[str, int] = {}
    for tagged in timm.list_models(wildcard, pretrained=True):  # 'resnet18.a1_in1k': an architecture and a tag
        architecture = tagged.split(".", 1)[0]
        weight_sets[architecture] = weight_sets.get(architecture, 0) + 1
    return rows + [(name, "timm", _weights_summary(timm, name, weight_sets.get(name, 0)))
                   for name in timm.list_models(wildcard)]


def _weights_summary(timm, name: str, sets: int) -> str:
    if not sets:
        return "none"
    tag = timm.get_pretrained_cfg(name).tag if timm.is_model_pretrained(name) else None  # what --pretrained loads
    return f"{sets}, default {tag}" if tag else str(sets)
