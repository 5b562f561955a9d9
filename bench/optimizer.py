"""Optimizer step time: PyTorch's per-tensor-list ("foreach") kernels against its fused ones.

    python bench/optimizer.py [--repeats 5]

For the parameters of models imgcls trains from scratch (speedrun-cnn for CIFAR, resnet26d and
resnet50d for Imagenette), the median wall time of one step of each optimizer imgcls offers, built
the way `build_optimizer` builds it (decay and no-decay groups), with foreach kernels and with the
fused ones imgcls uses where PyTorch has them (AdamW, Adam, SGD; RMSprop has none). A step is paid
once per batch: on a 2-core CPU the foreach AdamW step of resnet26d costs a large part of the batch.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch
from common import report

from imgcls.models.registry import create_model
from imgcls.train.config import OptimisationOptions
from imgcls.train.schedule import build_optimizer

MODELS = {"speedrun-cnn": 32, "resnet26d": 128, "resnet50d": 128}
OPTIMIZERS = ("adamw", "sgd")


def step_ms(model: torch.nn.Module, optimizer: torch.optim.Optimizer, repeats: int) -> float:
    for param in model.parameters():
        param.grad = torch.randn_like(param) * 1e-3
    optimizer.step()  # the first step allocates the state
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        optimizer.step()
        times.append(time.perf_counter() - start)
    return round(statistics.median(times) * 1000, 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    rows = []
    for name, size in MODELS.items():
        model = create_model(name, num_classes=10, img_size=size)
        params = sum(p.numel() for p in model.parameters())
        for optimizer in OPTIMIZERS:
            as_built = build_optimizer(model, OptimisationOptions(optimizer=optimizer, batch_size=64))
            with_foreach = build_optimizer(model, OptimisationOptions(optimizer=optimizer, batch_size=64))
            for group in with_foreach.param_groups:
                group["fused"], group["foreach"] = False, True
            fused, foreach = step_ms(model, as_built, args.repeats), step_ms(model, with_foreach, args.repeats)
            rows.append({"model": name, "params_M": round(params / 1e6, 2), "optimizer": optimizer,
                         "foreach_ms": foreach, "fused_ms": fused, "speedup": round(foreach / fused, 1)})
    report("optimizer", rows, "python bench/optimizer.py " + " ".join(sys.argv[1:]))


if __name__ == "__main__":
    main()
