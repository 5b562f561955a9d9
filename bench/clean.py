"""Label cleaning, measured: flip known labels of real data and see how many `imgcls audit --labels` finds,
what dropping its flags buys, and how well its outlier score finds images of another dataset.

    python bench/clean.py [--datasets cifar10 imagenette] [--noise 0.1 0.2]

CIFAR-10: a seeded 10k-image subset of its training images (1,000 per class), scored on 2,000 test images.
Imagenette: its 9,469 training images, scored on its 3,925 val images. Features: the shared ImageNet
weights of efficientnet_lite0 (an offline Hugging Face cache), computed once per dataset.
Rows:
  - label noise: a seeded `noise` share of the training labels flipped to a random other class;
    precision and recall of the flagged issues, and at the top N of the ranking (N = the number flipped);
    accuracy on the clean test images of a logistic regression (the linear probe imgcls trains with
    --freeze) fitted on the noisy labels, on the noisy labels less the flagged images, and on clean labels;
  - outliers: 5% more images from other datasets (MNIST and CIFAR-10 into Imagenette; MNIST into
    CIFAR-10) filed under random classes: AUROC of the outlier score, precision and recall of the flags;
  - audit time: the whole `audit_labels` on the 10%-noise folder, decode included (decode cache off).
"""
from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from common import dataset, decode_every_run, offline_hub, report

SUBSETS = {"cifar10": ("cifar10-jpg.tar.gz", "cifar10", "test", 1000, 200),  # archive, folder, test folder, per class
           "imagenette": ("imagenette2-224.tar.gz", "imagenette2-224", "val", None, None)}


def sample_files(folder: Path, per_class: int | None, seed: int) -> dict[str, list[Path]]:
    rng = random.Random(seed)
    picked = {}
    for class_dir in sorted(p for p in folder.iterdir() if p.is_dir()):
        files = sorted(class_dir.iterdir())
        rng.shuffle(files)
        picked[class_dir.name] = sorted(files[:per_class] if per_class else files)
    return picked


def embed(paths: list[Path], classes: list[str], labels: list[int]):
    from imgcls.clean.labels import embed_images
    from imgcls.data.folders import LabelledImages, Sample

    samples = [Sample(p, (label,)) for p, label in zip(paths, labels)]
    embedded = embed_images(LabelledImages(paths[0].parent, classes, {"train": samples}), torch.device("cpu"))
    assert len(embedded.samples) == len(paths), "unreadable files in the benchmark data"
    return embedded


def flip(labels: np.ndarray, share: float, classes: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    flipped = rng.choice(len(labels), int(round(share * len(labels))), replace=False)
    noisy = labels.copy()
    noisy[flipped] = (labels[flipped] + rng.integers(1, classes, len(flipped))) % classes
    return noisy, flipped


def probe_accuracy(train_x, train_y, test_x, test_y, classes: int) -> float:
    from imgcls.train.probe import fit_linear_probe

    probe = fit_linear_probe(train_x, torch.nn.functional.one_hot(torch.as_tensor(train_y), classes).float())
    return float((probe.logits(test_x).argmax(1).numpy() == test_y).mean())


def auroc(scores: np.ndarray, positive: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(positive, scores))


def label_rows(name: str, train, labels, test, test_labels, classes: list[str], shares: list[float]) -> list[dict]:
    from imgcls.clean.confident import rank_label_issues
    from imgcls.clean.labels import label_probabilities
    from imgcls.clean.neighbours import nearest_neighbours

    k = len(classes)
    neighbours = nearest_neighbours(train.features)
    clean_accuracy = probe_accuracy(train.features, labels, test.features, test_labels, k)
    rows = []
    for share in shares:
        noisy, flipped = flip(labels, share, k, seed=1)
        start = time.perf_counter()
        ranking = rank_label_issues(label_probabilities(train.features, noisy, k, 5, 0, neighbours), noisy)
        seconds = time.perf_counter() - start
        truth = set(flipped.tolist())
        flagged = set(ranking.issues.tolist())
        top = set(np.argsort(-ranking.scores, kind="stable")[:len(flipped)].tolist())
        keep = np.setdiff1d(np.arange(len(noisy)), ranking.issues)
        noisy_accuracy = probe_accuracy(train.features, noisy, test.features, test_labels, k)
        cleaned_accuracy = probe_accuracy(train.features[keep], noisy[keep], test.features, test_labels, k)
        lost = clean_accuracy - noisy_accuracy
        rows.append({"dataset": name, "check": f"labels {share:.0%} flipped", "images": len(noisy),
                     "injected": len(flipped), "flagged": len(flagged),
                     "precision": round(len(flagged & truth) / max(len(flagged), 1), 3),
                     "recall": round(len(flagged & truth) / len(truth), 3),
                     "precision@N": round(len(top & truth) / len(truth), 3),
                     "acc_noisy": round(noisy_accuracy, 4), "acc_cleaned": round(cleaned_accuracy, 4),
                     "acc_clean": round(clean_accuracy, 4),
                     "recovered": round((cleaned_accuracy - noisy_accuracy) / lost, 2) if lost > 0 else None,
                     "rank_s": round(seconds, 1)})
    return rows


def outlier_row(name: str, train, labels: np.ndarray, extra, classes: list[str]) -> dict:
    from imgcls.clean.outliers import outlier_scores

    features = torch.cat([train.features, extra.features])
    filed_under = np.r_[labels, np.random.default_rng(3).integers(0, len(classes), len(extra.features))]
    positive = np.r_[np.zeros(len(train.features), bool), np.ones(len(extra.features), bool)]
    score, flagged = outlier_scores(features, filed_under, len(classes))
    hits = (flagged & positive).sum()
    return {"dataset": name, "check": f"outliers {len(extra.features)} of other data", "images": len(features),
            "injected": int(positive.sum()), "flagged": int(flagged.sum()),
            "precision": round(hits / max(flagged.sum(), 1), 3), "recall": round(hits / positive.sum(), 3),
            "auroc": round(auroc(score, positive), 4)}


def outsiders(name: str, count: int, seed: int) -> list[Path]:
    sources = [("mnist-png.tar.gz", "mnist")] + ([("cifar10-jpg.tar.gz", "cifar10")] if name == "imagenette" else [])
    files = []
    for archive, folder in sources:
        files += sorted((dataset(archive, folder) / "train").rglob("*.*"))[::50]
    random.Random(seed).shuffle(files)
    return files[:count]


def timed_audit(train_files: dict[str, list[Path]], share: float) -> dict:
    """The whole audit, as a user runs it, on a folder of links with `share` of the labels flipped."""
    from imgcls.clean.labels import audit_labels

    classes = sorted(train_files)
    paths = [p for c in classes for p in train_files[c]]
    labels = np.array([i for i, c in enumerate(classes) for _ in train_files[c]])
    noisy, _ = flip(labels, share, len(classes), seed=1)
    with tempfile.TemporaryDirectory() as root:
        for index, (path, label) in enumerate(zip(paths, noisy)):
            target = Path(root, "train", classes[label], f"{index:06d}{path.suffix}")
            target.parent.mkdir(parents=True, exist_ok=True)
            target.symlink_to(path)
        start = time.perf_counter()
        found = audit_labels(root, val_split=0.1)
        return {"images": found["label_check"]["images"], "label_issues": len(found["label_issues"]),
                "audit_s": round(time.perf_counter() - start, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", nargs="+", default=list(SUBSETS), choices=list(SUBSETS))
    parser.add_argument("--noise", nargs="+", type=float, default=[0.1, 0.2])
    args = parser.parse_args()
    offline_hub(Path(tempfile.mkdtemp(prefix="imgcls-bench-hf-")))
    decode_every_run()
    from imgcls.runtime import keep_freed_memory

    keep_freed_memory()  # as every imgcls command does
    torch.set_num_threads(os.cpu_count() or 1)
    rows = []
    for name in args.datasets:
        archive, folder, test_folder, per_class, test_per_class = SUBSETS[name]
        root = dataset(archive, folder)
        train_files, test_files = sample_files(root / "train", per_class, 0), sample_files(root / test_folder, test_per_class, 0)
        classes = sorted(train_files)
        paths = [p for c in classes for p in train_files[c]]
        labels = np.array([i for i, c in enumerate(classes) for _ in train_files[c]])
        test_paths = [p for c in classes for p in test_files[c]]
        test_labels = np.array([i for i, c in enumerate(classes) for _ in test_files[c]])
        start = time.perf_counter()
        train = embed(paths, classes, labels.tolist())
        print(f"{name}: {len(paths)} training images embedded in {time.perf_counter() - start:.0f}s", flush=True)
        test = embed(test_paths, classes, test_labels.tolist())
        rows += label_rows(name, train, labels, test, test_labels, classes, args.noise)
        extra_paths = outsiders(name, int(0.05 * len(paths)), seed=2)
        extra = embed(extra_paths, classes, [0] * len(extra_paths))
        rows.append(outlier_row(name, train, labels, extra, classes))
        if name == "cifar10":
            rows.append({"dataset": name, "check": "whole audit, 10% flipped", **timed_audit(train_files, 0.1)})
        for row in rows:
            print(row, flush=True)
    columns = sorted({key for row in rows for key in row}, key=[k for row in rows for k in row].index)
    report("clean", [{c: row.get(c, "") for c in columns} for row in rows], "python bench/clean.py " + " ".join(sys.argv[1:]))


if __name__ == "__main__":
    main()
