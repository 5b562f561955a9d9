"""Batches from decoded uint8 images, shuffled with a seeded generator, ready for the model.

Images stay uint8 (N, H, W, 3) until a batch is taken: 4x less memory than float, and the
NHWC layout permuted to (B, 3, H, W) is already channels-last, the fast layout for convs.
On a GPU a dataset that fits (CIFAR-10: 150 MB) is copied there once and batches are cut on the
device, so an epoch makes no host-to-device copies and no host syncs.

With several processes (distributed.Ranks) every process draws the same shuffled order from the
seed and takes its own part of each batch: `batch_size` stays the global batch the user asked
for, so the steps, the learning rate and the schedule are those of one process.
"""
from __future__ import annotations

import math

import torch

from ..distributed import Ranks

RESIDENT_BYTES = 4 << 30  # inputs up to this size live on the GPU for the whole run


class Batches:
    """Batches of `inputs` rows: uint8 images by default, or any tensor with a matching `transform`
    (e.g. backbone features for a head trained on cached features)."""

    def __init__(self, inputs, targets: torch.Tensor, batch_size: int, shuffle: bool = False,
                 device: torch.device | str = "cpu", seed: int = 0, transform=None, alternating_flip: bool = False,
                 ranks: Ranks = Ranks()):
        self.inputs = torch.as_tensor(inputs)  # (N, H, W, 3) uint8 images (shares the numpy memory), or features
        self.transform = transform or to_model_input
        self.targets = targets  # (N, num_classes) float: one-hot or multi-hot
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.device = torch.device(device)
        self.ranks = ranks  # training batches: this process takes part ranks.rank of ranks.world_size of each
        self.generator = torch.Generator().manual_seed(seed)
        # Alternating flips (Jordan 2024): a random half of the images is mirrored in even epochs,
        # the other half in odd ones, so every image is seen both ways within any two epochs.
        self.flip_parity = torch.randint(0, 2, (len(targets),), generator=torch.Generator().manual_seed(seed + 1),
                                         dtype=torch.bool) if alternating_flip else None
        self.epoch = 0
        if self.device.type == "cuda" and self.inputs.nbytes <= RESIDENT_BYTES:
            self.inputs, self.targets = self.inputs.to(self.device), targets.to(self.device)
            self.flip_parity = self.flip_parity.to(self.device) if alternating_flip else None

    def set_epoch(self, epoch: int) -> None:
        """The epoch about to run (as DistributedSampler.set_epoch): picks the alternating flips."""
        self.epoch = epoch

    def __len__(self) -> int:
        return math.ceil(len(self.targets) / self.batch_size)

    def __iter__(self):
        n = len(self.targets)
        order = torch.randperm(n, generator=self.generator) if self.shuffle else torch.arange(n)
        order = order.to(self.inputs.device)  # one copy per epoch: on a GPU, batches are then cut without host transfers
        for start in range(0, n, self.batch_size):
            parts = order[start: start + self.batch_size].tensor_split(self.ranks.world_size)
            # Drop a last batch that leaves a process one image or none: BatchNorm cannot train on one,
            # and every process must take the same number of steps.
            if self.shuffle and start > 0 and min(map(len, parts)) < 2:
                break
            index = parts[self.ranks.rank]
            rows = self.inputs[index]
            if self.flip_parity is not None:
                mirrored = (self.flip_parity[index] ^ bool(self.epoch % 2)).view(-1, *[1] * (rows.ndim - 1))
                rows = torch.where(mirrored, rows.flip(2), rows)  # (B, H, W, 3): dim 2 is the width; no host sync
            yield self.transform(rows, self.device), self.targets[index].to(self.device, non_blocking=True)


def to_model_input(pixels: torch.Tensor, device: torch.device | str = "cpu") -> torch.Tensor:
    """(B, H, W, 3) uint8 -> (B, 3, H, W) float in [0, 1], channels-last, on `device`."""
    batch = pixels.to(device, non_blocking=True).permute(0, 3, 1, 2)
    return batch.float().div_(255).contiguous(memory_format=torch.channels_last)
