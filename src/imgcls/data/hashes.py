"""What one read of an image file tells: its SHA-256, header facts and perceptual hash, kept on disk per file.

Training's leakage check, `imgcls audit` and the report's audit all need these, and each used to read and
hash every file again (on MNIST, 3 reads of 70k files per `imgcls train`). Now a file is read once: the
decode pass (`cache.decode_cached(..., hash_files=True)`) computes its record from the bytes it reads
anyway, and every later user finds it in the store.

The store lives beside the decode cache, in the decode cache directory (DecodeCacheOptions)/file-hashes: one JSON per image folder
(`FOLDER-KEY.json`), mapping each file name to its byte size, mtime_ns and record. A record is used only
while the file's size and mtime_ns are unchanged, so an edited file is hashed again. A damaged store file
is a warning and a rebuild; a store that cannot be written is a warning and hashing again next time.
With the decode cache turned off (cache_dir None) records are computed and not kept.

pHash: Zauner, "Implementation and Benchmarking of Perceptual Image Hash Functions" (2010),
https://phash.org/docs/pubs/thesis_zauner.pdf
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import astuple, dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import PIL
from PIL import Image

from ..fileio import atomic_write_bytes
from .images import UnreadableImage, decode_image, file_error, open_image

log = logging.getLogger(__name__)

HASHES_VERSION = 1  # bump whenever a record's meaning or the store's layout changes: it retires every store file
HASHES_DIR = "file-hashes"
HASH_INPUT_SIZE = 32  # pHash works on a 32x32 grayscale thumbnail ...
HASH_SIDE = 8  # ... and keeps its 8x8 lowest frequencies: 64 bits
JPEG_DRAFT_SIZE = 64  # DCT-domain downscale to >= 2x the thumbnail: a 2000x1500 JPEG takes 2 ms, not 19
# What a damaged store file raises: garbled JSON (ValueError), wrong shapes (KeyError, TypeError), unreadable (OSError).
DAMAGED = (OSError, ValueError, KeyError, TypeError)

Stamp = tuple[int, int]  # (byte size, mtime_ns) of a file when it was read


def _dct_rows(size: int, rows: int) -> np.ndarray:
    """The first `rows` rows of the orthonormal DCT-II matrix (scipy.fft.dct(norm="ortho")) of length `size`."""
    n = np.arange(size)
    matrix = np.sqrt(2 / size) * np.cos(np.pi * (2 * n[None, :] + 1) * np.arange(rows)[:, None] / (2 * size))
    matrix[0] /= np.sqrt(2)
    return matrix


# The 8 lowest frequencies as two small products rather than scipy.fft.dctn of the whole thumbnail, and the
# median from a sort: 0.55-0.73 -> 0.37 ms per hash (0.18 of it the thumbnail), the same hashes bit for bit on
# 2000 MNIST digits (one core, shared machine).
_DCT = _dct_rows(HASH_INPUT_SIZE, HASH_SIDE)  # (8, 32)


@dataclass(frozen=True)
class FileRecord:
    """What one read of a file tells; error is set (and the rest empty) when it is not a usable image,
    sha256 is None when the file itself could not be read."""

    sha256: str | None
    error: str | None = None
    width: int = 0
    height: int = 0
    mode: str = ""
    format: str = ""
    phash: int | None = None


def phash(rgb: np.ndarray) -> int:
    """64-bit DCT perceptual hash."""
    # Hand-written (10 lines): scipy already comes with scikit-learn; `imagehash` would add PyWavelets.
    thumbnail = Image.fromarray(rgb).convert("L").resize((HASH_INPUT_SIZE, HASH_INPUT_SIZE), Image.LANCZOS)
    frequencies = _DCT @ np.asarray(thumbnail, dtype=np.float64) @ _DCT.T  # (8, 8)
    ordered, middle = np.sort(frequencies, axis=None), HASH_SIDE * HASH_SIDE // 2
    bits = frequencies > (ordered[middle - 1] + ordered[middle]) / 2  # np.median's value, without its 0.06 ms
    return int.from_bytes(np.packbits(bits).tobytes(), "big")


def record_and_pixels(data: bytes) -> tuple[FileRecord, np.ndarray | None]:
    """Hash the bytes, then decode them once for size/mode/format, corruption and the perceptual hash; the
    decoded (H, W, 3) pixels too where they are the whole image (not a JPEG's grey draft), so that the decode
    pass resizes them instead of decoding the file again (a PNG digit: 0.35 ms saved of ~1 ms)."""
    digest = hashlib.sha256(data).hexdigest()
    try:
        # decode_image's own opener, so a file is corrupt here exactly when training would skip it;
        # opening first lets us read the header and ask for a cheap JPEG draft before decoding.
        with open_image(data) as image:
            width, height, mode, image_format = image.width, image.height, image.mode, image.format
            if image_format == "JPEG":
                image.draft("L", (JPEG_DRAFT_SIZE, JPEG_DRAFT_SIZE))
            rgb = decode_image(image)
    except UnreadableImage as err:
        return FileRecord(digest, str(err)), None
    record = FileRecord(digest, None, width, height, mode, image_format or "unknown", phash(rgb))
    return record, None if image_format == "JPEG" else rgb


def record_of_bytes(data: bytes) -> FileRecord:
    return record_and_pixels(data)[0]


def stamp_of(stat: os.stat_result) -> Stamp:
    return stat.st_size, stat.st_mtime_ns


def read_record(path: Path) -> tuple[Stamp | None, FileRecord]:
    """The file's stamp, taken before reading it, and its record; a file that cannot be read (a broken link,
    no permission) has no stamp and a record saying why, as training skips it."""
    try:
        stamp = stamp_of(os.stat(path))
        data = Path(path).read_bytes()
    except OSError as err:
        return None, FileRecord(None, file_error(path, err))
    return stamp, record_of_bytes(data)


def map_threads(function: Callable, items: Sequence, desc: str) -> list:
    """Pillow and hashlib release the GIL while decoding/hashing, so threads use every core.
    A bar (terminals only): a 60k-image audit takes over a minute on 2 cores."""
    from tqdm.auto import tqdm

    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        return list(tqdm(pool.map(function, items), total=len(items), desc=desc, unit="img", leave=False, disable=None))


def _store_file(store_dir: Path, folder: Path) -> Path:
    key = hashlib.sha256(f"v{HASHES_VERSION} pillow{PIL.__version__}\0{folder}".encode()).hexdigest()[:20]
    return store_dir / f"{key}.json"


def _parse_entry(entry: list) -> tuple[Stamp, FileRecord]:
    size, mtime_ns, sha256, error, width, height, mode, image_format, perceptual = entry
    if not isinstance(size, int) or not isinstance(mtime_ns, int) or not isinstance(sha256, str):
        raise TypeError(f"an entry holds {entry!r}")
    return (size, mtime_ns), FileRecord(sha256, error, int(width), int(height), str(mode), str(image_format),
                                        None if perceptual is None else int(perceptual))


class HashStore:
    """The records of files under one cache folder (see the module docstring); cache_dir None keeps nothing.
    `known` reads what is stored, `add` collects new records, `complete` computes the missing ones and
    stores everything added."""

    def __init__(self, cache_dir: Path | None):
        self.store_dir = None if cache_dir is None else Path(cache_dir) / HASHES_DIR
        self._added: dict[Path, dict[str, tuple[Stamp, FileRecord]]] = defaultdict(dict)  # by absolute folder

    def _read_folder(self, folder: Path) -> dict[str, tuple[Stamp, FileRecord]]:
        path = _store_file(self.store_dir, folder)
        try:
            files = json.loads(path.read_bytes())["files"]
            return {str(name): _parse_entry(entry) for name, entry in files.items()}
        except FileNotFoundError:
            return {}
        except DAMAGED as err:
            log.warning("ignoring damaged file-hash cache %s (%s: %s); hashing its folder's files again",
                        path, type(err).__name__, err)
            return {}

    def known(self, paths: Sequence[Path]) -> list[FileRecord | None]:
        """The stored record of each path whose size and mtime_ns are unchanged, else None."""
        if self.store_dir is None:
            return [None] * len(paths)
        folders: dict[str, dict[str, tuple[Stamp, FileRecord]]] = {}
        found: list[FileRecord | None] = []
        for path in paths:
            path = os.path.abspath(path)  # strings, not Paths: pathlib's parsing took half the time of a lookup
            folder, name = os.path.split(path)
            if folder not in folders:
                folders[folder] = self._read_folder(Path(folder))
            stored = folders[folder].get(name)
            try:
                unchanged = stored is not None and stored[0] == stamp_of(os.stat(path))
            except OSError:
                unchanged = False
            found.append(stored[1] if unchanged else None)
        return found

    def add(self, path: Path, stamp: Stamp | None, record: FileRecord) -> None:
        """Keep `record` of `path` as read at `stamp`; records of files that could not be read are not kept."""
        if stamp is not None and record.sha256 is not None:
            path = Path(os.path.abspath(path))
            self._added[path.parent][path.name] = (stamp, record)

    def save(self) -> None:
        """Merge the added records into their folders' store files (re-read, so another run's are kept)."""
        if self.store_dir is None:
            self._added.clear()
            return
        try:
            for folder, added in self._added.items():
                entries = {**self._read_folder(folder), **added}
                files = {name: [*stamp, *astuple(record)] for name, (stamp, record) in entries.items()}
                payload = json.dumps({"folder": str(folder), "files": files}, separators=(",", ":")).encode()
                atomic_write_bytes(_store_file(self.store_dir, folder), payload)
        except OSError as err:
            log.warning("file hashes not cached in %s (%s); the next run reads the files again", self.store_dir, err)
        self._added.clear()

    def complete(self, paths: Sequence[Path], known: list[FileRecord | None], desc: str = "hashing") -> list[FileRecord]:
        """`known` with each None computed by reading its file, and every new record stored."""
        missing = [index for index, record in enumerate(known) if record is None]
        records = list(known)
        computed = map_threads(read_record, [paths[i] for i in missing], desc) if missing else []
        for index, (stamp, record) in zip(missing, computed):
            self.add(paths[index], stamp, record)
            records[index] = record
        self.save()
        return records


def file_records(paths: Sequence[Path], cache_dir: Path | None, desc: str = "hashing") -> list[FileRecord]:
    """The record of every path, reading only the files the store under `cache_dir` has no record of."""
    store = HashStore(cache_dir)
    return store.complete(paths, store.known(paths), desc)
