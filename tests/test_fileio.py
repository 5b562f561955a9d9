"""Atomic writes: the new file or the old one, never half of one, with the mode any new file gets."""
from __future__ import annotations

import os
import stat

import numpy as np
import pytest
import torch
from safetensors.numpy import save_file as save_numpy
from safetensors.torch import save_file as save_torch

from imgcls.fileio import atomic_path, atomic_write, atomic_write_bytes

pytestmark = pytest.mark.skipif(os.name != "posix", reason="POSIX permission bits")


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.fixture(params=[0o022, 0o077, 0o002])
def umask(request):
    """Run under this umask; the umask of the test process comes back afterwards."""
    previous = os.umask(request.param)
    yield request.param
    os.umask(previous)


def _ordinary_mode(folder) -> int:
    """The mode open() gives a new file under the current umask: what config.json gets."""
    reference = folder / "reference"
    reference.write_bytes(b"")
    mode = _mode(reference)
    reference.unlink()
    return mode


@pytest.mark.parametrize("write", [
    pytest.param(lambda path: save_torch({"w": torch.zeros(2)}, str(path)), id="safetensors torch"),
    pytest.param(lambda path: save_numpy({"embeddings": np.zeros((2, 3), np.float32)}, str(path)), id="safetensors numpy"),
    pytest.param(lambda path: (path.write_bytes(b"x"), path.chmod(0o600)), id="a writer that makes its file private"),
    pytest.param(lambda path: (path.write_bytes(b"x"), path.chmod(0o755)), id="a writer that makes its file executable"),
])
def test_atomic_writes_give_the_file_the_mode_open_gives_a_new_file(tmp_path, umask, write):
    target = tmp_path / "weights.safetensors"

    atomic_write(target, lambda tmp: write(type(target)(tmp)))

    assert _mode(target) == 0o666 & ~umask == _ordinary_mode(tmp_path)


def test_atomic_write_bytes_and_atomic_path_give_the_ordinary_mode_too(tmp_path, umask):
    atomic_write_bytes(tmp_path / "index.json", b"{}")
    with atomic_path(tmp_path / "entry.npy") as tmp:
        with open(tmp, "wb") as handle:
            np.save(handle, np.zeros(3))
        tmp.chmod(0o600)

    assert _mode(tmp_path / "index.json") == _mode(tmp_path / "entry.npy") == _ordinary_mode(tmp_path)


def test_a_failed_write_leaves_the_old_file_and_no_temporary_file(tmp_path):
    target = atomic_write_bytes(tmp_path / "config.json", b"old")

    def fail(tmp):
        open(tmp, "wb").write(b"half")
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match="No space left"):
        atomic_write(target, fail)

    assert target.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["config.json"]
