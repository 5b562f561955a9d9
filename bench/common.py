"""Shared by the benchmark scripts: find and extract a dataset archive, describe the machine,
print a result table and write bench/results/<name>.json."""
from __future__ import annotations

import json
import logging
import os
import platform
import shutil
import sys
import tarfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ARCHIVES = Path(os.environ.get("IMGCLS_DATA_ARCHIVES", REPO.parent / "shared" / "data"))
EXTRACT_ROOT = Path(os.environ.get("IMGCLS_DATA_CACHE", Path.home() / ".cache" / "imgcls-data"))
RESULTS = REPO / "bench" / "results"
WEIGHTS = REPO.parent / "shared" / "weights"  # real ImageNet weights of efficientnet_lite0, with install-hf-cache.sh
WEIGHTS_FILE = "efficientnet_lite0_in1k.safetensors"
logging.basicConfig(level=logging.INFO, format="%(message)s")  # imgcls logs a line per epoch: show progress


def offline_hub(home: Path = EXTRACT_ROOT / "hf-home", required: bool = True) -> bool:
    """Point this process and its children at the shared weights as an offline Hugging Face cache in `home`,
    as a user's cache holds them after a first download. Absent weights: exit 0 if `required`, else False.
    Call before timm or imgcls is imported: huggingface_hub reads HF_HOME once, at import."""
    import subprocess

    if not (WEIGHTS / WEIGHTS_FILE).is_file():
        if required:
            print(f"skipped: {WEIGHTS / WEIGHTS_FILE} not found")
            sys.exit(0)
        return False
    subprocess.run(["bash", str(WEIGHTS / "install-hf-cache.sh"), str(home)], check=True, stdout=subprocess.DEVNULL)
    os.environ.update(HF_HOME=str(home), HF_HUB_OFFLINE="1")
    return True


def dataset(archive_name: str, folder: str) -> Path:
    """The extracted dataset folder, extracting the archive once; exits 0 with a note if absent."""
    target = EXTRACT_ROOT / folder
    if target.is_dir():
        return target
    archive = ARCHIVES / archive_name
    if not archive.is_file():
        print(f"skipped: {archive} not found (set IMGCLS_DATA_ARCHIVES to the folder holding it)")
        sys.exit(0)
    EXTRACT_ROOT.mkdir(parents=True, exist_ok=True)
    with tarfile.open(archive) as tar:
        tar.extractall(EXTRACT_ROOT, filter="data") if hasattr(tarfile, "data_filter") else tar.extractall(EXTRACT_ROOT)
    return target


def training_subset(data: Path, per_class: int | None) -> Path:
    """`data` with only the first `per_class` images of each train/<class>/ (links, built once beside it) and
    its other splits whole: a shorter run scored on the same test images. None: `data` itself."""
    if per_class is None:
        return data
    subset = data.with_name(f"{data.name}-train{per_class}")
    if not subset.is_dir():
        building = subset.with_name(subset.name + ".partial")
        shutil.rmtree(building, ignore_errors=True)
        for folder in sorted(p for p in (data / "train").iterdir() if p.is_dir()):
            (building / "train" / folder.name).mkdir(parents=True, exist_ok=True)
            for image in sorted(folder.iterdir())[:per_class]:
                (building / "train" / folder.name / image.name).symlink_to(image)
        for split in (p for p in data.iterdir() if p.is_dir() and p.name != "train"):
            (building / split.name).symlink_to(split, target_is_directory=True)
        building.rename(subset)
    return subset


def decode_every_run() -> None:
    """Turn imgcls's disk cache of decoded images off, so each timed run pays for decoding as a first run does."""
    from imgcls.data.cache import CACHE_ENV, CACHE_OFF

    os.environ[CACHE_ENV] = CACHE_OFF


def cpu_model() -> str:
    """The CPU's name and whether it computes bf16 natively: figures differ between such machines."""
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or platform.machine()
    name = next((line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name")), "?")
    return f"{name} ({'with' if 'avx512_bf16' in info or 'amx_tile' in info else 'without'} native bf16)"


def machine() -> dict:
    import torch
    import torchvision

    return {
        "platform": platform.platform(), "processor": platform.processor() or platform.machine(), "cpu": cpu_model(),
        "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "python": platform.python_version(), "torch": torch.__version__, "torchvision": torchvision.__version__,
    }


def report(name: str, rows: list[dict], command: str) -> Path:
    columns = list(rows[0])
    widths = [max(len(str(c)), *(len(str(r[c])) for r in rows)) for c in columns]
    print("  ".join(c.ljust(w) for c, w in zip(columns, widths)))
    for row in rows:
        print("  ".join(str(row[c]).ljust(w) for c, w in zip(columns, widths)))
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps({"name": name, "command": command, "machine": machine(), "rows": rows}, indent=2))
    print(f"\nwritten to {path}")
    return path
