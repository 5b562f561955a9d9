"""Where one `imgcls train` spends its wall time outside the epochs (issue 16: on MNIST, 50 s of epochs in
220 s of run, each image read three times). Targets: everything outside the epochs <= 15% of the wall
time on a first run, <= 5% on a second run (decode cache and file hashes already there).

    python bench/overhead.py [--datasets mnist,cifar10,imagenette] [--limit N] [--epochs E]

Each dataset is trained twice with imgcls's defaults (the command a user types: `imgcls train DATA
--epochs E`), each run in a fresh Python process, timed from its start: first with an empty decode
cache, then again on the same cache. Phases come from TrainResult.phase_seconds (train/phases.py):
discover, model (build and load weights), decode, hashes (the leakage check), epochs (with a linear
probe where the mode fits one), evaluation (final evaluation, calibration and the bundle) and report;
startup is the interpreter and imports before train() starts. --limit N keeps the first N images per
class and split (a copy), for a quick look; the issue's figures are without it. Imagenette starts from the
shared efficientnet_lite0 weights as an offline Hugging Face cache (a user's cache after the first download).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import REPO, dataset, offline_hub, report

DATASETS = {  # name: (archive, folder inside it)
    "mnist": ("mnist-png.tar.gz", "mnist"),
    "cifar10": ("cifar10-jpg.tar.gz", "cifar10"),
    "imagenette": ("imagenette2-224.tar.gz", "imagenette2-224"),
}
TARGETS_PCT = {"first": 15.0, "second": 5.0}  # the ceilings on the time outside the epochs
PHASE_COLUMNS = ("startup", "discover", "model", "decode", "hashes", "epochs", "evaluation", "report", "other")

# Run in a fresh interpreter, so that a run pays for its imports as `imgcls train` does; prints its phases as JSON.
RUN_ONE = """
import json, sys, time
from imgcls.train.config import TrainConfig
from imgcls.train.run import train
started = time.perf_counter()
result = train(sys.argv[1], sys.argv[2], TrainConfig.from_options(epochs=int(sys.argv[3])), progress=False)
print("PHASES " + json.dumps({**result.phase_seconds, "train_call": time.perf_counter() - started}))
"""


def _limited(data: Path, limit: int, into: Path) -> Path:
    """A copy of `data` holding the first `limit` images of every split/class folder."""
    for folder in sorted(p for p in data.glob("*/*") if p.is_dir()):
        target = into / folder.relative_to(data)
        target.mkdir(parents=True, exist_ok=True)
        for image in sorted(folder.iterdir())[:limit]:
            shutil.copy2(image, target / image.name)
    return into


def _run(data: Path, run_dir: Path, epochs: int, cache_dir: Path) -> dict:
    """The phases of one `train` in a new process, with its whole wall time and its startup."""
    env = {**os.environ, "IMGCLS_CACHE_DIR": str(cache_dir),
           "PYTHONPATH": os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")])}
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", RUN_ONE, str(data), str(run_dir), str(epochs)], env=env,
                          capture_output=True, text=True)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        sys.exit(f"training on {data} failed:\n{done.stderr[-3000:]}")
    phases = json.loads(next(line for line in done.stdout.splitlines() if line.startswith("PHASES "))[len("PHASES "):])
    phases["startup"] = wall - phases.pop("train_call")
    phases["wall"] = wall
    return phases


def _row(name: str, run: str, images: int, phases: dict) -> dict:
    outside = phases["wall"] - phases.get("epochs", 0.0)
    pct = 100 * outside / phases["wall"]
    return {"dataset": name, "run": run, "images": images,
            **{column: round(phases.get(column, 0.0), 1) for column in PHASE_COLUMNS},
            "wall_s": round(phases["wall"], 1), "outside_epochs_pct": round(pct, 1),
            "target_pct": TARGETS_PCT[run], "met": "yes" if pct <= TARGETS_PCT[run] else "no"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", default="mnist,cifar10,imagenette", help="comma-separated: " + ", ".join(DATASETS))
    parser.add_argument("--limit", type=int, help="first N images per split and class (a copy); default: all")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--out", default="/tmp/imgcls-bench-overhead")
    args = parser.parse_args()
    unknown = [name for name in args.datasets.split(",") if name not in DATASETS]
    if unknown:
        parser.error(f"unknown dataset {unknown[0]!r}; choose from {', '.join(DATASETS)}")
    names = args.datasets.split(",")
    if "imagenette" in names and not offline_hub(required=False):
        print("no shared efficientnet_lite0 weights: imagenette trains what a machine without them would")
    out = Path(args.out)
    shutil.rmtree(out, ignore_errors=True)
    rows = []
    for name in names:
        data = dataset(*DATASETS[name])
        if args.limit:
            data = _limited(data, args.limit, out / "data" / name)
        images = sum(1 for p in data.glob("*/*/*") if p.is_file())
        with tempfile.TemporaryDirectory(prefix="imgcls-overhead-cache-") as cache_dir:  # a first run: empty cache
            for run in ("first", "second"):
                rows.append(_row(name, run, images, _run(data, out / f"{name}-{run}", args.epochs, Path(cache_dir))))
    subset = "" if names == list(DATASETS) else "-" + "-".join(names)
    report("overhead" + subset + (f"-limit{args.limit}" if args.limit else ""), rows,
           "python bench/overhead.py " + " ".join(sys.argv[1:]))


if __name__ == "__main__":
    main()
