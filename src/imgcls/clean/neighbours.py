"""Nearest neighbours in feature space: the look-alikes shown beside a suspect, and a second opinion on
its label (what its neighbours are labelled).

Features are L2-normalised and compared by cosine similarity, in blocks, so 10k images need
~40 MB at a time rather than a 400 MB similarity matrix.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

BLOCK_ROWS = 1024
NEIGHBOURS = 10  # k of the kNN vote


@dataclass
class Neighbours:
    indices: np.ndarray  # (N, k) nearest other images, nearest first
    similarities: np.ndarray  # (N, k) their cosine similarities


def nearest_neighbours(features: torch.Tensor, k: int = NEIGHBOURS) -> Neighbours:
    """The k most similar other images of each image (itself excluded)."""
    unit = torch.nn.functional.normalize(features.float(), dim=1)
    k = min(k, len(unit) - 1)
    indices, similarities = [], []
    for start in range(0, len(unit), BLOCK_ROWS):
        block = unit[start:start + BLOCK_ROWS] @ unit.T  # (rows, N)
        block[torch.arange(len(block)), torch.arange(start, start + len(block))] = -2  # not its own neighbour
        top = block.topk(k, dim=1)
        indices.append(top.indices)
        similarities.append(top.values)
    return Neighbours(torch.cat(indices).numpy(), torch.cat(similarities).numpy())


def neighbour_vote(neighbours: Neighbours, labels: np.ndarray, classes: int) -> np.ndarray:
    """(N, C) class probabilities from the labels of each image's neighbours, weighted by similarity
    (leave-one-out by construction: an image never votes for itself)."""
    weights = np.clip(neighbours.similarities, 0, None) + 1e-6
    votes = np.zeros((len(labels), classes))
    np.add.at(votes, (np.repeat(np.arange(len(labels)), weights.shape[1]), labels[neighbours.indices].ravel()),
              weights.ravel())
    return votes / votes.sum(1, keepdims=True)


def lookalikes(features: torch.Tensor, query: int, candidates: np.ndarray, count: int) -> list[int]:
    """The `count` images among `candidates` most similar to image `query` (itself excluded)."""
    candidates = candidates[candidates != query]
    if not len(candidates) or count <= 0:
        return []
    unit = torch.nn.functional.normalize(features.float(), dim=1)
    similarity = unit[torch.as_tensor(candidates)] @ unit[query]
    best = similarity.topk(min(count, len(candidates))).indices.numpy()
    return candidates[best].tolist()
