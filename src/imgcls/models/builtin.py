"""Small CNNs trained from scratch, each sized from the input so any image size works.

- seed-cnn: the Keras "cats vs dogs with little data" tutorial CNN (Chollet, 2016).
- lenet5: LeNet-5 (LeCun et al., 1998, http://yann.lecun.com/exdb/publis/pdf/lecun-98.pdf),
  with ReLU and max-pooling as in modern reproductions (99%+ on MNIST).
- cnn-bn: conv-BN-GELU blocks with pooling inside the block, after the CIFAR-10 speed-run
  networks (Page 2018; Jordan 2024, https://arxiv.org/abs/2404.00498): strong per FLOP on 2 CPU cores.
- speedrun-cnn: the same blocks, wider, behind a whitening layer fitted to the training data
  (the speed-runs' ideas, our implementation), for `--recipe speedrun` on small images.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _flat_features(features: nn.Module, in_chans: int, img_size: int) -> int:
    """Width of the flattened feature map, found by one dummy forward at build time."""
    with torch.no_grad():
        return features(torch.zeros(1, in_chans, img_size, img_size)).flatten(1).shape[1]


class SeedCNN(nn.Module):
    """3 x (conv 3x3, ReLU, max-pool) with 32/32/64 filters, dense 64, dropout 0.5."""

    def __init__(self, num_classes: int, in_chans: int = 3, img_size: int = 150, dropout: float = 0.5):
        super().__init__()
        layers, channels = [], in_chans
        for width in (32, 32, 64):
            layers += [nn.Conv2d(channels, width, 3), nn.ReLU(inplace=True), nn.MaxPool2d(2)]
            channels = width
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(
            nn.Flatten(), nn.Linear(_flat_features(self.features, in_chans, img_size), 64),
            nn.ReLU(inplace=True), nn.Dropout(dropout), nn.Linear(64, num_classes),
        )

    def forward(self, x):  # (B, C, H, W) -> (B, num_classes)
        return self.head(self.features(x))


class LeNet5(nn.Module):
    """C1 conv5x6, S2 pool, C3 conv5x16, S4 pool, C5 dense 120, F6 dense 84, output."""

    def __init__(self, num_classes: int, in_chans: int = 3, img_size: int = 32):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_chans, 6, 5, padding=2 if img_size < 32 else 0), nn.ReLU(inplace=True), nn.MaxPool2d(2),
            nn.Conv2d(6, 16, 5), nn.ReLU(inplace=True), nn.MaxPool2d(2),
        )
        self.head = nn.Sequential(
            nn.Flatten(), nn.Linear(_flat_features(self.features, in_chans, img_size), 120), nn.ReLU(inplace=True),
            nn.Linear(120, 84), nn.ReLU(inplace=True), nn.Linear(84, num_classes),
        )

    def forward(self, x):
        return self.head(self.features(x))


def _conv_bn(in_chans: int, out_chans: int, **conv) -> list[nn.Module]:
    return [nn.Conv2d(in_chans, out_chans, bias=False, **conv), nn.BatchNorm2d(out_chans), nn.GELU()]


class ConvBlock(nn.Sequential):
    """conv, pool, BN, GELU, conv, BN, GELU: pooling before the second conv costs 4x less."""

    def __init__(self, in_chans: int, out_chans: int):
        first = _conv_bn(in_chans, out_chans, kernel_size=3, padding=1)
        super().__init__(first[0], nn.MaxPool2d(2), *first[1:], *_conv_bn(out_chans, out_chans, kernel_size=3, padding=1))


class CnnBn(nn.Module):
    """A patchify stem brings any input to ~32 px, then three conv blocks, global max-pool, dropout, linear."""

    def __init__(self, num_classes: int, in_chans: int = 3, img_size: int = 32,
                 widths: tuple[int, ...] = (64, 128, 256), dropout: float = 0.2):
        super().__init__()
        stride = 1
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
        self.head = nn.Sequential(nn.AdaptiveMaxPool2d(1), nn.Flatten(), nn.Dropout(dropout), nn.Linear(channels, num_classes))

    def forward(self, x):  # (B, C, H, W) -> (B, C', H/8/stride, W/8/stride) -> (B, num_classes)
        return self.head(self.blocks(self.stem(x)))


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


class SpeedrunCNN(nn.Module):
    """Whitening, three conv blocks (64/256/256), global max-pool, linear; logits scaled by 1/9
    so the softmax starts soft under the recipe's high learning rate.

    Two choices of the speed runs make the short schedule work (Jordan 2024): every 3x3 conv starts
    as the identity on its first input channels, so the net starts shallow and deepens as it learns;
    BatchNorm learns only its shift (the scale stays 1, which the next conv can absorb) and its
    running statistics follow quickly (momentum 0.4), as the weights move fast."""

    BATCHNORM_MOMENTUM = 0.4

    def __init__(self, num_classes: int, in_chans: int = 3, img_size: int = 32,
                 widths: tuple[int, ...] = (64, 256, 256), logit_scale: float = 1 / 9):
        super().__init__()
        self.whiten = WhiteningConv(in_chans)
        blocks, channels = [], self.whiten.out_channels
        for width in widths:
            blocks.append(ConvBlock(channels, width))
            channels = width
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Sequential(nn.AdaptiveMaxPool2d(1), nn.Flatten(), nn.Linear(channels, num_classes, bias=False))
        self.logit_scale = logit_scale
        for module in self.blocks.modules():
            if isinstance(module, nn.Conv2d):
                with torch.no_grad():
                    nn.init.dirac_(module.weight[: module.in_channels])
            elif isinstance(module, nn.BatchNorm2d):
                module.weight.requires_grad_(False)
                module.momentum = self.BATCHNORM_MOMENTUM

    def forward(self, x):
        return self.head(self.blocks(F.gelu(self.whiten(x)))) * self.logit_scale
