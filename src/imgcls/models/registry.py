"""One way to build any model by name: imgcls's built-in CNNs, or any timm architecture.

Every model is a timm model: the built-ins are registered with timm (models.builtin) under their
names with underscores (`timm_name`), so all of them are built by timm.create_model and speak one
interface. Whether a model takes `img_size` is read from its pretrained_cfg (`fixed_input_size`),
never found out by trial.

A bundle stores the name and the keyword arguments given here, so `create_model(**config)`
rebuilds exactly the trained architecture; `architecture_arguments` says which arguments a bundle may hold.
"""
from __future__ import annotations

import inspect
import logging

import torch
from torch import nn

from ..errors import ImgclsError, did_you_mean

log = logging.getLogger(__name__)

# The built-in CNNs (models.builtin) by their user-facing names, with a summary for `imgcls models`.
BUILTIN_MODELS = {
    "seed-cnn": "Keras tutorial CNN: 3 conv blocks 32/32/64, dense 64, dropout 0.5",
    "lenet5": "LeNet-5 (LeCun 1998) with ReLU and max-pool",
    "cnn-bn": "conv-BN-GELU blocks 64/128/256, dropout: strong from scratch",
    "speedrun-cnn": "whitening + conv-BN-GELU blocks 64/256/256, for --recipe speedrun",
}
# timm architectures are designed for 224 px; a from-scratch user on CPU rarely wants more.
TIMM_DEFAULT_IMG_SIZE = 224
# What a saved model may pass to a timm architecture: regularisation rates, which most timm families
# takes. timm's other keywords include pretrained, pretrained_cfg(_overlay) (a URL), checkpoint_path
# and features_only: they download, read files, or build something other than the saved classifier.
TIMM_BUNDLE_ARGUMENTS = frozenset({"drop_rate", "drop_path_rate"})
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
    """timm, with imgcls's built-ins registered in it: imported lazily, as it is slow to import
    (about a second) and only some commands need it."""
    import timm

    from . import builtin  # noqa: F401  registers seed_cnn, lenet5, cnn_bn, speedrun_cnn

    return timm


def timm_name(name: str) -> str:
    """timm's registry name of `name`: a built-in's hyphens become underscores ('seed-cnn' -> 'seed_cnn')."""
    return name.replace("-", "_") if name in BUILTIN_MODELS else name


def _pretrained_cfg(name: str):
    return _timm().get_pretrained_cfg(timm_name(name))


def default_img_size(name: str) -> int:
    check_model_name(name)
    config = _pretrained_cfg(name)
    return config.input_size[-1] if config is not None and config.input_size else TIMM_DEFAULT_IMG_SIZE


def check_model_name(name: str) -> None:
    if name in BUILTIN_MODELS:
        return
    timm = _timm()
    if not timm.is_model(name) or name in map(timm_name, BUILTIN_MODELS):  # a built-in goes by its own name
        raise ImgclsError(
            f"unknown model '{name}'{did_you_mean(name, [*BUILTIN_MODELS, *_timm_only(timm.list_models())])} "
            f"(built-in: {', '.join(BUILTIN_MODELS)}; or any name from `imgcls models`)"
        )


def _timm_only(names: list[str]) -> list[str]:
    """timm's names less the built-ins registered in it, which imgcls lists and takes by their own names."""
    registered = {timm_name(name) for name in BUILTIN_MODELS}
    return [name for name in names if name not in registered]


def architecture_arguments(name: str) -> frozenset[str]:
    """Keyword arguments a bundle may rebuild `name` with: a built-in model's own (sizes and rates,
    all numbers), or TIMM_BUNDLE_ARGUMENTS; create_model itself sets the class count, channels and size."""
    if name in BUILTIN_MODELS:
        from . import builtin

        parameters = inspect.signature(builtin.ARCHITECTURES[timm_name(name)]).parameters
        return frozenset(parameters) - {"num_classes", "in_chans", "img_size"}
    return TIMM_BUNDLE_ARGUMENTS


def create_model(name: str, num_classes: int, img_size: int, in_chans: int = 3,
                 pretrained: bool = False, **kwargs) -> nn.Module:
    """Build `name` with a `num_classes` head for `img_size` inputs; weights are random unless
    `pretrained` (timm weights from the Hugging Face hub or the local cache)."""
    check_model_name(name)
    if name in BUILTIN_MODELS and pretrained:
        raise ImgclsError(f"built-in model '{name}' has no pretrained weights; pick a timm model "
                          "(e.g. --model mobilenetv2_100) or pass --weights FILE")
    from .weights import pretrained_timm_model

    build = pretrained_timm_model if pretrained else _timm().create_model
    config = _pretrained_cfg(name)
    fixed_size = config is not None and config.fixed_input_size
    if fixed_size:  # e.g. ViTs: the patch grid is sized for the input (timm resamples pretrained position embeddings)
        kwargs["img_size"] = img_size
    net = build(timm_name(name), num_classes=num_classes, in_chans=in_chans, **kwargs)
    design_size = config.input_size[-1] if config is not None and config.input_size else TIMM_DEFAULT_IMG_SIZE
    if not fixed_size and img_size != design_size:
        _check_input_size(net, name, img_size, in_chans, design_size)
    return net


@torch.no_grad()
def _check_input_size(net: nn.Module, name: str, img_size: int, in_chans: int, design_size: int) -> None:
    """A model built for one size that its pretrained_cfg does not mark as fixed (halonet26t, whose
    attention is sized for 256 px) fails at its first forward of another size with a bare error
    (an AssertionError): one forward of a blank image says so at build time, in one line."""
    training = net.training
    try:
        net.eval()(torch.zeros(1, in_chans, img_size, img_size))
    except Exception as err:  # whatever the architecture raises: an assertion, a shape mismatch
        raise ImgclsError(f"model '{name}' does not take {img_size} px images ({type(err).__name__}); "
                          f"pass --img-size {design_size}, the size it is built for") from None
    finally:
        net.train(training)


def list_models(pattern: str = "") -> list[tuple[str, str, str]]:
    """(name, source, pretrained weights): built-in models with a summary, then timm names matching the wildcard
    `pattern`. The weights say how many sets timm has (its pretrained tags) and which --pretrained loads."""
    timm, wildcard = _timm(), f"*{pattern}*" if pattern else "*"
    rows = [(name, summary, "none: trains from scratch") for name, summary in BUILTIN_MODELS.items()
            if not pattern or pattern in name]
    weight_sets: dict[str, int] = {}
    for tagged in timm.list_models(wildcard, pretrained=True):  # 'resnet18.a1_in1k': an architecture and a tag
        architecture = tagged.split(".", 1)[0]
        weight_sets[architecture] = weight_sets.get(architecture, 0) + 1
    return rows + [(name, "timm", _weights_summary(timm, name, weight_sets.get(name, 0)))
                   for name in _timm_only(timm.list_models(wildcard))]


def _weights_summary(timm, name: str, sets: int) -> str:
    if not sets:
        return "none"
    tag = timm.get_pretrained_cfg(name).tag if timm.is_model_pretrained(name) else None  # what --pretrained loads
    return f"{sets}, default {tag}" if tag else str(sets)
