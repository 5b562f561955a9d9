"""Load test of `imgcls serve` on loopback (issue 6: >= 50 images/s at concurrency 8 with zero 5xx
responses, 2 CPU cores, a MobileNetV2-size model at 224 px).

    python bench/serve.py [--parts throughput memory] [--requests 400] [--concurrency 1 8 32] [--bad-share 0.1]
                          [--modes batched unbatched onnx-batched]

Builds a MobileNetV2 bundle (timm `mobilenetv2_100`, random weights: speed does not depend on them,
and nothing is downloaded), starts `imgcls serve` as a subprocess on 127.0.0.1 once per mode
(batched: the defaults on PyTorch; unbatched: --max-batch 1; onnx-batched: the bundle's ONNX
export run by ONNX Runtime), and at each concurrency sends a fixed number of
one-image requests with httpx. A share of them are bad on purpose, in turn a text file (415), bytes
that are no image (422) and an upload over the size limit (413); the rest are 320 x 320 JPEGs.
Reports good images per second, p50/p99 latency of good requests and the count of each status class.

The memory part (issue 14) sends a burst of 32 huge but tiny uploads, 8 at a time, and reads the
server process's resident memory (Linux /proc) before, at its peak during the burst and after it:
9000 x 9000 1-bit PNGs (81 Mpx in ~10 kB) that the default limit refuses from their header, 40-Mpx
RGBA PNGs that it lets through (the most a decode can cost at the defaults, so the peak is the
ceiling), and the 81-Mpx PNGs with the limit raised and 8 decode threads, as the server was before.
Results go to bench/results/serve.json and serve-memory.json.
"""
from __future__ import annotations

import argparse
import asyncio
import io
import logging
import signal
import socket
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import httpx
import numpy as np
from common import report
from PIL import Image

from imgcls.export.onnx import export_onnx
from imgcls.models.bundle import BundleConfig, build_classifier, save_bundle

ARCHITECTURE, IMG_SIZE, CLASSES = "mobilenetv2_100", 224, ["cat", "dog", "bird", "fish", "horse"]
UPLOAD_PX = 320  # a resized phone photo: decoding it is part of the cost, as it is for real clients
MAX_UPLOAD_MB = 1.0  # the server's limit in this run, so an oversized upload costs 1.5 MB, not 20
MODES = {"batched": ["--engine", "torch"], "unbatched": ["--engine", "torch", "--max-batch", "1"],
         "onnx-batched": ["--engine", "onnx"]}  # onnx: the bundle exported with `imgcls export` first
WARMUP_REQUESTS = 8
logging.getLogger("httpx").setLevel(logging.WARNING)  # a line per request would bury the results
# (upload, server flags) per memory case: the images are all zeros, so PNG squeezes them to kilobytes.
MEMORY_CASES = {"81 Mpx 1-bit, defaults": ("1", 9000, []),
                "40 Mpx RGBA, defaults": ("RGBA", 6324, []),
                "81 Mpx 1-bit, 90 Mpx limit, 8 decode threads": ("1", 9000, ["--max-megapixels", "90", "--decode-threads", "8"])}
MEMORY_REQUESTS, MEMORY_CONCURRENCY = 32, 8


def build_bundle(folder: Path) -> Path:
    config = BundleConfig(architecture=ARCHITECTURE, classes=CLASSES, img_size=IMG_SIZE,
                          mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
    return save_bundle(build_classifier(config), config, folder)


def good_images(count: int = 16, seed: int = 0) -> list[bytes]:
    """Smooth random colour fields with noise: JPEG sizes like photos' (~20-40 kB at 320 px)."""
    rng, images = np.random.default_rng(seed), []
    for _ in range(count):
        small = rng.integers(0, 255, (8, 8, 3), np.uint8)
        field = np.asarray(Image.fromarray(small).resize((UPLOAD_PX, UPLOAD_PX), Image.BICUBIC), np.int16)
        noisy = np.clip(field + rng.normal(0, 12, field.shape), 0, 255).astype(np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(noisy).save(buffer, format="JPEG", quality=90)
        images.append(buffer.getvalue())
    return images


def bad_uploads() -> list[tuple[str, bytes, str]]:
    return [("notes.txt", b"not an image", "text/plain"),
            ("broken.jpg", b"\xff\xd8 definitely not a jpeg" * 10, "image/jpeg"),
            ("huge.jpg", b"\xff" * int(1.5 * MAX_UPLOAD_MB * 2**20), "image/jpeg")]


def uploads(requests: int, bad_share: float) -> list[tuple[str, bytes, str]]:
    """The fixed sequence of uploads: every round(1 / bad_share)-th is a bad one."""
    good, bad = good_images(), bad_uploads()
    every = round(1 / bad_share) if bad_share > 0 else 0
    return [bad[(i // every) % len(bad)] if every and i % every == every - 1 else (f"{i}.jpg", good[i % len(good)], "image/jpeg")
            for i in range(requests)]


async def drive(url: str, files: list[tuple[str, bytes, str]], concurrency: int) -> dict:
    latencies, statuses, next_index = [], [], iter(range(len(files)))

    async def worker(client: httpx.AsyncClient) -> None:
        for index in next_index:
            start = time.perf_counter()
            try:
                response = await client.post(f"{url}/predict", files={"files": files[index]})
                statuses.append(response.status_code)
                if response.status_code == 200:
                    latencies.append(time.perf_counter() - start)
            except httpx.HTTPError:
                statuses.append(0)  # no HTTP answer at all: counted with the server errors

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(limits=limits, timeout=120) as client:
        start = time.perf_counter()
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
        wall = time.perf_counter() - start
    ms = np.asarray(latencies) * 1000
    return {"concurrency": concurrency, "requests": len(files), "wall_s": round(wall, 2),
            "images_per_s": round(len(latencies) / wall, 1),
            "p50_ms": round(float(np.percentile(ms, 50)), 1) if len(ms) else None,
            "p99_ms": round(float(np.percentile(ms, 99)), 1) if len(ms) else None,
            "2xx": sum(200 <= s < 300 for s in statuses), "4xx": sum(400 <= s < 500 for s in statuses),
            "5xx": sum(s >= 500 or s == 0 for s in statuses)}


def huge_png(mode: str, side: int) -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, (side, side)).save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


def rss_mb(pid: int, field: str) -> float:
    """VmRSS (now) or VmHWM (peak since the last reset) of a process, in MB."""
    status = Path(f"/proc/{pid}/status").read_text()
    kilobytes = next(line.split()[1] for line in status.splitlines() if line.startswith(f"{field}:"))
    return round(int(kilobytes) / 1024, 1)


def memory_burst(url: str, pid: int, upload: tuple[str, bytes, str]) -> dict:
    before = rss_mb(pid, "VmRSS")
    Path(f"/proc/{pid}/clear_refs").write_text("5")  # resets VmHWM: the peak is then the burst's own
    result = asyncio.run(drive(url, [upload] * MEMORY_REQUESTS, MEMORY_CONCURRENCY))
    peak = rss_mb(pid, "VmHWM")
    time.sleep(1)  # what the server keeps once the burst is over
    return {"upload_kb": round(len(upload[1]) / 1024, 1), "requests": MEMORY_REQUESTS, "concurrency": MEMORY_CONCURRENCY,
            "wall_s": result["wall_s"], "2xx": result["2xx"], "4xx": result["4xx"], "5xx": result["5xx"],
            "rss_before_mb": before, "rss_peak_mb": peak, "rss_after_mb": rss_mb(pid, "VmRSS")}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(bundle: Path, port: int, extra: list[str]) -> subprocess.Popen:
    command = [sys.executable, "-m", "imgcls.cli.main", "--quiet", "serve", str(bundle), "--port", str(port),
               "--max-upload-mb", str(MAX_UPLOAD_MB), *extra]
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and server.poll() is None:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return server
        except httpx.HTTPError:
            time.sleep(0.2)
    server.kill()
    sys.exit(f"the server did not start: {server.communicate()[1][-2000:]}")


def stop_server(server: subprocess.Popen) -> None:
    server.send_signal(signal.SIGINT)  # uvicorn's graceful shutdown
    try:
        server.wait(timeout=30)
    except subprocess.TimeoutExpired:
        server.kill()


def throughput(bundle: Path, args) -> None:
    files, rows = uploads(args.requests, args.bad_share), []
    if any("onnx" in MODES[mode] for mode in args.modes):
        export_onnx(bundle)
    for mode in args.modes:
        with served(bundle, MODES[mode]) as (url, _):
            asyncio.run(drive(url, uploads(WARMUP_REQUESTS, 0), 4))
            for concurrency in args.concurrency:
                rows.append({"mode": mode, **asyncio.run(drive(url, files, concurrency))})
                print(rows[-1], flush=True)
    report("serve", rows, "python bench/serve.py " + " ".join(sys.argv[1:]))


def memory(bundle: Path) -> None:
    rows = []
    for case, (mode, side, flags) in MEMORY_CASES.items():
        with served(bundle, ["--engine", "torch", *flags]) as (url, pid):
            asyncio.run(drive(url, uploads(WARMUP_REQUESTS, 0), 4))
            rows.append({"case": case, **memory_burst(url, pid, ("huge.png", huge_png(mode, side), "image/png"))})
            print(rows[-1], flush=True)
    report("serve-memory", rows, "python bench/serve.py " + " ".join(sys.argv[1:]))


@contextmanager
def served(bundle: Path, flags: list[str]):
    """The server's URL and process id while it runs."""
    port = free_port()
    server = start_server(bundle, port, flags)
    try:
        yield f"http://127.0.0.1:{port}", server.pid
    finally:
        stop_server(server)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--parts", nargs="+", choices=("throughput", "memory"), default=["throughput", "memory"])
    parser.add_argument("--requests", type=int, default=400, help="per concurrency level")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--bad-share", type=float, default=0.1)
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        bundle = build_bundle(Path(tmp) / "model")
        if "throughput" in args.parts:
            throughput(bundle, args)
        if "memory" in args.parts:
            memory(bundle)


if __name__ == "__main__":
    main()
