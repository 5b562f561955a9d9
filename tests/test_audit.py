"""The dataset audit, on generated image folders: balance, corrupt files, duplicates, leakage, rendering."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from imgcls.cli.audit_text import render_audit
from imgcls.data.audit import _close_pairs, audit, find_leakage
from imgcls.data.folders import discover
from imgcls.errors import ImgclsError


def _pattern(seed: int, size: int = 96) -> Image.Image:
    """A smooth random RGB picture: distinct per seed, and smooth so a resized copy still looks the same."""
    coarse = np.random.default_rng(seed).integers(0, 256, (6, 6, 3), dtype=np.uint8)
    return Image.fromarray(coarse).resize((size, size), Image.BICUBIC)


def _save(image: Image.Image, path: Path, **options) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, **options)
    return path


def _make_tree(root: Path, layout: dict[str, int], first_seed: int = 0) -> list[Path]:
    """layout maps 'split/class' (or 'class') to a number of distinct PNGs."""
    paths, seed = [], first_seed
    for folder, n_images in layout.items():
        for _ in range(n_images):
            paths.append(_save(_pattern(seed), root / folder / f"img{seed:03d}.png"))
            seed += 1
    return paths


def _snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_counts_per_class_and_split_with_imbalance_measured_on_train(tmp_path):
    _make_tree(tmp_path, {"train/cat": 6, "train/dog": 2, "validation/cat": 1, "validation/dog": 3})

    report = audit(tmp_path)

    assert report["layout"] == "split-folders"
    assert report["classes"] == ["cat", "dog"]
    assert report["counts"] == {"train": {"cat": 6, "dog": 2}, "validation": {"cat": 1, "dog": 3}}
    assert report["total_images"] == 12
    assert report["imbalance_ratio"] == 3.0
    assert (report["smallest_class"], report["largest_class"]) == ("dog", "cat")
    assert report["corrupt"] == [] and report["exact_duplicates"] == [] and report["near_duplicates"] == []
    assert report["leakage"] == 0
    assert report["warnings"] == ["class 'dog' has 2 training images, 3x fewer than 'cat' (6)"]


def test_corrupt_files_are_listed_with_a_reason_and_left_byte_for_byte_unchanged(tmp_path):
    _make_tree(tmp_path, {"train/a": 3, "train/b": 3, "validation/a": 2, "validation/b": 2})
    (tmp_path / "train/a/empty.jpg").write_bytes(b"")
    jpeg = _save(_pattern(99, 128), tmp_path / "full.jpg", quality=90).read_bytes()
    (tmp_path / "full.jpg").unlink()
    (tmp_path / "train/b/truncated.jpg").write_bytes(jpeg[: len(jpeg) // 2])
    (tmp_path / "validation/a/notes.jpg").write_text("these are my labelling notes, not a picture\n")
    before = _snapshot(tmp_path)

    report = audit(tmp_path)

    reasons = {Path(item["path"]).name: item["reason"] for item in report["corrupt"]}
    assert set(reasons) == {"empty.jpg", "truncated.jpg", "notes.jpg"}
    assert "empty" in reasons["empty.jpg"]
    assert "could not decode" in reasons["truncated.jpg"]
    assert "not an image" in reasons["notes.jpg"]
    assert "3 corrupt files will be skipped" in report["warnings"]
    assert report["total_images"] == 13
    assert _snapshot(tmp_path) == before


def test_empty_files_in_both_splits_are_corrupt_not_leakage(tmp_path):
    _make_tree(tmp_path, {"train/a": 2, "train/b": 2, "validation/a": 2, "validation/b": 2})
    (tmp_path / "train/a/failed_download.jpg").write_bytes(b"")
    (tmp_path / "validation/b/failed_download.jpg").write_bytes(b"")

    report = audit(tmp_path)

    assert len(report["corrupt"]) == 2
    assert report["exact_duplicates"] == [] and report["leakage"] == 0
    assert find_leakage(discover(tmp_path)) == []


def test_identical_file_in_train_and_validation_is_cross_split_leakage(tmp_path):
    paths = _make_tree(tmp_path, {"train/a": 3, "train/b": 3, "validation/a": 2, "validation/b": 2})
    shutil.copy(paths[0], tmp_path / "validation/a/copy.png")

    report = audit(tmp_path)

    [group] = report["exact_duplicates"]
    assert sorted(Path(p).name for p in group["paths"]) == ["copy.png", paths[0].name]
    assert sorted(group["splits"]) == ["train", "validation"]
    assert group["cross_split"] and not group["conflicting_labels"]
    assert report["near_duplicates"] == []  # an exact copy is not reported again as a near one
    assert report["leakage"] == 1
    assert any("1 validation images also appear in train" in w and "optimistic" in w for w in report["warnings"])


def test_same_file_under_two_classes_is_conflicting_labels(tmp_path):
    paths = _make_tree(tmp_path, {"train/a": 3, "train/b": 3, "validation/a": 2, "validation/b": 2})
    shutil.copy(paths[0], tmp_path / "train/b/same.png")

    report = audit(tmp_path)

    [group] = report["exact_duplicates"]
    assert sorted(group["classes"]) == ["a", "b"]
    assert group["conflicting_labels"] and not group["cross_split"]
    assert report["leakage"] == 0
    assert any("conflicting labels" in w for w in report["warnings"])


def test_resized_reencoded_copy_is_a_near_duplicate_but_different_images_are_not(tmp_path):
    paths = _make_tree(tmp_path, {"train/a": 8, "train/b": 8, "validation/a": 4, "validation/b": 4})
    original = Image.open(paths[0])
    _save(original.resize((86, 86), Image.BILINEAR), tmp_path / "validation/a/altered.jpg", quality=80)

    report = audit(tmp_path)

    [group] = report["near_duplicates"]
    assert sorted(Path(p).name for p in group["paths"]) == ["altered.jpg", paths[0].name]
    assert group["cross_split"]
    assert report["exact_duplicates"] == []
    assert report["leakage"] == 1


def test_near_duplicate_search_can_be_switched_off(tmp_path):
    paths = _make_tree(tmp_path, {"train/a": 2, "train/b": 2, "validation/a": 1, "validation/b": 1})
    _save(Image.open(paths[0]).resize((80, 80)), tmp_path / "validation/a/altered.jpg", quality=80)

    report = audit(tmp_path, near_duplicates=False)

    assert report["near_duplicates"] is None
    assert report["leakage"] == 0
    assert "Near duplicate groups: not checked" in render_audit(report)


def test_find_leakage_finds_the_cross_split_copy_and_nothing_on_a_clean_dataset(tmp_path):
    paths = _make_tree(tmp_path, {"train/a": 2, "train/b": 2, "validation/a": 1, "test/b": 2})
    assert find_leakage(discover(tmp_path)) == []

    shutil.copy(paths[2], tmp_path / "test/b/copy.png")
    shutil.copy(paths[0], tmp_path / "train/b/within_train.png")  # a duplicate, but not leakage
    [group] = find_leakage(discover(tmp_path))

    assert sorted(Path(p).name for p in group["paths"]) == ["copy.png", paths[2].name]
    assert sorted(group["splits"]) == ["test", "train"]


def test_image_modes_formats_and_sizes_are_counted(tmp_path):
    _make_tree(tmp_path, {"train/a": 2, "train/b": 2, "validation/a": 1, "validation/b": 1})
    _save(_pattern(50, 40).convert("L"), tmp_path / "train/a/gray.png")
    _save(_pattern(51, 200).convert("RGBA"), tmp_path / "train/b/alpha.png")
    _save(_pattern(52).convert("P", palette=Image.ADAPTIVE), tmp_path / "validation/a/palette.png")
    _save(_pattern(53), tmp_path / "validation/b/photo.jpg", quality=90)

    stats = audit(tmp_path)["image_stats"]

    assert stats["modes"] == {"RGB": 7, "L": 1, "RGBA": 1, "P": 1}
    assert stats["formats"] == {"PNG": 9, "JPEG": 1}
    assert stats["width"] == {"min": 40, "median": 96, "max": 200}
    assert stats["height"] == stats["width"]


def test_class_folder_audit_reports_leakage_of_the_split_training_will_make(tmp_path):
    paths = _make_tree(tmp_path, {"a": 5, "b": 5})
    shutil.copy(paths[0], tmp_path / "a" / "copy.png")

    def copies_split_apart(seed: int) -> bool:
        splits = discover(tmp_path, val_split=0.5, seed=seed).splits
        where = {p.name: s for s, samples in splits.items() for p in (sample.path for sample in samples)}
        return where["copy.png"] != where[paths[0].name]

    apart = next(seed for seed in range(50) if copies_split_apart(seed))
    together = next(seed for seed in range(50) if not copies_split_apart(seed))
    report_apart = audit(tmp_path, val_split=0.5, seed=apart)
    report_together = audit(tmp_path, val_split=0.5, seed=together)

    assert report_apart["layout"] == "class-folders"
    assert report_apart["counts"] == discover(tmp_path, val_split=0.5, seed=apart).counts()
    assert report_apart["leakage"] == 1 and report_apart["exact_duplicates"][0]["cross_split"]
    assert report_together["leakage"] == 0 and not report_together["exact_duplicates"][0]["cross_split"]


def test_report_is_json_and_renders_classes_counts_and_sections(tmp_path):
    paths = _make_tree(tmp_path, {"train/tabby": 4, "train/beagle": 3, "validation/tabby": 2, "validation/beagle": 2})
    shutil.copy(paths[0], tmp_path / "validation/tabby/copy.png")
    (tmp_path / "train/beagle/broken.jpg").write_bytes(b"")

    report = audit(tmp_path)
    text = render_audit(json.loads(json.dumps(report)))

    assert "tabby" in text and "beagle" in text
    assert any(line.split() == ["tabby", "4", "3", "7"] for line in text.splitlines())
    assert any(line.split() == ["beagle", "4", "2", "6"] for line in text.splitlines())
    assert "Corrupt files (1):" in text and "train/beagle/broken.jpg: empty file" in text
    assert "Exact duplicate groups (1):" in text and "[cross-split]" in text
    assert "validation/tabby/copy.png  (validation, tabby)" in text
    assert "Leakage (duplicate groups spanning train and validation/test): 1" in text
    assert "Warnings:" in text and "1 corrupt files will be skipped" in text


def test_rendered_lists_are_bounded(tmp_path):
    _make_tree(tmp_path, {"train/a": 2, "train/b": 2, "validation/a": 1, "validation/b": 1})
    for index in range(25):
        (tmp_path / f"train/a/empty{index:02d}.jpg").write_bytes(b"")

    text = render_audit(audit(tmp_path))

    assert "Corrupt files (25):" in text
    assert "empty19.jpg" in text and "empty20.jpg" not in text
    assert "... and 5 more (see --format json)" in text


def test_hash_distance_out_of_range_is_a_user_error(tmp_path):
    _make_tree(tmp_path, {"train/a": 1, "train/b": 1, "validation/a": 1})
    with pytest.raises(ImgclsError, match="hash_distance.*got 70"):
        audit(tmp_path, hash_distance=70)


def test_blocked_hash_comparison_matches_brute_force():
    rng = np.random.default_rng(0)
    hashes = rng.integers(0, 2**63, 300, dtype=np.uint64) * np.uint64(2)
    hashes[150:160] = hashes[:10] ^ np.uint64(0b1011)  # 3 bits away from their partner
    hashes[200] = hashes[5] ^ np.uint64(0b11111)  # 5 bits away: not a pair at distance 4
    brute = {(i, j) for i in range(300) for j in range(i + 1, 300) if bin(int(hashes[i] ^ hashes[j])).count("1") <= 4}

    blocked = {tuple(pair) for pair in _close_pairs(hashes, 4, pairs_per_block=1000).tolist()}

    assert blocked == brute
    assert {(i, 150 + i) for i in range(10)} <= blocked and (5, 200) not in blocked
