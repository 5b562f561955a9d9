"""Atomic file writes: readers (and a crash) see the old file or the new one, never half of one.

Every file written here gets the mode a new file gets from open(): 0o666 less the umask (0644 under the
usual 022), whatever the writer chose. safetensors writes 0600, which would hide a model's weights from a
server or a colleague running as another user while its config.json stays readable.

Output folders of commands run again and again (explain, similar) are never written over: `fresh_folder`.
"""
from __future__ import annotations

import logging
import os
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

log = logging.getLogger(__name__)

NEW_FILE_MODE = 0o666  # open()'s mode for a new file, before the umask takes its bits away


def _umask() -> int:
    """The process umask. Read from /proc where there is one: setting it to read it (the only portable
    way) would, for an instant, give files other threads create in that instant the wrong mode."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def default_file_mode() -> int:
    """The mode of a file created with open(): 0o644 under the usual umask 022."""
    return NEW_FILE_MODE & ~_umask()


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A temporary name beside `path` for the block to write; flushed to disk, given the default file mode
    and renamed onto `path` when the block ends without error, removed when it fails."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{uuid.uuid4().hex[:12]}.tmp"
    try:
        yield tmp
        os.chmod(tmp, default_file_mode())  # whatever mode the writer gave it (see the module docstring)
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


def fresh_folder(path: str | Path) -> Path:
    """`path`, unless it holds files already: then the first of path-2, path-3, ... that does not, said in the
    log. A second `imgcls explain` keeps the first one's maps rather than mixing or replacing them."""
    path = Path(path)
    candidate, n = path, 2
    while candidate.exists() and (not candidate.is_dir() or any(candidate.iterdir())):
        candidate, n = path.with_name(f"{path.name}-{n}"), n + 1
    if candidate != path:
        log.info("%s holds earlier results, kept; writing to %s", path, candidate)
    return candidate
