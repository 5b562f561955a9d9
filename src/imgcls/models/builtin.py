"""Small CNNs trained from scratch, each sized from the input so any image size works, registered
with timm so every model imgcls builds speaks timm's interface (`forward_features`,
`forward_head(pre_logits=True)`, `get_classifier`/`reset_classifier`, `group_matcher`, `pretrained_cfg`).

- seed-cnn: the Keras "cats vs dogs with little data" tutorial CNN (Chollet, 2016).
- lenet5: LeNet-5 (LeCun et al., 1998, http://yann.lecun.com/exdb/publis/pdf/lecun-98.pdf),
  with ReLU and max-pooling as in modern reproductions (99%+ on MNIST).
- cnn-bn: conv-BN-GELU blocks with pooling inside the block, after the CIFAR-10 speed-run
  networks (Page 2018; Jordan 2024, https://arxiv.org/abs/2404.00498): strong per FLOP on 2 CPU cores.
- speedrun-cnn: the same blocks, wider, behind a whitening layer fitted to the training data
  (the speed runs' ideas, our implementation), for `--recipe speedrun` on small images.

timm's registry names have no hyphens: imgcls's `seed-cnn` is timm's `seed_cnn` (registry.timm_name).
Module names (`features`, `blocks`, `head`) are those of the bundles saved before the registration,
so old bundles load unchanged. Importing this module registers the four with timm.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from timm.models import build_model_with_cfg, register_model
from torch import nn

from .classifier import IMAGENET_MEAN, IMAGENET_STD


def _side(img_size: int | tuple[int, int]) -> int:
    """timm passes a fixed-size model's default img_size as (H, W); imgcls inputs are square."""
    return img_size if isinstance(img_size, int) else img_size[-1]


def _flat_features(features: nn.Module, in_chans: int, img_size: int) -> int:
    """Width of the flattened feature map, found by one dummy forward at build time."""
    with torch.no_grad():
        return features(torch.zeros(1, in_chans, img_size, img_size)).flatten(1).shape[1]


class BuiltinNet(nn.Module):
    """timm's model interface for a network whose `head` is an nn.Sequential: pooling or flattening,
    any hidden dense layers, and the classifier (an nn.Linear) last.

    Subclasses build `head`, set `num_features` (the width `forward_features` gives, flattened) and
    `head_hidden_size` (the width of the pre-logits features), and define `forward_features` and
    `GROUPS` (timm's group_matcher: parameter groups from the input to the head, for layer-wise
    learning rates; unmatched parameters, the head's, come last)."""

    GROUPS: dict = {}
    num_features: int
    head_hidden_size: int
    pretrained_cfg: dict  # set by timm's build_model_with_cfg

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.head[:-1](x)  # (B, head_hidden_size)
        return x if pre_logits else self.head[-1](x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, H, W) -> (B, num_classes)
        return self.forward_head(self.forward_features(x))

    def get_classifier(self) -> nn.Module:
        return self.head[-1]

    def reset_classifier(self, num_classes: int) -> None:
        """A fresh classifier for `num_classes` (0: none, the network gives its pre-logits features)."""
        bias = getattr(self.get_classifier(), "bias", True) is not None  # as before (speedrun-cnn's has none)
        self.head[-1] = nn.Linear(self.head_hidden_size, num_classes, bias=bias) if num_classes > 0 else nn.Identity()
        self.num_classes = num_classes

    def group_matcher(self, coarse: bool = False) -> dict:
        return self.GROUPS  # one group per layer or block already: coarse and fine are the same


class SeedCNN(BuiltinNet):
    """3 x (conv 3x3, ReLU, max-pool) with 32/32/64 filters, dense 64, dropout 0.5."""

    GROUPS = dict(blocks=r"^features\.(\d+)", neck=r"^head\.1\.")

    def __init__(self, num_classes: int, in_chans: int = 3, img_size: int = 150, dropout: float = 0.5):
        super().__init__()
        layers, channels = [], in_chans
        for width in (32, 32, 64):
            layers += [nn.Conv2d(channels, width, 3), nn.ReLU(inplace=True), nn.MaxPool2d(2)]
            channels = width
        self.features = nn.Sequential(*layers)
        self.num_classes, self.head_hidden_size = num_classes, 64
        self.num_features = _flat_features(self.features, in_chans, _side(img_size))
        self.head = nn.Sequential(
            nn.Flatten(), nn.Linear(self.num_features, 64),
            nn.ReLU(inplace=True), nn.Dropout(dropout), nn.Linear(64, num_classes),
        )

    def forward_features(self, x):  # (B, C, H, W) -> (B, 64, h, w)
        return self.features(x)


class LeNet5(BuiltinNet):
    """C1 conv5x6, S2 pool, C3 conv5x16, S4 pool, C5 dense 120, F6 dense 84, output."""

    GROUPS = dict(blocks=r"^features\.(\d+)", neck=r"^head\.([13])\.")

    def __init__(self, num_classes: int, in_chans: int = 3, img_size: int = 32):
        super().__init__()
        img_size = _side(img_size)
        self.features = nn.Sequential(
            nn.Conv2d(in_chans, 6, 5, padding=2 if img_size < 32 else 0), nn.ReLU(inplace=True), nn.MaxPool2d(2),
            nn.Conv2d(6, 16, 5), nn.ReLU(inplace=True), nn.MaxPool2d(2),
        )
        self.num_classes, self.head_hidden_size = num_classes, 84
        self.num_features = _flat_features(self.features, in_chans, img_size)
        self.head = nn.Sequential(
            nn.Flatten(), nn.Linear(self.num_features, 120), nn.ReLU(inplace=True),
            nn.Linear(120, 84), nn.ReLU(inplace=True), nn.Linear(84, num_classes),
        )

    def forward_features(self, x):  # (B, C, H, W) -> (B, 16, h, w)
        return self.features(x)


def _conv_bn(in_chans: int, out_chans: int, **conv) -> list[nn.Module]:
    return [nn.Conv2d(in_chans, out_chans, bias=False, **conv), nn.BatchNorm2d(out_chans), nn.GELU()]


class ConvBlock(nn.Sequential):
    """conv, pool, BN, GELU, conv, BN, GELU: pooling before the second conv costs 4x less."""

    def __init__(self, in_chans: int, out_chans: int):
        first = _conv_bn(in_chans, out_chans, kernel_size=3, padding=1)
        super().__init__(first[0], nn.MaxPool2d(2), *first[1:], *_conv_bn(out_chans, out_chans, kernel_size=3, padding=1))


class CnnBn(BuiltinNet):
    """A patchify stem brings any input to ~32 px, then three conv blocks, global max-pool, dropout, linear."""

    GROUPS = dict(stem=r"^stem\.", blocks=r"^blocks\.(\d+)")

    def __init__(self, num_classes: int, in_chans: int = 3, img_size: int = 32,
                 widths: tuple[int, ...] = (64, 128, 256), dropout: float = 0.2):
        super().__init__()
        img_size, stride = _side(img_size), 1
        while img_size // (stride * 2) >= 32:  # 32 -> 1, 64 -> 2, 128..255 -> 4, 256+ -> 8
            stride *= 2
        stem_width = widths[0] // 2
        self.stem = nn.Sequential(*_conv_bn(in_chans, stem_width, kernel_size=stride, stride=stride)) if stride > 1 else nn.Identity()
        channels = stem_width if stride > 1 else in_chans
        blocks = []
        for width in widths:
            blocks.append(ConvBlock(channels, width))
            channels = width
        self.blocks = nn.Sequential(*blocks)
        self.num_classes = num_classes
        self.num_features = self.head_hidden_size = channels
        self.head = nn.Sequential(nn.AdaptiveMaxPool2d(1), nn.Flatten(), nn.Dropout(dropout), nn.Linear(channels, num_classes))

    def forward_features(self, x):  # (B, C, H, W) -> (B, C', H/8/stride, W/8/stride)
        return self.blocks(self.stem(x))


class WhiteningConv(nn.Conv2d):
    """A frozen 2x2 conv whose filters decorrelate and equalise the image's 2x2 patches (PCA
    whitening, each direction once with each sign so GELU keeps both halves). Fitted once from
    training images: the first layer starts where SGD would need epochs to get."""

    EPS = 5e-4  # added to the eigenvalues: keeps near-constant directions from being amplified into noise

    def __init__(self, in_chans: int, patch: int = 2):
        super().__init__(in_chans, 2 * in_chans * patch * patch, patch)
        self.weight.requires_grad_(False)

    @torch.no_grad()
    def fit(self, images: torch.Tensor) -> None:
        """images: (N, C, H, W) normalised as the network sees them."""
        patch = self.kernel_size[0]
        patches = images.float().unfold(2, patch, 1).unfold(3, patch, 1)  # (N, C, H', W', p, p)
        patches = patches.permute(0, 2, 3, 1, 4, 5).reshape(-1, self.in_channels * patch * patch)
        eigenvalues, eigenvectors = torch.linalg.eigh(patches.T @ patches / len(patches))
        filters = (eigenvectors.T / (eigenvalues + self.EPS).sqrt()[:, None]).view(-1, self.in_channels, patch, patch)
        self.weight.copy_(torch.cat([filters, -filters]))
        self.bias.zero_()


class SpeedrunCNN(BuiltinNet):
    """Whitening, three conv blocks (64/256/256), global max-pool, linear; logits scaled by 1/9
    so the softmax starts soft under the recipe's high learning rate.

    Two choices of the speed runs make the short schedule work (Jordan 2024): every 3x3 conv starts
    as the identity on its first input channels, so the net starts shallow and deepens as it learns;
    BatchNorm learns only its shift (the scale stays 1, which the next conv can absorb) and its
    running statistics follow quickly (momentum 0.4), as the weights move fast."""

    BATCHNORM_MOMENTUM = 0.4
    GROUPS = dict(stem=r"^whiten\.", blocks=r"^blocks\.(\d+)")

    def __init__(self, num_classes: int, in_chans: int = 3, widths: tuple[int, ...] = (64, 256, 256),
                 logit_scale: float = 1 / 9):
        super().__init__()
        self.whiten = WhiteningConv(in_chans)
        blocks, channels = [], self.whiten.out_channels
        for width in widths:
            blocks.append(ConvBlock(channels, width))
            channels = width
        self.blocks = nn.Sequential(*blocks)
        self.num_classes = num_classes
        self.num_features = self.head_hidden_size = channels
        self.head = nn.Sequential(nn.AdaptiveMaxPool2d(1), nn.Flatten(), nn.Linear(channels, num_classes, bias=False))
        self.logit_scale = logit_scale
        for module in self.blocks.modules():
            if isinstance(module, nn.Conv2d):
                with torch.no_grad():
                    nn.init.dirac_(module.weight[: module.in_channels])
            elif isinstance(module, nn.BatchNorm2d):
                module.weight.requires_grad_(False)
                module.momentum = self.BATCHNORM_MOMENTUM

    def init_from_data(self, images: torch.Tensor) -> None:
        """Fit the whitening layer to (N, C, H, W) training images, normalised as the network sees them."""
        self.whiten.fit(images)

    def forward_features(self, x):  # (B, C, H, W) -> (B, 256, H/16, W/16)
        return self.blocks(F.gelu(self.whiten(x)))

    def forward_head(self, x, pre_logits: bool = False):
        x = super().forward_head(x, pre_logits)
        return x if pre_logits else x * self.logit_scale


def _cfg(img_size: int, classifier: str, first_conv: str, **kwargs) -> dict:
    """What timm knows of a built-in: the size it was designed for, where its layers are, and the
    normalisation imgcls feeds it; no weights (no url): the built-ins train from scratch."""
    return dict(url="", num_classes=1000, input_size=(3, img_size, img_size), mean=IMAGENET_MEAN, std=IMAGENET_STD,
                interpolation="bilinear", crop_pct=1.0, first_conv=first_conv, classifier=classifier, **kwargs)


ARCHITECTURES = {"seed_cnn": SeedCNN, "lenet5": LeNet5, "cnn_bn": CnnBn, "speedrun_cnn": SpeedrunCNN}  # by timm name

# fixed_input_size: the model takes img_size and sizes its dense layers (seed-cnn, lenet5) or its
# patchify stem (cnn-bn) for it; speedrun-cnn's global pooling takes any size as it is built.
default_cfgs = {  # read by timm's register_model, by this name, for the pretrained_cfg of each entry point
    "seed_cnn": _cfg(150, "head.4", "features.0", fixed_input_size=True),
    "lenet5": _cfg(32, "head.5", "features.0", fixed_input_size=True),
    "cnn_bn": _cfg(128, "head.3", "stem.0", fixed_input_size=True),
    "speedrun_cnn": _cfg(32, "head.2", "whiten"),
}


@register_model
def seed_cnn(pretrained: bool = False, **kwargs) -> SeedCNN:
    return build_model_with_cfg(SeedCNN, "seed_cnn", pretrained, **kwargs)


@register_model
def lenet5(pretrained: bool = False, **kwargs) -> LeNet5:
    return build_model_with_cfg(LeNet5, "lenet5", pretrained, **kwargs)


@register_model
def cnn_bn(pretrained: bool = False, **kwargs) -> CnnBn:
    return build_model_with_cfg(CnnBn, "cnn_bn", pretrained, **kwargs)


@register_model
def speedrun_cnn(pretrained: bool = False, **kwargs) -> SpeedrunCNN:
    return build_model_with_cfg(SpeedrunCNN, "speedrun_cnn", pretrained, **kwargs)
