"""`imgcls export`: a bundle as one ONNX file, checked against PyTorch before it is written.

The file takes what the PyTorch model takes (see session.py): a dynamic batch of RGB images in
[0, 1], normalised inside the graph, so a deployment needs nothing of imgcls but labels.txt,
which is also stored in the file's metadata.
"""
from __future__ import annotations

import inspect
import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .. import __version__
from ..data.cache import decode_all
from ..data.folders import expand_inputs, find_split_folders
from ..data.loader import to_model_input
from ..errors import ImgclsError, UsageError
from ..extras import require
from ..fileio import atomic_write
from ..models.bundle import BundleConfig, find_bundle, load_bundle
from ..models.classifier import Classifier
from ..predict.predictor import Predictor
from ..rundir import RunDir
from ..predict.session import INPUT_NAME, ONNX_FILE, OUTPUT_NAME, OnnxModel

onnx = require("onnx", "onnx")

# Opset 17 has LayerNormalization (ViTs export as one node) and runs on onnxruntime >= 1.11
# (2022) and every torch >= 2.4 exporter; newer opsets add nothing these models use.
OPSET = 17
# Checked on the scores as Predictor computes them (calibrated softmax, or sigmoid): what predict
# and serve return, in [0, 1] for every model. Logits are unbounded and their float32 rounding
# grows with them (random-init MobileNetV2 at 224 px: logits up to 28 and 4.4e-5 apart, nearly
# half of 1e-4 with no error in the graph at all).
TOLERANCE = 1e-4
RANDOM_IMAGES = 8  # uniform noise: every input value, unlike any photo
REAL_IMAGES = 32  # photo statistics, sampled across the classes
# torch < 2.5 has no `dynamo` argument; from 2.9 the default is the exporter that needs onnxscript.
_TORCHSCRIPT_EXPORTER = {"dynamo": False} if "dynamo" in inspect.signature(torch.onnx.export).parameters else {}


@dataclass
class ExportResult:
    path: Path
    max_score_diff: float  # largest |onnx score - torch score| over all check images: the checked number
    max_logit_diff: float  # the same for logits, for information (it grows with the logits' scale)
    checked: dict[str, int]  # where the check images came from -> how many


def _training_images(bundle: Path) -> tuple[list[Path], str]:
    """Images of the data the bundle was trained on, validation split first; none if unknown."""
    summary = RunDir(bundle.parent).read_data_summary()
    if summary is None or summary.data_dir is None or not Path(summary.data_dir).is_dir():
        return [], ""
    data_dir = Path(summary.data_dir)
    folder = find_split_folders(data_dir).get("validation", data_dir)
    return expand_inputs([str(folder)]), str(folder)


def _smooth_images(count: int, size: int, generator: torch.Generator) -> torch.Tensor:
    """Black, white and blurred colour fields in 8-bit steps: photo-like when no photos are at hand."""
    coarse = torch.rand(count - 2, 3, 4, 4, generator=generator)
    fields = F.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False)
    extremes = torch.stack([torch.zeros(3, size, size), torch.ones(3, size, size)])
    return (torch.cat([extremes, fields]) * 255).round() / 255


def _check_images(bundle: Path, size: int, paths: Sequence[Path] | None = None) -> dict[str, torch.Tensor]:
    """(N, 3, size, size) batches in [0, 1] to compare the engines on, by where they came from."""
    generator = torch.Generator().manual_seed(0)
    batches = {"random": torch.rand(RANDOM_IMAGES, 3, size, size, generator=generator)}
    given = paths is not None
    if given:
        paths, source = list(paths), "given images"
    else:
        paths, folder = _training_images(bundle)
        source = f"images from {folder}"
    step = max(1, len(paths) // REAL_IMAGES)
    pixels = decode_all(paths[::step][:REAL_IMAGES], size).pixels
    if len(pixels):
        batches[source] = to_model_input(torch.as_tensor(pixels)).contiguous()
    elif given:
        raise ImgclsError(f"none of the {len(paths)} images given to check the export with could be read")
    else:
        batches["generated"] = _smooth_images(REAL_IMAGES, size, generator)
    return batches


def _metadata(config: BundleConfig) -> dict[str, str]:
    return {
        "classes": json.dumps(config.classes, ensure_ascii=False), "task": config.task, "img_size": str(config.img_size),
        "input": f"{INPUT_NAME}: float32 (N, 3, {config.img_size}, {config.img_size}) RGB in [0, 1], "
                 f"resized by {config.resize}; normalisation is inside the graph",
        "architecture": config.architecture, "imgcls_version": __version__,
    }


def _write_onnx(model: Classifier, config: BundleConfig, example: torch.Tensor, path: str) -> None:
    with warnings.catch_warnings():
        # The legacy-exporter notice, and tracer notes on shape checks that hold because only the
        # batch size varies: the check against PyTorch is what says whether the trace is right.
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        try:
            torch.onnx.export(model, (example,), path, input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                              dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
                              opset_version=OPSET, **_TORCHSCRIPT_EXPORTER)
        except RuntimeError as err:  # torch.onnx.errors.* derive from it
            raise ImgclsError(f"'{config.architecture}' does not export to ONNX with torch {torch.__version__}: "
                              f"{str(err).splitlines()[0]}") from None
    graph = onnx.load(path)
    onnx.helper.set_model_props(graph, _metadata(config))
    onnx.save(graph, path)
    onnx.checker.check_model(path)


@torch.inference_mode()
def _differences(model: Classifier, exported: OnnxModel, batches: dict[str, torch.Tensor],
                 config: BundleConfig) -> tuple[float, float]:
    """Largest |score difference| (scores as predict returns them) and |logit difference| between
    PyTorch and ONNX Runtime, on every batch and on a batch of one."""
    to_scores = Predictor(model, config, torch.device("cpu")).scores
    scores = logits = 0.0
    for images in [*batches.values(), batches["random"][:1]]:
        expected, got = model(images), exported(images)
        logits = max(logits, (expected - got).abs().max().item())
        scores = max(scores, float(np.abs(to_scores(expected) - to_scores(got)).max()))
    return scores, logits


def export_onnx(bundle: str | Path, out: str | Path | None = None, tolerance: float = TOLERANCE,
                images: Sequence[Path] | None = None) -> ExportResult:
    """Write BUNDLE/model.onnx (or `out`) and check it against PyTorch on random inputs and on
    `images` (default: the bundle's validation images, else generated ones). The file appears
    only if every score is within `tolerance`; an existing export is replaced atomically.
    Runs on the CPU: the file is the same whichever device trained the model."""
    if not tolerance >= 0:
        raise UsageError(f"tolerance is the largest score difference accepted, at least 0; got {tolerance}")
    folder = find_bundle(bundle)
    model, config = load_bundle(folder, "cpu")
    batches = _check_images(folder, config.img_size, images)
    checked = {source: len(batch) for source, batch in batches.items()}
    result = ExportResult(Path(out) if out else folder / ONNX_FILE, float("nan"), float("nan"), checked)

    def write_and_check(tmp: str) -> None:
        _write_onnx(model, config, batches["random"][:2], tmp)
        result.max_score_diff, result.max_logit_diff = _differences(model, OnnxModel(tmp), batches, config)
        if not result.max_score_diff <= tolerance:  # `not <=` also catches NaN
            raise ImgclsError(
                f"the ONNX export of '{folder}' differs from PyTorch by {result.max_score_diff:.2e} in the scores "
                f"(tolerance {tolerance:.0e}) and was not written; report it with the architecture "
                f"'{config.architecture}', or accept the difference with --tolerance")

    atomic_write(result.path, write_and_check)
    return result
