"""Look-alikes for the server: the training images' index held in memory, and small thumbnails of them.

`explain.similar.find_similar` re-reads its index and re-walks the training folder (to see that it
is unchanged) on every call. A server loads the index once at start-up and answers each query
with one embedding and one matrix product. Clients see each training image by its path relative to
the training folder, never by where that folder is on the server.
"""
from __future__ import annotations

import base64
import io
import os
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image

from ..data.images import UnreadableImage, decode_image
from ..explain.similar import embed, load_index, nearest

THUMBNAILS_KEPT = 1024  # ~3 kB each: the same training images come back for similar queries
THUMBNAIL_QUALITY = 85


class LookAlikeIndex:
    def __init__(self, embeddings: np.ndarray, files: list[str], labels: list[str], root: str | Path,
                 thumbnail_px: int = 96):
        self.embeddings = embeddings  # (N, D) unit vectors of the training images
        # relpath, not relative_to: a file outside the folder (an older index's CSV row) becomes '../x.jpg', still not absolute
        self.paths = [Path(os.path.relpath(file, root)).as_posix() for file in files]
        self.labels = labels  # ';'-joined for multi-label bundles
        self._files = dict(zip(self.paths, files))
        self.thumbnail_px = thumbnail_px
        # path -> JPEG data URL (None when unreadable now), cached per index rather than per process
        self.thumbnail = lru_cache(maxsize=THUMBNAILS_KEPT)(self._thumbnail)

    @classmethod
    def load(cls, predictor, data_dir: str | Path | None = None, thumbnail_px: int = 96) -> "LookAlikeIndex":
        """Built from the run's training data (or `data_dir`) on first use and stored beside the
        bundle by explain.similar, else read back from there."""
        embeddings, meta = load_index(predictor, predictor.bundle_dir, data_dir)
        return cls(embeddings, meta["paths"], meta["labels"], meta["data_dir"], thumbnail_px)

    def nearest(self, predictor, pixels: np.ndarray, k: int) -> list[dict]:
        """(1, H, W, 3) uint8 -> the k most similar training images, best first: {'path', 'label', 'score'}
        with path relative to the training folder and score the cosine similarity. Runs the model: call it
        on the model's thread."""
        return nearest(embed(predictor, pixels), self.embeddings, self.paths, self.labels, k)[0]

    def _thumbnail(self, path: str) -> str | None:
        """A JPEG data URL of the training image at `path` (as `nearest` names it)."""
        try:
            image = Image.fromarray(decode_image(self._files[path]))
        except (UnreadableImage, OSError):  # moved or damaged since the index was built
            return None
        image.thumbnail((self.thumbnail_px, self.thumbnail_px))
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=THUMBNAIL_QUALITY)
        return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")
