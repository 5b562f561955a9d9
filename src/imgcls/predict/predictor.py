"""Predictions from a saved bundle: per-class percentages, top-k, multi-label and 'unknown'."""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np
import torch

from ..choices import ENGINES
from ..data.cache import decode_cached, default_cache_dir
from ..data.images import ImageSource, UnreadableImage, decode_image, file_error, split_batch
from ..data.loader import to_model_input
from ..errors import UsageError
from ..models.bundle import BundleConfig, find_bundle, load_bundle, outputs_folder
from ..models.classifier import TTA_MODES, tta_logits
from ..runtime import resolve_device

UNKNOWN = "unknown"
# From this many paths (a folder, likely predicted again) decoding goes through the disk cache; fewer, such
# as one image per call in a loop, decode in memory rather than leave an entry per call.
CACHED_FROM_IMAGES = 16
# Images per model call of predict and predict_chunks, counted from the start of the list given, an unreadable
# image keeping its place as a blank one: which images share a call can change a score's last digits (one image
# alone vs 64 together: 3.6e-6 apart in logits, CPU), so the same list gives the same scores however it is chunked.
BATCH_SIZE = 64
# Images per chunk of predict_chunks, a multiple of BATCH_SIZE: memory holds two chunks of pixels (the one the
# model runs on, the next one decoding), 154 MB each at 224 px. At least cache.PROCESS_MIN_IMAGES, so that a full
# chunk decodes in worker processes rather than in threads, which serialise on the GIL for small images.
CHUNK_IMAGES = 1024


def _check_options(top_k: int, unknown_below: float | None) -> None:
    if top_k < 1:
        raise UsageError(f"top_k must be at least 1, got {top_k}")
    if unknown_below is not None and not 0 <= unknown_below <= 1:
        raise UsageError(f"unknown_below is a probability in [0, 1], got {unknown_below}")


def _as_list(images) -> list:
    return split_batch(images)  # one entry per image: a batch array or tensor is several (data.images)


def _cache_for(images: list) -> Path | None:
    """From CACHED_FROM_IMAGES paths, the decode cache; fewer decode in memory (see CACHED_FROM_IMAGES)."""
    return default_cache_dir() if len(images) >= CACHED_FROM_IMAGES else None


class Predictor:
    def __init__(self, model: Callable[[torch.Tensor], torch.Tensor], config: BundleConfig, device: torch.device):
        self.model, self.config, self.device = model, config, device  # model: (B, 3, H, W) in [0, 1] -> logits
        self.classes = config.classes
        self.tta: str = config.tta  # classifier.TTA_MODES
        self.bundle_dir: Path | None = None  # where look-alike indexes are stored
        self.run_dir: Path | None = None  # where evaluations, maps and look-alikes go (bundle.outputs_folder)
        self.batch_size = BATCH_SIZE  # of predict and predict_chunks (see BATCH_SIZE)

    @classmethod
    def load(cls, path: str | Path, device: str = "cpu", engine: str = "torch", tta: str | None = None) -> "Predictor":
        """tta: one of classifier.TTA_MODES; None uses the bundle's (its training recipe's) choice."""
        device = resolve_device(device)
        bundle_dir = find_bundle(path)  # once: a Hub bundle asks the Hub for its revision
        if engine == "torch":
            model, config = load_bundle(bundle_dir, device)
        elif engine in ("onnx", "onnx-int8"):
            from ..export.session import load_onnx  # onnxruntime loads only for those who ask for it

            model, config = load_onnx(bundle_dir, device, int8=engine == "onnx-int8")
        else:
            raise UsageError(f"unknown engine {engine!r}; use one of {', '.join(ENGINES)}")
        if tta is not None and tta not in TTA_MODES:
            raise UsageError(f"unknown test-time augmentation {tta!r}; use one of {', '.join(TTA_MODES)}")
        predictor = cls(model, config, device)
        predictor.tta, predictor.bundle_dir, predictor.run_dir = tta or config.tta, bundle_dir, outputs_folder(path)
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
        `unknown_below` defaults to the bundle's calibrated threshold, if it has one.
        Every image is decoded into memory at once; predict_chunks keeps memory bounded for any number."""
        _check_options(top_k, unknown_below)
        images = _as_list(images)
        return self._predict_decoded(images, *self._decode(images, _cache_for(images)), top_k, unknown_below)

    def predict_chunks(self, images: Sequence[ImageSource], top_k: int = 5, unknown_below: float | None = None,
                       chunk: int | None = None) -> Iterator[list[dict]]:
        """predict's results, the same ones in the same order, a list per `chunk` images (default CHUNK_IMAGES,
        rounded up to whole batches of self.batch_size) as each is ready. The next chunk decodes on a background
        thread while the model runs on this one, so memory holds two chunks whatever the number of images.
        Inputs that fit in one chunk use the decode cache as predict does; more stream past it: a pass over a
        million photos would otherwise write them all to disk and push every other entry out of the cache's budget."""
        _check_options(top_k, unknown_below)  # here, not at the first next(): a generator would raise late
        chunk = CHUNK_IMAGES if chunk is None else chunk
        if chunk < 1:
            raise UsageError(f"chunk must be at least 1 image, got {chunk}")
        chunk = -(-chunk // self.batch_size) * self.batch_size
        images = _as_list(images)
        chunks = [images[start: start + chunk] for start in range(0, len(images), chunk)]
        return self._chunks(chunks, _cache_for(images) if len(chunks) == 1 else None, top_k, unknown_below)

    def _chunks(self, chunks: list[list], cache_dir: Path | None, top_k: int,
                unknown_below: float | None) -> Iterator[list[dict]]:
        if not chunks:
            return
        with ThreadPoolExecutor(1, thread_name_prefix="imgcls-decode") as decoder:
            upcoming = decoder.submit(self._decode, chunks[0], cache_dir)
            for index, part in enumerate(chunks):
                pixels, errors = upcoming.result()
                if index + 1 < len(chunks):
                    upcoming = decoder.submit(self._decode, chunks[index + 1], cache_dir)
                yield self._predict_decoded(part, pixels, errors, top_k, unknown_below)

    def predict_stream(self, images: Sequence[ImageSource], top_k: int = 5, unknown_below: float | None = None,
                       chunk: int | None = None) -> Iterator[dict]:
        """predict_chunks, one result at a time."""
        return (result for results in self.predict_chunks(images, top_k, unknown_below, chunk) for result in results)

    def _predict_decoded(self, images: list, pixels: np.ndarray, errors: list[str | None], top_k: int,
                         unknown_below: float | None) -> list[dict]:
        """Results for `images` from the readable ones' pixels, the unreadable ones in their places as blanks
        (see BATCH_SIZE)."""
        if len(pixels) < len(images):
            readable, pixels = pixels, np.zeros((len(images), *pixels.shape[1:]), np.uint8)
            pixels[[index for index, error in enumerate(errors) if error is None]] = readable
        scores = self.probabilities(pixels, self.batch_size)
        results = []
        for image, error, image_scores in zip(images, errors, scores):
            decision = {"labels": [], "predictions": []} if error else self.result(image_scores, top_k, unknown_below)
            results.append({"path": str(image) if isinstance(image, (str, Path)) else None, **decision, "error": error})
        return results

    def _decode(self, images: list, cache_dir: Path | None) -> tuple[np.ndarray, list[str | None]]:
        size = self.config.img_size
        if all(isinstance(image, (str, Path)) for image in images):
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
