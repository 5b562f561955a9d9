"""Pretrained first: on a few hundred photos, fine-tuning ImageNet weights (the default command) should
beat training from scratch, a linear probe on frozen features (--freeze) come close in a fraction of
the time, and both clear the floor any head must reach: scikit-learn's LogisticRegression on the same
frozen features (logreg; deterministic, so run once per dataset).

    python bench/pretrained.py [--datasets cifar10 imagenette digits mnist] [--variants scratch finetune freeze logreg] [--seeds 0 1]

Each row times the whole `imgcls train` process (decode cache off, weights from ../shared/weights/ via an
offline Hugging Face cache) and scores its bundle on the test images with `imgcls evaluate`, timed apart.
CIFAR-10: 100 training + 100 validation images per class, the 10,000 test images; its 32 px images take
the small-image scratch path by default, so finetune and freeze add --pretrained (efficientnet_lite0 at
224 px). Imagenette: 50 + 50 per class, the 3,925 val images; ImageNet weights have seen these classes,
so its rows are a sanity check, not a result. Digits (scikit-learn's, its own splits) and MNIST (100 +
100 per class) run only the default command, to show that small images take the small-image path.
"""
from __future__ import annotations

import argparse
import json
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

from common import EXTRACT_ROOT, dataset, decode_every_run, offline_hub, report
IMGCLS = Path(sys.executable).parent / "imgcls"
DATASETS = ("cifar10", "imagenette", "digits", "mnist")
VARIANTS = ("scratch", "finetune", "freeze", "logreg")
SOURCES = {"cifar10": ("cifar10-jpg.tar.gz", "cifar10", "test"), "mnist": ("mnist-png.tar.gz", "mnist", "test"),
           "imagenette": ("imagenette2-224.tar.gz", "imagenette2-224", "val")}  # archive, folder, test folder
PER_CLASS = {"cifar10": 100, "imagenette": 50, "mnist": 100}  # training, and again validation, images per class
VARIANT_FLAGS = {"scratch": ["--no-pretrained"], "finetune": [], "freeze": ["--freeze", "--augment", "none"]}
SMALL_IMAGES = {"cifar10"}  # 32 px photos: fine-tuning needs --pretrained, the default trains from scratch
DEFAULT_ONLY = {"digits", "mnist"}  # only the command with no flags
RUN_FIELDS = ("model", "mode", "weights", "epochs", "val_accuracy", "probe_accuracy")
PROBE_MODEL, PROBE_SIZE, PROBE_BATCH = "efficientnet_lite0", 224, 64
MEAN, STD = np.array([0.485, 0.456, 0.406], np.float32), np.array([0.229, 0.224, 0.225], np.float32)


def sampled(name: str, source_train: Path, per_class: int, val_per_class: int) -> Path:
    """train/<class>/ and validation/<class>/ as links to disjoint seeded samples of source_train, built once.
    Validation comes first from one shuffle, so it stays the same and the training sets nest across --per-class."""
    root = EXTRACT_ROOT / f"{name}-pretrained-{per_class}"
    rng = random.Random(0)
    for class_dir in sorted(source_train.iterdir()):
        shuffled = sorted(class_dir.iterdir())
        rng.shuffle(shuffled)
        splits = (("validation", shuffled[:val_per_class]), ("train", shuffled[val_per_class:val_per_class + per_class]))
        for split, images in splits:
            target = root / split / class_dir.name
            if target.is_dir():
                continue
            target.mkdir(parents=True)
            for image in images:
                (target / image.name).symlink_to(image)
    return root


def prepare(name: str, per_class: int | None) -> tuple[Path, Path]:
    """(folder to train on, class-folder tree of test images) for one dataset."""
    if name == "digits":
        from imgcls.data.digits import write_digits_folder

        root = EXTRACT_ROOT / "digits"
        if not (root / "predict").is_dir():  # written last
            write_digits_folder(root)
        return root, root / "test"
    archive, folder, test = SOURCES[name]
    source = dataset(archive, folder)
    train_per_class = per_class if per_class and name != "mnist" else PER_CLASS[name]
    return sampled(name, source / "train", train_per_class, PER_CLASS[name]), source / test


def timed(args: list) -> tuple[str | None, float]:
    """Run `imgcls ARGS`: (its stdout, None if it failed; its wall seconds, interpreter start included)."""
    start = time.perf_counter()
    done = subprocess.run([str(IMGCLS), *map(str, args)], capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode:
        print(f"failed ({done.returncode}): {typed(args)}\n{done.stderr[-2000:]}", file=sys.stderr)
        return None, seconds
    return done.stdout, seconds


def typed(args: list) -> str:
    """The command as a user types it, paths shortened to their names."""
    return " ".join(["imgcls", *(a.name if isinstance(a, Path) else a for a in args)])


def short(source: str) -> str:
    """hf-hub:timm/efficientnet_lite0.ra_in1k -> hf-hub:efficientnet_lite0.ra_in1k; file: and bundle: likewise."""
    kind, _, where = source.partition(":")
    return f"{kind}:{Path(where).name}" if where else kind


def run_fields(run_dir: Path) -> dict:
    """What the run chose and measured, from its bundle config and history."""
    from imgcls.models.bundle import read_bundle_config
    from imgcls.rundir import RunDir

    config = read_bundle_config(run_dir)
    probe = config.metrics.get("linear_probe_accuracy")
    epochs = len(RunDir(run_dir).read_history())
    return {"model": config.architecture, "mode": config.training_mode, "weights": short(config.weights_source),
            "epochs": epochs, "val_accuracy": round(config.metrics["accuracy"], 4),
            "probe_accuracy": "" if probe is None else round(probe, 4)}


def train_row(name: str, variant: str, seed: int, data: Path, test: Path, out: Path) -> dict:
    """One `imgcls train` timed as a whole, then its bundle scored on the test images (timed apart)."""
    run_dir = out / f"{name}-{variant}-seed{seed}"
    shutil.rmtree(run_dir, ignore_errors=True)  # imgcls refuses to overwrite a run's checkpoint
    flags = VARIANT_FLAGS[variant] + (["--pretrained"] if name in SMALL_IMAGES and variant != "scratch" else [])
    args = ["train", data, "--out", run_dir, "--seed", str(seed), "--no-progress", *flags]
    trained, train_s = timed(args)
    fields, accuracy, eval_s = dict.fromkeys(RUN_FIELDS, ""), "failed", ""
    if trained is not None:
        fields = run_fields(run_dir)
        scored, eval_s = timed(["evaluate", run_dir, test, "--format", "json", "--out", run_dir / "test-evaluation"])
        if scored is not None:
            accuracy = round(json.loads(scored)["accuracy"], 4)
        eval_s = round(eval_s, 1)
    return {"dataset": name, "variant": variant, "seed": seed, **fields, "test_accuracy": accuracy,
            "train_wall_s": round(train_s, 1), "eval_wall_s": eval_s, "command": typed(args)}


def pixels(path: Path) -> np.ndarray:
    """(3, 224, 224) float32: the whole image squashed to the square, normalised as ImageNet's weights expect."""
    with Image.open(path) as image:
        rgb = np.asarray(image.convert("RGB").resize((PROBE_SIZE, PROBE_SIZE), Image.BILINEAR), np.float32) / 255
    return ((rgb - MEAN) / STD).transpose(2, 0, 1)


def embedded(model, folder: Path) -> tuple[np.ndarray, list[str]]:
    """Pooled features (N, C) and class names of every image in a class-folder tree."""
    import torch

    paths = sorted(p for p in folder.glob("*/*") if p.is_file())
    batches = []
    with torch.inference_mode():
        for start in range(0, len(paths), PROBE_BATCH):
            x = torch.from_numpy(np.stack([pixels(p) for p in paths[start:start + PROBE_BATCH]]))  # (B, 3, H, W)
            batches.append(model.forward_head(model.forward_features(x), pre_logits=True).numpy())
    return np.concatenate(batches), [p.parent.name for p in paths]


def logreg_row(name: str, train: Path, test: Path) -> dict:
    """scikit-learn on frozen ImageNet features, with no imgcls code: the floor any head must reach."""
    import timm
    from sklearn.linear_model import LogisticRegression

    start = time.perf_counter()
    model = timm.create_model(PROBE_MODEL, pretrained=True, num_classes=0).eval()
    classifier = LogisticRegression(max_iter=2000).fit(*embedded(model, train))
    fitted = time.perf_counter()
    accuracy = classifier.score(*embedded(model, test))
    fields = {**dict.fromkeys(RUN_FIELDS, ""), "model": PROBE_MODEL, "mode": "logreg",
              "weights": short(f"hf-hub:{model.pretrained_cfg['hf_hub_id']}")}
    return {"dataset": name, "variant": "logreg", "seed": "", **fields, "test_accuracy": round(accuracy, 4),
            "train_wall_s": round(fitted - start, 1), "eval_wall_s": round(time.perf_counter() - fitted, 1),
            "command": f"LogisticRegression(max_iter=2000) on {PROBE_MODEL} features"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", nargs="+", choices=DATASETS, default=list(DATASETS), metavar="NAME",
                        help=f"of {', '.join(DATASETS)}")
    parser.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS), metavar="NAME",
                        help=f"of {', '.join(VARIANTS)}; digits and mnist only ever run finetune, the command with no flags")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--per-class", type=int, help="training images per class for cifar10 and imagenette (default 100, 50)")
    parser.add_argument("--out", type=Path, default=Path("/tmp/imgcls-bench-pretrained"), help="folder for the runs")
    args = parser.parse_args()
    offline_hub()
    decode_every_run()
    rows = []
    for name in args.datasets:
        data, test = prepare(name, args.per_class)
        for variant in (v for v in args.variants if name not in DEFAULT_ONLY or v == "finetune"):
            if variant == "logreg":
                rows.append(logreg_row(name, data / "train", test))
            else:
                rows += [train_row(name, variant, seed, data, test, args.out) for seed in args.seeds]
    changed = [*(args.datasets if args.datasets != list(DATASETS) else []),
               *(args.variants if args.variants != list(VARIANTS) else []),
               *([f"per-class{args.per_class}"] if args.per_class else [])]
    report("-".join(["pretrained", *changed]), rows, "python bench/pretrained.py " + " ".join(sys.argv[1:]))


if __name__ == "__main__":
    main()
