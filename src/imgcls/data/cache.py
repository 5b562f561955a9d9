"""Decode every image once into one uint8 array at the model's size, and keep it on disk for the next run.

Decoding JPEGs dominates the cost of small-model training on a CPU; doing it once instead of
once per epoch is the single largest speed-up for a 50-epoch run on scraped photos, and keeping
the array on disk (`decode_cached`) lets every later run on the same files skip it altogether:
evaluation, look-alikes and folder prediction read the same entries, so after training, evaluating
its validation images or indexing its training images decodes nothing.

Where the cache lives and how much disk it may take are a DecodeCacheOptions, passed to decode_cached; its
defaults come from the environment (DecodeCacheOptions.from_environment): $IMGCLS_CACHE_DIR, else
$XDG_CACHE_HOME/imgcls/decoded, else ~/.cache/imgcls/decoded; `IMGCLS_CACHE_DIR=off` (or a directory of
None) turns it off. An entry is
SLOT.npy (the pixels of the readable files) and SLOT.json (the files' stamp, and
which failed and why). SLOT names the list of paths, the image size, DECODE_VERSION and Pillow's version;
the stamp hashes the byte size, mtime_ns and mode of every file, so an edited file decodes again and replaces
the entry. With `hash_files=True` the same pass hashes the bytes it reads (data/hashes.py: SHA-256, header
facts and pHash, kept in the cache folder's file-hashes/) for the leakage check and the audit.
Nothing is written beside the images; a cache that cannot be written or read costs a warning
and a decode, never a run. The cache keeps within $IMGCLS_CACHE_MAX_GB (default 20): writing an entry
removes the least recently used ones beyond it (a hit counts as a use).
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
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np
import PIL
import torch

from ..fileio import atomic_path, atomic_write_bytes
from .hashes import FileRecord, HashStore, Stamp, record_and_pixels, stamp_of
from .images import SHRINK_FROM, UnreadableImage, decode_image, file_error

log = logging.getLogger(__name__)

DECODE_VERSION = 3  # bump whenever decode_image's output or the entry's layout changes: it retires every entry
CACHE_ENV = "IMGCLS_CACHE_DIR"
CACHE_OFF = "off"
BUDGET_ENV = "IMGCLS_CACHE_MAX_GB"
DEFAULT_BUDGET_GB = 20.0  # a few datasets at a few sizes (Imagenette at 224 px: 1.4 GB)
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
    records: list[FileRecord] | None = None  # with hash_files=True: each input path's hashes (data/hashes.py)


@dataclass(frozen=True)
class DecodeCacheOptions:
    """Where decoded arrays persist between runs, and how much disk they may take."""

    directory: Path | None  # None: no cache, every call decodes in memory
    max_gb: float = DEFAULT_BUDGET_GB  # beyond it, writing an entry removes the least recently used ones

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] = os.environ) -> "DecodeCacheOptions":
        """The options the environment sets (see the module docstring); a budget that is not a number
        is a warning and the default, as a cache problem must never stop a run."""
        chosen, value = environ.get(CACHE_ENV), environ.get(BUDGET_ENV, "")
        if chosen:
            directory = None if chosen.lower() == CACHE_OFF else Path(chosen).expanduser()
        else:
            directory = Path(environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "imgcls" / "decoded"
        try:
            max_gb = max(0.0, float(value)) if value else DEFAULT_BUDGET_GB
        except ValueError:
            log.warning("%s=%r is not a number of gigabytes; using %g", BUDGET_ENV, value, DEFAULT_BUDGET_GB)
            max_gb = DEFAULT_BUDGET_GB
        return cls(directory, max_gb)


def _prune(cache_dir: Path, keep: Path, max_bytes: int) -> None:
    """Remove the least recently used entries while the cache is over its budget; `keep` (the entry just
    written) stays even alone over it. An entry's last use is its files' newest mtime (a hit touches it).
    Files of writes in progress (dot-names) are left alone; entries of older layouts are pruned like any."""
    entries: dict[str, list[tuple[Path, os.stat_result]]] = {}
    for file in cache_dir.iterdir():
        if file.name.startswith(".") or file.suffix not in (".npy", ".json"):
            continue
        try:
            entries.setdefault(file.name.split(".")[0].split("-")[0], []).append((file, file.stat()))
        except FileNotFoundError:  # removed meanwhile by another run's pruning
            continue
    total = sum(st.st_size for files in entries.values() for _, st in files)
    by_last_use = sorted(entries.items(), key=lambda item: max(st.st_mtime for _, st in item[1]))
    for slot, files in by_last_use:
        if total <= max_bytes:
            break
        if slot == keep.name:
            continue
        for file, st in files:
            file.unlink(missing_ok=True)  # a run that maps it keeps reading it: unlinking leaves open maps intact
            total -= st.st_size
        log.info("decode cache over %s GB: removed its least recently used entry %s", max_bytes / 1e9, slot)


def _stat(path) -> os.stat_result | None:
    try:
        return os.stat(path)
    except OSError:  # reported as failed by the decode
        return None


def _stamp_of(stat: os.stat_result | None) -> str:
    if stat is None:  # it must count as a change once the file appears
        return "missing"
    return f"{stat.st_size} {stat.st_mtime_ns} {stat.st_mode:o}"  # the mode: an unreadable file made readable changed


def _file_stamp(path) -> str:
    return _stamp_of(_stat(path))


# In a worker process: (paths, size, rows, hashing) of the decode, inherited at fork; hashing[i] says whether
# to hash file i too (None: no file).
_worker_job: tuple | None = None


def _adopt_job(*job) -> None:
    global _worker_job
    _worker_job = job
    # One thread per worker: the workers already fill the cores, and libgomp is not fork-safe, so a
    # worker entering an OpenMP region (resize's copy) after the parent ran one would wait forever.
    torch.set_num_threads(1)


Hashed = list[tuple[int, "Stamp | None", FileRecord]]  # (index, stamp, record) of each file hashed in the pass


def _decode_range(start: int, stop: int, job: tuple | None = None) -> tuple[list[str], list[tuple[int, str]], Hashed]:
    """Decode paths[start:stop] into rows[start:stop] in place (the worker's inherited job unless given):
    each file's stamp, taken before decoding it, the failures' (index, reason), and the records of the files
    it was asked to hash, computed from the bytes the decode reads (one read of the file for both)."""
    paths, size, rows, hashing = _worker_job if job is None else job
    stamps, failures, hashed = [], [], []
    for index in range(start, stop):
        stat = _stat(paths[index])
        stamps.append(_stamp_of(stat))
        try:
            if hashing is not None and hashing[index]:
                data = Path(paths[index]).read_bytes()
                record, whole = record_and_pixels(data)
                hashed.append((index, None if stat is None else stamp_of(stat), record))
                # resizing the hash's decode gives decode_image's pixels, but where it would shrink by strips
                reuse = whole is not None and min(whole.shape[:2]) < SHRINK_FROM * size
                rows[index] = decode_image(whole if reuse else data, size)
            else:
                rows[index] = decode_image(paths[index], size)
        except UnreadableImage as err:
            failures.append((index, str(err)))
        except OSError as err:  # the file itself: missing, a broken link, no permission
            failures.append((index, file_error(paths[index], err)))
    return stamps, failures, hashed


def _shared_rows(count: int, size: int) -> np.ndarray:
    """A zeroed (count, size, size, 3) uint8 array in shared memory: forked workers write their rows
    straight into it, so no decoded pixel is pickled, sent and copied back."""
    shape = (count, size, size, 3)
    buffer = mmap.mmap(-1, max(1, math.prod(shape)))
    return np.frombuffer(buffer, np.uint8, count=math.prod(shape)).reshape(shape)


def _pool(workers: int, job: tuple) -> tuple[Executor, Callable]:
    """Processes for large folders where the OS can fork: Pillow parses JPEG headers in Python, under
    the GIL, so threads serialise on small images (CIFAR-10: 2 threads decode at half the rate of
    one, 2 processes at twice). The workers inherit the paths and the output rows at fork, so a task
    is two numbers. Threads elsewhere: a few images, or no fork (macOS, Windows), where starting
    interpreters would cost more than it saves."""
    if workers > 1 and len(job[0]) >= PROCESS_MIN_IMAGES and "fork" in mp.get_all_start_methods():
        return ProcessPoolExecutor(workers, mp_context=mp.get_context("fork"), initializer=_adopt_job,
                                   initargs=job), _decode_range
    return ThreadPoolExecutor(workers), partial(_decode_range, job=job)


def _decode_into(rows: np.ndarray, paths: Sequence[Path], size: int, workers: int | None,
                 on_progress: Callable[[int], None] | None,
                 hashing: Sequence[bool] | None = None) -> tuple[list[str], dict[int, str], Hashed]:
    """Decode `paths` on every core, a chunk of files per task, into `rows` in their order:
    every file's stamp, the failures' reasons by index, and the records of the files `hashing` marks."""
    workers = workers or os.cpu_count() or 1
    step = max(1, min(CHUNK, len(paths) // (4 * workers)))  # small inputs still spread over every worker
    starts = range(0, len(paths), step)
    stops = [min(start + step, len(paths)) for start in starts]
    stamps: list[str] = []
    reasons: dict[int, str] = {}
    hashed: Hashed = []
    pool, decode_range = _pool(workers, (paths, size, rows, hashing))
    with pool:  # explicit chunks: ThreadPoolExecutor.map ignores chunksize
        for chunk_stamps, failures, chunk_hashed in pool.map(decode_range, starts, stops):
            stamps += chunk_stamps
            reasons.update(failures)
            hashed += chunk_hashed
            if on_progress is not None:
                on_progress(len(chunk_stamps))
    return stamps, reasons, hashed


def _kept_and_failed(paths: Sequence[Path], reasons: dict[int, str]) -> tuple[list[int], list[tuple[Path, str]]]:
    """The readable files' indices, and the unreadable ones with their reasons, warned about."""
    kept = [index for index in range(len(paths)) if index not in reasons]
    failed = [(Path(paths[index]), reason) for index, reason in sorted(reasons.items())]
    for path, reason in failed:
        log.warning("skipped unreadable image %s: %s", path, reason)
    return kept, failed


def _result(rows: np.ndarray, paths: Sequence[Path], reasons: dict[int, str]) -> DecodedImages:
    """The readable rows of a row per file (a copy only when some file failed)."""
    kept, failed = _kept_and_failed(paths, reasons)
    return DecodedImages(rows[kept] if failed else rows, kept, failed)


def _decode_in_memory(paths: Sequence[Path], size: int, workers: int | None, on_progress: Callable[[int], None] | None,
                      hashing: Sequence[bool] | None = None) -> tuple[DecodedImages, Hashed]:
    rows = _shared_rows(len(paths), size)
    _, reasons, hashed = _decode_into(rows, paths, size, workers, on_progress, hashing)
    return _result(rows, paths, reasons), hashed


def decode_all(paths: Sequence[Path], size: int, workers: int | None = None,
               on_progress: Callable[[int], None] | None = None) -> DecodedImages:
    """Decode `paths` on every core into one array in their order."""
    return _decode_in_memory(paths, size, workers, on_progress)[0]


def _slot(cache_dir: Path, paths: Sequence[Path], size: int) -> Path:
    """CACHE_DIR/SLOT, without suffix: one entry per list of files and size."""
    names = [os.path.abspath(p) for p in paths]
    digest = hashlib.sha256("\0".join([f"v{DECODE_VERSION} pillow{PIL.__version__} {size}px", *names]).encode())
    return Path(cache_dir) / digest.hexdigest()[:20]


def _stamp(file_stamps: list[str]) -> str:
    return hashlib.sha256("\0".join(file_stamps).encode()).hexdigest()[:20]


def _load(entry: Path, paths: Sequence[Path], size: int) -> DecodedImages | None:
    """The entry's pixels, memory-mapped copy-on-write: no load time, pages shared with other runs,
    writable without touching the file (a read-only array makes torch.as_tensor warn), and random
    batches as fast as from RAM (Batches on CIFAR-10 and Imagenette-128: same images/s, measured).
    None when a file changed since the entry was written."""
    meta = json.loads(entry.with_suffix(".json").read_text())
    if meta["stamp"] != _stamp([_file_stamp(path) for path in paths]):
        return None
    reasons = {int(index): str(reason) for index, reason in meta["failed"]}
    pixels = np.load(entry.with_suffix(".npy"), mmap_mode="c")  # allow_pickle stays False: no code runs
    readable = len(paths) - len(reasons)
    if not set(reasons) <= set(range(len(paths))) or pixels.dtype != np.uint8 or pixels.shape != (readable, size, size, 3):
        raise ValueError(f"holds {pixels.dtype} {pixels.shape} for {readable} of {len(paths)} images at {size} px")
    kept, failed = _kept_and_failed(paths, reasons)  # the file holds the readable rows only
    return DecodedImages(pixels, kept, failed, entry.with_suffix(".npy"))


def _reserved_rows(path: Path, count: int, size: int) -> np.ndarray:
    """A (count, size, size, 3) uint8 .npy file mapped shared, for the decoders to fill in place: storing
    the array then costs no copy of it. Its disk blocks are reserved first, so a full disk fails here, as
    an OSError, and not as a crash (SIGBUS) when a worker touches a page the disk has no room for."""
    rows = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=(count, size, size, 3))
    with open(path, "rb+") as handle:
        if hasattr(os, "posix_fallocate"):
            os.posix_fallocate(handle.fileno(), rows.offset, rows.nbytes)
        else:  # macOS: writing the zeros reserves the blocks too, at the cost of one pass over the file
            handle.seek(rows.offset)
            for start in range(0, rows.nbytes, 1 << 24):
                handle.write(bytes(min(1 << 24, rows.nbytes - start)))
    return rows


def _decode_and_store(entry: Path, paths: Sequence[Path], size: int, workers: int | None,
                      on_progress: Callable[[int], None] | None,
                      hashing: Sequence[bool] | None) -> tuple[DecodedImages, Hashed]:
    """Decode straight into the entry's pixel file, then write the JSON that completes the entry."""
    decoded, hashed = None, []
    try:
        with atomic_path(entry.with_suffix(".npy")) as tmp:
            rows = _reserved_rows(tmp, len(paths), size)
            stamps, reasons, hashed = _decode_into(rows, paths, size, workers, on_progress, hashing)
            decoded = _result(rows, paths, reasons)
            if decoded.failed:  # keep the readable rows only, so that a hit maps the file without copying it
                with open(tmp, "wb") as handle:
                    np.save(handle, decoded.pixels)
            else:
                rows.flush()
        failed = [[index, reason] for index, reason in sorted(reasons.items())]
        atomic_write_bytes(entry.with_suffix(".json"), json.dumps({"stamp": _stamp(stamps), "failed": failed}).encode())
        # mapped copy-on-write, as a hit is: no later write to the array reaches the cache
        decoded.pixels = np.load(entry.with_suffix(".npy"), mmap_mode="c")
    except OSError as err:
        log.warning("decoded images not cached in %s (%s); the next run decodes them again", entry.parent, err)
        if decoded is None:  # the cache file could not be made: decode in memory
            return _decode_in_memory(paths, size, workers, on_progress, hashing)
    return decoded, hashed


def _with_records(decoded: DecodedImages, store: HashStore, paths: Sequence[Path], known: list[FileRecord | None],
                  hashed: Hashed) -> DecodedImages:
    """`decoded` with every file's record: stored ones, those the decode pass computed, and the rest read now
    (a decode-cache hit on files whose records are gone); the new ones stored."""
    records = list(known)
    for index, stamp, record in hashed:
        store.add(paths[index], stamp, record)
        records[index] = record
    decoded.records = store.complete(paths, records)
    return decoded


def _decode_cached(paths: Sequence[Path], size: int, cache: DecodeCacheOptions, workers: int | None,
                   on_progress: Callable[[int], None] | None, hashing: Sequence[bool] | None) -> tuple[DecodedImages, Hashed]:
    cache_dir = cache.directory
    if cache_dir is None:
        return _decode_in_memory(paths, size, workers, on_progress, hashing)
    entry = _slot(cache_dir, paths, size)
    try:
        decoded = _load(entry, paths, size)
    except FileNotFoundError:
        decoded = None
    except DAMAGED as err:
        log.warning("ignoring unreadable decode cache %s (%s: %s); decoding again", entry, type(err).__name__, err)
        decoded = None
    hit, hashed = decoded is not None, []
    if not hit:
        decoded, hashed = _decode_and_store(entry, paths, size, workers, on_progress, hashing)
    elif on_progress is not None:
        on_progress(len(paths))
    try:
        if hit:
            os.utime(entry.with_suffix(".json"))  # the entry's last use, for pruning
        else:
            _prune(Path(cache_dir), entry, int(cache.max_gb * 1e9))
    except OSError as err:  # a read-only cache, or one that could not be written (already warned about)
        log.debug("decode cache %s not maintained (%s)", cache_dir, err)
    return decoded, hashed


def decode_cached(paths: Sequence[Path], size: int, cache: DecodeCacheOptions, workers: int | None = None,
                  on_progress: Callable[[int], None] | None = None, hash_files: bool = False) -> DecodedImages:
    """decode_all, reusing the array an earlier run decoded from the same unchanged files in
    `cache.directory` (usually DecodeCacheOptions.from_environment()); no directory, no cache. hash_files=True
    also gives each file's record (`records`, data/hashes.py), from the store in that directory or computed
    in the decode pass."""
    store = HashStore(cache.directory) if hash_files else None
    known = store.known(paths) if store is not None else None
    hashing = None if known is None else [record is None for record in known]
    decoded, hashed = _decode_cached(paths, size, cache, workers, on_progress, hashing)
    return decoded if store is None else _with_records(decoded, store, paths, known, hashed)
