"""Predictions from a saved bundle: per-class percentages, top-k, multi-label and 'unknown'."""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np
import torch

from ..data.cache import decode_cached, default_cache_dir
from ..data.images import ImageSource, UnreadableImage, decode_image, file_error
from ..data.loader import to_model_input
from ..errors import UsageError
from ..models.bundle import BundleConfig, find_bundle, load_bundle
from ..models.classifier import TTA_MODES, tta_logits
from ..runtime import resolve_device

UNKNOWN = "unknown"
# From this many paths (a folder, likely predicted again) decoding goes through the disk cache; fewer, such
# as one image per call in a loop, decode in memory rather than leave an entry per call.
CACHED_FROM_IMAGES = 16
ENGINES = ("torch", "onnx")  # onnx: the bundle's model.onnx (from `imgcls export`) run by onnxruntime


class Predictor:
    def __init__(self, model: Callable[[torch.Tensor], torch.Tensor], config: BundleConfig, device: torch.device):
        self.model, self.config, self.device = model, config, device  # model: (B, 3, H, W) in [0, 1] -> logits
        self.classes = config.classes
        self.tta: str = config.tta  # classifier.TTA_MODES
        self.bundle_dir: Path | None = None  # where look-alike indexes are stored

    @classmethod
    def load(cls, path: str | Path, device: str = "cpu", engine: str = "torch", tta: str | None = None) -> "Predictor":
        """tta: one of classifier.TTA_MODES; None uses the bundle's (its training recipe's) choice."""
        device = resolve_device(device)
        if engine == "torch":
            model, config = load_bundle(path, device)
        elif engine == "onnx":
            from ..export.session import load_onnx  # onnxruntime loads only for those who ask for it

            model, config = load_onnx(path, device)
        else:
            raise UsageError(f"unknown engine {engine!r}; use one of {', '.join(ENGINES)}")
        if tta is not None and tta not in TTA_MODES:
            raise UsageError(f"unknown test-time augmentation {tta!r}; use one of {', '.join(TTA_MODES)}")
        predictor = cls(model, config, device)
        predictor.tta, predictor.bundle_dir = tta or config.tta, find_bundle(path)
        return predictor

    @torch.inference_mode()
    def logits(self, pixels: np.ndarray, batch_size: int = 64) -> np.ndarray:
        """(N, H, W, 3) uint8 at the bundle's size -> (N, num_classes) raw logits, averaged over
        the test-time views (self.tta)."""
        outputs = []
        for start in range(0, len(pixels), batch_size):
            images = to_model_input(torch.as_tensor(pixels[start: start + batch_size]), self.device)
            outputs.append(tta_logits(self.model, images, self.tta).cpu().numpy())
        return np.concatenate(outputs) if outputs else np.zeros((0, len(self.classes)), np.float32)

    def scores(self, logits: np.ndarray, calibrated: bool = True) -> np.ndarray:
        """Sigmoid scores (multi-label), or softmax probabilities at the bundle's fitted temperature."""
        logits = torch.as_tensor(logits)
        if self.config.multi_label:
            return logits.sigmoid().numpy()
        return (logits / (self.config.temperature if calibrated else 1.0)).softmax(1).numpy()

    def probabilities(self, pixels: np.ndarray, batch_size: int = 64) -> np.ndarray:
        """(N, H, W, 3) uint8 at the bundle's size -> (N, num_classes) calibrated scores."""
        return self.scores(self.logits(pixels, batch_size))

    def predict(self, images: Sequence[ImageSource] | ImageSource, top_k: int = 5,
                unknown_below: float | None = None) -> list[dict]:
        """One result per input, in order: {'path', 'labels', 'predictions': [{'label', 'score'}], 'error'}.
        An unreadable input gets an 'error' and no predictions; the others are unaffected.
        `unknown_below` defaults to the bundle's calibrated threshold, if it has one."""
        if top_k < 1:
            raise UsageError(f"top_k must be at least 1, got {top_k}")
        if unknown_below is not None and not 0 <= unknown_below <= 1:
            raise UsageError(f"unknown_below is a probability in [0, 1], got {unknown_below}")
        if isinstance(images, (str, Path, bytes, np.ndarray)) or not isinstance(images, Iterable):
            images = [images]
        images = list(images)
        pixels, errors = self._decode(images)
        scores = iter(self.probabilities(pixels))
        results = []
        for image, error in zip(images, errors):
            decision = {"labels": [], "predictions": []} if error else self.result(next(scores), top_k, unknown_below)
            results.append({"path": str(image) if isinstance(image, (str, Path)) else None, **decision, "error": error})
        return results

    def _decode(self, images: list) -> tuple[np.ndarray, list[str | None]]:
        size = self.config.img_size
        if all(isinstance(image, (str, Path)) for image in images):
            cache_dir = default_cache_dir() if len(images) >= CACHED_FROM_IMAGES else None
            decoded = decode_cached([Path(p) for p in images], size, cache_dir)
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
            except UnreadableImage as err:
                errors.append(str(err))
            except OSError as err:  # a path, given among arrays or bytes
                errors.append(file_error(image, err))
        return (np.stack(rows) if rows else np.zeros((0, size, size, 3), np.uint8)), errors

    def result(self, scores: np.ndarray, top_k: int = 5, unknown_below: float | None = None) -> dict:
        """{'labels', 'predictions'} for one image's scores: the decision (top class, every class over
        its threshold, or 'unknown') and the top-k scores. The CLI, the API and the server all use this."""
        if unknown_below is None:
            unknown_below = self.config.unknown_below  # chosen by `imgcls calibrate-unknown`, if it ran
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
        return {"labels": labels, "predictions": [{"label": self.classes[i], "score": round(float(scores[i]), 6)} for i in shown]}
