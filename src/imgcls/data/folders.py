"""Finding labelled images on disk: split folders, class folders, or a labels CSV.

Layouts:
  ROOT/{train,validation,test}/<class>/*   splits given by the user (the names popular datasets use for
                                           them count too, in any case: training_set/, val/, dev/, ...)
  ROOT/<class>/*                           one pool, split here (stratified, seeded)
  ROOT/** + labels.csv (path,labels)       multi-label, labels separated by ';'
A `predict/` folder holds unlabelled input and is never a class. A class folder may hold its images in
subfolders, but not class folders of its own nor split folders: a tree one level too deep (the Kaggle
cats-and-dogs download, training_set/training_set/cats/) is refused with the layout found, rather than
trained as classes named after the splits.
"""
from __future__ import annotations

import csv
import glob
import hashlib
import logging
import os
import random
from collections import defaultdict
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from ..errors import ImgclsError, UsageError
from .images import is_image_path
from .manifest import apply_manifest, read_manifest

log = logging.getLogger(__name__)

# Folder name (lower case) -> split: the names of ImageNet, Kaggle's datasets, torchvision's and Hugging Face's.
SPLIT_ALIASES = {
    **dict.fromkeys(("train", "training", "training_set"), "train"),
    **dict.fromkeys(("validation", "val", "valid", "validation_set", "dev"), "validation"),
    **dict.fromkeys(("test", "testing", "test_set"), "test"),
}
UNLABELLED_FOLDERS = frozenset({"predict"})


@dataclass(frozen=True)
class Sample:
    path: Path
    labels: tuple[int, ...]  # class indices; exactly one unless the dataset is multi-label


def multi_hot(samples: list[Sample], num_classes: int) -> np.ndarray:
    """(N, num_classes) float32 targets: one-hot for single-label samples, multi-hot otherwise."""
    hot = np.zeros((len(samples), num_classes), dtype=np.float32)
    for row, sample in enumerate(samples):
        hot[row, list(sample.labels)] = 1
    return hot


@dataclass
class LabelledImages:
    root: Path
    classes: list[str]
    splits: dict[str, list[Sample]] = field(default_factory=dict)
    multi_label: bool = False

    def fingerprint(self) -> str:
        """Changes when any file is added, removed, resized or touched; cheap (no reads)."""
        digest = hashlib.sha1("\n".join(self.classes).encode())
        for split in sorted(self.splits):
            for sample in self.splits[split]:
                try:
                    stat = sample.path.stat()
                    stamp = f"{stat.st_size}|{stat.st_mtime_ns}"
                except OSError:  # a broken link, skipped when decoded: mending it is a change
                    stamp = "missing"
                digest.update(f"{split}|{sample.path}|{stamp}|{sample.labels}".encode())
        return digest.hexdigest()[:16]

    def counts(self) -> dict[str, dict[str, int]]:
        """Images per class per split (a multi-label image counts once for each of its labels)."""
        table = {}
        for split, samples in self.splits.items():
            per_class = dict.fromkeys(self.classes, 0)
            for sample in samples:
                for label in sample.labels:
                    per_class[self.classes[label]] += 1
            table[split] = per_class
        return table


def _subfolders(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _is_file_or_broken_link(path: Path) -> bool:
    """A file, or a link that leads nowhere: kept so that reading it reports the broken link, where
    leaving it out would lose the image without a word. Folders, pipes and devices are not files."""
    return path.is_file() or (path.is_symlink() and not path.exists())


def _images_under(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if is_image_path(p) and _is_file_or_broken_link(p))


def _pattern(image: Path) -> str:
    """'ROOT/cat/*.jpg' for ROOT/cat/0001.jpg: where a layout message shows the images it found."""
    return str(image.parent / f"*{image.suffix}")


def _check_class_folder(class_dir: Path, images: list[Path], n_classes: int, root: Path) -> None:
    """Refuse a 'class' folder that is a split, or holds splits or class folders: a tree one level too
    deep would otherwise train without a word on classes named after folders that are no classes.
    Subfolders are class folders when the folder has no images of its own and two or more of them do."""
    expected = f"expected {root}/<class>/*{images[0].suffix} or {root}/train/<class>/*{images[0].suffix}"
    if class_dir.name.lower() in SPLIT_ALIASES:
        raise ImgclsError(f"found {_pattern(images[0])}, a split folder '{class_dir.name}' inside "
                          f"'{class_dir.parent.name}'; {expected}; move the class folders of '{class_dir}' up one level")
    if any(image.parent == class_dir for image in images):  # images of its own: subfolders group them
        return
    depth = len(class_dir.parts)
    splits = [image for image in images if image.parts[depth].lower() in SPLIT_ALIASES]
    if splits:
        raise ImgclsError(f"found {_pattern(splits[0])}, split folders inside '{class_dir.name}'; {expected}; "
                          f"pass '{class_dir}' as the data folder")
    shallow = [image for image in images if len(image.parts) == depth + 2]
    if len({image.parent for image in shallow}) >= 2:
        fix = (f"pass '{class_dir}' as the data folder" if n_classes == 1 else
               f"move its class folders up into '{root}', or if they are not classes, their images up into '{class_dir}'")
        raise ImgclsError(f"found {_pattern(shallow[0])}, class folders inside the class folder '{class_dir.name}'; "
                          f"{expected}; {fix}")


def _read_class_folders(folder: Path, multi_label: bool, root: Path) -> dict[Path, set[str]]:
    """Map each image to its class names; in multi-label mode identical files in several
    class folders are one image with several labels. root: the data folder, for messages."""
    class_dirs = [d for d in _subfolders(folder) if d.name.lower() not in UNLABELLED_FOLDERS]
    labelled: dict[Path, set[str]] = {}
    by_content: dict[str, Path] = {}
    for class_dir in class_dirs:
        images = _images_under(class_dir)
        if not images:
            raise ImgclsError(f"class folder '{class_dir}' has no images; add some or remove the folder")
        _check_class_folder(class_dir, images, len(class_dirs), root)
        for path in images:
            if multi_label:
                try:
                    key = hashlib.sha1(path.read_bytes()).hexdigest()
                except OSError:  # unreadable: it matches no copy, and decoding reports it as skipped
                    key = str(path)
                path = by_content.setdefault(key, path)
            labelled.setdefault(path, set()).add(class_dir.name)
    return labelled


def _stratified_split(pool: list[Sample], fraction: float, seed: int) -> tuple[list[Sample], list[Sample]]:
    """Take `fraction` of each class (by first label) out of the pool: at least one where a class
    has two, never its last one (a class with no training image cannot be learnt)."""
    by_class = defaultdict(list)
    for sample in pool:
        by_class[sample.labels[0] if sample.labels else -1].append(sample)
    rng = random.Random(seed)
    kept, taken = [], []
    for label in sorted(by_class):
        group = by_class[label]
        rng.shuffle(group)
        n_taken = int(len(group) * fraction + 0.5)
        if fraction > 0 and n_taken == 0 and len(group) >= 2:
            n_taken = 1
        n_taken = min(n_taken, len(group) - 1)
        taken += group[:n_taken]
        kept += group[n_taken:]
    return kept, taken


def _csv_image(value: str, root: Path, where: str) -> Path:
    """The file a labels CSV row names, which must lie in the data folder `root` (either spelling of it:
    as given, or with its links resolved). Judged on the path as written, normalised but with links not
    followed: a link in the folder to a shared image store is allowed, as it is in class folders, while
    '../x.jpg' or '/elsewhere/x.jpg' is a row of another dataset."""
    resolved = root.resolve()
    path = Path(os.path.normpath(resolved / Path(value).expanduser()))
    if not (path.is_relative_to(resolved) or path.is_relative_to(os.path.abspath(root))):
        raise ImgclsError(f"{where}: image '{value}' is outside the data folder '{root}'; "
                          "move it into the folder and write its path relative to it")
    if not path.is_file():
        raise ImgclsError(f"{where}: image '{value}' not found under '{root}'")
    return path


def _csv_labels(row: dict, where: str) -> set[str]:
    """The ';'-separated class names of a row. An empty cell is an image of none of the classes (a
    multi-label negative); an empty name among others ('cat;;dog', 'cat;') is a typo."""
    if None in row:  # DictReader files the fields past the header under None
        raise ImgclsError(f"{where}: more fields than the header names; separate labels with ';', not ','")
    if row["labels"] is None:
        raise ImgclsError(f"{where}: no labels field; write 'PATH,LABELS', or 'PATH,' for an image of none of the classes")
    if not row["labels"].strip():
        return set()
    names = [name.strip() for name in row["labels"].split(";")]
    if "" in names:
        raise ImgclsError(f"{where}: empty label in {row['labels']!r}; separate names with one ';' and end with a name")
    return set(names)


def _labels_from_csv(csv_path: Path, root: Path) -> dict[Path, set[str]]:
    if not csv_path.is_file():
        raise ImgclsError(f"labels file '{csv_path}' does not exist")
    labelled = {}
    with open(csv_path, newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        if not reader.fieldnames or not {"path", "labels"} <= set(reader.fieldnames):
            raise ImgclsError(f"{csv_path}:1: labels file needs a header 'path,labels'; got {reader.fieldnames}")
        for row in reader:
            where = f"{csv_path}:{reader.line_num}"  # the line the row ends on: blank lines are counted
            labelled[_csv_image(row["path"] or "", root, where)] = _csv_labels(row, where)
    return labelled


def _to_samples(labelled: dict[Path, set[str]], classes: list[str]) -> list[Sample]:
    index = {name: i for i, name in enumerate(classes)}
    return [Sample(path, tuple(sorted(index[n] for n in names))) for path, names in sorted(labelled.items())]


def _check_classes(classes: list[str], root: Path) -> None:
    if len(classes) < 2:
        found = f"only {classes[0]!r}" if classes else "none"
        raise ImgclsError(
            f"need at least 2 classes in '{root}', found {found}; "
            "lay images out as ROOT/<class>/*.jpg or ROOT/train/<class>/*.jpg"
        )


def find_split_folders(root: Path) -> dict[str, Path]:
    """The split folders present under root, by canonical name; two folders of one split (train/ and
    training/) are an error, as taking either would silently leave out the other's images."""
    found: dict[str, Path] = {}
    for folder in _subfolders(root):
        split = SPLIT_ALIASES.get(folder.name.lower())
        if split in found:
            raise ImgclsError(f"'{root}' has two {split} folders, '{found[split].name}' and '{folder.name}'; "
                              "merge them into one")
        if split:
            found[split] = folder
    return {split: found[split] for split in ("train", "validation", "test") if split in found}


def _split_names(split: str) -> str:
    """The folder names a split may have, for messages: 'train/, training/ or training_set/'."""
    names = [f"{name}/" for name, canonical in SPLIT_ALIASES.items() if canonical == split]
    return ", ".join(names[:-1]) + f" or {names[-1]}"


def discover(
    root: str | Path,
    val_split: float = 0.2,
    test_split: float = 0.0,
    seed: int = 0,
    multi_label: bool = False,
    labels_csv: str | Path | None = None,
    manifest: str | Path | None = None,
) -> LabelledImages:
    """Find the labelled images under root and split them into train/validation(/test); a manifest's
    decisions (data.manifest) apply after the split, so every other image stays in its split."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise ImgclsError(f"data folder '{root}' does not exist or is not a folder")
    for name, value in (("val_split", val_split), ("test_split", test_split)):
        if not 0 <= value < 1:  # an argument, not the data, is wrong (exit 2)
            raise UsageError(f"{name} must be in [0, 1), got {value}")

    split_dirs = find_split_folders(root)
    if labels_csv is not None:
        per_split = {"train": _labels_from_csv(Path(labels_csv), root)}
        multi_label = True
    elif split_dirs:
        if "train" not in split_dirs:
            found = ", ".join(f"{folder.name}/" for folder in split_dirs.values())
            raise ImgclsError(
                f"'{root}' has {found} but no training folder ({_split_names('train')}); "
                f"add the training images as {root / 'train'}/<class>/*.jpg"
            )
        per_split = {split: _read_class_folders(folder, multi_label, root) for split, folder in split_dirs.items()}
    else:
        per_split = {"train": _read_class_folders(root, multi_label, root)}

    classes = sorted({name for labelled in per_split.values() for names in labelled.values() for name in names})
    train_classes = sorted({name for names in per_split["train"].values() for name in names})
    _check_classes(train_classes, root)
    for split, labelled in per_split.items():
        extra = sorted({n for names in labelled.values() for n in names} - set(train_classes))
        if extra:
            raise ImgclsError(f"{split} has classes with no training images: {extra}; add them to train/ or remove them")
    classes = train_classes
    dataset = LabelledImages(root, classes, {s: _to_samples(l, classes) for s, l in per_split.items()}, multi_label)

    carve_test = "test" not in dataset.splits and test_split > 0
    if carve_test:
        dataset.splits["train"], dataset.splits["test"] = _stratified_split(dataset.splits["train"], test_split, seed)
    if "validation" not in dataset.splits:
        if val_split == 0:
            raise ImgclsError(f"'{root}' has no validation images; add {root}/validation/<class>/ or pass --val-split 0.2")
        if carve_test and val_split + test_split >= 1:
            raise ImgclsError(f"val_split + test_split must leave images to train on, got {val_split} + {test_split} >= 1")
        # both fractions are of the whole pool, so after the test images are out, take more of the rest
        fraction = val_split / (1 - test_split) if carve_test else val_split
        dataset.splits["train"], dataset.splits["validation"] = _stratified_split(dataset.splits["train"], fraction, seed + 1)
    dataset.splits = {s: dataset.splits[s] for s in ("train", "validation", "test") if s in dataset.splits}
    if manifest is not None:
        dataset = apply_manifest(dataset, read_manifest(manifest, root))
    for split, samples in dataset.splits.items():
        if not samples:
            raise ImgclsError(f"the {split} split of '{root}' is empty; add images or lower --val-split/--test-split")
    return dataset


def find_evaluation_images(root: str | Path, classes: list[str], split: str | None = None,
                           multi_label: bool = False, labels_csv: str | Path | None = None) -> list[Sample]:
    """Labelled images to evaluate a model with `classes` on: the test split, else validation,
    else (a plain class-folder tree) every image."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise ImgclsError(f"data folder '{root}' does not exist or is not a folder")
    if labels_csv is not None:
        labelled = _labels_from_csv(Path(labels_csv), root)
    else:
        split_dirs = find_split_folders(root)
        split = SPLIT_ALIASES.get(split.lower(), split) if split is not None else None
        if split is not None and split not in split_dirs:
            found = (f"it has {sorted(split_dirs)}" if split_dirs
                     else "it is a plain class-folder tree; leave out --split to use every image")
            raise ImgclsError(f"'{root}' has no {split!r} split; {found}")
        chosen = split or next((s for s in ("test", "validation") if s in split_dirs), None)
        if split_dirs and chosen is None:
            raise ImgclsError(f"'{root}' has only a train split; evaluate needs test/ or validation/ (or pass --split train)")
        labelled = _read_class_folders(split_dirs[chosen] if chosen else root, multi_label, root)
    unknown = sorted({n for names in labelled.values() for n in names} - set(classes))
    if unknown:
        raise ImgclsError(f"classes {unknown} in '{root}' are not classes of the model ({len(classes)} known: {classes[:10]})")
    if not labelled:
        raise ImgclsError(f"no labelled images found in '{root}'")
    return _to_samples(labelled, classes)


@dataclass(frozen=True)
class Input:
    """A file to read, and whether the user named it (as a path or through a glob) or it was found in a folder."""
    path: Path
    named: bool


def find_inputs(inputs: list[str]) -> list[Input]:
    """Files, folders (searched recursively) and glob patterns, in a stable order, without repeats
    (one file named two ways, 'a.jpg' and '/abs/a.jpg', counts once). Broken links and unreadable
    files stay in, so that reading them says which failed and why."""
    found: list[Input] = []
    for item in inputs:
        path = Path(item).expanduser()
        if path.is_dir():
            images = _images_under(path)
            if not images:
                log.warning("no images in folder '%s'", path)
            found += [Input(image, named=False) for image in images]
        elif path.exists() or path.is_symlink():
            found.append(Input(path, named=True))  # an explicit file is tried even if its suffix is odd
        else:
            matches = sorted(Path(m) for m in glob.glob(str(path), recursive=True))
            if not matches:
                raise ImgclsError(f"'{item}' does not exist (no file, folder or glob match)")
            # each match counts as named: the same as the shell writing the names out
            found += [Input(m, named=True) for m in matches if _is_file_or_broken_link(m)]
    unique: dict[str, Input] = {}
    for entry in found:
        # a broken link is itself (two of them may lead to one missing file); realpath, as Path.resolve raises on loops
        key = os.path.realpath(entry.path) if entry.path.exists() else os.path.abspath(entry.path)
        first = unique.setdefault(key, entry)
        unique[key] = replace(first, named=first.named or entry.named)
    return list(unique.values())


def expand_inputs(inputs: list[str]) -> list[Path]:
    """The paths of find_inputs, for callers to whom named and found files are alike."""
    return [entry.path for entry in find_inputs(inputs)]
