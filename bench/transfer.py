"""Transfer learning without network: a cnn-bn pretrained here on CIFAR-10 and moved with
--init-from to a small folder dataset (Imagenette at 32 px, N images per class), against the same
model from scratch; and the frozen-feature cache against running the frozen backbone every epoch.

    python bench/transfer.py --source RUN_OR_BUNDLE [--per-class 50] [--seeds 0 1]

--source is a CIFAR-10 bundle (e.g. from bench/cifar10.py). Reported: validation accuracy on 500
held-out Imagenette images (50 per class) and the wall time of each run.
"""
from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

from common import EXTRACT_ROOT, dataset, report

from imgcls.train.config import TrainConfig
from imgcls.train.run import train

VAL_PER_CLASS = 50


def small_imagenette(per_class: int, seed: int = 0) -> Path:
    """A folder dataset of links into Imagenette: train/<class>/ (per_class each), validation/<class>/ (50 each)."""
    source = dataset("imagenette2-224.tar.gz", "imagenette2-224")
    root = EXTRACT_ROOT / f"imagenette-small-{per_class}"
    rng = random.Random(seed)
    for split, src_split, count in (("train", "train", per_class), ("validation", "val", VAL_PER_CLASS)):
        for class_dir in sorted((source / src_split).iterdir()):
            target = root / split / class_dir.name
            if target.is_dir():
                continue
            target.mkdir(parents=True)
            for image in rng.sample(sorted(class_dir.iterdir()), count):
                (target / image.name).symlink_to(image)
    return root


def timed(data: Path, out: Path, config: TrainConfig) -> tuple[float, float]:
    start = time.perf_counter()
    result = train(data, out, config, progress=False)
    return result.metrics["accuracy"], time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", required=True, help="CIFAR-10 bundle or run folder to transfer from")
    parser.add_argument("--per-class", type=int, default=50)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--out", default="/tmp/imgcls-bench-transfer")
    args = parser.parse_args()
    data = small_imagenette(args.per_class)
    common = dict(epochs=args.epochs, batch_size=32, img_size=32, early_stopping=0)
    runs = {
        "scratch": dict(model="cnn-bn"),
        "init-from, finetune": dict(init_from=args.source, mode="finetune"),
        "init-from, freeze (cached features)": dict(init_from=args.source, mode="freeze", augment="none"),
        "init-from, freeze (backbone every epoch)": dict(init_from=args.source, mode="freeze", augment="none", cache_features=False),
    }
    rows = []
    for name, options in runs.items():
        for seed in args.seeds:
            accuracy, seconds = timed(data, Path(args.out) / f"{name.split(',')[0]}-{len(rows)}", TrainConfig.from_options(**common, **options, seed=seed))
            rows.append({"run": name, "seed": seed, "val_accuracy": round(accuracy, 4), "wall_s": round(seconds, 1)})
    report("transfer", rows, "python bench/transfer.py " + " ".join(sys.argv[1:]))


if __name__ == "__main__":
    main()
