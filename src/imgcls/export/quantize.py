"""`imgcls export --int8`: the fp32 ONNX export quantised to int8, and the proof that it still works.

ONNX Runtime's static quantisation (https://onnxruntime.ai/docs/performance/model-optimizations/quantization.html)
in QDQ form: Conv, MatMul and Gemm weights per output channel in int8 (the first and last such layer stay in
float), activations in uint8 with ranges measured on a few hundred of the run's own training images, preprocessed exactly as predict does. Then
both ONNX models run on the validation split (with the bundle's test-time views, as predict runs them); a
second int8 model that also keeps the first block after the stem in float is made and checked too, and kept
when it agrees clearly more with fp32 (early layers are the most sensitive in some networks, and the costliest
in others). The int8 file is kept only if its top-1 accuracy is within
`max_drop` points of the fp32 one, and its softmax temperature is fitted again on its own logits
(quantisation moves them), so that `--engine onnx-int8` scores stay calibrated. The figures go into
config.json's int8_export record, which the run report shows.
"""
from __future__ import annotations

import logging
import math
import shutil
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..data.cache import DecodeCacheOptions, decode_cached
from ..data.folders import Sample
from ..data.loader import to_model_input
from ..errors import ImgclsError, UsageError
from ..evaluate.metrics import expected_calibration_error, reliability_bins
from ..extras import require
from ..fileio import atomic_write
from ..models.bundle import find_bundle, read_bundle_config, update_bundle_config
from ..models.classifier import tta_logits
from ..predict.session import INPUT_NAME, ONNX_FILE, OnnxModel, int8_path
from ..rundir import RunDir
from ..runtime import cpu_has_vnni
from ..train.calibration import fit_temperature

log = logging.getLogger(__name__)

CALIBRATION_IMAGES = 256  # activation ranges settle by ~100 images (MinMax); a few hundred decode in seconds
MAX_DROP_POINTS = 1.0  # top-1 percentage points the int8 model may lose against fp32 on validation
BATCH = 32  # images per ONNX Runtime call while calibrating and checking
SPEED_ROUNDS = 5  # timed rounds of the speed check; the median ratio is recorded
SLOW_SPEEDUP = 1.2  # below it the export warns that int8 buys little on this machine
# How many weighted layers after the stem to also keep in float: both are tried. efficientnet_lite0 fine-tuned
# on CIFAR-10 (1,000 validation images, fp32 78.2%): with 0, 77.2% and 86.8% agreement; with 2 (its first
# block), 78.7% and 90.5%, at the same 1.4-1.5x fp32 speed. The speedrun CNN at 32 px keeps 98% with 0, and its
# early convolutions carry much of its work.
EARLY_FLOAT_CANDIDATES = (0, 2)
MIN_AGREEMENT_GAIN = 0.01  # fraction of validation images the model with more float layers must agree more on
# Conv, MatMul and Gemm carry the work. Clip and Relu are listed so that they are folded into the ranges of
# the convolutions before them (ORT then drops them), and Add so that residual sums stay in int8: with the
# first three alone every activation goes back to float for its Clip, and MobileNetV2 at 224 px ran no
# faster than fp32 (33-40 vs 34-43 images/s, batch 8, 1 thread, shared 2-core AVX2 machine without VNNI);
# with these it ran at 75 (fp32 43) in the same interleaved rounds.
QUANTIZED_OPS = ("Conv", "MatMul", "Gemm", "Clip", "Relu", "Add")


@dataclass
class Int8Result:
    path: Path
    record: dict  # as stored in config.json's int8_export


def _quantization():
    return require("onnx", "onnxruntime.quantization")


def _decoded(samples: list[Sample], size: int, what: str) -> tuple[np.ndarray, list[Sample]]:
    """Pixels of `samples` through the decode cache (training filled it), and the readable samples."""
    decoded = decode_cached([s.path for s in samples], size, DecodeCacheOptions.from_environment())
    if not decoded.kept:
        raise ImgclsError(f"none of the {len(samples)} {what} images could be read; pass --data DATA_DIR")
    return decoded.pixels, [samples[i] for i in decoded.kept]


def _calibration_reader(pixels: np.ndarray):
    """onnxruntime's CalibrationDataReader over `pixels`, a batch at a time, as OnnxModel feeds them."""
    base = _quantization().CalibrationDataReader

    class Reader(base):
        def __init__(self):
            self.starts = iter(range(0, len(pixels), BATCH))

        def get_next(self) -> dict | None:
            start = next(self.starts, None)
            if start is None:
                return None
            images = to_model_input(torch.as_tensor(pixels[start: start + BATCH]))
            return {INPUT_NAME: np.ascontiguousarray(images.numpy(), dtype=np.float32)}

    return Reader()


def _weighted_nodes(model_path: str) -> list[str]:
    """The names of the Conv, MatMul and Gemm nodes, in graph order."""
    graph = require("onnx", "onnx").load(model_path).graph
    return [node.name for node in graph.node if node.op_type in ("Conv", "MatMul", "Gemm")]


def _float_layers(weighted: list[str], early: int) -> list[str]:
    """The weighted nodes kept in float: the first (the stem convolution), the `early` ones after it, and the
    last (the classifier)."""
    return list(dict.fromkeys(weighted[: 1 + early] + weighted[-1:]))


def _prepare(fp32: Path, scratch: str) -> str:
    """Shape inference and ORT's graph optimisations (ops fused) first, as ORT's quantisation guide asks:
    ranges are then measured on the graph that runs, not on intermediate outputs fusion removes."""
    prepared = str(Path(scratch) / "prepared.onnx")
    require("onnx", "onnxruntime.quantization.shape_inference").quant_pre_process(str(fp32), prepared)
    return prepared


def _quantize(prepared: str, int8: str, pixels: np.ndarray, float_layers: list[str]) -> None:
    # The stem and the classifier stay in float, as most int8 toolchains keep them: on efficientnet_lite0
    # fine-tuned on CIFAR-10 (1000 validation images, 78.2% fp32) int8 everywhere kept 73.3%, with these
    # two in float 77.2%. Full-range weights: 7-bit ones (reduce_range, advised against u8 x s8 overflow
    # on CPUs without VNNI) measured worse on this AVX2 CPU without VNNI, 76.6% and 70.3%.
    q = _quantization()
    q.quantize_static(prepared, int8, _calibration_reader(pixels), quant_format=q.QuantFormat.QDQ, per_channel=True,
                      reduce_range=False, activation_type=q.QuantType.QUInt8, weight_type=q.QuantType.QInt8,
                      op_types_to_quantize=list(QUANTIZED_OPS), nodes_to_exclude=float_layers)


@dataclass
class _Candidate:
    path: Path
    float_layers: list[str]
    logits: torch.Tensor
    agreement: float


def _quantize_best(fp32: Path, int8: str, calibration: np.ndarray, val_pixels: np.ndarray, fp32_logits: torch.Tensor,
                   tta: str) -> _Candidate:
    """Quantise with each of EARLY_FLOAT_CANDIDATES early layers kept in float, write to `int8` the model
    that agrees most with fp32 on validation (the one with fewer float layers unless the other agrees
    MIN_AGREEMENT_GAIN more: float layers cost speed), and return it."""
    fp32_predicted = fp32_logits.argmax(1)
    chosen = None
    with tempfile.TemporaryDirectory(prefix="imgcls-int8-") as scratch:
        prepared = _prepare(fp32, scratch)
        weighted = _weighted_nodes(prepared)
        for early in EARLY_FLOAT_CANDIDATES:
            float_layers = _float_layers(weighted, early)
            if chosen is not None and (float_layers == chosen.float_layers or chosen.agreement + MIN_AGREEMENT_GAIN > 1):
                break  # a network too small to have layers after its stem, or one that can hardly agree more
            path = Path(scratch) / f"int8-{early}.onnx"
            _quantize(prepared, str(path), calibration, float_layers)
            logits = _logits(OnnxModel(path), val_pixels, tta)
            agreement = float((logits.argmax(1) == fp32_predicted).float().mean())
            if chosen is None or agreement >= chosen.agreement + MIN_AGREEMENT_GAIN:
                chosen = _Candidate(path, float_layers, logits, agreement)
        shutil.copyfile(chosen.path, int8)
    return chosen


def _speedup(fp32: OnnxModel, int8: OnnxModel, pixels: np.ndarray) -> float:
    """int8's speed over fp32's on this machine, on a batch of the validation images: the median of rounds that
    time the two in turn, so that a busy neighbour slows both alike. int8 pays off on some CPUs, not on all.
    Each timed call follows an untimed one of the same model: ONNX Runtime's threads spin for a while after a
    call, and on 2 cores the model timed straight after the other ran at up to half its speed."""
    batch = to_model_input(torch.as_tensor(pixels[:BATCH]))
    fp32(batch), int8(batch)  # warm-up: first-call allocations
    ratios = []
    for _ in range(SPEED_ROUNDS):
        seconds = []
        for model in (fp32, int8):
            model(batch)  # settle
            start = time.perf_counter()
            model(batch)
            seconds.append(time.perf_counter() - start)
        ratios.append(seconds[0] / seconds[1])
    return round(statistics.median(ratios), 2)


def _logits(model: OnnxModel, pixels: np.ndarray, tta: str) -> torch.Tensor:
    """Logits as predict computes them: with the bundle's test-time views, on which its temperature was fitted."""
    return torch.cat([tta_logits(model, to_model_input(torch.as_tensor(pixels[start: start + BATCH])), tta)
                      for start in range(0, len(pixels), BATCH)])


def _ece(logits: torch.Tensor, labels: np.ndarray, temperature: float) -> float:
    return expected_calibration_error(reliability_bins(labels, (logits / temperature).softmax(1).numpy()))


def _check(fp32: torch.Tensor, int8: torch.Tensor, labels: np.ndarray, classes: list[str], temperature: float,
           calibration_images: int) -> dict:
    """The int8_export record: int8 against fp32 on the validation split, accuracy in percent."""
    predicted = int8.argmax(1).numpy()
    top1_fp32 = 100 * float((fp32.argmax(1).numpy() == labels).mean())
    top1_int8 = 100 * float((predicted == labels).mean())
    int8_temperature = fit_temperature(int8, torch.as_tensor(labels))
    recall = {name: round(float((predicted[labels == index] == index).mean()), 4)
              for index, name in enumerate(classes) if (labels == index).any()}
    return {"top1_fp32": round(top1_fp32, 2), "top1_int8": round(top1_int8, 2), "drop_points": round(top1_fp32 - top1_int8, 2),
            "agreement": round(float((predicted == fp32.argmax(1).numpy()).mean()), 4), "per_class_recall": recall,
            "ece_fp32": round(_ece(fp32, labels, temperature), 4),
            "ece_int8_before_refit": round(_ece(int8, labels, temperature), 4),
            "ece_int8": round(_ece(int8, labels, int8_temperature), 4), "temperature": int8_temperature,
            "validation_images": len(labels), "calibration_images": calibration_images}


def export_int8(bundle: str | Path, fp32_path: str | Path | None = None, max_drop: float = MAX_DROP_POINTS,
                calibration_images: int = CALIBRATION_IMAGES, data_dir: str | Path | None = None) -> Int8Result:
    """Quantise the bundle's fp32 export (`fp32_path`, default BUNDLE/model.onnx, written by export_onnx) into
    the file beside it (model.int8.onnx), calibrated on `calibration_images` training images, and record the
    check in config.json. Refused, with no int8 file left and the fp32 one untouched, when top-1 on the
    validation split drops by more than `max_drop` points (a negative value demands a gain: the refusal's test).
    `data_dir` replaces the data folder the run recorded, when that one moved."""
    if not math.isfinite(max_drop):
        raise UsageError(f"--max-drop is the top-1 points the int8 model may lose, e.g. 1.0; got {max_drop}")
    if calibration_images < 1:
        raise UsageError(f"--calibration-images must be at least 1, got {calibration_images}")
    folder = find_bundle(bundle)
    config = read_bundle_config(folder)
    if config.multi_label:
        raise UsageError("--int8 checks top-1 accuracy, which multi-label bundles do not have; export without --int8")
    fp32_path = Path(fp32_path) if fp32_path else folder / ONNX_FILE
    if not fp32_path.is_file():
        raise ImgclsError(f"no fp32 export at '{fp32_path}' to quantise; run `imgcls export {bundle}` first")
    dataset = RunDir(folder.parent).dataset(data_dir)
    if not dataset.splits.get("validation"):
        raise ImgclsError(f"the data of '{folder}' has no validation images to check the int8 model on; pass --data DATA_DIR")
    # The whole split through the cache, under the key training left: a memory map, of which only the rows taken are read
    train_pixels, _ = _decoded(dataset.splits["train"], config.img_size, "training")
    step = max(1, len(train_pixels) // calibration_images)  # spread over the split (it is sorted by class)
    calibration = np.ascontiguousarray(train_pixels[::step][:calibration_images])
    val_pixels, val_samples = _decoded(dataset.splits["validation"], config.img_size, "validation")
    labels = np.array([s.labels[0] for s in val_samples])
    fp32_logits = _logits(OnnxModel(fp32_path), val_pixels, config.tta)
    path = int8_path(fp32_path)
    result = Int8Result(path, {})

    def write_and_check(tmp: str) -> None:
        chosen = _quantize_best(fp32_path, tmp, calibration, val_pixels, fp32_logits, config.tta)
        result.record = _check(fp32_logits, chosen.logits, labels, config.classes, config.temperature, len(calibration))
        result.record["float_layers"] = chosen.float_layers
        if not result.record["drop_points"] <= max_drop:
            raise ImgclsError(
                f"the int8 model of '{folder}' loses {result.record['drop_points']:.2f} top-1 points against fp32 "
                f"({result.record['top1_fp32']:.2f}% -> {result.record['top1_int8']:.2f}% on "
                f"{len(labels)} validation images; --max-drop {max_drop:g}) and was not written; {fp32_path.name} "
                "is kept: use --engine onnx, or allow more with --max-drop")
        result.record.update(speedup=_speedup(OnnxModel(fp32_path), OnnxModel(tmp), val_pixels),
                             speed_batch=min(BATCH, len(val_pixels)), cpu_has_vnni=cpu_has_vnni())

    try:
        atomic_write(path, write_and_check)
    except ImgclsError:
        path.unlink(missing_ok=True)  # an int8 file from an earlier export would not match this fp32 one
        update_bundle_config(folder, int8_export=None)
        raise
    update_bundle_config(folder, int8_export=result.record)
    log.info("int8 model: top-1 %.2f%% (fp32 %.2f%%), agreement %.1f%%, ECE %.4f at T = %.3g; %.2fx the fp32 "
             "model's speed on this machine", result.record["top1_int8"], result.record["top1_fp32"],
             100 * result.record["agreement"], result.record["ece_int8"], result.record["temperature"],
             result.record["speedup"])
    if result.record["speedup"] < SLOW_SPEEDUP:
        log.warning("the int8 model is only %.2fx as fast as fp32 here%s; --engine onnx may serve as well",
                    result.record["speedup"], "" if result.record["cpu_has_vnni"] else
                    " (this CPU lacks AVX512-VNNI, the int8 instructions with which int8 gains most)")
    return result
