"""Smaller and faster models (issue 19): int8 ONNX against fp32 ONNX and PyTorch eager, and distillation.

    taskset -c 0,1 python bench/compress.py --bundle-224 runs/imagenette-mobilenetv2 --bundle-32 runs/cifar10
    taskset -c 0,1 python bench/compress.py --parts distill --bundle-32 runs/cifar10 --student cnn-bn --epochs 10

int8 (per bundle): the run copied to a scratch folder, exported with `imgcls export --int8` (calibrated on its
training split, checked on its validation split), then at batch 1 and 32 the median images/s of 5 rounds in
which each engine in turn runs (bench/inference.py's timing: a busy neighbour slows all engines alike), and
top-1 and ECE of each engine on the run's test split (`imgcls evaluate --engine`; int8 at its re-fitted
temperature). Targets: int8 >= 2x fp32 ONNX at batch 32, <= 1 point of top-1 lost, ECE within 0.01.
--bundle-224 is a MobileNetV2 at 224 px (e.g. `imgcls train imagenette/ --model mobilenetv2_100`); --bundle-32
the speedrun CIFAR-10 model (`python bench/cifar10.py`, or `imgcls train cifar10/ --recipe speedrun`).

distill: on CIFAR-10 (shared/data), --student trained alone and trained with --distill-from the --bundle-32
teacher, at the same --epochs, once per --seeds; test top-1 of each and the median gain. Target: distilled >= alone
+ 2 points.
Pin to 2 cores with taskset: ONNX Runtime and PyTorch use every core this process may run on.
"""
from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

import torch
from common import dataset, report, training_subset
from inference import images_per_second

from imgcls.evaluate.evaluation import evaluate
from imgcls.export.onnx import export_onnx
from imgcls.export.quantize import export_int8
from imgcls.predict.session import OnnxModel, int8_path
from imgcls.models.bundle import find_bundle, load_bundle
from imgcls.rundir import RunDir
from imgcls.train.config import TrainConfig
from imgcls.train.run import train

BATCHES = (1, 32)


def _test_data(run: Path) -> tuple[str, str]:
    """The run's data folder and the split to score on: test if it has one, else validation."""
    data_dir = RunDir(run).read_data_summary().data_dir
    split = "test" if (Path(data_dir) / "test").is_dir() else "validation"
    return data_dir, split


def measure_int8(run: Path, label: str, runs: int, scratch: Path) -> list[dict]:
    """Rows of one bundle: per engine and batch size, images/s; per engine, test top-1 and ECE."""
    copy = scratch / label
    shutil.copytree(find_bundle(run), RunDir(copy).bundle)
    shutil.copy(RunDir(run).data_summary, RunDir(copy).data_summary)
    fp32 = export_onnx(copy).path
    check = export_int8(copy, fp32).record
    model, config = load_bundle(copy)
    engines = {"torch": (model, torch.contiguous_format), "onnx": (OnnxModel(fp32), torch.contiguous_format),
               "onnx-int8": (OnnxModel(int8_path(fp32)), torch.contiguous_format)}
    data_dir, split = _test_data(run)
    scores = {name: evaluate(copy, data_dir, scratch / f"{label}-{name}", split, device="cpu", engine=name)[0]
              for name in engines}
    rows = []
    for batch in BATCHES:
        images = torch.rand(batch, 3, config.img_size, config.img_size, generator=torch.Generator().manual_seed(0))
        with torch.inference_mode():
            rates = images_per_second(engines, images, runs, batches=max(1, 32 // batch), warmup=2)
        for name in engines:
            rows.append({"part": "int8", "model": f"{config.architecture} {config.img_size}px", "engine": name,
                         "batch": batch, "images_per_s": round(statistics.median(rates[name]), 1),
                         "min_max": f"{min(rates[name]):.1f}-{max(rates[name]):.1f}",
                         f"{split}_top1": round(100 * scores[name]["accuracy"], 2), "ece": round(scores[name]["ece"], 4),
                         "int8_check": f"val drop {check['drop_points']:+.2f} pts, agreement {check['agreement']:.3f}"})
    return rows


def measure_distill(teacher: Path, student: str, epochs: int, seeds: list[int], out: Path,
                    per_class: int | None) -> list[dict]:
    """Test top-1 of `student` trained alone and distilled from `teacher`, on CIFAR-10 (its first `per_class`
    training images per class, when given), same epochs, for each seed; then the median gain over the seeds."""
    data = training_subset(dataset("cifar10-jpg.tar.gz", "cifar10"), per_class)
    rows = []
    for seed in seeds:
        for name, extra in (("alone", {}), ("distilled", {"distill_from": str(teacher)})):
            config = TrainConfig.from_options(model=student, epochs=epochs, seed=seed, val_split=0.1, early_stopping=0,
                                              report=False, **extra)
            result = train(data, out / f"{student}-{name}-seed{seed}", config, progress=sys.stderr.isatty())
            metrics, _ = evaluate(result.bundle_dir, data, split="test", device="cpu")
            rows.append({"part": "distill", "model": student, "engine": name, "train_per_class": per_class or "all",
                         "epochs": epochs, "seed": seed,
                         "test_top1": round(100 * metrics["accuracy"], 2), "ece": round(metrics["ece"], 4)})
    gains = [distilled["test_top1"] - alone["test_top1"] for alone, distilled in zip(rows[::2], rows[1::2])]
    rows.append({"part": "distill", "model": student, "engine": "median gain", "train_per_class": per_class or "all",
                 "epochs": epochs, "seed": ",".join(map(str, seeds)), "test_top1": round(statistics.median(gains), 2)})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--parts", nargs="+", choices=("int8", "distill"), default=["int8", "distill"])
    parser.add_argument("--bundle-224", type=Path, metavar="RUN", help="a MobileNetV2 run at 224 px")
    parser.add_argument("--bundle-32", type=Path, metavar="RUN", help="the speedrun CIFAR-10 run (also the teacher)")
    parser.add_argument("--runs", type=int, default=5, help="timed rounds; the median is reported")
    parser.add_argument("--student", default="cnn-bn")
    parser.add_argument("--epochs", type=int, default=10, help="of both students")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="distill: a pair of students per seed")
    parser.add_argument("--train-per-class", type=int, metavar="N",
                        help="distill: the students train on the first N CIFAR-10 training images per class")
    parser.add_argument("--out", type=Path, default=Path("/tmp/imgcls-bench-compress"))
    args = parser.parse_args()
    bundles = {name: run for name, run in (("224px", args.bundle_224), ("32px", args.bundle_32)) if run}
    if not bundles or ("distill" in args.parts and not args.bundle_32):
        parser.error("pass --bundle-224 and/or --bundle-32 (distill needs --bundle-32, its teacher)")
    rows = []
    with tempfile.TemporaryDirectory(prefix="imgcls-bench-compress-") as scratch:
        if "int8" in args.parts:
            for label, run in bundles.items():
                rows += measure_int8(run, label, args.runs, Path(scratch))
    if "distill" in args.parts:
        rows += measure_distill(args.bundle_32, args.student, args.epochs, args.seeds, args.out, args.train_per_class)
    columns = sorted({key for row in rows for key in row}, key=lambda key: min(list(r).index(key) for r in rows if key in r))
    name = "compress" if set(args.parts) == {"int8", "distill"} else "compress-" + "-".join(args.parts)
    name += f"-{args.student}" if args.parts == ["distill"] else ""
    report(name, [{key: row.get(key, "") for key in columns} for row in rows],
           "python bench/compress.py " + " ".join(sys.argv[1:]))


if __name__ == "__main__":
    main()
