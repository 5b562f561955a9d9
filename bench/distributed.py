"""Training throughput with 1, 2, ... processes: `imgcls train DATA --nproc N`, the command a user types.

Each row is one run of the same training (same global batch, epochs and seed) with N processes;
images/s is the training images over the median epoch time after the first epoch (history.csv:
the training loop only, gradient all-reduce included; decoding, validation and the report are not).
On a 2-core CPU, N processes share the cores (torchrun gives each cores/N threads), so scaling
measures DDP's overhead, not a gain; on a GPU machine run it with --device cuda --nproc 1 2 4 8.

    python bench/distributed.py                       # CPU: CIFAR-10 (5,000 images) and Imagenette-50 pretrained
    python bench/distributed.py --device cuda --nproc 1 2 4 8 --workloads cifar10
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import EXTRACT_ROOT, REPO, dataset, report  # noqa: E402

from imgcls.rundir import RunDir  # noqa: E402

SUBSET_PER_CLASS = {"train": 500, "validation": 100}


def cifar10_subset(root: Path) -> Path:
    """5,000 training and 1,000 validation images of CIFAR-10 as links: a run of a few minutes on 2 cores."""
    source = dataset("cifar10-jpg.tar.gz", "cifar10")
    target = root / "cifar10-5k"
    for split, source_split in (("train", "train"), ("validation", "test")):
        for class_dir in sorted((source / source_split).iterdir()):
            (target / split / class_dir.name).mkdir(parents=True)
            for image in sorted(class_dir.iterdir())[: SUBSET_PER_CLASS[split]]:
                (target / split / class_dir.name / image.name).symlink_to(image)
    return target


def workloads(root: Path) -> dict[str, tuple[Path, list[str]]]:
    """name -> (data folder, options): a CNN from scratch on thumbnails, and the default pretrained fine-tuning."""
    return {
        "cifar10": (cifar10_subset(root), ["--model", "cnn-bn", "--epochs", "4", "--batch-size", "64"]),
        "imagenette-50-pretrained": (EXTRACT_ROOT / "imagenette-pretrained-50", ["--epochs", "3"]),
    }


def run(data: Path, options: list[str], nproc: int, device: str, out: Path) -> dict:
    command = [sys.executable, "-m", "imgcls", "--quiet", "train", str(data), "--out", str(out), "--nproc", str(nproc),
               "--device", device, "--early-stopping", "0", "--no-report", "--no-progress", *options]
    start = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, cwd=REPO)
    wall_s = time.perf_counter() - start
    history = RunDir(out).read_history()
    images = sum(RunDir(out).read_data_summary().counts["train"].values())
    epoch_s = statistics.median(float(row["seconds"]) for row in history[1:] or history)
    return {"processes": nproc, "images": images, "epoch_s": round(epoch_s, 2), "images_per_s": round(images / epoch_s, 1),
            "wall_s": round(wall_s, 1), "val_accuracy": round(float(history[-1]["val_accuracy"]), 4)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nproc", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--workloads", nargs="+", default=None, help="cifar10, imagenette-50-pretrained")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="imgcls-bench-distributed-") as tmp:
        chosen = workloads(Path(tmp))
        rows = []
        for name in args.workloads or list(chosen):
            data, options = chosen[name]
            if not data.is_dir():
                print(f"skipped {name}: {data} not found")
                continue
            for nproc in args.nproc:
                row = {"workload": name, "device": args.device, **run(data, options, nproc, args.device,
                                                                       Path(tmp) / f"{name}-{nproc}")}
                rows.append(row)
                print(row, flush=True)
        base = {row["workload"]: row["images_per_s"] for row in rows if row["processes"] == args.nproc[0]}
        for row in rows:
            row["speedup"] = round(row["images_per_s"] / base[row["workload"]], 2)
    report(f"distributed-{args.device}", rows, "python bench/distributed.py " + " ".join(sys.argv[1:]))


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    main()
