"""Look-alikes from a pretrained bundle against a scratch one: how often the k training images
`imgcls similar` returns for a validation image share its class (precision at k).

    python bench/lookalikes.py RUN [RUN ...] [--k 5] [--per-class 20]

RUNs are imgcls run folders trained on the same data (e.g. bench/pretrained.py's
imagenette-finetune-seed0 and imagenette-scratch-seed0); each is scored on the first --per-class
images of every class of its own validation split.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from common import report

import imgcls
from imgcls.explain.similar import find_similar
from imgcls.rundir import RunDir


def validation_images(run: Path, per_class: int) -> list[Path]:
    data = Path(RunDir(run).read_data_summary().data_dir)
    return [path for folder in sorted((data / "validation").iterdir()) for path in sorted(folder.iterdir())[:per_class]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--k", type=int, default=5)
    parser.add_argument("--per-class", type=int, default=20)
    args = parser.parse_args()
    rows = []
    for run in args.runs:
        predictor, images = imgcls.load(run), validation_images(run, args.per_class)
        start = time.perf_counter()
        results = find_similar(predictor, images, k=args.k)
        same = sum(match["label"] == image.parent.name for image, matches in zip(images, results) for match in matches)
        config = predictor.config
        rows.append({"run": run.name, "model": config.architecture, "mode": config.training_mode,
                     "queries": len(images), f"same_class_at_{args.k}": round(same / (len(images) * args.k), 4),
                     "seconds": round(time.perf_counter() - start, 1)})
    report("lookalikes", rows, "python bench/lookalikes.py " + " ".join(sys.argv[1:]))


if __name__ == "__main__":
    main()
