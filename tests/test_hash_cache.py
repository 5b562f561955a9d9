"""Each file is read once per run: its hashes are computed in the decode pass (or the first audit), kept beside the
decode cache, and reused by training's leakage check, `imgcls audit` and the report while the file is unchanged."""
from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import FAST_CONFIG
from PIL import Image

from imgcls.data.audit import _all_close_pairs, _close_pairs, audit, find_leakage
from imgcls.data.cache import DecodeCacheOptions, decode_cached
from imgcls.data.folders import discover
from imgcls.data.hashes import HASHES_DIR, file_records, read_record
from imgcls.train.config import TrainConfig
from imgcls.train.phases import PHASES
from imgcls.train.run import train


@pytest.fixture
def leaky(digits_dir, tmp_path) -> Path:
    """The digits with one training image copied into validation (leakage) and one corrupt validation file."""
    root = Path(shutil.copytree(digits_dir, tmp_path / "digits"))
    source = sorted((root / "train" / "3").iterdir())[0]
    shutil.copy(source, root / "validation" / "3" / "copy.png")
    (root / "validation" / "5" / "broken.png").write_bytes(b"not a png")
    return root


def _all_paths(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*.png") if p.parent.parent.name in ("train", "validation", "test"))


def _rewrite_keeping_size_and_mtime(path: Path) -> None:
    """Other bytes under the same size and mtime: only a record taken from the cache misses the change."""
    stat = path.stat()
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))


def test_the_decode_pass_computes_the_same_records_a_read_of_each_file_does(leaky, cache_dir):
    paths = _all_paths(leaky)

    decoded = decode_cached(paths, 32, DecodeCacheOptions(cache_dir), hash_files=True)

    assert decoded.records == [read_record(path)[1] for path in paths]
    assert any(record.error for record in decoded.records)  # the broken file: corrupt, and still hashed
    assert len({record.sha256 for record in decoded.records}) == len(paths) - 1  # the copy shares its source's


@pytest.mark.skipif("fork" not in __import__("multiprocessing").get_all_start_methods(), reason="processes need fork")
def test_worker_processes_hash_as_they_decode_too(leaky, cache_dir, monkeypatch):
    from imgcls.data import cache

    monkeypatch.setattr(cache, "PROCESS_MIN_IMAGES", 4)  # "large" from 4 images
    paths = _all_paths(leaky)

    decoded = decode_cached(paths, 32, DecodeCacheOptions(cache_dir), workers=2, hash_files=True)

    assert decoded.records == [read_record(path)[1] for path in paths]


def test_a_second_run_takes_the_hashes_from_the_cache_and_a_changed_file_is_hashed_again(leaky, cache_dir):
    paths = _all_paths(leaky)
    first = decode_cached(paths, 32, DecodeCacheOptions(cache_dir), hash_files=True)
    unchanged, touched = paths[0], paths[1]
    _rewrite_keeping_size_and_mtime(unchanged)
    Image.open(touched).transpose(Image.FLIP_LEFT_RIGHT).save(touched)

    again = file_records(paths, cache_dir)

    assert again[0] == first.records[0] != read_record(unchanged)[1]  # not read: the cached record
    assert again[1] == read_record(touched)[1] != first.records[1]  # changed on disk: hashed again
    assert again[2:] == first.records[2:]


def test_audit_and_leakage_find_the_same_from_the_cache_as_from_the_files(leaky, cache_dir, monkeypatch):
    dataset = discover(leaky)
    first, leaks = audit(leaky), find_leakage(dataset)
    from_cache, leaks_from_cache = audit(leaky), find_leakage(dataset)
    monkeypatch.setenv("IMGCLS_CACHE_DIR", "off")
    without_cache = audit(leaky)

    assert first == from_cache == without_cache
    assert leaks == leaks_from_cache and len(leaks) == 1 and first["leakage"] >= 1
    assert [Path(c["path"]).name for c in first["corrupt"]] == ["broken.png"]
    assert (cache_dir / HASHES_DIR).is_dir()


def test_a_damaged_hash_cache_is_a_warning_and_is_rebuilt(leaky, cache_dir, caplog):
    expected = audit(leaky)
    for store in (cache_dir / HASHES_DIR).iterdir():
        store.write_text('{"files": {"0001.png": [1, 2')

    with caplog.at_level(logging.WARNING):
        again = audit(leaky)

    assert again == expected
    assert "damaged file-hash cache" in caplog.text
    for store in (cache_dir / HASHES_DIR).iterdir():
        assert json.loads(store.read_text())["files"]  # rewritten whole


def test_training_warns_about_leakage_and_leaves_every_hash_for_the_report(leaky, cache_dir, tmp_path, caplog):
    with caplog.at_level(logging.INFO):
        result = train(leaky, tmp_path / "run", TrainConfig.from_options(**{**FAST_CONFIG, "epochs": 1}), progress=False)

    assert "appear in both train and validation/test" in caplog.text
    paths = _all_paths(leaky)
    as_read = [read_record(path)[1] for path in paths]
    for path in paths:
        _rewrite_keeping_size_and_mtime(path)
    assert file_records(paths, cache_dir) == as_read  # every file's record is kept: the report's audit reads none
    assert set(result.phase_seconds) >= {"discover", "decode", "hashes", "epochs", "evaluation", "total"}
    assert set(result.phase_seconds) - {"other", "total"} <= set(PHASES)
    assert any(line.startswith("trained in") and "epochs" in line for line in caplog.messages)


@pytest.mark.parametrize("distance", [0, 1, 4, 10, 15, 20])
def test_near_duplicate_search_finds_exactly_the_pairs_comparing_all_pairs_finds(distance):
    rng = np.random.default_rng(distance)
    bases = rng.integers(0, 2**63, 100, dtype=np.uint64) * np.uint64(2)
    flips = [np.uint64(1) << rng.integers(0, 64, 400).astype(np.uint64) for _ in range(3)]
    near = bases[rng.integers(0, 100, 400)] ^ flips[0] ^ flips[1] ^ flips[2]  # up to 3 bits from a base
    shared_band = rng.integers(0, 2**20, 200, dtype=np.uint64) << np.uint64(44)  # one big bucket of the low bands
    hashes = np.concatenate([bases, near, shared_band])

    found = {tuple(pair) for pair in _close_pairs(hashes, distance, pairs_per_block=4096).tolist()}

    assert found == {tuple(pair) for pair in _all_close_pairs(hashes, distance).tolist()}
