"""CIFAR-10 from scratch with the built-in cnn-bn on whatever machine runs it (issue: >= 85% on 2 CPU cores).

    python bench/cifar10.py [--epochs 15] [--seeds 0]

Trains on 45k of the 50k training images (5k held out for validation and early stopping),
reports accuracy on the 10k test images with `imgcls.evaluate`, and the wall time of each step.
"""
from __future__ import annotations

import argparse
import sys
import time

from common import dataset, report

from imgcls.evaluate.evaluation import evaluate
from imgcls.train.config import TrainConfig
from imgcls.train.run import train


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--out", default="/tmp/imgcls-bench-cifar10")
    args = parser.parse_args()
    data = dataset("cifar10-jpg.tar.gz", "cifar10")
    rows = []
    for seed in args.seeds:
        config = TrainConfig(model="cnn-bn", epochs=args.epochs, batch_size=256, optimizer="sgd",
                             val_split=0.1, seed=seed, early_stopping=0)
        start = time.perf_counter()
        result = train(data, f"{args.out}/seed{seed}", config, progress=sys.stderr.isatty())
        trained = time.perf_counter() - start
        metrics, _ = evaluate(result.bundle_dir, data, split="test")
        rows.append({"seed": seed, "epochs": args.epochs, "test_accuracy": round(metrics["accuracy"], 4),
                     "train_wall_s": round(trained), "s_per_epoch": round(sum(h["seconds"] for h in result.history) / len(result.history), 1),
                     "eval_wall_s": round(time.perf_counter() - start - trained)})
    report("cifar10", rows, "python bench/cifar10.py " + " ".join(sys.argv[1:]))


if __name__ == "__main__":
    main()
