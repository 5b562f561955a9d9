"""`explain`: why a bundle decided what it did, as maps over the image, for any imgcls model.

  gradcam, gradcam++                    class-weighted activations of one layer (default: see layers.py)
  saliency, smoothgrad,                 input gradients, plain, averaged over noisy copies, or integrated
  integrated-gradients                  from a black image
  blocks                                a Grad-CAM map for every block, side by side: how the important
                                        regions evolve through the network
  feature-maps                          a layer's activations for the image, its strongest channels
  filters                               inputs synthesised to excite the explained class and the filters
                                        of a layer that the image excites most (activation maximisation)

Single-label bundles explain the top class unless a class is named; multi-label bundles explain
every class over its threshold (the top class when none is), so one image may get several.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from ..choices import EXPLAIN_METHODS
from ..data.images import ImageSource, UnreadableImage, decode_image, split_batch
from ..data.loader import to_model_input
from ..errors import ImgclsError, UsageError, did_you_mean
from ..fileio import atomic_write, atomic_write_bytes, fresh_folder
from . import attribution, synthesis
from .layers import Layer, block_layers, find_layers, hooked, pick_layer
from .overlay import colourise, overlay, tiles, to_png

LAYER_MAPS = {"gradcam": attribution.gradcam, "gradcam++": attribution.gradcam_plus_plus}
PIXEL_MAPS = {"saliency": attribution.saliency, "smoothgrad": attribution.smoothgrad,
              "integrated-gradients": attribution.integrated_gradients}
BATCH_SIZE = 16  # (image, class) pairs per backward pass: bounds memory, does not change the maps
FEATURE_MAPS_SHOWN = 15  # with the input, a 4 x 4 grid
FILTERS_SHOWN = 7  # with the input and the class, a 3 x 3 grid
__all__ = ["EXPLAIN_METHODS", "Explanation", "explain", "save_explanations", "to_png"]


@dataclass
class Explanation:
    path: str | None
    method: str
    label: str  # the explained class
    score: float  # its predicted probability
    heatmap: np.ndarray | None  # (H, W) float32 in [0, 1] at the bundle's img_size; None for blocks/feature-maps/filters
    image: np.ndarray  # (H, W, 3) uint8, the model's input view of the image
    panel: np.ndarray  # (h, w, 3) uint8, what the PNG shows
    raw: np.ndarray  # what is saved as .npy: the heatmap, (L, H, W) block maps, (C, h, w) activations or (K, H, W, 3) inputs
    layers: list[str] = field(default_factory=list)  # the layers the maps come from, in `raw`'s order


def check_method(method: str) -> None:
    if method not in EXPLAIN_METHODS:
        raise UsageError(f"unknown explanation method '{method}'{did_you_mean(method, EXPLAIN_METHODS)} "
                         f"(choose from {', '.join(EXPLAIN_METHODS)})")


def require_torch_model(predictor) -> None:
    if not isinstance(predictor.model, torch.nn.Module):
        raise UsageError("explanations need gradients and layers, which only the PyTorch model has; "
                         "load the predictor with engine='torch'")


def class_index(classes: list[str], name: str) -> int:
    if name not in classes:
        shown = ", ".join(classes[:20]) + (", ..." if len(classes) > 20 else "")
        raise UsageError(f"unknown class '{name}'{did_you_mean(name, classes)} (the model's classes: {shown})")
    return classes.index(name)


def decode_inputs(images: list, size: int) -> tuple[np.ndarray, list[str | None]]:
    """(N, size, size, 3) uint8 pixels and the path of each input (None for bytes or arrays);
    a missing or unreadable input is an error: an explanation of nothing would mislead."""
    if not images:
        raise UsageError("no images given")
    pixels, paths = [], []
    for index, image in enumerate(images):
        name = str(image) if isinstance(image, (str, Path)) else None
        if name is not None and not Path(image).is_file():
            raise ImgclsError(f"image '{name}' does not exist")
        try:
            pixels.append(decode_image(image, size))
        except (UnreadableImage, OSError) as err:
            raise ImgclsError(f"cannot read image {repr(name) if name else f'#{index + 1}'}: {err}") from None
        paths.append(name)
    return np.stack(pixels), paths


def _targets(predictor, probs: np.ndarray, class_name: str | None) -> list[tuple[int, int]]:
    """(image index, class index) pairs to explain."""
    if class_name is not None:
        wanted = class_index(predictor.classes, class_name)
        return [(row, wanted) for row in range(len(probs))]
    if not predictor.config.multi_label:
        return [(row, int(scores.argmax())) for row, scores in enumerate(probs)]
    thresholds = np.asarray(predictor.config.thresholds or [0.5] * len(predictor.classes))
    pairs = []
    for row, scores in enumerate(probs):
        firing = [int(c) for c in np.argsort(-scores, kind="stable") if scores[c] >= thresholds[c]]
        pairs += [(row, c) for c in firing or [int(scores.argmax())]]
    return pairs


def _batches(pairs: list[tuple[int, int]], pixels: np.ndarray, device):
    for start in range(0, len(pairs), BATCH_SIZE):
        rows, classes = zip(*pairs[start: start + BATCH_SIZE])
        yield to_model_input(torch.as_tensor(pixels[list(rows)]), device), torch.tensor(classes, device=device)


def _maps(predictor, method: str, layer: Layer | None, pixels: np.ndarray, pairs) -> np.ndarray:
    """(len(pairs), H, W) maps in [0, 1] of a map method; `layer` for the layer methods."""
    model, size, out = predictor.model, predictor.config.img_size, []
    for images, targets in _batches(pairs, pixels, predictor.device):
        if method in LAYER_MAPS:
            with hooked(model.net, layer) as module:
                out.append(attribution.normalise(LAYER_MAPS[method](model, module, images, targets), size))
        else:
            raw = PIXEL_MAPS[method](model, images, targets)
            out.append(attribution.normalise(raw, size, attribution.PIXEL_PERCENTILE))
    return torch.cat(out).cpu().numpy().astype(np.float32)


def _title(predictor, scores: np.ndarray, target: int) -> str:
    return f"{predictor.classes[target]} {scores[target]:.1%}"


def _explain_maps(predictor, method, layer, pixels, probs, pairs) -> list[tuple]:
    heatmaps = _maps(predictor, method, layer, pixels, pairs)
    caption = f"{method} ({layer.name})" if layer else method
    return [(heatmap, heatmap, [layer.name] if layer else [],
             tiles([(pixels[row], "input"), (overlay(pixels[row], heatmap), caption)], _title(predictor, probs[row], c)))
            for heatmap, (row, c) in zip(heatmaps, pairs)]


def _explain_blocks(predictor, layers, pixels, probs, pairs) -> list[tuple]:
    blocks = block_layers(predictor.model.net, layers)
    per_block = np.stack([_maps(predictor, "gradcam", block, pixels, pairs) for block in blocks], axis=1)  # (P, L, H, W)
    names = [block.name for block in blocks]
    return [(None, maps, names,
             tiles([(pixels[row], "input")] + [(overlay(pixels[row], m), name) for m, name in zip(maps, names)],
                   _title(predictor, probs[row], c) + " - Grad-CAM per block, shallow to deep", columns=min(len(names) + 1, 7)))
            for maps, (row, c) in zip(per_block, pairs)]


def _explain_feature_maps(predictor, layer, pixels, probs, pairs) -> list[tuple]:
    model, acts = predictor.model, []
    with torch.no_grad(), hooked(model.net, layer) as module:
        for images, _ in _batches(pairs, pixels, predictor.device):
            acts.append(attribution.activations(model, module, images).float().cpu().numpy())
    results = []
    for maps, (row, c) in zip(np.concatenate(acts), pairs):  # (C, h, w) per image
        channels = np.argsort(-maps.mean(axis=(1, 2)), kind="stable")[:FEATURE_MAPS_SHOWN]
        items = [(pixels[row], "input")] + [(colourise(maps[k]), f"channel {k}") for k in channels]
        results.append((None, maps, [layer.name], tiles(
            items, f"{_title(predictor, probs[row], c)} - strongest channels of {layer.name}", columns=4)))
    return results


def _explain_filters(predictor, layer, pixels, probs, pairs) -> list[tuple]:
    model, size, results = predictor.model, predictor.config.img_size, []
    for row, c in pairs:
        with hooked(model.net, layer) as module:
            with torch.no_grad():
                acts = attribution.activations(model, module, to_model_input(torch.as_tensor(pixels[row: row + 1]), predictor.device))
            channels = acts[0].mean(dim=(1, 2)).argsort(descending=True)[:FILTERS_SHOWN].tolist()
            made = synthesis.maximise(model, module, c, channels, size).permute(0, 2, 3, 1).cpu().numpy()
        synthesised = (made * 255 + 0.5).astype(np.uint8)
        items = [(pixels[row], "input"), (synthesised[0], f"class {predictor.classes[c]}")]
        items += [(image, f"{layer.name} filter {k}") for image, k in zip(synthesised[1:], channels)]
        results.append((None, made, [layer.name], tiles(
            items, f"{_title(predictor, probs[row], c)} - what excites the class and this image's top filters", columns=3)))
    return results


@torch.inference_mode(False)  # a caller inside inference mode (a server) would leave us no gradients
@torch.enable_grad()
def explain(predictor, images: Sequence[ImageSource] | ImageSource, method: str = "gradcam",
            class_name: str | None = None, layer: str | None = None) -> list[Explanation]:
    """Explanations of `predictor`'s decisions on `images` (data.images.ACCEPTED_SOURCES, or a list of them).

    Runs the model with gradients, and splices hooks into it for the time of the call: do not
    run other forwards of the same model concurrently."""
    check_method(method)
    require_torch_model(predictor)
    images = split_batch(images)  # one entry per image: a batch array or tensor is several
    if layer is not None and method in (*PIXEL_MAPS, "blocks"):
        raise UsageError(f"--layer does not apply to --method {method} "
                         f"({'it explains the input pixels' if method in PIXEL_MAPS else 'it shows every block'}); "
                         "use it with gradcam, gradcam++, feature-maps or filters")
    pixels, paths = decode_inputs(list(images), predictor.config.img_size)
    probs = predictor.probabilities(pixels)
    pairs = _targets(predictor, probs, class_name)
    if method == "feature-maps":  # activations do not depend on the class: one grid per image
        pairs = [pair for index, pair in enumerate(pairs) if index == 0 or pairs[index - 1][0] != pair[0]]
    layers = [] if method in PIXEL_MAPS else find_layers(predictor.model, predictor.config.img_size)
    chosen = None if method in (*PIXEL_MAPS, "blocks") else pick_layer(layers, layer)
    if method in LAYER_MAPS and not chosen.reaches_output:
        raise UsageError(f"layer '{chosen.name}' gets no gradient from the logits at its positions (after a ViT's last "
                         "block only the class token goes on), so its Grad-CAM is blank; leave out --layer for the default")
    if method == "blocks":
        made = _explain_blocks(predictor, layers, pixels, probs, pairs)
    elif method == "feature-maps":
        made = _explain_feature_maps(predictor, chosen, pixels, probs, pairs)
    elif method == "filters":
        made = _explain_filters(predictor, chosen, pixels, probs, pairs)
    else:
        made = _explain_maps(predictor, method, chosen, pixels, probs, pairs)
    return [Explanation(paths[row], method, predictor.classes[c], float(probs[row, c]), heatmap, pixels[row], panel, raw, names)
            for (row, c), (heatmap, raw, names, panel) in zip(pairs, made)]


def _safe(text: str) -> str:
    return re.sub(r"[^\w.+-]+", "_", text).strip("_") or "x"


def _save_npy(path: str, array: np.ndarray) -> None:
    with open(path, "wb") as handle:  # np.save on a name would append '.npy' to the temporary name
        np.save(handle, array)


def save_explanations(explanations: list[Explanation], out_dir: str | Path, label_in_name: bool = False) -> list[Path]:
    """Write each explanation as NAME.png (the panel) and NAME.npy (`raw`); returns the PNG paths.
    NAME is the image's file stem, the class when `label_in_name`, and the method. An `out_dir` that holds
    files already is kept: the maps go to the next free name, out_dir-2, ... (fileio.fresh_folder)."""
    out_dir = fresh_folder(out_dir)
    written, used = [], set()
    for index, item in enumerate(explanations):
        stem = Path(item.path).stem if item.path else f"image{index}"
        name = "_".join(map(_safe, [stem, *([item.label] if label_in_name else []), item.method]))
        unique, n = name, 2
        while unique in used:
            unique, n = f"{name}-{n}", n + 1
        used.add(unique)
        written.append(atomic_write_bytes(out_dir / f"{unique}.png", to_png(item.panel)))
        atomic_write(out_dir / f"{unique}.npy", lambda tmp, raw=item.raw: _save_npy(tmp, raw))
    return written
