"""The decode cache: a second run on the same files maps the first run's array instead of decoding,
any change to the files or the size decodes again, and a broken cache never breaks a run."""
from __future__ import annotations

import errno
import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from imgcls.data.cache import DecodeCacheOptions, _slot, decode_all, decode_cached
from imgcls.data.folders import discover
from imgcls.train.config import RuntimeOptions
from imgcls.train.run import _decode_split


@pytest.fixture
def photos(tmp_path) -> list[Path]:
    """Five noise images (JPEG and PNG, various sizes) and one file that is not an image."""
    folder = tmp_path / "photos"
    folder.mkdir()
    rng = np.random.default_rng(0)
    paths = []
    for i, (width, height) in enumerate([(20, 20), (31, 17), (12, 40), (64, 48), (16, 16)]):
        path = folder / f"img{i}.{'jpg' if i % 2 else 'png'}"
        Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(path)
        paths.append(path)
    notes = folder / "notes.jpg"
    notes.write_text("not a picture\n")
    return paths[:2] + [notes] + paths[2:]


def _snapshot(folder: Path) -> dict:
    return {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in sorted(folder.iterdir())}


def test_a_second_decode_maps_the_first_ones_array_and_equals_it_exactly(photos, cache_dir):
    first = decode_cached(photos, 16, DecodeCacheOptions(cache_dir))
    second = decode_cached(photos, 16, DecodeCacheOptions(cache_dir))

    assert first.cached is None and second.cached is not None and second.cached.parent == cache_dir
    np.testing.assert_array_equal(second.pixels, first.pixels)
    np.testing.assert_array_equal(second.pixels, decode_all(photos, 16).pixels)
    assert second.kept == first.kept == [0, 1, 3, 4, 5]
    assert second.pixels.flags.writeable  # torch.as_tensor warns on read-only arrays
    assert [p.suffix for p in cache_dir.iterdir()].count(".npy") == 1


def test_unreadable_files_are_still_reported_and_warned_about_on_a_cache_hit(photos, cache_dir, caplog):
    first = decode_cached(photos, 16, DecodeCacheOptions(cache_dir))
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        second = decode_cached(photos, 16, DecodeCacheOptions(cache_dir))

    assert second.cached is not None and isinstance(second.pixels, np.memmap)  # mapped, not copied into memory
    assert second.failed == first.failed and [p for p, _ in second.failed] == [photos[2]]
    assert "not an image" in second.failed[0][1]
    assert f"skipped unreadable image {photos[2]}" in caplog.text


def test_touching_or_replacing_a_file_decodes_again_and_replaces_the_old_entry(photos, cache_dir):
    decode_cached(photos, 16, DecodeCacheOptions(cache_dir))
    before = _snapshot(cache_dir)
    stat = photos[0].stat()
    os.utime(photos[0], ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))

    touched = decode_cached(photos, 16, DecodeCacheOptions(cache_dir))

    assert touched.cached is None
    after = _snapshot(cache_dir)
    assert after.keys() == before.keys() and after != before  # replaced, not added
    Image.new("RGB", (20, 20), "red").save(photos[0])
    replaced = decode_cached(photos, 16, DecodeCacheOptions(cache_dir))
    assert replaced.cached is None
    assert (replaced.pixels[0] == [255, 0, 0]).all()
    assert decode_cached(photos, 16, DecodeCacheOptions(cache_dir)).cached is not None


def test_another_size_or_file_list_is_a_separate_entry(photos, cache_dir):
    decode_cached(photos, 16, DecodeCacheOptions(cache_dir))

    assert decode_cached(photos, 8, DecodeCacheOptions(cache_dir)).cached is None
    assert decode_cached(photos[:-1], 16, DecodeCacheOptions(cache_dir)).cached is None
    assert decode_cached(photos, 16, DecodeCacheOptions(cache_dir)).cached is not None
    assert decode_cached(photos, 8, DecodeCacheOptions(cache_dir)).pixels.shape == (5, 8, 8, 3)


@pytest.mark.parametrize("damage", ["truncated pixels", "garbled pixels", "pixels of another shape", "empty list",
                                    "garbled list"])
def test_a_damaged_entry_is_ignored_with_a_warning_and_rebuilt(photos, cache_dir, caplog, damage):
    expected = decode_cached(photos, 16, DecodeCacheOptions(cache_dir)).pixels.copy()
    pixels, failures = sorted(cache_dir.glob("*.npy"))[0], sorted(cache_dir.glob("*.json"))[0]
    if damage == "truncated pixels":
        pixels.write_bytes(pixels.read_bytes()[:-100])
    elif damage == "garbled pixels":
        pixels.write_bytes(b"\x93NUMPY garbage")
    elif damage == "pixels of another shape":
        np.save(pixels, expected[:, :8, :8])
    elif damage == "empty list":
        failures.write_bytes(b"")
    else:
        failures.write_text('{"failed": [[99, "no such file"]]}')

    with caplog.at_level(logging.WARNING):
        rebuilt = decode_cached(photos, 16, DecodeCacheOptions(cache_dir))

    assert rebuilt.cached is None and "ignoring unreadable decode cache" in caplog.text
    np.testing.assert_array_equal(rebuilt.pixels, expected)
    np.testing.assert_array_equal(decode_cached(photos, 16, DecodeCacheOptions(cache_dir)).pixels, expected)


def test_a_cache_that_cannot_be_written_only_costs_a_warning(photos, tmp_path, caplog):
    blocked = tmp_path / "a file" / "cache"  # a folder cannot be made under a file, not even by root
    blocked.parent.write_text("")

    with caplog.at_level(logging.WARNING):
        decoded = decode_cached(photos, 16, DecodeCacheOptions(blocked))

    assert decoded.kept == [0, 1, 3, 4, 5] and decoded.cached is None
    np.testing.assert_array_equal(decoded.pixels, decode_all(photos, 16).pixels)
    assert "decoded images not cached" in caplog.text


def test_a_full_disk_only_costs_a_warning_and_leaves_no_partial_entry(photos, cache_dir, caplog, monkeypatch):
    def no_space(*args):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(os, "posix_fallocate", no_space, raising=False)

    with caplog.at_level(logging.WARNING):
        decoded = decode_cached(photos, 16, DecodeCacheOptions(cache_dir))

    assert decoded.kept == [0, 1, 3, 4, 5] and "No space left on device" in caplog.text
    np.testing.assert_array_equal(decoded.pixels, decode_all(photos, 16).pixels)
    assert list(cache_dir.iterdir()) == []


def test_nothing_is_written_beside_the_images(photos, cache_dir):
    folder = photos[0].parent
    before = _snapshot(folder)

    decode_cached(photos, 16, DecodeCacheOptions(cache_dir))
    decode_cached(photos, 16, DecodeCacheOptions(cache_dir))

    assert _snapshot(folder) == before


def test_the_cache_options_default_to_the_environment_and_it_can_turn_the_cache_off(tmp_path):
    xdg = {"XDG_CACHE_HOME": str(tmp_path / "xdg")}
    assert DecodeCacheOptions.from_environment(xdg) == DecodeCacheOptions(tmp_path / "xdg" / "imgcls" / "decoded", 20.0)
    mine = DecodeCacheOptions.from_environment({**xdg, "IMGCLS_CACHE_DIR": str(tmp_path / "mine"),
                                                "IMGCLS_CACHE_MAX_GB": "2.5"})
    assert mine == DecodeCacheOptions(tmp_path / "mine", max_gb=2.5)
    assert DecodeCacheOptions.from_environment({"IMGCLS_CACHE_DIR": "off"}).directory is None
    home = DecodeCacheOptions.from_environment({})
    assert home.directory == Path.home() / ".cache" / "imgcls" / "decoded" and home.max_gb == 20.0


def test_turned_off_it_decodes_and_writes_nothing(photos, tmp_path):
    decoded = decode_cached(photos, 16, DecodeCacheOptions(None))

    assert decoded.cached is None and decoded.kept == [0, 1, 3, 4, 5]
    assert not (tmp_path / "cache").exists()


def test_training_decodes_a_split_once_and_then_says_it_came_from_the_cache(digits_dir, cache_dir, caplog):
    samples = discover(digits_dir).splits["train"]  # (a whole `train` twice is 40 s; this is its decoding step)
    with caplog.at_level(logging.INFO, logger="imgcls.train.run"):
        first = _decode_split(samples, 32, 10, RuntimeOptions(), "train")
        assert "from cache" not in caplog.text
        second = _decode_split(samples, 32, 10, RuntimeOptions(), "train")

    assert f"train: {len(samples)} decoded images from cache ({cache_dir}" in caplog.text
    np.testing.assert_array_equal(second.pixels, first.pixels)
    assert second.samples == first.samples


@pytest.mark.skipif("fork" not in __import__("multiprocessing").get_all_start_methods(), reason="processes need fork")
def test_large_folders_decode_in_worker_processes_to_the_same_array_and_failures(photos, monkeypatch):
    from concurrent.futures import ProcessPoolExecutor

    from imgcls.data import cache

    in_threads = decode_all(photos * 3, 24, workers=2)
    monkeypatch.setattr(cache, "PROCESS_MIN_IMAGES", 4)  # "large" from 4 images
    pool, _ = cache._pool(2, (photos * 3, 24, cache._shared_rows(len(photos) * 3, 24)))
    with pool:
        assert isinstance(pool, ProcessPoolExecutor)
    in_processes = decode_all(photos * 3, 24, workers=2)
    assert np.array_equal(in_processes.pixels, in_threads.pixels)
    assert in_processes.kept == in_threads.kept and len(in_processes.kept) == 15
    assert [path.name for path, _ in in_processes.failed] == ["notes.jpg"] * 3
    assert [reason for _, reason in in_processes.failed] == [reason for _, reason in in_threads.failed]


@pytest.mark.skipif("fork" not in __import__("multiprocessing").get_all_start_methods(), reason="processes need fork")
def test_worker_processes_resize_after_the_parent_ran_parallel_torch_code(photos, tmp_path):
    """libgomp is not fork-safe: without one thread per worker, this decode hung forever."""
    script = tmp_path / "decode.py"
    script.write_text(
        "import sys, torch\n"
        "from pathlib import Path\n"
        "from imgcls.data import cache\n"
        "torch.ones(1 << 22).add_(1)  # an OpenMP region in the parent before the fork\n"
        "cache.PROCESS_MIN_IMAGES = 4\n"
        "decoded = cache.decode_all([Path(p) for p in sys.argv[1:]] * 20, 256, workers=2)\n"
        "print(decoded.pixels.shape)\n")
    done = subprocess.run([sys.executable, str(script), *map(str, photos)], capture_output=True, text=True, timeout=60)

    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "(100, 256, 256, 3)"


def _entries(cache_dir: Path) -> set[str]:
    return {p.name.split(".")[0] for p in cache_dir.iterdir() if not p.name.startswith(".")}


def _age(cache_dir: Path, slot: str, seconds_ago: float) -> None:
    for file in cache_dir.glob(f"{slot}.*"):
        stamp = file.stat().st_mtime - seconds_ago
        os.utime(file, (stamp, stamp))


def test_over_its_budget_the_cache_drops_the_least_recently_used_entries(photos, cache_dir):
    """Entries at 16, 24 and 32 px; a hit on the oldest makes the middle one the least recently used,
    and with a budget that holds exactly those three, writing a fourth drops only that one."""
    for age, size in ((300, 16), (200, 24), (100, 32)):
        decode_cached(photos, size, DecodeCacheOptions(cache_dir))
        _age(cache_dir, _slot(cache_dir, photos, size).name, age)
    decode_cached(photos, 16, DecodeCacheOptions(cache_dir))  # a hit: a use
    sizes = {size: sum(f.stat().st_size for f in cache_dir.glob(_slot(cache_dir, photos, size).name + ".*"))
             for size in (16, 24, 32)}
    in_progress = cache_dir / ".another-run.npy.0123.tmp"
    in_progress.write_bytes(bytes(10_000))

    decode_cached(photos, 12, DecodeCacheOptions(cache_dir, max_gb=sum(sizes.values()) / 1e9))

    assert _entries(cache_dir) == {_slot(cache_dir, photos, size).name for size in (12, 16, 32)}
    assert in_progress.exists()
    assert decode_cached(photos, 16, DecodeCacheOptions(cache_dir)).cached is not None


def test_an_entry_larger_than_the_budget_is_still_kept_and_used(photos, cache_dir):
    decode_cached(photos, 16, DecodeCacheOptions(cache_dir, max_gb=0))
    decode_cached(photos, 24, DecodeCacheOptions(cache_dir, max_gb=0))
    assert _entries(cache_dir) == {_slot(cache_dir, photos, 24).name}
    assert decode_cached(photos, 24, DecodeCacheOptions(cache_dir)).cached is not None


def test_a_budget_that_is_not_a_number_is_a_warning_and_the_default(photos, cache_dir, monkeypatch, caplog):
    monkeypatch.setenv("IMGCLS_CACHE_MAX_GB", "lots")
    options = DecodeCacheOptions.from_environment()
    decode_cached(photos, 16, options)
    decode_cached(photos, 24, options)
    assert "IMGCLS_CACHE_MAX_GB='lots' is not a number of gigabytes; using 20" in caplog.text
    assert options == DecodeCacheOptions(cache_dir, max_gb=20.0)
    assert len(_entries(cache_dir)) == 2


def _refuse_to_decode(*args, **kwargs):
    raise AssertionError("decoded an image that the cache holds")


def test_evaluation_and_look_alikes_after_training_map_the_images_training_decoded(digits_dir, cache_dir, tmp_path,
                                                                                   monkeypatch):
    from imgcls.evaluate.evaluation import evaluate
    from imgcls.explain.similar import load_index
    from imgcls.predict.predictor import Predictor
    from imgcls.train.config import TrainConfig
    from imgcls.train.run import train

    from conftest import FAST_CONFIG

    result = train(digits_dir, tmp_path / "run", TrainConfig.from_options(**{**FAST_CONFIG, "epochs": 1}), progress=False)
    monkeypatch.setattr("imgcls.data.cache.decode_image", _refuse_to_decode)

    metrics, _ = evaluate(result.bundle_dir, digits_dir, split="validation")
    embeddings, meta = load_index(Predictor.load(result.bundle_dir), result.bundle_dir)
    assert metrics["macro_avg"]["support"] == len(list((digits_dir / "validation").rglob("*.png")))
    assert len(embeddings) == len(meta["paths"]) == len(list((digits_dir / "train").rglob("*.png")))


def test_predicting_a_folder_again_maps_the_first_decode(trained_run, digits_dir, cache_dir, monkeypatch):
    from imgcls.predict.predictor import CACHED_FROM_IMAGES, Predictor

    paths = sorted((digits_dir / "validation").rglob("*.png"))
    assert len(paths) >= CACHED_FROM_IMAGES
    predictor = Predictor.load(trained_run.bundle_dir)
    first = predictor.predict(paths)
    monkeypatch.setattr("imgcls.data.cache.decode_image", _refuse_to_decode)
    assert predictor.predict(paths) == first


def test_predicting_single_images_leaves_nothing_in_the_cache(trained_run, digits_dir, cache_dir):
    from imgcls.predict.predictor import Predictor

    predictor = Predictor.load(trained_run.bundle_dir)
    for path in sorted((digits_dir / "predict").iterdir())[:3]:
        assert predictor.predict([path])[0]["labels"]
    assert not cache_dir.exists() or not any(cache_dir.iterdir())
