"""Atomic file writes: readers (and a crash) see the old file or the new one, never half of one."""
from __future__ import annotations

import os
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A temporary name beside `path` for the block to write; flushed to disk and renamed onto `path`
    when the block ends without error, removed when it fails."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # a unique name rather than tempfile.mkstemp, whose 0600 mode would survive the rename
    tmp = path.parent / f".{path.name}.{uuid.uuid4().hex[:12]}.tmp"
    try:
        yield tmp
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write(path: str | Path, write: Callable[[str], None]) -> Path:
    """Call `write(temporary_path)` beside `path`, flush it to disk, then rename it onto `path`."""
    with atomic_path(path) as tmp:
        write(str(tmp))
    return Path(path)


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    return atomic_write(path, lambda tmp: Path(tmp).write_bytes(data))
