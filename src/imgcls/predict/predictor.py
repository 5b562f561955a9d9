"""Predictions from a saved bundle: per-class percentages, top-k, multi-label and 'unknown'."""
from __future__ import annotations

from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import torch

from ..data.cache import decode_all
from ..data.images import ImageSource, UnreadableImage, decode_image
from ..data.loader import to_model_input
from ..errors import UsageError
from ..models.bundle import BundleConfig, load_bundle
from ..runtime import resolve_device

UNKNOWN = "unknown"


class Predictor:
    def __init__(self, model: torch.nn.Module, config: BundleConfig, device: torch.device):
        self.model, self.config, self.device = model, config, device
        self.classes = config.classes

    @classmethod
    def load(cls, path: str | Path, device: str = "cpu") -> "Predictor":
        device = resolve_device(device)
        model, config = load_bundle(path, device)
        return cls(model, config, device)

    @torch.inference_mode()
    def probabilities(self, pixels: np.ndarray, batch_size: int = 64) -> np.ndarray:
        """(N, H, W, 3) uint8 at the bundle's size -> (N, num_classes) softmax or sigmoid scores."""
        outputs = []
        for start in range(0, len(pixels), batch_size):
            logits = self.model(to_model_input(torch.as_tensor(pixels[start: start + batch_size]), self.device)).float()
            outputs.append((logits.sigmoid() if self.config.multi_label else logits.softmax(1)).cpu().numpy())
        return np.concatenate(outputs) if outputs else np.zeros((0, len(self.classes)), np.float32)

    def predict(self, images: Sequence[ImageSource] | ImageSource, top_k: int = 5,
                unknown_below: float | None = None) -> list[dict]:
        """One result per input, in order: {'path', 'labels', 'predictions': [{'label', 'score'}], 'error'}.
        An unreadable input gets an 'error' and no predictions; the others are unaffected."""
        if top_k < 1:
            raise UsageError(f"top_k must be at least 1, got {top_k}")
        if unknown_below is not None and not 0 <= unknown_below <= 1:
            raise UsageError(f"unknown_below is a probability in [0, 1], got {unknown_below}")
        if isinstance(images, (str, Path, bytes, np.ndarray)) or not isinstance(images, Iterable):
            images = [images]
        images = list(images)
        pixels, errors = self._decode(images)
        scores = iter(self.probabilities(pixels))
        return [
            {"path": str(image) if isinstance(image, (str, Path)) else None, "labels": [], "predictions": [], "error": error}
            if error else self._result(image, next(scores), top_k, unknown_below)
            for image, error in zip(images, errors)
        ]

    def _decode(self, images: list) -> tuple[np.ndarray, list[str | None]]:
        size = self.config.img_size
        if all(isinstance(image, (str, Path)) for image in images):
            decoded = decode_all([Path(p) for p in images], size)
            errors: list[str | None] = [None] * len(images)
            failed_indices = sorted(set(range(len(images))) - set(decoded.kept))
            for index, (_, reason) in zip(failed_indices, decoded.failed):
                errors[index] = reason
            return decoded.pixels, errors
        rows, errors = [], []
        for image in images:
            try:
                rows.append(decode_image(image, size))
                errors.append(None)
            except (UnreadableImage, OSError) as err:
                errors.append(str(err))
        return (np.stack(rows) if rows else np.zeros((0, size, size, 3), np.uint8)), errors

    def _result(self, image, scores: np.ndarray, top_k: int, unknown_below: float | None) -> dict:
        order = np.argsort(-scores, kind="stable")
        if self.config.multi_label:
            thresholds = np.asarray(self.config.thresholds or [0.5] * len(self.classes))
            labels = [self.classes[i] for i in order if scores[i] >= thresholds[i]]
            shown = order[: max(top_k, len(labels))]
        else:
            labels = [self.classes[order[0]]]
            shown = order[:top_k]
        if not labels or (unknown_below is not None and scores[order[0]] < unknown_below):
            labels = [UNKNOWN]  # nothing fits: below the user's bar, or no class over its threshold
        return {
            "path": str(image) if isinstance(image, (str, Path)) else None,
            "labels": labels,
            "predictions": [{"label": self.classes[i], "score": round(float(scores[i]), 6)} for i in shown],
            "error": None,
        }
