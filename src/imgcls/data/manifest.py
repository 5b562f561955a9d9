"""Decisions about single images, kept apart from the images: a CSV manifest `path,action,label` that
the review page of `imgcls audit --labels` saves and `imgcls train --manifest` applies.

  path    the image, relative to the data folder ('/' separators) or absolute inside it
  action  keep | relabel | drop
  label   the new label for relabel (';'-separated for multi-label data), else empty

The files themselves are never moved, renamed or deleted: a dropped image is left out of the run, a
relabelled one trained under its new label, and the run records the manifest's SHA-256.
"""
from __future__ import annotations

import csv
import hashlib
import logging
from dataclasses import dataclass, replace
from pathlib import Path

from ..errors import ImgclsError

log = logging.getLogger(__name__)

ACTIONS = ("keep", "relabel", "drop")
COLUMNS = ("path", "action", "label")


@dataclass(frozen=True)
class Decision:
    action: str
    labels: tuple[str, ...]  # the new labels of a relabel, else ()
    line: int  # where it was written, for messages


@dataclass(frozen=True)
class Manifest:
    source: Path
    sha256: str
    decisions: dict[Path, Decision]  # by resolved image path


def _inside(path: Path, root: Path) -> bool:
    return path == root or root in path.parents


def read_manifest(csv_path: str | Path, root: str | Path) -> Manifest:
    """Parse and check the manifest of the data folder `root`; errors name the file and line."""
    csv_path, root = Path(csv_path).expanduser(), Path(root).expanduser().resolve()
    try:
        raw = csv_path.read_bytes()
    except OSError as err:
        raise ImgclsError(f"cannot read the manifest '{csv_path}' ({err.strerror or type(err).__name__})") from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise ImgclsError(f"the manifest '{csv_path}' is not UTF-8 text") from None
    reader = csv.DictReader(text.splitlines())
    if reader.fieldnames is None or not {"path", "action"} <= set(reader.fieldnames):
        raise ImgclsError(f"the manifest '{csv_path}' needs a header row 'path,action,label' "
                          f"(found {', '.join(reader.fieldnames or []) or 'nothing'})")
    decisions: dict[Path, Decision] = {}
    for row in reader:
        where = f"{csv_path}:{reader.line_num}"
        relative, action = (row.get("path") or "").strip(), (row.get("action") or "").strip().lower()
        labels = tuple(name.strip() for name in (row.get("label") or "").split(";") if name.strip())
        if not relative:
            raise ImgclsError(f"{where}: empty path")
        if action not in ACTIONS:
            raise ImgclsError(f"{where}: unknown action {action!r}; use one of {', '.join(ACTIONS)}")
        if action == "relabel" and not labels:
            raise ImgclsError(f"{where}: relabel needs the new label in the 'label' column")
        path = (root / relative).resolve()
        if not _inside(path, root):
            raise ImgclsError(f"{where}: '{relative}' is outside the data folder '{root}'")
        earlier = decisions.get(path)
        if earlier and (earlier.action, earlier.labels) != (action, labels):
            raise ImgclsError(f"{where}: '{relative}' was already decided differently at line {earlier.line}")
        decisions[path] = Decision(action, labels if action == "relabel" else (), reader.line_num)
    return Manifest(csv_path, hashlib.sha256(raw).hexdigest(), decisions)


def apply_manifest(dataset, manifest: Manifest):
    """The dataset (data.folders.LabelledImages) with the drops left out and the relabels applied;
    a relabel must name existing classes (a manifest cannot invent one)."""
    from .folders import Sample  # folders imports this module

    index = {name: i for i, name in enumerate(dataset.classes)}
    seen, dropped, relabelled, splits = set(), 0, 0, {}
    for split, samples in dataset.splits.items():
        kept = []
        for sample in samples:
            decision = manifest.decisions.get(sample.path.resolve())
            if decision is None:
                kept.append(sample)
                continue
            seen.add(sample.path.resolve())
            if decision.action == "drop":
                dropped += 1
            elif decision.action == "relabel":
                unknown = [name for name in decision.labels if name not in index]
                if unknown:
                    raise ImgclsError(f"{manifest.source}:{decision.line}: relabel to {', '.join(map(repr, unknown))}, "
                                      f"which is not a class (classes: {', '.join(dataset.classes)})")
                kept.append(Sample(sample.path, tuple(sorted(index[name] for name in decision.labels))))
                relabelled += 1
            else:
                kept.append(sample)
        splits[split] = kept
    emptied = sorted(set(range(len(dataset.classes))) - {i for sample in splits.get("train", []) for i in sample.labels})
    if emptied:
        names = ", ".join(repr(dataset.classes[i]) for i in emptied)
        raise ImgclsError(f"the manifest {manifest.source} leaves class {names} with no training images; keep some, "
                          "or move the class folder out of the data folder")
    missing = len(manifest.decisions) - len(seen)
    log.info("manifest %s: %d images dropped, %d relabelled", manifest.source, dropped, relabelled)
    if missing:
        log.warning("%d images named in the manifest %s are not in the data (moved, deleted or unreadable)",
                    missing, manifest.source)
    return replace(dataset, splits=splits)
