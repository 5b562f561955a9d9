"""Decode every image once into one uint8 array at the training size, and keep it on disk for the next run.

Decoding JPEGs dominates the cost of small-model training on a CPU; doing it once instead of
once per epoch is the single largest speed-up for a 50-epoch run on scraped photos, and keeping
the array on disk (`decode_cached`) lets every later run on the same files skip it altogether.

The disk cache lives in $IMGCLS_CACHE_DIR, else $XDG_CACHE_HOME/imgcls/decoded, else
~/.cache/imgcls/decoded; `IMGCLS_CACHE_DIR=off` (or `cache_dir=None`) turns it off. An entry is
SLOT-STAMP.npy (the pixels) and SLOT-STAMP.json (which files failed, and why). SLOT names the list of
paths, the image size, DECODE_VERSION and Pillow's version; STAMP the byte size and mtime_ns of every
file, so an edited file makes a new entry, which replaces its slot's old one. Nothing is written
beside the images; a cache that cannot be written or read costs a warning and a decode, never a run.
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import mmap
import multiprocessing as mp
import os
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from itertools import repeat
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import PIL

from ..fileio import atomic_write, atomic_write_bytes
from .images import UnreadableImage, decode_image

log = logging.getLogger(__name__)

DECODE_VERSION = 1  # bump whenever decode_image's output changes: it retires every cached entry
CACHE_ENV = "IMGCLS_CACHE_DIR"
CACHE_OFF = "off"
# Images per task: a task per image cost a fifth of the throughput on CIFAR-10's 32-px JPEGs, and 256
# beats 64 by 5% in worker processes (41.7k -> 43.6k images/s, 2 cores); Imagenette at 128 px is unchanged.
CHUNK = 256
PROCESS_MIN_IMAGES = 1000  # from here worker processes (~20 ms each to fork) beat threads
# What a damaged entry raises: truncated (ValueError from mmap), emptied (EOFError), garbled (ValueError,
# KeyError, TypeError from the JSON), unreadable (OSError).
DAMAGED = (OSError, ValueError, EOFError, KeyError, TypeError)


@dataclass
class DecodedImages:
    pixels: np.ndarray  # (N, size, size, 3) uint8, rows for the readable files only
    kept: list[int]  # index into the input paths of each row
    failed: list[tuple[Path, str]]  # (path, reason) of each unreadable file
    cached: Path | None = None  # the cache file the pixels are mapped from; None when decoded just now


def default_cache_dir() -> Path | None:
    """Where decoded arrays persist between runs (see the module docstring); None when turned off."""
    chosen = os.environ.get(CACHE_ENV)
    if chosen:
        return None if chosen.lower() == CACHE_OFF else Path(chosen).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "imgcls" / "decoded"


def _warn_skipped(failed: list[tuple[Path, str]]) -> None:
    for path, reason in failed:
        log.warning("skipped unreadable image %s: %s", path, reason)


_worker_rows: np.ndarray | None = None  # in a worker process: decode_all's output array, shared at fork


def _adopt_rows(rows: np.ndarray) -> None:
    global _worker_rows
    _worker_rows = rows


def _decode_chunk(start: int, paths: Sequence[Path], size: int, rows: np.ndarray | None = None) -> list[tuple[int, str]]:
    """Decode paths into rows[start:] in place (the worker's shared rows unless given); the failures' (index, reason)."""
    rows = _worker_rows if rows is None else rows
    failures = []
    for index, path in enumerate(paths, start):
        try:
            rows[index] = decode_image(path, size)
        except (UnreadableImage, OSError) as err:
            failures.append((index, str(err)))
    return failures


def _shared_rows(count: int, size: int) -> np.ndarray:
    """A zeroed (count, size, size, 3) uint8 array in shared memory: forked workers write their rows
    straight into it, so no decoded pixel is pickled, sent and copied back."""
    shape = (count, size, size, 3)
    buffer = mmap.mmap(-1, max(1, math.prod(shape)))
    return np.frombuffer(buffer, np.uint8, count=math.prod(shape)).reshape(shape)


def _pool(workers: int, rows: np.ndarray) -> tuple[Executor, Callable]:
    """Processes for large folders where the OS can fork: Pillow parses JPEG headers in Python, under
    the GIL, so threads serialise on small images (CIFAR-10: 2 threads decode at half the rate of
    one, 2 processes at twice). Threads elsewhere: a few images, or no fork (macOS, Windows), where
    starting interpreters would cost more than it saves."""
    if workers > 1 and len(rows) >= PROCESS_MIN_IMAGES and "fork" in mp.get_all_start_methods():
        return ProcessPoolExecutor(workers, mp_context=mp.get_context("fork"), initializer=_adopt_rows,
                                   initargs=(rows,)), _decode_chunk
    return ThreadPoolExecutor(workers), partial(_decode_chunk, rows=rows)


def decode_all(paths: Sequence[Path], size: int, workers: int | None = None,
               on_progress: Callable[[int], None] | None = None) -> DecodedImages:
    """Decode `paths` on every core, a chunk of files per task, into one array in their order."""
    rows = _shared_rows(len(paths), size)
    workers = workers or os.cpu_count() or 1
    step = max(1, min(CHUNK, len(paths) // (4 * workers)))  # small inputs still spread over every worker
    starts = range(0, len(paths), step)
    reasons: dict[int, str] = {}
    pool, decode_chunk = _pool(workers, rows)
    with pool:
        # explicit chunks: ThreadPoolExecutor.map ignores chunksize
        for start, failures in zip(starts, pool.map(decode_chunk, starts, [paths[i: i + step] for i in starts], repeat(size))):
            reasons.update(failures)
            if on_progress is not None:
                on_progress(min(step, len(paths) - start))
    kept = [index for index in range(len(paths)) if index not in reasons]
    failed = [(Path(paths[index]), reason) for index, reason in sorted(reasons.items())]
    _warn_skipped(failed)
    return DecodedImages(rows[kept] if failed else rows, kept, failed)


def _entry(cache_dir: Path, paths: Sequence[Path], size: int) -> Path:
    """CACHE_DIR/SLOT-STAMP (no suffix). Stat before decoding: a file edited meanwhile gets a new stamp next run."""
    names = [os.path.abspath(p) for p in paths]
    stats = []
    for name in names:
        try:
            stat = os.stat(name)
            stats.append(f"{stat.st_size} {stat.st_mtime_ns}")
        except OSError:  # decode_all reports it as failed; it must count as a change once it appears
            stats.append("missing")
    slot = hashlib.sha256("\0".join([f"v{DECODE_VERSION} pillow{PIL.__version__} {size}px", *names]).encode())
    stamp = hashlib.sha256("\0".join(stats).encode())
    return Path(cache_dir) / f"{slot.hexdigest()[:20]}-{stamp.hexdigest()[:20]}"


def _load(entry: Path, paths: Sequence[Path], size: int) -> DecodedImages:
    """The entry's pixels, memory-mapped copy-on-write: no load time, pages shared with other runs,
    writable without touching the file (a read-only array makes torch.as_tensor warn), and random
    batches as fast as from RAM (Batches on CIFAR-10 and Imagenette-128: same images/s, measured)."""
    failed = json.loads(entry.with_suffix(".json").read_text())["failed"]
    reasons = {int(index): str(reason) for index, reason in failed}
    kept = [index for index in range(len(paths)) if index not in reasons]
    pixels = np.load(entry.with_suffix(".npy"), mmap_mode="c")  # allow_pickle stays False: no code runs
    if len(kept) + len(reasons) != len(paths) or pixels.dtype != np.uint8 or pixels.shape != (len(kept), size, size, 3):
        raise ValueError(f"holds {pixels.dtype} {pixels.shape} for {len(kept)} of {len(paths)} images at {size} px")
    return DecodedImages(pixels, kept, [(Path(paths[index]), reason) for index, reason in reasons.items()],
                         entry.with_suffix(".npy"))


def _save_pixels(path: str, pixels: np.ndarray) -> None:
    with open(path, "wb") as handle:  # np.save given a name would append ".npy" to the temporary one
        np.save(handle, pixels)


def _store(entry: Path, decoded: DecodedImages) -> None:
    """Pixels first, then the JSON that completes the entry, then drop the slot's older entries."""
    try:
        atomic_write(entry.with_suffix(".npy"), lambda tmp: _save_pixels(tmp, decoded.pixels))
        kept = set(decoded.kept)
        failed_at = [index for index in range(len(kept) + len(decoded.failed)) if index not in kept]
        failed = [[index, reason] for index, (_, reason) in zip(failed_at, decoded.failed)]
        atomic_write_bytes(entry.with_suffix(".json"), json.dumps({"failed": failed}).encode())
        slot = entry.name.split("-")[0]
        for old in entry.parent.glob(f"{slot}-*"):
            if old.stem != entry.name:
                old.unlink(missing_ok=True)
    except OSError as err:
        log.warning("decoded images not cached in %s (%s); the next run decodes them again", entry.parent, err)


def decode_cached(paths: Sequence[Path], size: int, cache_dir: Path | None, workers: int | None = None,
                  on_progress: Callable[[int], None] | None = None) -> DecodedImages:
    """decode_all, reusing the array an earlier run decoded from the same unchanged files; `cache_dir`
    is usually default_cache_dir(), and None decodes without the cache."""
    if cache_dir is None:
        return decode_all(paths, size, workers, on_progress)
    entry = _entry(cache_dir, paths, size)
    try:
        decoded = _load(entry, paths, size)
    except FileNotFoundError:
        pass
    except DAMAGED as err:
        log.warning("ignoring unreadable decode cache %s (%s: %s); decoding again", entry, type(err).__name__, err)
    else:
        _warn_skipped(decoded.failed)
        if on_progress is not None:
            on_progress(len(paths))
        return decoded
    decoded = decode_all(paths, size, workers, on_progress)
    _store(entry, decoded)
    return decoded
