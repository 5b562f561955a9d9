"""An exported bundle run by ONNX Runtime, called like the PyTorch model it came from.

The file's contract: input `image`, float32 (N, 3, H, W) RGB in [0, 1] at the bundle's img_size
(normalisation is inside the graph); output `logits`, (N, num_classes).
https://onnxruntime.ai/docs/api/python/api_summary.html
"""
from __future__ import annotations

import logging
import os
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from ..errors import ImgclsError
from ..extras import require
from ..models.bundle import BundleConfig, find_bundle, read_bundle_config

log = logging.getLogger(__name__)

ONNX_FILE = "model.onnx"  # beside model.safetensors, where `--engine onnx` looks for it
INT8_SUFFIX = ".int8.onnx"  # model.onnx -> model.int8.onnx (`--engine onnx-int8`), classifier.onnx -> classifier.int8.onnx
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


def int8_path(fp32_path: str | Path) -> Path:
    """Where the int8 model quantised from the fp32 export at `fp32_path` is written: beside it."""
    fp32_path = Path(fp32_path)
    return fp32_path.with_name(fp32_path.name.removesuffix(".onnx") + INT8_SUFFIX)


INT8_ONNX_FILE = int8_path(ONNX_FILE).name


def load_onnx(path: str | Path, device: str | torch.device = "cpu", int8: bool = False) -> tuple[OnnxModel, BundleConfig]:
    """The bundle's exported model and its config: the ONNX counterpart of load_bundle. With `int8`, the
    quantised model, and the config with the temperature fitted on its logits (export.quantize)."""
    folder = find_bundle(path)
    config = read_bundle_config(folder)
    name, flag = (INT8_ONNX_FILE, " --int8") if int8 else (ONNX_FILE, "")
    if not (folder / name).is_file():
        raise ImgclsError(f"bundle '{folder}' has no {name}; run `imgcls export {path}{flag}` first (or use --engine torch)")
    if int8:
        if not config.int8_export:
            raise ImgclsError(f"bundle '{folder}' has {name} but no int8_export record in its config.json; "
                              f"run `imgcls export {path} --int8` again")
        config = replace(config, temperature=config.int8_export["temperature"])
    return OnnxModel(folder / name, device), config
