"""Getting weights into a model: timm's pretrained weights (hub or cache) or a local file.

Files load without unpickling code: safetensors, or torch.load(weights_only=True).
"""
from __future__ import annotations

import logging
import pickle
import re
import textwrap
from pathlib import Path

import torch
from torch import nn

from ..errors import ImgclsError

log = logging.getLogger(__name__)

OFFLINE_HINT = (
    "with network access run once to fill the cache (~/.cache/huggingface), "
    "or pass --weights FILE (.safetensors or a PyTorch state dict)"
)


class WeightsUnavailable(ImgclsError):
    """timm's pretrained weights could be neither found in the cache nor downloaded."""


def pretrained_timm_model(name: str, num_classes: int, in_chans: int = 3, **kwargs) -> nn.Module:
    import timm

    try:
        return timm.create_model(name, pretrained=True, num_classes=num_classes, in_chans=in_chans, **kwargs)
    except (OSError, RuntimeError, ValueError) as err:  # hub errors subclass these when offline
        reason = first_line(err)
        if "offline" in reason.lower() or "cannot find the requested files" in reason:
            reason = "not in the Hugging Face cache, and the hub is unreachable or offline"
        raise WeightsUnavailable(f"could not get pretrained weights for '{name}' ({reason}); {OFFLINE_HINT}") from None


def first_line(err: Exception, skip: int = 0) -> str:
    """One short line of an exception's message for a one-line error (`skip` leading lines that say
    nothing, like load_state_dict's "Error(s) in loading state_dict for ..."). torch's advice to load
    with weights_only=False (arbitrary code execution) is never passed on."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    text = lines[min(skip, len(lines) - 1)] if lines else type(err).__name__
    if "weights_only" in text:
        return "torch reads it only by unpickling code, which imgcls never does"
    return textwrap.shorten(text, 200, placeholder=" ...")


def pretrained_source(model: nn.Module) -> str:
    """Where timm's pretrained weights of `model` came from, as a bundle records it."""
    cfg = getattr(model, "pretrained_cfg", None) or {}
    if cfg.get("hf_hub_id"):
        return f"hf-hub:{cfg['hf_hub_id']}"
    return cfg.get("url") or cfg.get("file") or "timm"


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    path = Path(path).expanduser()
    if not path.is_file():
        raise ImgclsError(f"weights file '{path}' does not exist")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:  # torch's message advises weights_only=False: unsafe, not ours to give
        # torch 2.4-2.x: "... Unsupported global: GLOBAL mod.Class was not an allowed global by default",
        # or "Trying to load unsupported GLOBAL mod.Class whose module mod is blocked"
        found = re.search(r"GLOBAL (\S+)", str(err))
        if found:
            raise ImgclsError(f"weights file '{path}' holds a Python object ({found[1]}), and imgcls never "
                              "unpickles code from a file; save only model.state_dict() (torch.save or safetensors) "
                              "and pass that") from None
        raise ImgclsError(f"could not read weights file '{path}': not a PyTorch state dict of tensors (damaged?)") from None
    except Exception as err:
        raise ImgclsError(f"could not read weights file '{path}': {type(err).__name__}: {first_line(err)}") from None
    for key in ("state_dict", "model", "model_state"):  # common checkpoint wrappers
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ImgclsError(f"weights file '{path}' holds no state dict of tensors")
    return state


def _own_names(state: dict[str, torch.Tensor], own: dict) -> dict[str, torch.Tensor]:
    """Drop the wrappers a network is often saved inside: DataParallel's module., imgcls's Classifier."""
    state = {k.removeprefix("module."): v for k, v in state.items()}
    if not own.keys() & state.keys() and any(k.startswith("net.") for k in state):  # a bundle's model.safetensors
        state = {k.removeprefix("net."): v for k, v in state.items() if k.startswith("net.")}
    return state


def load_weights(model: nn.Module, path: str | Path) -> None:
    """Load a checkpoint of the same architecture; tensors of another shape (the head, for another
    class count) are left as initialised."""
    own = model.state_dict()
    state = _own_names(read_state_dict(path), own)
    # older checkpoints (torchvision's among them) predate BatchNorm's batch counter, mere bookkeeping
    missing = sorted(k for k in own.keys() - state.keys() if not k.endswith("num_batches_tracked"))
    unexpected = sorted(state.keys() - own.keys())
    matching = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    if missing or unexpected or len(matching) < len(own) // 2:
        example = f"e.g. '{(missing or unexpected)[0]}'" if missing or unexpected else "most of another shape"
        raise ImgclsError(
            f"weights file '{path}' does not fit this architecture: {len(missing)} tensors missing, "
            f"{len(unexpected)} unexpected, {len(matching)} of {len(own)} match by name and shape "
            f"({example}); was it saved from another --model?"
        )
    model.load_state_dict(matching, strict=False)
    skipped = sorted(set(own) - set(matching))
    if skipped:
        log.info("weights from %s: %d tensors loaded, %d left as initialised (e.g. %s)",
                 path, len(matching), len(skipped), skipped[0])
