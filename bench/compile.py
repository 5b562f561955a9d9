"""Does torch.compile pay for imgcls's training step here? Eager vs compiled, fp32 vs bf16 autocast.

    python bench/compile.py [--models speedrun-cnn cnn-bn] [--batch-size 512] [--steps 10]

Times full training steps (forward, loss, backward, SGD) on random 32 px batches, channels-last,
median over --steps after warm-up; the compile time (first compiled steps) is reported apart.
Decides TrainConfig's defaults: `compile` stays off where it loses, `precision` auto uses bf16
where the hardware computes it natively.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch
from common import report

from imgcls.models.classifier import Classifier
from imgcls.models.registry import create_model
from imgcls.runtime import autocast, compute_dtype, resolve_device
from imgcls.train.config import OptimisationOptions
from imgcls.train.schedule import build_optimizer

WARMUP_STEPS = 3


def step_times(name: str, compiled: bool, precision: str, batch_size: int, steps: int, device) -> tuple[float, float]:
    """(seconds spent in the warm-up steps, median seconds per step after them)."""
    torch.manual_seed(0)
    model = Classifier(create_model(name, num_classes=10, img_size=32)).to(device).to(memory_format=torch.channels_last)
    optimizer = build_optimizer(model, OptimisationOptions(optimizer="sgd", batch_size=batch_size))
    forward = torch.compile(model) if compiled else model
    images = torch.rand(batch_size, 3, 32, 32, device=device).contiguous(memory_format=torch.channels_last)
    labels = torch.randint(0, 10, (batch_size,), device=device)
    times = []
    for _ in range(WARMUP_STEPS + steps):
        start = time.perf_counter()
        with autocast(device, precision):
            loss = torch.nn.functional.cross_entropy(forward(images).float(), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return sum(times[:WARMUP_STEPS]), statistics.median(times[WARMUP_STEPS:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["speedrun-cnn", "cnn-bn"])
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    device = resolve_device(args.device)
    rows = []
    for name in args.models:
        for precision in ("fp32", "bf16"):
            for compiled in (False, True):
                warmup, per_step = step_times(name, compiled, precision, args.batch_size, args.steps, device)
                rows.append({"model": name, "device": device.type, "precision": precision, "compiled": compiled,
                             "images_per_s": round(args.batch_size / per_step), "warmup_s": round(warmup, 1)})
    print(f"precision auto here: {compute_dtype(device) or 'fp32'}")
    report(f"compile-{device.type}", rows, "python bench/compile.py " + " ".join(sys.argv[1:]))


if __name__ == "__main__":
    main()
