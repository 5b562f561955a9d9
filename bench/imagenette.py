"""Imagenette2 from random weights at 128 px, 5 epochs (fastai leaderboard: 85.77% with xresnet50).

    python bench/imagenette.py [--model resnet26d] [--epochs 5] [--optimizer adamw] [--precision auto] [--seeds 0 1]

Trains on the 9,469 training images and reports accuracy on the 3,925 validation images (the
leaderboard's metric) from the saved bundle's evaluation, with wall times. The decode cache is off,
so every row pays for decoding, as a first run would.
"""
from __future__ import annotations

import argparse
import sys
import time

from common import dataset, decode_every_run, report

from imgcls.train.config import TrainConfig
from imgcls.train.run import train


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="resnet26d", help="any imgcls model; resnet26d: xresnet's deep stem, half the depth")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--optimizer", default="adamw", help="with its default lr and weight decay (TrainConfig)")
    parser.add_argument("--precision", default="auto", help="auto (bf16 autocast where native), fp32 or bf16")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--out", default="/tmp/imgcls-bench-imagenette")
    args = parser.parse_args()
    decode_every_run()
    data = dataset("imagenette2-224.tar.gz", "imagenette2-224")
    rows = []
    for seed in args.seeds:
        config = TrainConfig.from_options(model=args.model, img_size=128, epochs=args.epochs, batch_size=args.batch_size,
                             optimizer=args.optimizer, precision=args.precision, seed=seed, early_stopping=0, report=False)
        start = time.perf_counter()
        result = train(data, f"{args.out}/{args.model}-seed{seed}", config, progress=sys.stderr.isatty())
        epoch_seconds = [h["seconds"] for h in result.history]
        rows.append({"model": args.model, "optimizer": args.optimizer, "precision": args.precision, "seed": seed,
                     "epochs": args.epochs, "img_size": 128, "val_accuracy": round(result.metrics["accuracy"], 4),
                     "train_wall_s": round(time.perf_counter() - start), "s_per_epoch": round(sum(epoch_seconds) / len(epoch_seconds), 1)})
    changed = [value for value, default in ((args.optimizer, "adamw"), (args.precision, "auto")) if value != default]
    name = "-".join(["imagenette", args.model, *changed])
    report(name, rows, "python bench/imagenette.py " + " ".join(sys.argv[1:]))


if __name__ == "__main__":
    main()
