"""The model behind the web layer: decoding uploads, batched predictions, explanations and look-alikes.

Nothing here knows about HTTP. The model is loaded once (per worker process) and every use of it
runs in one dedicated thread: explanations hook into the network's layers, and a prediction
batch running at the same moment would otherwise pass through those hooks. Images are decoded in
a pool of `decode_threads` threads, after their headers show they are within `max_megapixels`:
decoding is where a request's memory goes, so this pool is what bounds the server's.
"""
from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from ..choices import ENGINES
from ..data.images import UnreadableImage, decode_image, open_image
from ..errors import ImgclsError, UsageError
from ..extras import installed
from ..explain.maps import EXPLAIN_METHODS, Explanation, check_method, explain
from ..export.session import INT8_ONNX_FILE, ONNX_FILE
from ..predict.predictor import Predictor
from .batching import Backend, DynamicBatcher
from .config import ServeConfig
from .lookalikes import LookAlikeIndex
from .uploads import Upload

# Activation maximisation optimises images for seconds (tiny CNN) to minutes (ResNet): it would hold
# the model thread that every prediction waits for. `imgcls explain --method filters` still has it.
NOT_SERVED = {"filters": "it optimises images for seconds to minutes; use `imgcls explain --method filters`"}
SERVED_METHODS = tuple(m for m in EXPLAIN_METHODS if m not in NOT_SERVED)

log = logging.getLogger(__name__)


class TooManyPixels(ImgclsError):
    """An upload whose header declares more pixels than the server decodes."""


def _automatic_engine(bundle_dir: Path) -> str:
    """The fastest export the bundle has: the int8 model (checked against fp32 when written), else the fp32
    one, else PyTorch; PyTorch too when onnxruntime is not installed, said in the log."""
    exported = [(engine, file) for engine, file in (("onnx-int8", INT8_ONNX_FILE), ("onnx", ONNX_FILE))
                if (bundle_dir / file).is_file()]
    if not exported:
        return "torch"
    engine, file = exported[0]
    if not installed("onnxruntime"):
        log.warning("predictions run on PyTorch: %s needs the onnx extra (pip install 'imgcls[onnx]')", file)
        return "torch"
    return engine


def load_models(bundle: str | Path, device: str = "auto", engine: str = "auto") -> tuple[Predictor, Predictor]:
    """The PyTorch predictor (explanations need its gradients) and the one that runs predictions: `engine`'s,
    and with 'auto' ONNX Runtime on the int8 export, else the fp32 one, when the bundle has one."""
    if engine not in ("auto", *ENGINES):
        raise UsageError(f"unknown engine {engine!r}; use auto, {', '.join(ENGINES)}")
    predictor = Predictor.load(bundle, device)
    if engine == "auto":
        engine = _automatic_engine(predictor.bundle_dir)
    if engine == "torch":
        return predictor, predictor
    log.info("predictions run on ONNX Runtime (%s)", predictor.bundle_dir / (INT8_ONNX_FILE if engine == "onnx-int8" else ONNX_FILE))
    return predictor, Predictor.load(bundle, device, engine=engine)


class ModelService:
    """Use as `async with ModelService(...) as service:` inside the server's event loop.

    `backend` runs the batched predictions (the predictor itself, or its ONNX Runtime twin);
    `predictor` is the PyTorch model that explanations and look-alikes need. Look-alikes come from
    the run's training images (or `data_dir`); without them the rest still works and
    `look_alikes_note` says why they are missing.
    """

    def __init__(self, predictor: Predictor, config: ServeConfig, backend: Backend | None = None,
                 data_dir: str | Path | None = None):
        self.predictor, self.config, self.backend = predictor, config, backend or predictor
        self.data_dir = data_dir
        self.look_alikes: LookAlikeIndex | None = None
        self.look_alikes_note: str | None = None
        self.batcher: DynamicBatcher | None = None
        self._model_thread: ThreadPoolExecutor | None = None
        self._decode_threads: ThreadPoolExecutor | None = None

    async def __aenter__(self) -> "ModelService":
        self._model_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="imgcls-model")
        self._decode_threads = ThreadPoolExecutor(self.config.decode_threads, thread_name_prefix="imgcls-decode")
        self.batcher = DynamicBatcher(self.backend, self._model_thread, self.config.max_batch, self.config.batch_window_ms)
        await self.batcher.__aenter__()
        await self._on_model_thread(self._load_look_alikes)
        return self

    async def __aexit__(self, *exc) -> None:
        await self.batcher.__aexit__(*exc)
        self._model_thread.shutdown(wait=True)
        self._decode_threads.shutdown(wait=True)

    def _load_look_alikes(self) -> None:
        try:
            self.look_alikes = LookAlikeIndex.load(self.predictor, self.data_dir, self.config.thumbnail_px)
        except (ImgclsError, OSError) as err:  # OSError: a read-only bundle folder cannot keep a new index
            self.look_alikes_note = f"no look-alikes: {err}"
            log.warning("%s", self.look_alikes_note)

    async def decode(self, upload: Upload) -> np.ndarray:
        """(img_size, img_size, 3) uint8; raises TooManyPixels or UnreadableImage."""
        await self._decoding(self._check_pixels, [upload])
        return await self._decoding(decode_image, upload.data, self.predictor.config.img_size)

    def _check_pixels(self, uploads: list[Upload]) -> None:
        """Every upload's size from its header alone, so that one oversized image refuses the request
        before any of it is decoded."""
        for upload in uploads:
            try:
                with open_image(upload.data) as image:
                    width, height = image.size
            except UnreadableImage:
                continue  # decoding it says why, for this upload alone
            if width * height > self.config.max_pixels:
                raise TooManyPixels(f"{upload.name!r} is {width}x{height} = {width * height / 1e6:.1f} Mpx, over the "
                                    f"{self.config.max_megapixels:g} Mpx limit per image; send a smaller image or "
                                    "start the server with a larger --max-megapixels")

    async def predict(self, uploads: list[Upload], top_k: int, unknown_below: float | None) -> list[dict]:
        """One result per upload, in order: {'filename', 'labels', 'predictions', 'error'}, as `imgcls predict`.
        Raises TooManyPixels, for the whole request, when any upload is over the limit."""
        await self._decoding(self._check_pixels, uploads)
        size = self.predictor.config.img_size
        decoded = await asyncio.gather(*(self._decoding(decode_image, u.data, size) for u in uploads), return_exceptions=True)
        for outcome in decoded:
            if isinstance(outcome, BaseException) and not isinstance(outcome, UnreadableImage):
                raise outcome
        good = [pixels for pixels in decoded if isinstance(pixels, np.ndarray)]
        scores = iter(await self.batcher(np.stack(good)) if good else [])
        results = []
        for upload, outcome in zip(uploads, decoded):
            failed = isinstance(outcome, UnreadableImage)
            decision = {"labels": [], "predictions": []} if failed else self.predictor.result(next(scores), top_k, unknown_below)
            results.append({"filename": upload.name, **decision, "error": str(outcome) if failed else None})
        return results

    async def explain(self, upload: Upload, method: str, class_name: str | None) -> list[Explanation]:
        """Explanations of one image: the named class, else the top class (multi-label: each label that is on)."""
        check_method(method)
        if method in NOT_SERVED:
            raise UsageError(f"method '{method}' is not served: {NOT_SERVED[method]}")
        pixels = await self.decode(upload)
        return await self._on_model_thread(explain, self.predictor, pixels, method, class_name)

    async def similar(self, upload: Upload, k: int) -> list[dict]:
        """The k training images most like the upload, best first: {'path', 'label', 'score', 'thumbnail'},
        with `path` relative to the training folder: the server's own folders are none of the client's business."""
        pixels = await self.decode(upload)
        matches = await self._on_model_thread(self.look_alikes.nearest, self.predictor, np.stack([pixels]), k)
        thumbnails = await asyncio.gather(*(self._decoding(self.look_alikes.thumbnail, m["path"]) for m in matches))
        return [{**m, "thumbnail": thumbnail} for m, thumbnail in zip(matches, thumbnails)]

    async def _on_model_thread(self, function, *args):
        return await asyncio.get_running_loop().run_in_executor(self._model_thread, function, *args)

    async def _decoding(self, function, *args):
        return await asyncio.get_running_loop().run_in_executor(self._decode_threads, function, *args)
