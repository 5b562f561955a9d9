"""The linear probe: a logistic regression on a frozen backbone's pooled features.

It is the floor any transferred model must reach, the whole of `--freeze --augment none` (seconds
on a CPU, since the features are computed once), and the starting head of fine-tuning: LP-FT
(Kumar et al. 2022, https://arxiv.org/abs/2202.10054) fine-tunes from a fitted head rather than a
random one, whose large early gradients distort the pretrained features (measured here: a random
head's first epoch starts at a loss of 4-5 on 4 classes and ends below a logistic regression).

Written with torch's L-BFGS rather than scikit-learn's LogisticRegression because one function
then serves single- and multi-label heads, on whatever device the features are.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
import torch.nn.functional as F

log = logging.getLogger(__name__)

# L2 strengths tried (per example, on standardised features); chosen by cross-validated log loss.
L2_GRID = (1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1, 3e-1, 1.0)
FOLDS = 5
CV_MAX_IMAGES = 4000  # the strength is chosen on a sample this large: 45 fits stay within seconds
LBFGS_STEPS = 100


@dataclass
class LinearProbe:
    weight: torch.Tensor  # (num_classes, num_features), for the raw (unstandardised) features
    bias: torch.Tensor  # (num_classes,)
    l2: float  # the chosen strength

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        return features.float() @ self.weight.T + self.bias


def _loss(logits: torch.Tensor, targets: torch.Tensor, multi_label: bool) -> torch.Tensor:
    if multi_label:
        return F.binary_cross_entropy_with_logits(logits, targets)
    return F.cross_entropy(logits, targets.argmax(1))


def _fit(features: torch.Tensor, targets: torch.Tensor, l2: float, multi_label: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Weights and bias minimising log loss + l2 * |W|^2 / 2 on standardised features."""
    weight = torch.zeros(targets.shape[1], features.shape[1], device=features.device, requires_grad=True)
    bias = torch.zeros(targets.shape[1], device=features.device, requires_grad=True)
    optimizer = torch.optim.LBFGS([weight, bias], lr=1, max_iter=LBFGS_STEPS, history_size=20,
                                  line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        loss = _loss(features @ weight.T + bias, targets, multi_label) + l2 / 2 * weight.square().sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    return weight.detach(), bias.detach()


def _folds(n: int, generator: torch.Generator) -> list[torch.Tensor]:
    return list(torch.randperm(n, generator=generator).chunk(FOLDS))


def _choose_l2(features: torch.Tensor, targets: torch.Tensor, multi_label: bool, seed: int) -> float:
    """The strength with the lowest log loss on held-out folds of the training features."""
    generator = torch.Generator().manual_seed(seed)
    if len(features) > CV_MAX_IMAGES:
        rows = torch.randperm(len(features), generator=generator)[:CV_MAX_IMAGES]
        features, targets = features[rows], targets[rows]
    folds = _folds(len(features), generator)
    if len(features) < 2 * FOLDS:
        return 1e-2  # too few images to cross-validate: a middle strength
    losses = []
    for l2 in L2_GRID:
        held_out = 0.0
        for fold in folds:
            keep = torch.ones(len(features), dtype=torch.bool)
            keep[fold] = False
            weight, bias = _fit(features[keep], targets[keep], l2, multi_label)
            held_out += _loss(features[fold] @ weight.T + bias, targets[fold], multi_label).item() * len(fold)
        losses.append(held_out)
    return L2_GRID[min(range(len(L2_GRID)), key=losses.__getitem__)]


@torch.no_grad()
def _standardise(features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    mean = features.mean(0)
    return mean, features.std(0).clamp(min=1e-6)


def out_of_fold_probabilities(features: torch.Tensor, targets: torch.Tensor, folds: int = FOLDS,
                              seed: int = 0) -> torch.Tensor:
    """(N, C) softmax probabilities of each image from a logistic regression that never saw it:
    the images are split into `folds`, and each fold is scored by a fit on the others (one L2
    strength, cross-validated once on all of them). What confident learning ranks labels by."""
    features, targets = features.float(), targets.float()
    mean, std = _standardise(features)
    standardised = (features - mean) / std
    generator = torch.Generator().manual_seed(seed)
    probabilities = torch.zeros_like(targets)
    with torch.enable_grad():
        l2 = _choose_l2(standardised, targets, False, seed)
        for fold in torch.randperm(len(features), generator=generator).chunk(folds):
            keep = torch.ones(len(features), dtype=torch.bool)
            keep[fold] = False
            weight, bias = _fit(standardised[keep], targets[keep], l2, False)
            probabilities[fold] = torch.softmax(standardised[fold] @ weight.T + bias, dim=1)
    return probabilities


def fit_linear_probe(features: torch.Tensor, targets: torch.Tensor, multi_label: bool = False,
                     seed: int = 0) -> LinearProbe:
    """Logistic regression of `targets` (N, C one- or multi-hot) on `features` (N, D), its L2
    strength chosen by 5-fold cross-validation on these training features alone (the validation
    images stay unseen, so their accuracy is an honest estimate)."""
    features, targets = features.float(), targets.float()
    mean, std = _standardise(features)
    standardised = (features - mean) / std
    with torch.enable_grad():
        l2 = _choose_l2(standardised, targets, multi_label, seed)
        weight, bias = _fit(standardised, targets, l2, multi_label)
    # Fold the standardisation into the layer: W x' + b with x' = (x - mean) / std.
    weight = weight / std
    return LinearProbe(weight, bias - weight @ mean, l2)
