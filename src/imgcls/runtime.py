"""Where computation runs: the device choice and CPU threads, decided once per command.

torch is imported inside the functions: train's options import PRECISIONS from here, and `imgcls --help`
must not wait for torch (seconds on a small CPU)."""
from __future__ import annotations

import contextlib
import ctypes
import sys
from typing import TYPE_CHECKING

from .errors import UsageError

if TYPE_CHECKING:
    import torch


def resolve_device(name: str = "auto") -> torch.device:
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UsageError(f"unknown device '{name}'; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"device '{name}' asked for, but no CUDA GPU is available; use --device cpu")
    return device


PRECISIONS = ("auto", "fp32", "bf16")


def _cpu_has_native_bf16() -> bool:
    """AVX512-BF16 or AMX: bf16 convolutions ~1.7x faster than fp32 (measured on Zen 4, cnn-bn and
    speedrun-cnn training). Without them oneDNN emulates bf16 and it is slower than fp32."""
    return _cpu_supports("_is_avx512_bf16_supported", "_is_amx_tile_supported")


def cpu_has_vnni() -> bool:
    """AVX512-VNNI: int8 dot products in one instruction, where ONNX Runtime's int8 kernels gain most over fp32."""
    return _cpu_supports("_is_vnni_supported", "_is_cpu_support_vnni")  # torch 2.5+'s name, then 2.4's


def _cpu_supports(*probes: str) -> bool:
    """Whether any of torch's CPU feature probes of these names says yes (a probe torch lacks says no)."""
    import torch

    return any(getattr(torch.cpu, probe, lambda: False)() for probe in probes)


def compute_dtype(device: torch.device, precision: str = "auto") -> torch.dtype | None:
    """The autocast dtype for the forward pass, or None for plain fp32."""
    import torch

    if precision not in PRECISIONS:
        raise UsageError(f"unknown precision '{precision}'; use one of {', '.join(PRECISIONS)}")
    if precision == "fp32":
        return None
    if precision == "bf16" or device.type == "cuda" or _cpu_has_native_bf16():
        return torch.bfloat16
    return None


def autocast(device: torch.device, precision: str = "auto"):
    """Mixed precision where the hardware computes bf16 natively; weights and optimiser stay fp32."""
    import torch

    dtype = compute_dtype(device, precision)
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()


# glibc hands blocks over its mmap threshold (32 MB at most by default) back to the kernel on free, so
# every forward pass of a photo-sized batch (efficientnet_lite0 at 224 px, batch 32: 51 MB activations)
# page-faults its memory in again: 2.3 s of system time per 4 batches. Keeping freed memory in the heap
# doubles CPU inference (45 -> 86 img/s) and the time spent computing frozen features; the price is a
# process that keeps its peak memory until it exits, which suits a command, not a long-lived server.
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
KEEP_BELOW_BYTES = 1 << 30


def keep_freed_memory() -> None:
    """Let this process reuse freed memory instead of returning it to the kernel (glibc only; a no-op elsewhere)."""
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:  # musl and other C libraries: their allocators need no such setting
        return
    libc.mallopt(_M_MMAP_THRESHOLD, KEEP_BELOW_BYTES)
    libc.mallopt(_M_TRIM_THRESHOLD, 2**31 - 1)
