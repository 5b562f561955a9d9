"""An exported bundle run by ONNX Runtime, called like the PyTorch model it came from.

The file's contract: input `image`, float32 (N, 3, H, W) RGB in [0, 1] at the bundle's img_size
(normalisation is inside the graph); output `logits`, (N, num_classes).
https://onnxruntime.ai/docs/api/python/api_summary.html
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import torch

from ..errors import ImgclsError
from ..extras import require
from ..models.bundle import BundleConfig, find_bundle, read_bundle_config

log = logging.getLogger(__name__)

ONNX_FILE = "model.onnx"  # beside model.safetensors, where `--engine onnx` looks for it
INPUT_NAME, OUTPUT_NAME = "image", "logits"


def _cpu_cores() -> int:
    """Cores this process may use (a container's CPU set), not the host's count."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _onnxruntime():
    """onnxruntime, imported on first use: the server imports this module (ONNX_FILE) with or without the onnx extra."""
    return require("onnx", "onnxruntime")


def _providers(device: torch.device) -> list:
    if device.type == "cuda":
        if "CUDAExecutionProvider" in _onnxruntime().get_available_providers():
            return [("CUDAExecutionProvider", {"device_id": device.index or 0}), "CPUExecutionProvider"]
        log.warning("onnxruntime has no CUDA provider here (it needs the onnxruntime-gpu package); running on CPU")
    return ["CPUExecutionProvider"]


class OnnxModel:
    """(B, 3, H, W) float tensor in [0, 1] -> (B, num_classes) logits on the CPU, like Classifier,
    so Predictor needs no engine-specific code."""

    def __init__(self, path: str | Path, device: str | torch.device = "cpu"):
        onnxruntime = _onnxruntime()
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = _cpu_cores()  # ORT's default counts physical cores only
        try:
            self.session = onnxruntime.InferenceSession(str(path), options, providers=_providers(torch.device(device)))
        except Exception as err:  # onnxruntime's errors share no base class below Exception
            raise ImgclsError(f"'{path}' does not load in onnxruntime ({str(err).splitlines()[0]}); "
                              "export it again with `imgcls export`") from None
        self.path = Path(path)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        # ORT reads dense NCHW: channels-last input (to_model_input's layout) is copied once here
        feed = np.ascontiguousarray(images.detach().cpu().numpy(), dtype=np.float32)
        (logits,) = self.session.run([OUTPUT_NAME], {INPUT_NAME: feed})
        return torch.from_numpy(logits)


def load_onnx(path: str | Path, device: str | torch.device = "cpu") -> tuple[OnnxModel, BundleConfig]:
    """The bundle's exported model and its config: the ONNX counterpart of load_bundle."""
    folder = find_bundle(path)
    config = read_bundle_config(folder)
    if not (folder / ONNX_FILE).is_file():
        raise ImgclsError(f"bundle '{folder}' has no {ONNX_FILE}; run `imgcls export {path}` first (or use --engine torch)")
    return OnnxModel(folder / ONNX_FILE, device), config
