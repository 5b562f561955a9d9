"""Look-alikes: the training images nearest to a query in the model's own embedding space.

The embedding is what the classifier reads, the penultimate features: timm's
`forward_head(pre_logits=True)` (Classifier.pre_logits), the same for the built-in CNNs and every timm
model. Vectors are L2-normalised and compared by cosine similarity.

The index of the training images is built once and stored beside the bundle:
  BUNDLE/similar_index.safetensors  'embeddings' (N, D) float32
  BUNDLE/similar_index.json         paths, labels, data folder and its fingerprint
It is rebuilt when the data folder or its fingerprint changes (a retrained bundle is a new
folder, so its index starts afresh).
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import torch
from safetensors.numpy import load_file, save_file
from torch import nn

from ..data.cache import decode_all, decode_cached
from ..data.folders import LabelledImages
from ..data.loader import to_model_input
from ..errors import UsageError
from ..fileio import atomic_write, atomic_write_bytes, fresh_folder
from ..rundir import RunDir
from .maps import decode_inputs, require_torch_model
from .overlay import tiles, to_png

log = logging.getLogger(__name__)

INDEX_FILE, INDEX_META = "similar_index.safetensors", "similar_index.json"
BATCH_SIZE = 64


@torch.inference_mode()
def embed(predictor, pixels: np.ndarray) -> np.ndarray:
    """(N, H, W, 3) uint8 -> (N, D) float32 unit vectors: the model's pre-logits features."""
    require_torch_model(predictor)
    features = [predictor.model.pre_logits(to_model_input(torch.as_tensor(pixels[start: start + BATCH_SIZE]),
                                                          predictor.device)).flatten(1).float()
                for start in range(0, len(pixels), BATCH_SIZE)]
    return nn.functional.normalize(torch.cat(features), dim=1).cpu().numpy()


def _build(predictor, dataset: LabelledImages, bundle_dir: Path) -> tuple[np.ndarray, dict]:
    samples = dataset.splits["train"]
    log.info("indexing %d training images of '%s' for look-alikes", len(samples), dataset.root)
    decoded = decode_cached([s.path for s in samples], predictor.config.img_size, predictor.decode_cache)
    kept = [samples[i] for i in decoded.kept]
    meta = {"data_dir": str(dataset.root), "fingerprint": dataset.fingerprint(),
            "paths": [str(s.path) for s in kept],
            "labels": [";".join(dataset.classes[i] for i in s.labels) for s in kept]}
    embeddings = embed(predictor, decoded.pixels)
    atomic_write(bundle_dir / INDEX_FILE, lambda tmp: save_file({"embeddings": embeddings}, tmp))
    atomic_write_bytes(bundle_dir / INDEX_META, json.dumps(meta, ensure_ascii=False).encode())
    return embeddings, meta


def load_index(predictor, bundle_dir: str | Path, data_dir=None) -> tuple[np.ndarray, dict]:
    """(N, D) embeddings of the training images and their {'paths', 'labels', ...}, built if missing or stale."""
    bundle_dir = Path(bundle_dir)
    dataset = RunDir(bundle_dir.parent).dataset(data_dir)
    meta_path = bundle_dir / INDEX_META
    if meta_path.is_file() and (bundle_dir / INDEX_FILE).is_file():
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        if meta.get("data_dir") == str(dataset.root) and meta.get("fingerprint") == dataset.fingerprint():
            return load_file(str(bundle_dir / INDEX_FILE))["embeddings"], meta
        log.info("training data changed since the look-alike index was built: rebuilding it")
    return _build(predictor, dataset, bundle_dir)


def find_similar(predictor, images: list, k: int = 5, data_dir=None, bundle_dir=None) -> list[list[dict]]:
    """Per image, the k nearest training images, best first: [{'path', 'label', 'score'}] with
    score the cosine similarity. The index lives in `bundle_dir` (default: the predictor's bundle)."""
    if k < 1:
        raise UsageError(f"k must be at least 1, got {k}")
    bundle_dir = bundle_dir or getattr(predictor, "bundle_dir", None)
    if bundle_dir is None:
        raise UsageError("find_similar needs the bundle folder to keep its index in; pass bundle_dir=")
    embeddings, meta = load_index(predictor, bundle_dir, data_dir)
    pixels, _ = decode_inputs(list(images), predictor.config.img_size)
    return nearest(embed(predictor, pixels), embeddings, meta["paths"], meta["labels"], k)


def nearest(queries: np.ndarray, embeddings: np.ndarray, paths: list[str], labels: list[str], k: int) -> list[list[dict]]:
    """(Q, D) and (N, D) unit vectors -> per query the k most similar index entries, best first,
    scored by cosine similarity. Shared by `find_similar` and the server's in-memory index."""
    similarity = queries @ embeddings.T  # (Q, N)
    order = np.argsort(-similarity, axis=1, kind="stable")[:, :k]
    return [[{"path": paths[j], "label": labels[j], "score": round(float(row[j]), 6)} for j in best]
            for row, best in zip(similarity, order)]


def similar_panel(query: np.ndarray, matches: list[dict], size: int) -> np.ndarray:
    """The query, then its matches with their labels and similarity, side by side."""
    found = decode_all([Path(m["path"]) for m in matches], size)
    items = [(query, "query")] + [(found.pixels[row], f"{matches[i]['label']} ({matches[i]['score']:.3f})")
                                  for row, i in enumerate(found.kept)]
    return tiles(items, "nearest training images (cosine similarity)")


def save_similar(predictor, images: list, results: list[list[dict]], out_dir: str | Path) -> list[Path]:
    """Write one side-by-side PNG per query and similar.json (the results); returns the PNG paths.
    An `out_dir` that holds files already is kept: these go to the next free name, out_dir-2, ... (fileio.fresh_folder)."""
    out_dir = fresh_folder(out_dir)
    pixels, paths = decode_inputs(list(images), predictor.config.img_size)
    written, used = [], set()
    for index, (query, path, matches) in enumerate(zip(pixels, paths, results)):
        name = f"{Path(path).stem if path else f'image{index}'}_similar"
        name = f"{name}-{index}" if name in used else name
        used.add(name)
        written.append(atomic_write_bytes(out_dir / f"{name}.png", to_png(similar_panel(query, matches, predictor.config.img_size))))
    report = [{"path": path, "similar": matches} for path, matches in zip(paths, results)]
    atomic_write_bytes(out_dir / "similar.json", json.dumps(report, indent=2, ensure_ascii=False).encode())
    return written
