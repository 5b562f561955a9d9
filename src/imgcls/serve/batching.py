"""Dynamic batching: requests that arrive together share one model call.

A model call on a batch of 16 costs far less than 16 calls on one image (the weights are read
once, the matrix products are wider), so under load throughput approaches batch inference.
Requests wait in an asyncio queue; one worker task takes the first, waits a few milliseconds for
others to join (TF Serving's `batch_timeout_micros`, Triton's `max_queue_delay`), and runs the
whole batch in the model's own thread so the event loop keeps accepting uploads meanwhile.
While that call runs the next requests queue up, so a busy server batches without waiting at all.
"""
from __future__ import annotations

import asyncio
import logging
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Protocol

import numpy as np

log = logging.getLogger(__name__)


class Backend(Protocol):
    """What the batcher runs: a Predictor, or any runtime with the same method (ONNX Runtime later)."""

    def probabilities(self, pixels: np.ndarray) -> np.ndarray:
        """(N, H, W, 3) uint8 at the bundle's size -> (N, num_classes) scores."""


@dataclass
class _Pending:
    pixels: np.ndarray  # (n, H, W, 3) uint8: one request's images, never split across batches
    future: asyncio.Future


class DynamicBatcher:
    """`await batcher(pixels)` returns that request's rows of `backend.probabilities` over a shared batch.

    Use as `async with DynamicBatcher(...) as batcher:` inside a running event loop. A batch holds up
    to `max_batch` images, or more when one request alone brings more; a request is never split.
    """

    def __init__(self, backend: Backend, executor: Executor, max_batch: int, window_ms: float):
        self.backend, self.executor = backend, executor
        self.max_batch, self.window_s = max_batch, window_ms / 1000
        self.batch_sizes: list[int] = []  # images per model call, for tests and the benchmark
        self._queue: asyncio.Queue[_Pending] | None = None
        self._worker: asyncio.Task | None = None

    async def __aenter__(self) -> "DynamicBatcher":
        self._queue = asyncio.Queue()
        self._worker = asyncio.create_task(self._run(), name="imgcls-batcher")
        return self

    async def __aexit__(self, *exc) -> None:
        self._worker.cancel()
        await asyncio.gather(self._worker, return_exceptions=True)
        while not self._queue.empty():  # nobody will answer these now
            self._queue.get_nowait().future.cancel()

    async def __call__(self, pixels: np.ndarray) -> np.ndarray:
        if self._queue is None:
            raise RuntimeError("DynamicBatcher used outside `async with`")
        future = asyncio.get_running_loop().create_future()
        await self._queue.put(_Pending(pixels, future))
        return await future

    async def _run(self) -> None:
        while True:
            batch = await self._collect()
            await self._infer(batch)

    async def _collect(self) -> list[_Pending]:
        batch = [await self._queue.get()]
        # Sleeping (rather than a timed get per item) keeps the window one number; it is skipped
        # when enough requests are already waiting, as they are whenever the server is busy.
        if self.max_batch > 1 and self.window_s > 0 and len(batch[0].pixels) + self._queue.qsize() < self.max_batch:
            await asyncio.sleep(self.window_s)
        size = len(batch[0].pixels)
        while size < self.max_batch and not self._queue.empty():
            batch.append(self._queue.get_nowait())
            size += len(batch[-1].pixels)
        return batch

    async def _infer(self, batch: list[_Pending]) -> None:
        pixels = np.concatenate([item.pixels for item in batch])
        self.batch_sizes.append(len(pixels))
        try:
            scores = await asyncio.get_running_loop().run_in_executor(self.executor, self.backend.probabilities, pixels)
        except Exception as err:  # one bad batch fails its requests, never the worker
            log.exception("model call on a batch of %d images failed", len(pixels))
            for item in batch:
                if not item.future.done():
                    item.future.set_exception(err)
            return
        start = 0
        for item in batch:
            if not item.future.done():  # a client that went away leaves a cancelled future
                item.future.set_result(scores[start: start + len(item.pixels)])
            start += len(item.pixels)
