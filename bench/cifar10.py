"""CIFAR-10 from scratch on whatever machine runs it: the issue's 90.21%-in-10-minutes and 94% rows.

    python bench/cifar10.py                              # --recipe speedrun (its 11 epochs), seeds 0 1
    python bench/cifar10.py --epochs 8 --seeds 0 1 2
    python bench/cifar10.py --recipe none --model cnn-bn --epochs 15 --batch-size 256 --optimizer sgd
    python bench/cifar10.py --device cuda --compile --seeds 0 1 2     # the GPU row
    python bench/cifar10.py --train-per-class 1000 --epochs 5 --lookahead timm   # timm's Lookahead in place of imgcls's

Trains on 45k of the 50k training images (5k held out for validation), reports accuracy on the
10k test images with `imgcls.evaluate` (so with the bundle's test-time augmentation), and the wall
time of each step. --train-per-class N trains on the first N images of each class instead (the same test).
--lookahead timm: the recipe with timm.optim.Lookahead wrapping its optimiser instead of imgcls's Lookahead
callback (train.callbacks.Lookahead says why that one is hand-written). The decode cache is off, so every row pays for decoding the JPEGs: the time a
first run on a new machine takes.

epochs_s is the optimisation alone (the sum of the epochs' training passes, each ending on a device
sync); train_wall_s adds decoding, per-epoch validation, checkpoints and the saved evaluation. With
--compile or on a GPU, warmup_s is the first epoch's excess over the median of the others (graph
compilation, cuDNN's kernel search, CUDA start-up), reported apart: train_s = epochs_s - warmup_s.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time

from common import dataset, decode_every_run, report, training_subset

from imgcls.evaluate.evaluation import evaluate
from imgcls.runtime import resolve_device
from imgcls.train.config import TrainConfig
from imgcls.train.loop import Extensions
from imgcls.train.run import train
from imgcls.train.schedule import build_optimizer


def timm_lookahead(config: TrainConfig) -> Extensions:
    """The config's optimiser wrapped in timm's Lookahead (alpha 0.5, k 6: the paper's), its own one off."""
    from timm.optim import Lookahead

    return Extensions(optimizer=lambda model: Lookahead(build_optimizer(model, config.optimisation)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", default="speedrun", help="a TrainConfig recipe, or none")
    parser.add_argument("--model")
    parser.add_argument("--epochs", type=int)
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--optimizer")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--compile", action="store_true", help="torch.compile the training step")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--train-per-class", type=int, metavar="N", help="the first N training images per class")
    parser.add_argument("--lookahead", choices=("imgcls", "timm"), default="imgcls",
                        help="whose Lookahead, where the recipe uses one")
    parser.add_argument("--out", default="/tmp/imgcls-bench-cifar10")
    args = parser.parse_args()
    decode_every_run()
    data = training_subset(dataset("cifar10-jpg.tar.gz", "cifar10"), args.train_per_class)
    options = {k: v for k, v in (("model", args.model), ("epochs", args.epochs), ("batch_size", args.batch_size),
                                 ("optimizer", args.optimizer)) if v is not None}
    folder_images = sum(1 for _ in (data / "train").glob("*/*"))  # 10% of them validate
    variant = "-timm-lookahead" if args.lookahead == "timm" else ""
    device = resolve_device(args.device)
    on_gpu = device.type == "cuda"
    rows = []
    for seed in args.seeds:
        settings = dict(options, val_split=0.1, seed=seed, early_stopping=0, report=False, device=str(device),
                        compile=args.compile)
        config = TrainConfig.from_options(settings, None if args.recipe == "none" else args.recipe)
        extensions = None
        if args.lookahead == "timm" and config.optimisation.lookahead:
            config = config.with_options(lookahead=False)
            extensions = timm_lookahead(config)
        start = time.perf_counter()
        result = train(data, f"{args.out}/{args.recipe}{variant}-seed{seed}", config, progress=sys.stderr.isatty(),
                       extensions=extensions)
        trained = time.perf_counter() - start
        metrics, _ = evaluate(result.bundle_dir, data, split="test", device=str(device))
        epoch_seconds = [h["seconds"] for h in result.history]
        row = {"recipe": args.recipe, "model": config.model.architecture, "lookahead": args.lookahead,
               "train_folder_images": folder_images, "seed": seed, "epochs": config.optimisation.epochs,
               "test_accuracy": round(metrics["accuracy"], 4), "train_wall_s": round(trained, 1),
               "epochs_s": round(sum(epoch_seconds), 2), "s_per_epoch": round(sum(epoch_seconds) / len(epoch_seconds), 2),
               "eval_wall_s": round(time.perf_counter() - start - trained, 1)}
        if (args.compile or on_gpu) and len(epoch_seconds) > 1:
            warmup = max(0.0, epoch_seconds[0] - statistics.median(epoch_seconds[1:]))
            row.update(warmup_s=round(warmup, 2), train_s=round(sum(epoch_seconds) - warmup, 2))
        rows.append(row)
    name = (f"cifar10-{args.recipe}-{config.optimisation.epochs}ep" + (f"-train{args.train_per_class}" if args.train_per_class else "")
            + variant + ("-cuda" if on_gpu else "") + ("-compiled" if args.compile else ""))
    report(name, rows, "python bench/cifar10.py " + " ".join(sys.argv[1:]))


if __name__ == "__main__":
    main()
