"""CPU inference speed through ONNX Runtime and PyTorch eager (issue 5: >= 200 images/s through
ONNX Runtime for MobileNetV2 at 224 px, batch 32, on 2 CPU cores).

    python bench/inference.py [--model mobilenetv2_100] [--img-size 224] [--batch-size 32] [--runs 5]

The model is timm's with random weights (speed does not depend on them) and a 10-class head,
saved as a bundle and exported with imgcls.export, so ONNX Runtime runs the very file users
deploy. Every engine gets the same float input and warm-up batches, then `--runs` rounds in which
each engine in turn runs one untimed batch and times `--batches` batches (taking turns, a busy neighbour
slows all engines alike); the table shows the median images/s over the rounds and their spread.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time

import torch
from common import report

from imgcls.export.onnx import export_onnx
from imgcls.predict.session import OnnxModel
from imgcls.models.bundle import BundleConfig, build_classifier, save_bundle

CLASSES = [f"class{i}" for i in range(10)]


def images_per_second(candidates: dict, images: torch.Tensor, runs: int, batches: int,
                      warmup: int) -> dict[str, list[float]]:
    """engine name -> images/s of each round. Each timed call follows an untimed one of the same engine:
    an engine's threads spin for a while after it returns (OpenMP's, ONNX Runtime's), and on 2 cores the
    next engine timed straight after ran at half its speed (int8 1.68x fp32 one way round, 1.22x settled)."""
    inputs = {name: images.contiguous(memory_format=layout) for name, (_, layout) in candidates.items()}
    for name, (model, _) in candidates.items():
        for _ in range(warmup):
            model(inputs[name])
    rates = {name: [] for name in candidates}
    for _ in range(runs):
        for name, (model, _) in candidates.items():
            model(inputs[name])  # settle: the previous engine's threads stop spinning, this one's wake
            start = time.perf_counter()
            for _ in range(batches):
                model(inputs[name])
            rates[name].append(batches * len(images) / (time.perf_counter() - start))
    return rates


def engines(model_name: str, img_size: int, folder: str) -> dict:
    """engine name -> (callable, its input layout)."""
    config = BundleConfig(architecture=model_name, classes=CLASSES, img_size=img_size,
                          mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
    model = build_classifier(config).eval()
    bundle = save_bundle(model, config, f"{folder}/model")
    exported = export_onnx(bundle)  # fails unless it matches PyTorch within 1e-4
    channels_last = build_classifier(config).eval().to(memory_format=torch.channels_last)
    channels_last.load_state_dict(model.state_dict())
    return {
        "onnxruntime": (OnnxModel(exported.path), torch.contiguous_format),
        "torch eager": (model, torch.contiguous_format),
        "torch eager, channels-last": (channels_last, torch.channels_last),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="mobilenetv2_100")
    parser.add_argument("--img-size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--batches", type=int, default=1,
                        help="batches per timed run (short runs fit between a shared machine's busy spells)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed batches first (allocations, ORT arenas)")
    args = parser.parse_args()
    images = torch.rand(args.batch_size, 3, args.img_size, args.img_size, generator=torch.Generator().manual_seed(0))
    with tempfile.TemporaryDirectory() as folder:
        candidates = engines(args.model, args.img_size, folder)
        with torch.inference_mode():
            logits = {name: model(images.contiguous(memory_format=layout)) for name, (model, layout) in candidates.items()}
            rates = images_per_second(candidates, images, args.runs, args.batches, args.warmup)
    rows = [{"engine": name, "model": args.model, "img_size": args.img_size, "batch": args.batch_size,
             "images_per_s": round(statistics.median(rates[name]), 1),
             "min_max": f"{min(rates[name]):.1f}-{max(rates[name]):.1f}", "runs": args.runs,
             "max_logit_diff": f"{(logits[name] - logits['torch eager']).abs().max().item():.1e}"} for name in candidates]
    report("inference", rows, "python bench/inference.py " + " ".join(sys.argv[1:]))


if __name__ == "__main__":
    main()
