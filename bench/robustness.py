"""Robustness probes: broken, hostile and oversized input against train, evaluate, predict, audit,
load and serve. Target: every row passes, zero tracebacks, zero 5xx, and the server's resident
memory under its ceiling (idle + ~400 MB, serve/config.py) through a burst of 81-Mpx PNGs.

    python bench/robustness.py [--timeout 180]

Builds the scikit-learn digits as PNG class folders in a temporary folder, trains one tiny bundle
in-process, then runs every probe as its own process of the real CLI (`python -m imgcls.cli.main`)
with nothing downloadable (HF_HUB_OFFLINE=1, an empty HF_HOME) and a private decode cache. A row
passes when the exit status is the expected one, stderr holds no traceback, the data folder is
byte-identical before and after, and any probe-specific check holds (a message naming the file and
line, an audit listing the corrupt files). Peak RSS is the child's own (os.wait4's ru_maxrss).
Results go to bench/results/robustness.json.
"""
from __future__ import annotations

import argparse
import asyncio
import hashlib
import io
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

TMP = Path(tempfile.mkdtemp(prefix="imgcls-robustness-"))
# Set before imgcls (and huggingface_hub) is imported: neither this process nor a child may download.
os.environ.update(HF_HUB_OFFLINE="1", HF_HOME=str(TMP / "hf-home"), IMGCLS_CACHE_DIR=str(TMP / "decode-cache"))

import httpx  # noqa: E402
import torch  # noqa: E402
from common import report  # noqa: E402
from PIL import Image  # noqa: E402

import imgcls  # noqa: E402
from imgcls.data.digits import write_digits_folder  # noqa: E402
from imgcls.errors import ImgclsError  # noqa: E402
from imgcls.train.config import TrainConfig  # noqa: E402
from imgcls.train.run import train  # noqa: E402

logging.getLogger("httpx").setLevel(logging.WARNING)  # a line per request would bury the rows
CLI = [sys.executable, "-m", "imgcls.cli.main"]
TRAIN_FLAGS = ["--model", "cnn-bn", "--epochs", "1", "--batch-size", "32", "--img-size", "32", "--early-stopping", "0",
               "--no-report", "--no-progress"]  # one quick epoch: the probes test the input handling, not the model
FAIL = {1, 2}  # bad input: an error the user can act on, whichever of the two it is
MESSAGE_CHARS = 100
POLL_S = 0.01  # how often a child's peak RSS is read
PREDICT_RSS_LIMIT_MB = 1024  # an 81-Mpx image squashed to 32 px must not cost a gigabyte
SERVE_REQUESTS, SERVE_CONCURRENCY = 32, 8  # the burst of issue 14 (bench/serve.py --parts memory)
SERVE_HEADROOM_MB = 400  # serve/config.py: memory stays under idle + decode_threads x a 40-Mpx decode, ~400 MB


@dataclass
class Probe:
    input: str  # what is broken
    args: list[str]  # the CLI arguments
    expect: set[int]  # accepted exit statuses
    watch: Path | tuple[Path, ...]  # the folders that must come out byte-identical (data, and a bundle read)
    check: Callable[[str, str], bool] | None = None  # (stdout, stderr) -> extra condition
    check_says: str = ""  # the condition, for the table when it fails
    max_rss_mb: float | None = None  # the child's peak resident memory must stay under this
    cwd: Path = field(default_factory=lambda: TMP / "cwd")  # default output folders (runs/, reviews) land here


# ---------------------------------------------------------------- measuring


def tree_digest(root: Path) -> str:
    """SHA-256 over every name, link target and file content under root, symlinks never followed."""
    digest = hashlib.sha256()
    for folder, dirs, files in sorted(os.walk(root, followlinks=False)):
        dirs.sort()
        for name in sorted(dirs + files):
            path = Path(folder, name)
            digest.update(str(path.relative_to(root)).encode())
            if path.is_symlink():
                digest.update(b"link:" + os.readlink(path).encode())
            elif path.is_file():
                try:
                    digest.update(path.read_bytes())
                except OSError as err:
                    digest.update(f"unreadable:{err.errno}:{path.stat().st_mode}".encode())
    return digest.hexdigest()


def run_cli(args: list[str], cwd: Path, timeout: float) -> tuple[int | str, str, str, float]:
    """(exit status or 'timeout', stdout, stderr, peak RSS in MB) of one CLI process.

    The peak is the child's VmHWM, read every POLL_S until it exits: it is monotonic and starts afresh
    at exec. (os.wait4's ru_maxrss would not do: subprocess spawns with vfork, and exec records the
    parent's high-water mark, ~1.4 GB after training here, as the child's.)"""
    cwd.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        child = subprocess.Popen(CLI + args, cwd=cwd, stdout=out, stderr=err, env=os.environ.copy())
        deadline, peak = time.monotonic() + timeout, 0.0
        while child.poll() is None:
            try:
                peak = max(peak, rss_mb(child.pid, "VmHWM"))
            except (OSError, StopIteration):  # exiting: /proc/PID/status is gone or has no memory lines
                pass
            if time.monotonic() > deadline:
                child.kill()
            time.sleep(POLL_S)
        code = "timeout" if child.returncode == -signal.SIGKILL else child.returncode
        out.seek(0), err.seek(0)
        return code, out.read().decode(errors="replace"), err.read().decode(errors="replace"), peak


def short(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return (lines[-1] if lines else "").replace(str(TMP), "$T")[:MESSAGE_CHARS]


def run_probe(probe: Probe, timeout: float) -> dict:
    watched = probe.watch if isinstance(probe.watch, tuple) else (probe.watch,)
    before = [tree_digest(folder) for folder in watched]
    start = time.perf_counter()
    code, stdout, stderr, rss = run_cli(probe.args, probe.cwd, timeout)
    unchanged = [tree_digest(folder) for folder in watched] == before
    traceback = "Traceback" in stderr
    checked = probe.check is None or probe.check(stdout, stderr)
    if probe.max_rss_mb is not None and rss > probe.max_rss_mb:
        checked, probe.check_says = False, f"peak RSS {rss:.0f} MB over {probe.max_rss_mb:.0f} MB"
    message = short(stderr) or short(stdout)
    if not checked:
        message = f"[check failed: {probe.check_says}] {message}"[:MESSAGE_CHARS]
    command = " ".join(probe.args).replace(" ".join(TRAIN_FLAGS), "$TINY").replace(str(TMP), "$T")
    row = {"input": probe.input, "command": command,
           "exit": code, "expected": "/".join(map(str, sorted(probe.expect))), "message": message,
           "files_unchanged": unchanged, "traceback": traceback, "peak_rss_mb": round(rss),
           "seconds": round(time.perf_counter() - start, 1),
           "pass": code in probe.expect and not traceback and unchanged and checked}
    print(f"{'ok  ' if row['pass'] else 'FAIL'} {row['input']}: {row['command']} -> {code} {message}", flush=True)
    return row


# ---------------------------------------------------------------- inputs


def png_bytes(mode: str, side: int) -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, (side, side)).save(buffer, format="PNG", optimize=True)  # all zeros: PNG squeezes it to kB
    return buffer.getvalue()


def copy_data(digits: Path, name: str) -> Path:
    return Path(shutil.copytree(digits, TMP / name, symlinks=True))


def add_corrupt_files(root: Path) -> list[str]:
    """A 0-byte JPEG, text named .png and a truncated JPEG in train/, test/ and predict/ (among good ones)."""
    good = next((root / "train" / "0").glob("*.png"))
    buffer = io.BytesIO()
    Image.open(good).convert("RGB").resize((64, 64)).save(buffer, format="JPEG")
    contents = {"empty.jpg": b"", "notes.png": b"this is a text file, not a PNG\n",
                "truncated.jpg": buffer.getvalue()[: len(buffer.getvalue()) // 2]}
    for folder in (root / "train" / "0", root / "test" / "0", root / "predict"):
        for name, data in contents.items():
            (folder / name).write_bytes(data)
    return list(contents)


def add_links(root: Path, as_root: bool) -> dict[str, Path]:
    """A dangling symlink, a symlink to itself, a folder symlink to its parent, and (not as root) a mode-000 file."""
    links = {}
    for folder in (root / "train" / "1", root / "predict"):
        (folder / "dangling.png").symlink_to(TMP / "does-not-exist.png")
        (folder / "loop.png").symlink_to("loop.png")
        (folder / "again").symlink_to("..", target_is_directory=True)
        if not as_root:
            locked = folder / "locked.png"
            shutil.copyfile(next((root / "train" / "2").glob("*.png")), locked)
            locked.chmod(0)
    links.update(dangling=root / "predict" / "dangling.png", loop=root / "predict" / "loop.png")
    if not as_root:
        links["locked"] = root / "predict" / "locked.png"
    return links


def hostile_bundles(bundle: Path, listener_port: int) -> dict[str, Path]:
    """Copies of the trained model/ folder, each with one doctored part."""
    edits = {
        "pretrained weights from a URL": {"model_kwargs": {"pretrained": True, "pretrained_cfg_overlay":
                                                           {"url": f"http://127.0.0.1:{listener_port}/evil.pth"}}},
        "checkpoint_path /etc/passwd": {"model_kwargs": {"checkpoint_path": "/etc/passwd"}},
        "img_size 100000": {"img_size": 100000},
        "temperature -1": {"temperature": -1},
    }
    out = {}
    for index, (name, change) in enumerate(edits.items()):
        folder = Path(shutil.copytree(bundle, TMP / "hostile" / f"b{index}"))
        config = json.loads((folder / "config.json").read_text())
        config.update(change)
        (folder / "config.json").write_text(json.dumps(config))
        out[name] = folder
    folder = Path(shutil.copytree(bundle, TMP / "hostile" / "labels"))
    (folder / "labels.txt").write_text("cat\ndog\n")
    out["labels.txt disagrees with config"] = folder
    folder = Path(shutil.copytree(bundle, TMP / "hostile" / "random"))
    (folder / "model.safetensors").write_bytes(os.urandom(4096))
    out["model.safetensors of random bytes"] = folder
    folder = Path(shutil.copytree(bundle, TMP / "hostile" / "pickle"))
    torch.save({"weight": torch.zeros(3), "note": "a pickle"}, folder / "model.safetensors")
    out["model.safetensors is a pickle"] = folder
    return out


class Listener:
    """A TCP port that counts connections: a bundle that makes imgcls download would knock here."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen()
        self.sock.settimeout(0.2)
        self.port, self.connections, self.stopped = self.sock.getsockname()[1], 0, False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while not self.stopped:
            try:
                conn, _ = self.sock.accept()
                self.connections += 1
                conn.close()
            except OSError:
                pass


# ---------------------------------------------------------------- probes


def cli_probes(digits: Path, run: Path, as_root: bool, hostile: dict[str, Path]) -> list[Probe]:
    out = lambda name: ["--out", str(TMP / "runs" / name)]  # noqa: E731
    probes = []

    corrupt = copy_data(digits, "corrupt")
    names = add_corrupt_files(corrupt)
    lists_all = lambda o, e: all(n in o + e for n in names)  # noqa: E731
    probes += [
        Probe("corrupt files (0-byte, text .png, truncated jpg)", ["train", str(corrupt), *TRAIN_FLAGS, *out("corrupt")], {0},
              corrupt, lists_all, "names every skipped file"),
        Probe("corrupt files", ["predict", str(run), str(corrupt / "predict")], {0}, (corrupt, run)),
        *[Probe(f"corrupt file {n} named", ["predict", str(run), str(corrupt / "predict" / n)], {1}, (corrupt, run))
          for n in names],
        Probe("corrupt files", ["audit", str(corrupt)], {0}, corrupt, lists_all, "lists every corrupt file"),
        Probe("corrupt files", ["evaluate", str(run), str(corrupt), "--out", str(TMP / "eval-corrupt")], {0}, (corrupt, run)),
    ]

    linked = copy_data(digits, "links")
    links = add_links(linked, as_root)
    names_links = lambda o, e: "dangling.png" in o + e and "loop.png" in o + e  # noqa: E731
    probes += [Probe(f"{name} symlink named" if name != "locked" else "chmod-000 file named",
                     ["predict", str(run), str(path)], {1}, (linked, run)) for name, path in links.items()]
    probes += [
        Probe("symlinks: dangling, self-loop, folder loop" + ("" if as_root else ", chmod 000"),
              ["predict", str(run), str(linked / "predict")], {0}, (linked, run)),
        Probe("symlinks: dangling, self-loop, folder loop", ["audit", str(linked)], {0}, linked, names_links, "lists both links"),
        Probe("symlinks: dangling, self-loop, folder loop", ["train", str(linked), *TRAIN_FLAGS, *out("links")], {0}, linked,
              names_links, "names both skipped links"),
    ]

    big = TMP / "big"
    big.mkdir()
    (big / "81mpx.png").write_bytes(png_bytes("1", 9000))
    (big / "400mpx.png").write_bytes(png_bytes("1", 20000))
    probes += [
        Probe("9000x9000 1-bit PNG (81 Mpx, ~10 kB)", ["predict", str(run), str(big / "81mpx.png")], {0}, (big, run),
              max_rss_mb=PREDICT_RSS_LIMIT_MB),
        Probe("20000x20000 1-bit PNG (400 Mpx bomb)", ["predict", str(run), str(big / "400mpx.png")], {1}, (big, run),
              lambda o, e: "bomb" in o + e, "says it refused a bomb"),
    ]

    for name, folder in hostile.items():
        probes.append(Probe(f"bundle: {name}", ["predict", str(folder), str(digits / "predict")], {1}, (digits, folder)))
    probes.append(Probe("bundle: model.safetensors of random bytes", ["serve", str(TMP / "hostile" / "random"),
                                                                      "--port", str(free_port())], {1}, digits))

    empty_run = TMP / "empty-run"
    empty_run.mkdir()
    probes += [
        Probe("--img-size 100000", ["train", str(digits), "--img-size", "100000", *out("x1")], {2}, digits),
        Probe("unknown model name", ["train", str(digits), "--model", "resnt18", *out("x2")], {2}, digits,
              lambda o, e: "did you mean" in e, "suggests a name"),
        Probe("--val-split 1.5", ["train", str(digits), "--val-split", "1.5", *out("x3")], {2}, digits),
        Probe("missing data folder", ["train", str(TMP / "no-such-folder"), *out("x4")], {1}, digits),
        Probe("--resume of a folder without checkpoint", ["train", "--resume", str(empty_run)], {1}, empty_run),
    ]

    probes += labels_probes(digits, out) + manifest_probes(digits, out)
    return probes


def labels_probes(digits: Path, out) -> list[Probe]:
    flat = TMP / "flat"
    flat.mkdir()
    for index, image in enumerate(sorted((digits / "train").rglob("*.png"))[:20]):
        shutil.copyfile(image, flat / f"{index}.png")
    (TMP / "outside.png").write_bytes((flat / "0.png").read_bytes())
    cases = {"empty label name (cat;;dog)": "2.png,cat;;dog", "path outside the data folder": "../outside.png,cat"}
    probes = []
    for index, (name, bad_row) in enumerate(cases.items()):
        rows = ["path,labels", "0.png,cat", "1.png,dog;cat", bad_row, *(f"{i}.png,dog" for i in range(3, 20))]
        csv_path = TMP / f"labels{index}.csv"
        csv_path.write_text("\n".join(rows) + "\n")
        where = f"{csv_path.name}:4"
        probes.append(Probe(f"labels CSV: {name}", ["train", str(flat), "--labels", str(csv_path), *TRAIN_FLAGS,
                                                    *out(f"labels{index}")], {1}, flat,
                            lambda o, e, w=where: w in e, f"names {where}"))
    return probes


def manifest_probes(digits: Path, out) -> list[Probe]:
    image = sorted((digits / "train" / "3").glob("*.png"))[0].relative_to(digits).as_posix()
    cases = {"unknown action": f"{image},burn,", "path outside the data folder": "../outside.png,drop,",
             "relabel to an unknown class": f"{image},relabel,cat"}
    probes = []
    for index, (name, bad_row) in enumerate(cases.items()):
        csv_path = TMP / f"manifest{index}.csv"
        csv_path.write_text(f"path,action,label\n{bad_row}\n")
        where = f"{csv_path.name}:2"
        probes.append(Probe(f"manifest: {name}", ["train", str(digits), "--manifest", str(csv_path), *TRAIN_FLAGS,
                                                  *out(f"manifest{index}")], {1}, digits,
                            lambda o, e, w=where: w in e, f"names {where}"))
    return probes


def load_rows(bundles: dict[str, Path]) -> list[dict]:
    """imgcls.load() in this process on each doctored bundle: an ImgclsError passes, anything else fails."""
    rows = []
    for name, folder in bundles.items():
        start = time.perf_counter()
        try:
            imgcls.load(folder)
            outcome, message = "loaded", ""
        except ImgclsError as err:
            outcome, message = "ImgclsError", str(err)
        except Exception as err:  # noqa: BLE001 - what the probe is looking for
            outcome, message = type(err).__name__, str(err)
        rows.append({"input": f"bundle: {name}", "command": f"imgcls.load({folder.relative_to(TMP)})",
                     "exit": outcome, "expected": "ImgclsError", "message": short(message), "files_unchanged": True,
                     "traceback": outcome not in ("loaded", "ImgclsError"), "peak_rss_mb": "-",
                     "seconds": round(time.perf_counter() - start, 1), "pass": outcome == "ImgclsError"})
        print(f"{'ok  ' if rows[-1]['pass'] else 'FAIL'} {rows[-1]['input']}: load -> {outcome} {rows[-1]['message']}")
    return rows


# ---------------------------------------------------------------- serve


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def rss_mb(pid: int, field_name: str) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith(f"{field_name}:"))) / 1024


async def burst(url: str, upload: tuple[str, bytes, str], requests: int, concurrency: int) -> list[int]:
    statuses, todo = [], iter(range(requests))

    async def worker(client):
        for _ in todo:
            try:
                statuses.append((await client.post(f"{url}/predict", files={"files": upload})).status_code)
            except httpx.HTTPError:
                statuses.append(0)  # no answer at all: counted with the 5xx

    async with httpx.AsyncClient(timeout=120, limits=httpx.Limits(max_connections=concurrency)) as client:
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
    return statuses


def serve_row(name: str, request: str, statuses: list[int], ok: bool, message: str, rss: float | str = "-") -> dict:
    fives = sum(s >= 500 or s == 0 for s in statuses)
    counts = ", ".join(f"{s}x{statuses.count(s)}" for s in sorted(set(statuses)))
    row = {"input": name, "command": f"serve: {request}", "exit": counts, "expected": "", "message": message[:MESSAGE_CHARS],
           "files_unchanged": True, "traceback": False, "peak_rss_mb": rss, "seconds": "-", "pass": ok and fives == 0,
           "5xx": fives}
    print(f"{'ok  ' if row['pass'] else 'FAIL'} {name}: {counts} {message}", flush=True)
    return row


def serve_probes(run: Path, digits: Path, timeout: float) -> list[dict]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log_path = TMP / "serve.log"
    with open(log_path, "wb") as log:
        server = subprocess.Popen(CLI + ["serve", str(run), "--port", str(port)], cwd=TMP / "cwd",
                                  stdout=log, stderr=subprocess.STDOUT, env=os.environ.copy())
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and server.poll() is None:
            try:
                if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        else:
            return [serve_row("server start", "GET /health", [0], False, short(log_path.read_text()))]
        return _probe_server(url, server.pid, digits, log_path)
    finally:
        server.send_signal(signal.SIGINT)  # uvicorn's graceful shutdown
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def _probe_server(url: str, pid: int, digits: Path, log_path: Path) -> list[dict]:
    rows = []
    good = [("digit.png", p.read_bytes(), "image/png") for p in sorted((digits / "predict").glob("*.png"))]
    warm = asyncio.run(burst(url, good[0], 8, 4))
    rows.append(serve_row("good PNGs (warm-up)", "POST /predict x8", warm, all(s == 200 for s in warm), ""))
    idle = rss_mb(pid, "VmRSS")
    Path(f"/proc/{pid}/clear_refs").write_text("5")  # resets VmHWM: the peak is then the burst's own
    statuses = asyncio.run(burst(url, ("huge.png", png_bytes("1", 9000), "image/png"), SERVE_REQUESTS, SERVE_CONCURRENCY))
    peak, ceiling = rss_mb(pid, "VmHWM"), idle + SERVE_HEADROOM_MB
    rows.append(serve_row("9000x9000 1-bit PNG burst", f"POST /predict x{SERVE_REQUESTS}, {SERVE_CONCURRENCY} at once",
                          statuses, all(s == 413 for s in statuses) and peak <= ceiling,
                          f"peak {peak:.0f} MB, idle {idle:.0f} MB, ceiling {ceiling:.0f} MB", round(peak)))
    response = httpx.post(f"{url}/predict", files={"files": ("upload.png", b"\xff" * (17 * 2**20), "image/png")}, timeout=60)
    rows.append(serve_row("17 MB upload (limit 16)", "POST /predict", [response.status_code], response.status_code == 413,
                          response.text))
    response = httpx.get(f"{url}/health", headers={"Host": "evil.example"})
    rows.append(serve_row("Host: evil.example (DNS rebinding)", "GET /health", [response.status_code],
                          response.status_code == 400, response.text))
    for method in ("GET", "OPTIONS"):
        headers = {"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"}
        response = httpx.request(method, f"{url}/{'health' if method == 'GET' else 'predict'}", headers=headers)
        allowed = response.headers.get("access-control-allow-origin")
        rows.append(serve_row(f"Origin: https://evil.example ({'preflight' if method == 'OPTIONS' else 'simple'})",
                              f"{method} /{'health' if method == 'GET' else 'predict'}", [response.status_code],
                              allowed is None, f"Access-Control-Allow-Origin: {allowed}"))
    for name, upload in {"text uploaded as an image": ("notes.png", b"just some text\n", "image/png"),
                         "text with a text type": ("notes.txt", b"just some text\n", "text/plain"),
                         "truncated PNG": ("cut.png", good[0][1][: len(good[0][1]) // 2], "image/png")}.items():
        response = httpx.post(f"{url}/predict", files={"files": upload})
        rows.append(serve_row(name, "POST /predict", [response.status_code], 400 <= response.status_code < 500
                              or response.status_code == 200 and "error" in response.text, response.text))
    life_peak = rss_mb(pid, "VmHWM")
    log_text = log_path.read_text()
    rows.append(serve_row("server log", "whole session", [], "Traceback" not in log_text,
                          f"{log_text.count('Traceback')} tracebacks in the server log", round(life_peak)))
    rows[-1]["traceback"] = "Traceback" in log_text
    return rows


# ---------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--timeout", type=float, default=180, help="seconds per CLI probe")
    args = parser.parse_args()
    started = time.perf_counter()
    as_root = os.geteuid() == 0
    listener = Listener()
    try:
        digits = write_digits_folder(TMP / "digits", per_class=15)
        run = TMP / "run"
        train(digits, run, TrainConfig.from_options(model="cnn-bn", epochs=1, batch_size=32, img_size=32, early_stopping=0,
                                       report=False), progress=False)
        hostile = hostile_bundles(run / "model", listener.port)
        rows = [run_probe(probe, args.timeout) for probe in cli_probes(digits, run, as_root, hostile)]
        rows += load_rows(hostile)
        if as_root:
            rows.append({"input": "chmod-000 file", "command": "predict / train / audit", "exit": "-", "expected": "-",
                         "message": "skipped: running as root, which reads mode-000 files anyway",
                         "files_unchanged": "-", "traceback": False, "peak_rss_mb": "-", "seconds": "-", "pass": "skipped"})
        rows += serve_probes(run, digits, args.timeout)
        listener.stopped = True
        rows.append({"input": "bundles asking for a download", "command": "listener on 127.0.0.1", "exit": "-",
                     "expected": "0 connections", "message": f"{listener.connections} connections",
                     "files_unchanged": "-", "traceback": False, "peak_rss_mb": "-", "seconds": "-",
                     "pass": listener.connections == 0})
        for row in rows:
            row.setdefault("5xx", 0)
        report("robustness", rows, "python bench/robustness.py " + " ".join(sys.argv[1:]))
        counted = [r for r in rows if r["pass"] != "skipped"]
        print(f"{sum(r['pass'] is True for r in counted)} of {len(counted)} probes pass, "
              f"{sum(bool(r['traceback']) for r in rows)} tracebacks, {sum(r['5xx'] for r in rows)} 5xx"
              f"{'; 1 skipped (chmod-000 as root)' if as_root else ''} ({time.perf_counter() - started:.0f} s)")
    finally:
        shutil.rmtree(TMP, ignore_errors=True)


if __name__ == "__main__":
    main()
