"""Dataset audit: what a folder of scraped images really holds, before a model is trained on it.

`audit` decodes every image once and reports class balance, image sizes/modes/formats, corrupt
files, exact duplicates (same bytes), near duplicates (perceptual hash within a few bits) and
leakage (copies shared between train and validation/test, which make validation accuracy
optimistic). The splits are the ones `discover` makes, so a class-folder tree is audited with the
same seeded split that training will use. `find_leakage` is the cheap byte-level check that
`imgcls train` runs after decoding.

Every file's hashes come from data/hashes.py's store: read once, by the decode pass of training or the
first audit, then found there by every later audit while the file is unchanged.

Duplicate groups have one entry per file in 'paths', 'splits' and 'classes' (parallel lists).
Files are only read, never modified or moved.

Near duplicates are found with a multi-index (Norouzi et al., "Fast Search in Hamming Space with
Multi-Index Hashing", CVPR 2012, https://www.cs.toronto.edu/~norouzi/research/papers/multi_index_hashing.pdf):
two 64-bit hashes within d bits agree exactly on at least one of d + 1 bands, so only files sharing a
band are compared, not all pairs.
"""
from __future__ import annotations

import hashlib
import logging
import statistics
from collections import Counter, defaultdict
from pathlib import Path
from typing import Mapping

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from ..errors import ImgclsError
from .cache import DecodeCacheOptions
from .folders import LabelledImages, Sample, discover, find_split_folders
from .hashes import FileRecord, file_records

log = logging.getLogger(__name__)

SPLIT_ORDER = ("train", "validation", "test")
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()  # empty files are corrupt, not copies of each other
MAX_HASH_DISTANCE = 32  # two unrelated images already differ in ~32 of 64 bits
# ~18 bytes of temporaries per compared pair: 2M pairs per block keeps the comparison under ~40 MB.
PAIRS_PER_BLOCK = 1 << 21
HASH_BITS = 64
MIN_BAND_BITS = 4  # narrower bands match too many hashes by chance: beyond 15 bits of distance, compare all pairs
SMALL_BUCKET = 64  # files sharing a band value compared by offsets in one sorted array; larger buckets block-wise
# Mild imbalance rarely hurts; beyond ~3x the small class's recall usually drops.
IMBALANCE_WARNING_RATIO = 3.0
_POPCOUNT = np.array([bin(byte).count("1") for byte in range(256)], dtype=np.uint8)


def _split_names(dataset: LabelledImages) -> list[str]:
    return sorted(dataset.splits, key=SPLIT_ORDER.index)  # discover() names only these three


def _entries(dataset: LabelledImages) -> list[tuple[str, Sample]]:
    return [(split, sample) for split in _split_names(dataset) for sample in dataset.splits[split]]


def _group(indices: list[int], entries: list[tuple[str, Sample]], classes: list[str]) -> dict:
    members = sorted((str(entries[i][1].path), entries[i][0], classes[entries[i][1].labels[0]]) for i in indices)
    paths, splits, names = (list(column) for column in zip(*members))
    return {"paths": paths, "splits": splits, "classes": names,
            "cross_split": len(set(splits)) > 1, "conflicting_labels": len(set(names)) > 1}


def _spans_train(group: dict) -> bool:
    return "train" in group["splits"] and any(split != "train" for split in group["splits"])


def _indices_by_key(keys: list) -> list[list[int]]:
    """Indices that share a key with another index; None keys never match."""
    by_key = defaultdict(list)
    for index, key in enumerate(keys):
        if key is not None:
            by_key[key].append(index)
    return [indices for indices in by_key.values() if len(indices) > 1]


def _all_close_pairs(hashes: np.ndarray, max_distance: int, pairs_per_block: int = PAIRS_PER_BLOCK) -> np.ndarray:
    """(K, 2) index pairs i < j of uint64 hashes within max_distance bits, comparing every pair.

    Blocks of rows against the columns after them: memory stays bounded and each pair is
    compared once (10k hashes: 1.2 s on 2 cores).
    """
    n = len(hashes)
    rows = max(1, pairs_per_block // max(n, 1))
    found = [np.empty((0, 2), dtype=np.intp)]
    for start in range(0, n, rows):
        xor = hashes[start:start + rows, None] ^ hashes[None, start:]  # (rows, n - start)
        distance = _POPCOUNT[xor.view(np.uint8)].reshape(*xor.shape, 8).sum(axis=-1, dtype=np.uint8)
        i, j = np.nonzero(distance <= max_distance)
        upper = j > i  # column j is hash start + j; drops self-pairs and pairs seen in a block above
        found.append(np.stack([i[upper] + start, j[upper] + start], axis=1))
    return np.concatenate(found)


def _bands(max_distance: int) -> list[tuple[int, int]]:
    """(shift, width) of the max_distance + 1 bands that split the 64 bits, as even as they can be."""
    count = max_distance + 1
    widths = [HASH_BITS // count + (band < HASH_BITS % count) for band in range(count)]
    return [(sum(widths[:band]), width) for band, width in enumerate(widths)]


def _close_pairs_sharing_a_key(keys: np.ndarray, hashes: np.ndarray, max_distance: int,
                               pairs_per_block: int) -> list[np.ndarray]:
    """Pairs of hashes within max_distance bits among those with the same key (one band's value)."""
    order = np.argsort(keys, kind="stable")
    ordered = keys[order]
    starts = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]])
    sizes = np.diff(np.r_[starts, len(keys)])
    found = []
    for start, size in zip(starts[sizes > SMALL_BUCKET], sizes[sizes > SMALL_BUCKET]):  # few: all their pairs
        members = order[start:start + size]
        found.append(members[_all_close_pairs(hashes[members], max_distance, pairs_per_block)])
    small = np.repeat(sizes <= SMALL_BUCKET, sizes)  # (n,) in sorted order
    for offset in range(1, SMALL_BUCKET):  # each hash against the one `offset` places on in its bucket
        same = (ordered[offset:] == ordered[:-offset]) & small[offset:]
        if not same.any():  # no bucket is larger than offset
            break
        i, j = order[:-offset][same], order[offset:][same]
        distance = _POPCOUNT[(hashes[i] ^ hashes[j]).view(np.uint8)].reshape(-1, 8).sum(axis=-1)
        found.append(np.stack([i, j], axis=1)[distance <= max_distance])
    return found


def _close_pairs(hashes: np.ndarray, max_distance: int, pairs_per_block: int = PAIRS_PER_BLOCK) -> np.ndarray:
    """(K, 2) index pairs i < j of uint64 hashes within max_distance bits: the pairs of all-pairs
    comparison, from the candidates that share a band (see the module docstring). Where bands would be
    narrower than MIN_BAND_BITS, chance matches make candidates of nearly every pair: all pairs then."""
    if max_distance + 1 > HASH_BITS // MIN_BAND_BITS:
        return _all_close_pairs(hashes, max_distance, pairs_per_block)
    found = [np.empty((0, 2), dtype=np.intp)]
    for shift, width in _bands(max_distance):
        keys = (hashes >> np.uint64(shift)) & np.uint64((1 << width) - 1)
        found += _close_pairs_sharing_a_key(keys, hashes, max_distance, pairs_per_block)
    pairs = np.sort(np.concatenate(found).astype(np.intp), axis=1)  # i < j; a pair found in several bands once
    return np.unique(pairs, axis=0) if len(pairs) else pairs


def _near_duplicate_groups(infos: list[FileRecord], max_distance: int) -> list[list[int]]:
    """Files whose content differs but whose pHashes chain within max_distance bits."""
    by_content: dict[str, list[int]] = defaultdict(list)
    for index, info in enumerate(infos):
        if info.phash is not None:
            by_content[info.sha256].append(index)
    members = list(by_content.values())  # one node per distinct content: exact copies are not "near"
    hashes = np.array([infos[m[0]].phash for m in members], dtype=np.uint64)
    pairs = _close_pairs(hashes, max_distance)
    graph = coo_matrix((np.ones(len(pairs)), (pairs[:, 0], pairs[:, 1])), shape=(len(members), len(members)))
    _, component = connected_components(graph, directed=False)
    by_component = defaultdict(list)
    for node, label in enumerate(component):
        by_component[label].append(node)
    return [sorted(i for node in nodes for i in members[node]) for nodes in by_component.values() if len(nodes) > 1]


def _spread(values: list[int]) -> dict:
    return {"min": min(values), "median": statistics.median(values), "max": max(values)} if values else {}


def _image_stats(infos: list[FileRecord]) -> dict:
    readable = [info for info in infos if info.error is None]
    return {
        "width": _spread([info.width for info in readable]),
        "height": _spread([info.height for info in readable]),
        "modes": dict(Counter(info.mode for info in readable).most_common()),
        "formats": dict(Counter(info.format for info in readable).most_common()),
    }


def _balance(train_counts: dict[str, int]) -> dict:
    smallest = min(train_counts, key=train_counts.get)
    largest = max(train_counts, key=train_counts.get)
    # discover() guarantees every class has a training image, so the ratio is defined.
    ratio = round(train_counts[largest] / train_counts[smallest], 2)
    return {"imbalance_ratio": ratio, "smallest_class": smallest, "largest_class": largest}


def _leaked_images(groups: list[dict]) -> Counter:
    """Images per evaluation split that have an exact or near copy in train."""
    leaked = Counter()
    for group in filter(_spans_train, groups):
        leaked.update(split for split in group["splits"] if split != "train")
    return leaked


def _warnings(report: dict) -> list[str]:
    counts, train = report["counts"], report["counts"]["train"]
    small, large = report["smallest_class"], report["largest_class"]
    found = []
    if report["imbalance_ratio"] >= IMBALANCE_WARNING_RATIO:
        found.append(f"class '{small}' has {train[small]} training images, "
                     f"{report['imbalance_ratio']:g}x fewer than '{large}' ({train[large]})")
    for split in (s for s in counts if s != "train"):
        for name in (n for n, count in counts[split].items() if count == 0):
            found.append(f"class '{name}' has no {split} images: its {split} accuracy cannot be measured")
    groups = report["exact_duplicates"] + (report["near_duplicates"] or [])
    for split, n_leaked in sorted(_leaked_images(groups).items()):
        found.append(f"{n_leaked} {split} images also appear in train as exact or near copies (leakage): "
                     f"{split} accuracy will be optimistic")
    conflicting = sum(group["conflicting_labels"] for group in groups)
    if conflicting:
        found.append(f"{conflicting} duplicate groups are filed under more than one class (conflicting labels)")
    if report["corrupt"]:
        found.append(f"{len(report['corrupt'])} corrupt files will be skipped")
    return found


def _store(cache: DecodeCacheOptions | None) -> Path | None:
    """The decode cache directory, beside which the file hash store lives (data.hashes)."""
    return (cache or DecodeCacheOptions.from_environment()).directory


def find_leakage(dataset: LabelledImages, records: Mapping[Path, FileRecord] | None = None,
                 cache: DecodeCacheOptions | None = None) -> list[dict]:
    """Groups of byte-identical files shared between train and validation/test.

    Each group is shaped like the audit's 'exact_duplicates' ({'paths', 'splits', ...}). `records` are the
    files' hashes already in hand (training's decode pass computes them); the others come from the store,
    or a read of the file; the store is in `cache`'s directory (None: the environment's).
    """
    entries = _entries(dataset)
    known = records or {}
    missing = [sample.path for _, sample in entries if sample.path not in known]
    found = {**dict(zip(missing, file_records(missing, _store(cache), "checking for leakage"))), **known}
    digests = [found[sample.path].sha256 for _, sample in entries]
    digests = [None if digest == EMPTY_SHA256 else digest for digest in digests]
    groups = [_group(indices, entries, dataset.classes) for indices in _indices_by_key(digests)]
    return sorted(filter(_spans_train, groups), key=lambda group: group["paths"])


def audit(root, val_split: float = 0.2, seed: int = 0, near_duplicates: bool = True, hash_distance: int = 4) -> dict:
    """Audit the dataset under root; a JSON-serialisable report (see the module docstring).

    near_duplicates=False skips the near-duplicate search ('near_duplicates' is then None, not checked).
    """
    return audit_dataset(discover(root, val_split=val_split, seed=seed), near_duplicates, hash_distance)


def audit_dataset(dataset: LabelledImages, near_duplicates: bool = True, hash_distance: int = 4,
                  cache: DecodeCacheOptions | None = None) -> dict:
    """The audit of a dataset already discovered, split as it is: training audits its own split for the report.
    The files' hashes come from the store in `cache`'s directory (None: the environment's), else a read."""
    if not 0 <= hash_distance <= MAX_HASH_DISTANCE:
        raise ImgclsError(f"hash_distance must be between 0 and {MAX_HASH_DISTANCE} bits, got {hash_distance}; "
                          "4 finds resized or re-encoded copies")
    entries = _entries(dataset)
    log.info("auditing %d images under '%s'", len(entries), dataset.root)
    infos = file_records([sample.path for _, sample in entries], _store(cache), "auditing")
    exact = _indices_by_key([info.sha256 if info.error is None else None for info in infos])
    near = _near_duplicate_groups(infos, hash_distance) if near_duplicates else None
    table = dataset.counts()
    counts = {split: table[split] for split in _split_names(dataset)}
    report = {
        "root": str(dataset.root),
        "layout": "split-folders" if find_split_folders(dataset.root) else "class-folders",
        "classes": list(dataset.classes),
        "counts": counts,
        "total_images": len(entries),
        **_balance(counts["train"]),
        "image_stats": _image_stats(infos),
        "corrupt": [{"path": str(sample.path), "reason": info.error}
                    for (_, sample), info in zip(entries, infos) if info.error is not None],
        "exact_duplicates": sorted((_group(g, entries, dataset.classes) for g in exact), key=lambda g: g["paths"]),
        "near_duplicates": None if near is None else sorted(
            (_group(g, entries, dataset.classes) for g in near), key=lambda g: g["paths"]),
    }
    report["leakage"] = sum(map(_spans_train, report["exact_duplicates"] + (report["near_duplicates"] or [])))
    report["warnings"] = _warnings(report)
    return report
