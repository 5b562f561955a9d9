"""Finding labelled images on disk, on generated folders: layouts, splits, multi-label, errors, inputs."""
from __future__ import annotations

import os
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from imgcls.data.audit import audit
from imgcls.data.folders import discover, expand_inputs, find_evaluation_images
from imgcls.data.images import decode_image
from imgcls.errors import ImgclsError

def _image(path: Path, seed: int | None = None) -> Path:
    """A small random-noise PNG, seeded by its path so no two files are accidentally identical."""
    rng = np.random.default_rng(zlib.crc32(str(path).encode()) if seed is None else seed)
    pixels = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)
    return path


def _tree(root: Path, layout: dict[str, int]) -> dict[str, list[Path]]:
    """layout maps a folder ('split/class', 'class' or 'predict') to a number of distinct PNGs."""
    return {folder: [_image(root / folder / f"img{i:02d}.png") for i in range(n)] for folder, n in layout.items()}


def _names(dataset, split: str) -> dict[str, list[str]]:
    """{class: [file names]} of one split, to compare splits by content."""
    table: dict[str, list[str]] = {}
    for sample in dataset.splits[split]:
        table.setdefault(dataset.classes[sample.labels[0]], []).append(sample.path.name)
    return {name: sorted(files) for name, files in sorted(table.items())}


def _paths(samples) -> set[Path]:
    return {sample.path for sample in samples}


# --- layouts -------------------------------------------------------------------------------

@pytest.mark.parametrize("validation_folder", ["validation", "val", "valid"])
def test_split_folders_are_used_as_given_and_predict_is_not_a_class(tmp_path, validation_folder):
    _tree(tmp_path, {"train/cat": 3, "train/dog": 2, f"{validation_folder}/cat": 1, f"{validation_folder}/dog": 1,
                     "test/cat": 1, "test/dog": 2, "predict": 4})

    dataset = discover(tmp_path)

    assert dataset.classes == ["cat", "dog"]
    assert dataset.counts() == {"train": {"cat": 3, "dog": 2}, "validation": {"cat": 1, "dog": 1},
                                "test": {"cat": 1, "dog": 2}}
    assert all(len(sample.labels) == 1 for samples in dataset.splits.values() for sample in samples)
    assert not any("predict" in sample.path.parts for samples in dataset.splits.values() for sample in samples)


def test_predict_folder_with_subfolders_beside_split_folders_is_ignored(tmp_path):
    _tree(tmp_path, {"train/cat": 2, "train/dog": 2, "validation/cat": 1, "validation/dog": 1, "predict/batch1": 3})

    dataset = discover(tmp_path)

    assert dataset.classes == ["cat", "dog"]
    assert sum(len(s) for s in dataset.splits.values()) == 6


def test_class_folders_are_split_80_20_by_default_and_predict_is_not_a_class(tmp_path):
    files = _tree(tmp_path, {"cat": 10, "dog": 5, "Predict": 3})

    dataset = discover(tmp_path)

    assert dataset.classes == ["cat", "dog"]
    assert list(dataset.splits) == ["train", "validation"]
    assert dataset.counts() == {"train": {"cat": 8, "dog": 4}, "validation": {"cat": 2, "dog": 1}}
    assert _paths(dataset.splits["train"]) | _paths(dataset.splits["validation"]) == set(files["cat"] + files["dog"])


def test_test_split_is_carved_out_and_both_fractions_are_of_the_whole_pool(tmp_path):
    _tree(tmp_path, {"cat": 20, "dog": 10})

    dataset = discover(tmp_path, val_split=0.2, test_split=0.1)

    assert dataset.counts() == {"train": {"cat": 14, "dog": 7}, "validation": {"cat": 4, "dog": 2},
                                "test": {"cat": 2, "dog": 1}}


# --- layouts of downloaded datasets ----------------------------------------------------------

@pytest.mark.parametrize("train, validation, test", [
    ("training_set", None, "test_set"),  # Kaggle (cats and dogs, ...)
    ("Training", "Validation", "Testing"),  # capitalised, as many Kaggle uploads are
    ("train", "dev", "test"),
    ("TRAIN", "VAL", None),
    ("training", "validation_set", "testing"),
])
def test_the_split_folder_names_of_popular_datasets_are_splits_in_any_case(tmp_path, train, validation, test):
    given = {name: split for name, split in ((train, "train"), (validation, "validation"), (test, "test")) if name}
    _tree(tmp_path, {f"{name}/{cls}": 2 for name in given for cls in ("cats", "dogs")})

    dataset = discover(tmp_path)

    assert dataset.classes == ["cats", "dogs"]
    assert set(dataset.splits) == {"train", "validation", *(["test"] if test else [])}
    for name, split in given.items():
        assert {sample.path.parent.parent.name for sample in dataset.splits[split]} == {name}


def test_evaluation_finds_a_test_set_folder_and_a_split_asked_for_by_another_name(tmp_path):
    files = _tree(tmp_path, {"training_set/cats": 2, "training_set/dogs": 2, "test_set/cats": 1, "test_set/dogs": 1})

    assert _paths(find_evaluation_images(tmp_path, ["cats", "dogs"])) == set(files["test_set/cats"] + files["test_set/dogs"])
    assert len(find_evaluation_images(tmp_path, ["cats", "dogs"], split="Training")) == 4


def _one_line_layout_error(root: Path, found: str, *also: str) -> str:
    with pytest.raises(ImgclsError) as raised:
        discover(root)
    message = str(raised.value)
    assert "\n" not in message
    assert f"found {root / found}" in message
    assert f"expected {root}/<class>/*.png or {root}/train/<class>/*.png" in message
    for part in also:
        assert part in message
    return message


def test_the_kaggle_cats_and_dogs_download_one_level_too_deep_is_refused_with_the_layout(tmp_path):
    # The archive unpacks as training_set/training_set/cats/cat.1.jpg: classes named like splits.
    _tree(tmp_path, {"training_set/training_set/cats": 2, "training_set/training_set/dogs": 2,
                     "test_set/test_set/cats": 1, "test_set/test_set/dogs": 1})

    _one_line_layout_error(tmp_path, "training_set/training_set/cats/*.png", "a split folder 'training_set' inside",
                           f"move the class folders of '{tmp_path / 'training_set' / 'training_set'}' up one level")


def test_a_class_folder_holding_class_folders_is_refused_with_the_layout_found(tmp_path):
    _tree(tmp_path, {"animals/cat": 2, "animals/dog": 2})

    _one_line_layout_error(tmp_path, "animals/cat/*.png", "class folders inside the class folder 'animals'",
                           f"pass '{tmp_path / 'animals'}' as the data folder")


def test_several_class_folders_holding_class_folders_are_refused(tmp_path):
    _tree(tmp_path, {"animals/cat": 2, "animals/dog": 2, "vehicles/bus": 2, "vehicles/car": 2})

    _one_line_layout_error(tmp_path, "animals/cat/*.png", f"move its class folders up into '{tmp_path}'")


def test_a_dataset_folder_holding_split_folders_is_refused_with_the_folder_to_pass(tmp_path):
    _tree(tmp_path, {"flowers/train/rose": 2, "flowers/train/tulip": 2, "flowers/test/rose": 1, "flowers/test/tulip": 1})

    _one_line_layout_error(tmp_path, "flowers/test/rose/*.png", "split folders inside 'flowers'",
                           f"pass '{tmp_path / 'flowers'}' as the data folder")


def test_a_split_folder_holding_class_folders_in_class_folders_is_refused(tmp_path):
    _tree(tmp_path, {"train/animals/cat": 2, "train/animals/dog": 2, "train/vehicles/car": 2, "train/vehicles/bus": 2})

    _one_line_layout_error(tmp_path, "train/animals/cat/*.png", "class folders inside the class folder 'animals'")


def test_subfolders_of_a_class_with_images_of_its_own_or_a_single_subfolder_are_one_class(tmp_path):
    files = _tree(tmp_path, {"cat": 2, "cat/more": 2, "cat/even more": 1, "dog/photos": 3})

    dataset = discover(tmp_path)

    assert dataset.classes == ["cat", "dog"]
    every = [sample for samples in dataset.splits.values() for sample in samples]
    assert {sample.path for sample in every} == {path for group in files.values() for path in group}


def test_two_folders_of_one_split_are_an_error_naming_both(tmp_path):
    _tree(tmp_path, {"train/cat": 2, "train/dog": 2, "training_set/cat": 2, "training_set/dog": 2})

    with pytest.raises(ImgclsError, match=r"has two train folders, 'train' and 'training_set'; merge them"):
        discover(tmp_path)


def test_the_audit_reads_a_kaggle_layout_as_splits_and_refuses_a_nested_one(tmp_path):
    _tree(tmp_path / "kaggle", {"training_set/cats": 3, "training_set/dogs": 3, "test_set/cats": 1, "test_set/dogs": 1})
    _tree(tmp_path / "nested", {"animals/cat": 2, "animals/dog": 2})

    report = audit(tmp_path / "kaggle", near_duplicates=False)

    assert report["layout"] == "split-folders"
    assert report["counts"]["test"] == {"cats": 1, "dogs": 1}
    with pytest.raises(ImgclsError, match="class folders inside the class folder 'animals'"):
        audit(tmp_path / "nested", near_duplicates=False)


def test_unicode_and_space_names_are_found(tmp_path):
    _tree(tmp_path, {"crème brûlée": 2, "日本 茶": 2})
    _image(tmp_path / "crème brûlée" / "café ☕ photo 1.png")

    dataset = discover(tmp_path, val_split=0.3)

    assert dataset.classes == ["crème brûlée", "日本 茶"]
    assert sum(dataset.counts()["train"].values()) + sum(dataset.counts()["validation"].values()) == 5
    all_paths = _paths(dataset.splits["train"]) | _paths(dataset.splits["validation"])
    assert tmp_path / "crème brûlée" / "café ☕ photo 1.png" in all_paths


def test_hidden_and_non_image_files_are_not_samples(tmp_path):
    _tree(tmp_path, {"cat": 3, "dog": 3})
    (tmp_path / "cat" / "notes.txt").write_text("not a picture")
    _image(tmp_path / "cat" / "._img00.png")  # macOS resource-fork twin
    (tmp_path / ".thumbnails").mkdir()
    _image(tmp_path / ".thumbnails" / "t.png")

    dataset = discover(tmp_path)

    assert dataset.classes == ["cat", "dog"]
    assert sum(len(s) for s in dataset.splits.values()) == 6


# --- the split -----------------------------------------------------------------------------

def test_the_split_is_reproducible_for_a_seed_and_different_for_another(tmp_path):
    _tree(tmp_path, {"cat": 20, "dog": 20})

    first, again, other = discover(tmp_path, seed=1), discover(tmp_path, seed=1), discover(tmp_path, seed=2)

    assert _names(first, "validation") == _names(again, "validation")
    assert _names(first, "train") == _names(again, "train")
    assert _names(first, "validation") != _names(other, "validation")


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_train_validation_and_test_never_overlap_and_cover_every_image(tmp_path, seed):
    files = _tree(tmp_path, {"a": 9, "b": 7, "c": 3})

    dataset = discover(tmp_path, val_split=0.25, test_split=0.2, seed=seed)

    train, val, test = (_paths(dataset.splits[s]) for s in ("train", "validation", "test"))
    assert not (train & val) and not (train & test) and not (val & test)
    assert train | val | test == {p for paths in files.values() for p in paths}


def test_the_split_is_stratified_with_at_least_one_validation_image_per_class_of_two(tmp_path):
    _tree(tmp_path, {"common": 30, "middle": 5, "rare": 2, "single": 1})

    dataset = discover(tmp_path, val_split=0.2)

    assert dataset.counts()["validation"] == {"common": 6, "middle": 1, "rare": 1, "single": 0}
    assert dataset.counts()["train"] == {"common": 24, "middle": 4, "rare": 1, "single": 1}


def test_a_large_val_split_still_leaves_every_class_a_training_image(tmp_path):
    _tree(tmp_path, {"cat": 4, "dog": 2, "owl": 1})

    dataset = discover(tmp_path, val_split=0.6)

    assert dataset.counts()["train"] == {"cat": 2, "dog": 1, "owl": 1}
    assert dataset.counts()["validation"] == {"cat": 2, "dog": 1, "owl": 0}


# --- errors --------------------------------------------------------------------------------

def test_an_empty_class_folder_is_an_error_naming_it(tmp_path):
    _tree(tmp_path, {"cat": 3, "dog": 3})
    (tmp_path / "owl").mkdir()

    with pytest.raises(ImgclsError, match=r"class folder '.*owl' has no images; add some or remove the folder"):
        discover(tmp_path)


def test_a_single_class_is_an_error_explaining_the_layout(tmp_path):
    _tree(tmp_path, {"cat": 5})

    with pytest.raises(ImgclsError, match=r"need at least 2 classes in '.*', found only 'cat'; lay images out as"):
        discover(tmp_path)


def test_split_folders_without_train_is_an_error(tmp_path):
    _tree(tmp_path, {"validation/cat": 2, "validation/dog": 2})

    with pytest.raises(ImgclsError, match=r"has validation/ but no training folder \(train/, training/ or training_set/\); add .*train"):
        discover(tmp_path)


def test_a_validation_class_without_training_images_is_an_error(tmp_path):
    _tree(tmp_path, {"train/cat": 2, "train/dog": 2, "validation/cat": 1, "validation/owl": 1})

    with pytest.raises(ImgclsError, match=r"validation has classes with no training images: \['owl'\]; add them to train/"):
        discover(tmp_path)


def test_val_split_zero_without_a_validation_folder_is_an_error_with_the_fix(tmp_path):
    _tree(tmp_path, {"train/cat": 2, "train/dog": 2})

    with pytest.raises(ImgclsError, match=r"has no validation images; add .*validation/<class>/ or pass --val-split 0.2"):
        discover(tmp_path, val_split=0)


@pytest.mark.parametrize("argument, value", [("val_split", 1.0), ("val_split", -0.1), ("test_split", 1.5)])
def test_a_split_fraction_outside_0_to_1_is_an_error_naming_it(tmp_path, argument, value):
    _tree(tmp_path, {"cat": 3, "dog": 3})

    with pytest.raises(ImgclsError, match=rf"{argument} must be in \[0, 1\), got {value}"):
        discover(tmp_path, **{argument: value})


def test_val_and_test_splits_that_leave_nothing_to_train_on_are_an_error(tmp_path):
    _tree(tmp_path, {"cat": 3, "dog": 3})

    with pytest.raises(ImgclsError, match=r"val_split \+ test_split must leave images to train on, got 0.5 \+ 0.5"):
        discover(tmp_path, val_split=0.5, test_split=0.5)


def test_a_missing_data_folder_is_an_error_naming_it(tmp_path):
    with pytest.raises(ImgclsError, match=r"data folder '.*nowhere' does not exist"):
        discover(tmp_path / "nowhere")


# --- multi-label ---------------------------------------------------------------------------

def test_identical_files_in_several_class_folders_are_one_image_with_several_labels(tmp_path):
    _tree(tmp_path, {"train/beach": 2, "train/dog": 2, "train/sunset": 1, "validation/beach": 1, "validation/dog": 1})
    both = [_image(tmp_path / "train" / name / "dog_on_beach.png", seed=9999) for name in ("beach", "dog")]
    assert both[0].read_bytes() == both[1].read_bytes()

    dataset = discover(tmp_path, multi_label=True)

    assert dataset.multi_label
    assert len(dataset.splits["train"]) == 5 + 1
    labels = {s.path.relative_to(tmp_path / "train"): [dataset.classes[i] for i in s.labels]
              for s in dataset.splits["train"]}
    assert labels[Path("beach/dog_on_beach.png")] == ["beach", "dog"]
    assert sum(len(lab) == 1 for lab in labels.values()) == 5


def test_identical_files_stay_separate_single_label_samples_without_multi_label(tmp_path):
    _tree(tmp_path, {"train/beach": 2, "train/dog": 2, "validation/beach": 1, "validation/dog": 1})
    for name in ("beach", "dog"):
        _image(tmp_path / "train" / name / "dog_on_beach.png", seed=9999)

    dataset = discover(tmp_path)

    assert len(dataset.splits["train"]) == 6
    assert all(len(s.labels) == 1 for s in dataset.splits["train"])


def _labelled_pool(root: Path, n_images: int = 10) -> list[Path]:
    return [_image(root / "pool" / f"photo {i:02d}.png") for i in range(n_images)]


def test_a_labels_csv_gives_multi_label_samples(tmp_path):
    photos = _labelled_pool(tmp_path)
    rows = ["path,labels"] + [f"pool/{p.name},{'dog;beach' if i % 2 else 'dog'}" for i, p in enumerate(photos)]
    (tmp_path / "labels.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")

    dataset = discover(tmp_path, labels_csv=tmp_path / "labels.csv", val_split=0.2)

    assert dataset.multi_label
    assert dataset.classes == ["beach", "dog"]
    samples = dataset.splits["train"] + dataset.splits["validation"]
    assert {s.path for s in samples} == {p.resolve() for p in photos}
    assert sorted(s.labels for s in samples) == [(0, 1)] * 5 + [(1,)] * 5
    assert len(dataset.splits["validation"]) == 2


def test_a_labels_csv_splits_test_and_validation_as_fractions_of_the_whole_pool(tmp_path):
    photos = _labelled_pool(tmp_path, 50)
    rows = ["path,labels"] + [f"pool/{p.name},{'cat' if i % 2 else 'dog'}" for i, p in enumerate(photos)]
    (tmp_path / "labels.csv").write_text("\n".join(rows) + "\n")

    dataset = discover(tmp_path, labels_csv=tmp_path / "labels.csv", val_split=0.2, test_split=0.2)

    assert {s: len(samples) for s, samples in dataset.splits.items()} == {"train": 30, "validation": 10, "test": 10}


def test_a_labels_csv_with_a_wrong_header_is_an_error_on_line_1(tmp_path):
    _labelled_pool(tmp_path, 2)
    (tmp_path / "labels.csv").write_text("file,label\npool/photo 00.png,dog\n")

    with pytest.raises(ImgclsError, match=r"labels.csv:1: .*needs a header 'path,labels'; got \['file', 'label'\]"):
        discover(tmp_path, labels_csv=tmp_path / "labels.csv")


def test_a_labels_csv_row_for_a_missing_image_is_an_error_with_its_line(tmp_path):
    _labelled_pool(tmp_path, 2)
    (tmp_path / "labels.csv").write_text("path,labels\npool/photo 00.png,dog\npool/photo 01.png,cat\npool/gone.png,cat\n")

    with pytest.raises(ImgclsError, match=r"labels.csv:4: image 'pool/gone.png' not found under"):
        discover(tmp_path, labels_csv=tmp_path / "labels.csv")


def test_a_missing_labels_csv_is_an_error_naming_it(tmp_path):
    _labelled_pool(tmp_path, 2)

    with pytest.raises(ImgclsError, match=r"labels file '.*nope.csv' does not exist"):
        discover(tmp_path, labels_csv=tmp_path / "nope.csv")


# --- evaluation images ---------------------------------------------------------------------

def test_evaluation_uses_test_then_validation_then_every_image(tmp_path):
    files = _tree(tmp_path / "full", {"train/cat": 2, "train/dog": 2, "validation/cat": 1, "validation/dog": 1,
                                      "test/cat": 2, "test/dog": 1})
    _tree(tmp_path / "no_test", {"train/cat": 2, "train/dog": 2, "val/cat": 1, "val/dog": 2})
    flat = _tree(tmp_path / "flat", {"cat": 3, "dog": 2, "predict": 2})
    classes = ["cat", "dog"]

    assert _paths(find_evaluation_images(tmp_path / "full", classes)) == set(files["test/cat"] + files["test/dog"])
    assert len(find_evaluation_images(tmp_path / "no_test", classes)) == 3
    samples = find_evaluation_images(tmp_path / "flat", classes)
    assert _paths(samples) == set(flat["cat"] + flat["dog"])
    assert sorted(s.labels for s in samples) == [(0,)] * 3 + [(1,)] * 2


def test_evaluation_of_a_requested_split_uses_it(tmp_path):
    files = _tree(tmp_path, {"train/cat": 2, "train/dog": 1, "validation/cat": 1, "validation/dog": 1, "test/cat": 1})

    assert _paths(find_evaluation_images(tmp_path, ["cat", "dog"], split="train")) == set(files["train/cat"] + files["train/dog"])
    assert len(find_evaluation_images(tmp_path, ["cat", "dog"], split="val")) == 2


def test_evaluation_classes_unknown_to_the_model_are_an_error_naming_them(tmp_path):
    _tree(tmp_path, {"cat": 2, "dog": 2, "owl": 1})

    with pytest.raises(ImgclsError, match=r"classes \['owl'\] in '.*' are not classes of the model"):
        find_evaluation_images(tmp_path, ["cat", "dog"])


def test_evaluation_of_a_split_the_folder_lacks_is_an_error(tmp_path):
    _tree(tmp_path / "splits", {"train/cat": 2, "train/dog": 2, "validation/cat": 1, "validation/dog": 1})
    _tree(tmp_path / "flat", {"cat": 2, "dog": 2})

    with pytest.raises(ImgclsError, match=r"has no 'test' split; it has \['train', 'validation'\]"):
        find_evaluation_images(tmp_path / "splits", ["cat", "dog"], split="test")
    with pytest.raises(ImgclsError, match=r"has no 'test' split; it is a plain class-folder tree"):
        find_evaluation_images(tmp_path / "flat", ["cat", "dog"], split="test")


def test_evaluation_of_a_train_only_folder_is_an_error_with_the_fix(tmp_path):
    _tree(tmp_path, {"train/cat": 2, "train/dog": 2})

    with pytest.raises(ImgclsError, match=r"has only a train split; .*--split train"):
        find_evaluation_images(tmp_path, ["cat", "dog"])


# --- prediction inputs ---------------------------------------------------------------------

def test_inputs_expand_files_folders_recursively_and_globs_without_repeats(tmp_path):
    files = _tree(tmp_path, {"shots": 2, "shots/day 2": 2, "more": 3})
    (tmp_path / "shots" / "readme.txt").write_text("not an image")
    single = files["more"][0]

    paths = expand_inputs([str(single), str(tmp_path / "shots"), str(tmp_path / "more" / "*.png"),
                           str(tmp_path / "shots" / "**" / "*.png"), str(single)])

    assert paths[0] == single
    assert set(paths) == set(files["shots"] + files["shots/day 2"] + files["more"])
    assert len(paths) == 7


def test_the_same_file_spelt_two_ways_is_one_input(tmp_path, monkeypatch):
    image = _image(tmp_path / "shots" / "a.png")
    monkeypatch.chdir(tmp_path)

    paths = expand_inputs(["shots/a.png", str(image), "shots/../shots/a.png", "shots"])

    assert len(paths) == 1 and paths[0].resolve() == image.resolve()


def test_an_input_that_matches_nothing_is_an_error_naming_it(tmp_path):
    _image(tmp_path / "a.png")

    with pytest.raises(ImgclsError, match=r"'.*missing\.jpg' does not exist \(no file, folder or glob match\)"):
        expand_inputs([str(tmp_path / "a.png"), str(tmp_path / "missing.jpg")])
    with pytest.raises(ImgclsError, match=r"does not exist"):
        expand_inputs([str(tmp_path / "*.webp")])


# --- fingerprint ---------------------------------------------------------------------------

def test_the_fingerprint_is_stable_while_files_are_only_read(tmp_path):
    _tree(tmp_path, {"cat": 4, "dog": 4})
    dataset = discover(tmp_path)
    fingerprint = dataset.fingerprint()

    for samples in dataset.splits.values():
        for sample in samples:
            decode_image(sample.path)

    assert discover(tmp_path).fingerprint() == fingerprint


def test_the_fingerprint_changes_when_a_file_is_touched(tmp_path):
    files = _tree(tmp_path, {"cat": 4, "dog": 4})
    fingerprint = discover(tmp_path).fingerprint()
    stat = files["cat"][0].stat()

    os.utime(files["cat"][0], ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))

    assert discover(tmp_path).fingerprint() != fingerprint


def test_the_fingerprint_changes_when_a_file_is_added(tmp_path):
    _tree(tmp_path, {"cat": 4, "dog": 4})
    fingerprint = discover(tmp_path).fingerprint()

    _image(tmp_path / "dog" / "new.png")

    assert discover(tmp_path).fingerprint() != fingerprint
