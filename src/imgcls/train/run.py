"""`imgcls train`: folder of images -> trained, evaluated bundle in RUN_DIR (its layout: rundir.RunDir),
and the report that closes the run (imgcls.report), built from what training already holds.

args.yaml holds the settings the run used, automatic choices resolved: `imgcls train --config
RUN_DIR/args.yaml` trains with them again. The bundle's config.json keeps the same record.

Under torchrun every process runs `train`: each machine's first process decodes into the decode
cache while the others wait, then all map it; they train together (loop.Trainer) and only
process 0 writes the run folder, logs and the bundle.
"""
from __future__ import annotations

import importlib.metadata
import logging
import platform
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

from .. import __version__
from ..data.audit import find_leakage
from ..data.augment import build_augment
from ..data.cache import DecodeCacheOptions, decode_cached
from ..data.folders import LabelledImages, Sample, discover, multi_hot
from ..data.hashes import FileRecord
from ..data.manifest import read_manifest
from ..data.loader import Batches, to_model_input
from ..distributed import Ranks, broadcast_object, broadcast_tensors, gather_rows, join, local_main_first, shard_rows
from ..errors import ImgclsError, UsageError
from ..evaluate.evaluation import Evaluation, write_evaluation
from ..evaluate.metrics import tune_thresholds
from ..fileio import atomic_write_bytes
from ..models.bundle import WEIGHTS_FILE, BundleConfig, find_bundle, read_bundle_config, save_bundle
from ..models.classifier import IMAGENET_MEAN, IMAGENET_STD, Classifier
from ..models.registry import check_model_name, create_model
from ..models.weights import WeightsUnavailable, load_weights, pretrained_source
from ..rundir import DataSummary, RunDir, choose_run_dir
from ..runtime import compute_dtype, keep_freed_memory, resolve_device
from .calibration import fit_temperature
from .callbacks import Checkpoint, EarlyStopping, EpochLog, HistoryCSV, Lookahead, ProgressBar
from .config import DATA_KEY, RuntimeOptions, TrainConfig, settings_yaml
from .defaults import (MIN_BATCH, MIN_STEPS_PER_EPOCH, choose_img_size, choose_model, choose_schedule, median_side,
                       scratch_fallback)
from .distill import DistillationLoss, check_teacher, soft_targets, teacher_probabilities
from .loop import CHECKPOINT_FORMAT, Extensions, Trainer, count_correct, make_loss, predict_logits
from .phases import PhaseTimer
from .probe import fit_linear_probe
from .time_budget import fit_epochs_to_budget
from .tracking import Tracker, make_tracker
from .transfer import (SMALL_BATCH, UnfreezeBackbone, classifier_head, frozen_early_layers, head_inputs, layer_lr_scales,
                       set_backbone_trainable)

log = logging.getLogger(__name__)

IMBALANCE_WARNING = 3  # largest/smallest class ratio from which the loss is noticeably biased
FEW_STEPS = 4  # optimizer steps per epoch below which a run barely trains (e.g. a recipe's batch of 1024 on 600 images)


@dataclass
class TrainResult:
    run_dir: Path
    bundle_dir: Path
    metrics: dict  # validation metrics of the saved model
    history: list[dict]
    skipped: list[dict]
    phase_seconds: dict[str, float] = field(default_factory=dict)  # where the wall time went (train.phases)


@dataclass
class DecodedSplit:
    pixels: np.ndarray  # (N, H, W, 3) uint8
    samples: list[Sample]  # the readable ones, row for row
    targets: torch.Tensor  # (N, num_classes) one-hot or multi-hot
    failed: list[tuple[Path, str]]
    records: dict[Path, FileRecord]  # every file's hashes, from the decode pass (empty where not asked for)


def _decode_split(samples: list[Sample], size: int, num_classes: int, runtime: RuntimeOptions, desc: str,
                  ranks: Ranks = Ranks()) -> DecodedSplit:
    from tqdm.auto import tqdm

    with local_main_first(ranks), tqdm(total=len(samples), desc=f"decoding {desc}", unit="img", leave=False,
                                       disable=None if ranks.is_main else True) as bar:
        # the main process hashes as it decodes, for the leakage check (data.hashes)
        decoded = decode_cached([s.path for s in samples], size, runtime.resolved_decode_cache(), runtime.workers,
                                on_progress=bar.update, hash_files=ranks.is_main)
    kept = [samples[i] for i in decoded.kept]
    if not kept:
        raise ImgclsError(f"none of the {len(samples)} {desc} images could be read")
    if decoded.cached is not None:
        log.info("%s: %d decoded images from cache (%s)", desc, len(kept), decoded.cached)
    records = dict(zip((s.path for s in samples), decoded.records or []))
    return DecodedSplit(decoded.pixels, kept, torch.from_numpy(multi_hot(kept, num_classes)), decoded.failed, records)


def _check_every_class_readable(dataset: LabelledImages, train_set: DecodedSplit) -> None:
    """A class none of whose training images could be read cannot be learnt: stop, naming it and a few of its files."""
    positives = train_set.targets.sum(0)  # (num_classes,) readable training images per class
    empty = [index for index in range(len(dataset.classes)) if positives[index] == 0]
    if not empty:
        return
    reasons = dict(train_set.failed)
    lost = [sample.path for sample in dataset.splits["train"] if set(sample.labels) & set(empty)]
    examples = "; ".join(f"{path}: {reasons[path]}" for path in lost[:3])
    names = "class" + ("es " if len(empty) > 1 else " ") + ", ".join(repr(dataset.classes[index]) for index in empty)
    raise ImgclsError(f"no training image of {names} could be read ({len(lost)} files, e.g. {examples}); "
                      "make them readable, or remove the class")


def _class_weights(targets: torch.Tensor, multi_label: bool) -> torch.Tensor:
    positives = targets.sum(0).clamp(min=1)
    if multi_label:  # pos_weight: negatives per positive
        return (len(targets) - positives) / positives
    return len(targets) / (len(positives) * positives)


def _start_config(config: TrainConfig | None, source: BundleConfig | None) -> TrainConfig:
    """Fill what an --init-from bundle decides: its architecture and image size."""
    config = config or TrainConfig()
    if source is None:
        return config.validate()
    if config.model.architecture not in (None, source.architecture):
        raise ImgclsError(f"--init-from bundle is a '{source.architecture}' but --model is '{config.model.architecture}'; "
                          "leave --model out to continue its architecture")
    return config.with_options(model=source.architecture, img_size=config.data.img_size or source.img_size,
                               pretrained=False).validate()


CONFIG_PATHS = ("labels_csv", "manifest", "weights", "init_from", "distill_from")  # the TrainConfig fields that name files


def _absolute_paths(config: TrainConfig) -> TrainConfig:
    """The files the config names, made absolute: the checkpoint stores the config, and --resume may run
    from another folder."""
    named = {name: value for name, value in config.options().items() if name in CONFIG_PATHS and value}
    return config.with_options(**{name: str(Path(value).expanduser().resolve()) for name, value in named.items()})


@dataclass
class StartingPoint:
    model: Classifier
    config: TrainConfig  # with the model, pretrained and img_size settled
    weights_source: str  # where the starting weights came from: hf-hub:..., file:..., bundle:..., or none


def _start_model(config: TrainConfig, num_classes: int, side: int | None, source: BundleConfig | None) -> StartingPoint:
    """Build the network from the weights it starts from. When the automatic choice of pretrained
    weights finds none, say so in one line and train from scratch instead."""
    chosen = choose_model(config, side)
    try:
        return _build_model(chosen, num_classes, side, source)
    except WeightsUnavailable as err:
        if config.model.pretrained:  # asked for by the user: an error, not a silent downgrade
            raise
        fallback = scratch_fallback(config)
        log.warning("no pretrained weights for %s (not cached, and no network), so training %s from scratch, "
                    "which is far less accurate on small photo folders; to start from ImageNet weights pass "
                    "--weights FILE, or run once with network access to cache them", chosen.model.architecture,
                    fallback.model.architecture)
        log.debug("%s", err)
        return _build_model(fallback, num_classes, side, source)


def _build_model(config: TrainConfig, num_classes: int, side: int | None, source: BundleConfig | None) -> StartingPoint:
    check_model_name(config.model.architecture)
    config = config.with_options(img_size=choose_img_size(config, side))
    torch.manual_seed(config.runtime.seed)
    net = create_model(config.model.architecture, num_classes=num_classes, img_size=config.data.img_size,
                       pretrained=config.model.pretrained)
    weights_source = pretrained_source(net) if config.model.pretrained else "none"
    if config.model.weights:
        load_weights(net, config.model.weights)
        weights_source = f"file:{Path(config.model.weights).expanduser().resolve()}"
    if config.model.init_from:
        load_weights(net, find_bundle(config.model.init_from) / WEIGHTS_FILE)
        weights_source = f"bundle:{find_bundle(config.model.init_from).resolve()}"
    mean, std = (source.mean, source.std) if source else (IMAGENET_MEAN, IMAGENET_STD)
    if config.model.pretrained:  # every model is a timm model: its pretrained_cfg says how its weights expect images
        mean, std = tuple(net.pretrained_cfg["mean"]), tuple(net.pretrained_cfg["std"])
    return StartingPoint(Classifier(net, mean, std), config, weights_source)


DATA_INIT_IMAGES = 2000  # enough for speedrun-cnn's whitening: ~2M patches, a stable 12x12 covariance; ~1 s


def _init_from_data(model: Classifier, pixels: np.ndarray, seed: int) -> None:
    """A model with a data-dependent initialisation (an `init_from_data(images)` method, as speedrun-cnn's
    whitening layer has) starts from the statistics of up to DATA_INIT_IMAGES training images."""
    init_from_data = getattr(model.net, "init_from_data", None)
    if init_from_data is not None:
        rows = np.random.default_rng(seed).permutation(len(pixels))[:DATA_INIT_IMAGES]
        init_from_data(model.normalize(to_model_input(torch.from_numpy(pixels[np.sort(rows)]))))


SYNC_BATCHNORM_BELOW = 32  # images per process per batch below which BatchNorm statistics are too noisy alone


def _synchronise_batchnorm(model: Classifier, config: TrainConfig, ranks: Ranks, device: torch.device) -> Classifier:
    """With several GPUs and small per-process batches, BatchNorm computes its statistics over the
    whole batch (SyncBatchNorm; timm's conversion keeps its fused BatchNormAct layers). PyTorch
    synchronises BatchNorm on GPUs only: on CPUs each process normalises its own part."""
    if not ranks.active or device.type != "cuda" or config.optimisation.batch_size // ranks.world_size >= SYNC_BATCHNORM_BELOW:
        return model
    from timm.layers import convert_sync_batchnorm

    log.info("BatchNorm synchronised across the %d processes (%d images each per batch)", ranks.world_size,
             config.optimisation.batch_size // ranks.world_size)
    return convert_sync_batchnorm(model)


def _resume_state(run: RunDir) -> dict:
    path = run.checkpoint
    if not path.is_file():
        raise ImgclsError(f"nothing to resume in '{run.root}': no {path.name} (was training started there?)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise ImgclsError(f"checkpoint '{path}' is damaged ({type(err).__name__}); start a new run") from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise ImgclsError(f"checkpoint '{path}' was written by another version of imgcls, in a layout imgcls "
                          f"{__version__} cannot resume; start a new run, or resume with the version that wrote it")
    return state


FEATURE_BATCH = 128  # images per forward pass when computing frozen features or validation logits


@dataclass
class ProbeResult:
    """The linear probe fitted on the frozen backbone, already installed as the model's head."""
    train_accuracy: float
    val_accuracy: float
    val_loss: float
    seconds: float


def _features(model: Classifier, split: DecodedSplit, device: torch.device, ranks: Ranks) -> tuple[torch.Tensor, torch.Tensor]:
    """The frozen backbone's features of every image of `split`, each process computing its block."""
    rows = shard_rows(len(split.targets), ranks)
    features, targets = head_inputs(model, Batches(split.pixels[rows], split.targets[rows], FEATURE_BATCH, device=device))
    return gather_rows(features, ranks), gather_rows(targets, ranks)


def _fit_probe_head(model: Classifier, config: TrainConfig, train_set: DecodedSplit, val_set: DecodedSplit,
                    device: torch.device, loss_fn: torch.nn.Module, ranks: Ranks) -> ProbeResult:
    """Compute the frozen backbone's features once, fit a logistic regression on them and make it
    the head: the whole of --freeze --augment none, and where fine-tuning starts (train.probe)."""
    start = time.perf_counter()
    train_features, train_targets = _features(model, train_set, device, ranks)
    val_features, val_targets = _features(model, val_set, device, ranks)
    probe = fit_linear_probe(train_features, train_targets, config.data.multi_label, config.runtime.seed)
    head = classifier_head(model)
    with torch.no_grad():
        head.weight.copy_(probe.weight)
        head.bias.copy_(probe.bias)
    val_logits = probe.logits(val_features)

    def accuracy(logits: torch.Tensor, targets: torch.Tensor) -> float:  # as Trainer.validate counts it
        return count_correct(logits, targets, config.data.multi_label).item() / len(targets)

    result = ProbeResult(accuracy(probe.logits(train_features), train_targets), accuracy(val_logits, val_targets),
                         loss_fn.cpu()(val_logits, val_targets).item(), time.perf_counter() - start)
    broadcast_tensors([head.weight.data, head.bias.data], ranks)  # one head and one starting point for every process
    result = broadcast_object(result, ranks)
    log.info("linear probe on the frozen features (L2 %.0e): train accuracy %.4f, validation accuracy %.4f (%.1fs)",
             probe.l2, result.train_accuracy, result.val_accuracy, result.seconds)
    return result


def _make_trainer(model: Classifier, config: TrainConfig, train_set: DecodedSplit, val_set: DecodedSplit,
                  run: RunDir, device: torch.device, progress: bool, probe: ProbeResult | None, ranks: Ranks,
                  tracker: Tracker | None, extensions: Extensions, teacher: torch.Tensor | None = None) -> Trainer:
    """The trainer for the mode: the whole network, the network but its frozen early layers
    (fine-tuning), or only the head on a frozen backbone; `teacher`: its probabilities of the training
    images, to distil (train.distill)."""
    mode, img_size = config.model.resolved_mode(), train_set.pixels.shape[1]
    weights = _class_weights(train_set.targets, config.data.multi_label).to(device) if config.optimisation.class_weights else None
    loss_fn, targets = make_loss(config, weights), train_set.targets
    if teacher is not None:
        loss_fn = DistillationLoss(loss_fn, config.optimisation.distill_alpha, config.optimisation.distill_temperature)
        targets = soft_targets(targets, teacher)
    early_stopping = EarlyStopping(config.optimisation.early_stopping)
    if probe is not None:  # the probe is epoch 0: fine-tuning that never beats it on validation gives it back
        early_stopping.start_from(probe.val_loss, model)
    main = ranks.is_main  # one process shows and writes
    callbacks = ([ProgressBar()] if progress and main else []) + ([Lookahead()] if config.optimisation.lookahead else []) + (
        [EpochLog()] if main else []) + [early_stopping] + ([HistoryCSV(run), Checkpoint(run)] if main else []) + (
        [tracker] if tracker is not None else [])
    augment = build_augment(config.data.augment, img_size, targets.shape[1], config.data.multi_label)
    train_batches = Batches(train_set.pixels, targets, config.optimisation.batch_size, shuffle=True, device=device,
                            seed=config.runtime.seed, alternating_flip=augment.alternating_flip, ranks=ranks)
    rows = shard_rows(len(val_set.targets), ranks)  # every process validates its block; Trainer.validate gathers
    val_batches = Batches(val_set.pixels[rows], val_set.targets[rows], max(config.optimisation.batch_size, FEATURE_BATCH),
                          device=device)
    lr_scales = None
    if mode == "freeze":
        set_backbone_trainable(model, False)
    elif mode == "finetune":
        lr_scales = layer_lr_scales(model, config.model.layer_decay)
        pretrained = config.model.starts_from_pretrained_weights()
        frozen = frozen_early_layers(model, config.model.layer_decay) if pretrained else frozenset()
        # Pretrained BatchNorm keeps its ImageNet statistics (as Keras' fine-tuning guide advises): the
        # probe head was fitted on features normalised with them. Trained instead, CIFAR-10 at 100 per
        # class fell from 75% to 39-41% validation after 2 epochs (bench/pretrained.py's data).
        freeze_batchnorm = pretrained or config.optimisation.batch_size < SMALL_BATCH
        callbacks.append(UnfreezeBackbone(config.model.head_epochs, freeze_batchnorm, frozen))
    return Trainer(model, config, train_batches, val_batches, augment, loss_fn, callbacks, device, lr_scales, ranks,
                   extensions)


@dataclass
class Finished:
    """What closing a run produced: the saved bundle and the validation results."""
    bundle_dir: Path
    bundle_config: BundleConfig
    evaluation: Evaluation


def _finish(model: Classifier, config: TrainConfig, dataset: LabelledImages, val_set: DecodedSplit, run: RunDir,
            device: torch.device, weights_source: str, probe: ProbeResult | None, settings: dict,
            history: list[dict], started: float) -> Finished:
    """Calibrate on validation, evaluate, and save the bundle, with the run's `settings` and its wall
    time since `started` (time.perf_counter) in the bundle and in args.yaml."""
    val_batches = Batches(val_set.pixels, val_set.targets, max(config.optimisation.batch_size, FEATURE_BATCH), device=device)
    logits, _ = predict_logits(model, val_batches, tta=config.model.tta)
    temperature = 1.0 if config.data.multi_label else fit_temperature(logits, val_set.targets.argmax(1))
    probs = (logits.sigmoid() if config.data.multi_label else (logits / temperature).softmax(1)).numpy()
    bundle_config = BundleConfig(
        architecture=config.model.architecture, classes=dataset.classes, img_size=val_set.pixels.shape[1],
        mean=tuple(model.mean.flatten().tolist()), std=tuple(model.std.flatten().tolist()),
        task="multi-label" if config.data.multi_label else "single-label", temperature=temperature,
        thresholds=tune_thresholds(val_set.targets.numpy(), probs).tolist() if config.data.multi_label else None,
        tta=config.model.tta, training_mode=config.model.resolved_mode(),
        weights_source=weights_source, settings=settings,
    )
    evaluation = write_evaluation(probs, val_set.samples, bundle_config, run.evaluation, history,
                                  uncalibrated=None if config.data.multi_label else logits.softmax(1).numpy(), split="validation")
    metrics = evaluation.metrics
    bundle_config.metrics = {k: metrics[k] for k in ("accuracy", "mAP", "macro_avg", "ece") if k in metrics}
    if probe is not None:  # the floor a transferred model must beat, reported beside it
        bundle_config.metrics["linear_probe_accuracy"] = probe.val_accuracy
    bundle_config.wall_time_s = round(time.perf_counter() - started, 1)
    _write_settings(run, settings, bundle_config.wall_time_s)
    return Finished(save_bundle(model.cpu(), bundle_config, run.bundle), bundle_config, evaluation)


def _settings(config: TrainConfig, device: torch.device, data_dir: Path, fingerprint: str, started_at: str) -> dict:
    """Every option as the run used it, automatic choices resolved, so that training again with them
    (`--config args.yaml`) makes the same choices; then the record of what it ran on (config.RECORD_KEYS).
    A --time budget is resolved too: into the epochs it chose."""
    used = config.with_options(
        lr=config.optimisation.resolved_lr(), weight_decay=config.optimisation.resolved_weight_decay(),
        mode=config.model.resolved_mode(), time_budget_s=None,
        device=device.type if config.runtime.device == "auto" else config.runtime.device,
        precision="fp32" if compute_dtype(device, config.runtime.precision) is None else "bf16")
    # timm's version from its metadata: no import of timm (10 s cold on 2 shared cores) only to read it
    return {DATA_KEY: str(data_dir), **used.options(saved_only=True), "data_fingerprint": fingerprint, "started_at": started_at,
            "imgcls_version": __version__, "torch_version": torch.__version__, "timm_version": importlib.metadata.version("timm"),
            "python_version": platform.python_version()}


def _write_settings(run: RunDir, settings: dict, wall_time_s: float) -> None:
    comment = (f"The settings of this run, automatic choices resolved, and what it ran on. To train with them again:\n"
               f"  imgcls train --config {run.args} --out NEW_RUN_DIR\n"
               "Options given on that command line win over these; the record below the options is not read back.")
    atomic_write_bytes(run.args, settings_yaml({**settings, "wall_time_s": wall_time_s}, comment).encode())


def train(data_dir: str | Path | None, run_dir: str | Path | None = None, config: TrainConfig | None = None,
          resume: bool = False, progress: bool = True, extensions: Extensions | None = None) -> TrainResult:
    """Train on `data_dir` and write the bundle, evaluation and settings to `run_dir` (default: a new
    runs/<data folder name>; one that holds a run already is refused, see rundir.choose_run_dir). With
    resume=True the configuration and data folder come from run_dir's checkpoint.
    `extensions`: a caller's callbacks, optimizer and schedule (loop.Extensions)."""
    extensions = extensions or Extensions()
    if resume and run_dir is None:
        raise UsageError("no run folder given to resume; pass the RUN_DIR of the interrupted run")
    if not resume and data_dir is None:
        raise UsageError("train needs a data folder: imgcls train DATA (or --resume RUN_DIR)")
    run = RunDir(Path(run_dir)) if resume else choose_run_dir(data_dir, run_dir)
    state = _resume_state(run) if resume else None
    if state is not None:
        config, data_dir = TrainConfig.from_saved(state["config"]), data_dir or state["data_dir"]
    data_dir = Path(data_dir).expanduser().resolve()  # stored in the checkpoint: --resume may run from another folder
    timer = PhaseTimer()
    started, started_at = timer.started, datetime.now(timezone.utc).isoformat(timespec="seconds")
    keep_freed_memory()
    source = read_bundle_config(config.model.init_from) if config is not None and config.model.init_from else None
    config = _absolute_paths(_start_config(config, source))
    if config.optimisation.distill_from and _head_only(config):
        raise UsageError("--distill-from trains through the training loop, which --freeze --augment none skips (it fits "
                         "the head in one go); leave out one of them")
    if config.model.architecture is not None:
        check_model_name(config.model.architecture)
    ranks, device = join(resolve_device(config.runtime.device))

    with timer.phase("discover"):
        dataset = discover(data_dir, config.data.val_split, config.data.test_split, config.runtime.seed, config.data.multi_label,
                           config.data.labels_csv, config.data.manifest)
        fingerprint = dataset.fingerprint()  # a stat of every file: taken once, as the run starts
    if config.optimisation.distill_from:
        check_teacher(config.optimisation.distill_from, dataset.classes)
    if ranks.is_main:
        _warn_about_imbalance(dataset)
    num_classes = len(dataset.classes)
    with timer.phase("model"):
        start = _start_model(config, num_classes, median_side(dataset.splits["train"]), source)
    model, config = start.model, start.config
    img_size = config.data.img_size
    log.info("%d classes, %s images; %s at %d px on %s: %s, weights from %s", num_classes,
             {k: len(v) for k, v in dataset.splits.items()}, config.model.architecture, img_size, device,
             config.model.resolved_mode(), start.weights_source)
    with timer.phase("decode"):
        train_set = _decode_split(dataset.splits["train"], img_size, num_classes, config.runtime, "train", ranks)
        _check_every_class_readable(dataset, train_set)
        val_set = _decode_split(dataset.splits["validation"], img_size, num_classes, config.runtime, "validation", ranks)
    if ranks.is_main:
        with timer.phase("hashes"):  # from the decode pass: only a test split's files are read here
            _warn_about_leakage(dataset, {**train_set.records, **val_set.records}, config.runtime.resolved_decode_cache())
    if state is None:
        _warn_about_batch_size(len(train_set.samples), config.optimisation.batch_size)  # a given one; choose_schedule fits its own
        config = choose_schedule(config, len(train_set.samples)).validate()
    if state is None and config.model.resolved_mode() == "scratch":
        with timer.phase("model"):
            _init_from_data(model, train_set.pixels, config.runtime.seed)
    model = _synchronise_batchnorm(model.to(device).to(memory_format=torch.channels_last), config, ranks, device)
    skipped = [{"path": str(p), "reason": r} for p, r in train_set.failed + val_set.failed]
    summary = _data_summary(dataset, data_dir, fingerprint, img_size, skipped, config)
    if ranks.is_main:
        run.root.mkdir(parents=True, exist_ok=True)
        run.write_data_summary(summary)
    tracker = (make_tracker(config.output.logger, run, _settings(config, device, data_dir, fingerprint, started_at))
               if ranks.is_main else None)

    with timer.phase("epochs"):  # the linear probe and the teacher's probabilities too, where there are
        loss_fn = make_loss(config, None)
        probe = None
        if state is None and config.model.resolved_mode() in ("freeze", "finetune"):
            probe = _fit_probe_head(model, config, train_set, val_set, device, loss_fn, ranks)
        if _head_only(config):
            history = _probe_history(run, probe) if ranks.is_main else []  # the probe is the optimum of the head on fixed features: done
            if tracker is not None:
                tracker.on_epoch_end(None, history[0])
        else:
            optimisation = config.optimisation
            teacher = (teacher_probabilities(optimisation.distill_from, dataset.classes, [s.path for s in train_set.samples],
                                             train_set.targets, optimisation.distill_temperature, device,
                                             config.runtime.resolved_decode_cache())
                       if optimisation.distill_from else None)
            trainer = _make_trainer(model, config, train_set, val_set, run, device, progress, probe, ranks, tracker,
                                    extensions, teacher)
            if state is not None:
                trainer.load_state_dict(state)
                log.info("resuming %s after epoch %d of %d", run.root, trainer.epoch, config.optimisation.epochs)
            elif config.optimisation.time_budget_s is not None:
                trainer = fit_epochs_to_budget(trainer, config.optimisation.time_budget_s - (time.perf_counter() - started),
                                               lambda epochs: _make_trainer(model, config.with_options(epochs=epochs), train_set,
                                                                            val_set, run, device, progress, probe, ranks,
                                                                            tracker, extensions, teacher))
                config = trainer.config
            trainer.extra_state = {"data_dir": str(data_dir), "img_size": img_size}
            history = trainer.fit()
    if not ranks.is_main:  # process 0 evaluates and saves
        return TrainResult(run.root, run.bundle, {}, history, skipped, timer.summary())
    settings = _settings(config, device, data_dir, fingerprint, started_at)
    with timer.phase("evaluation"):
        finished = _finish(model, config, dataset, val_set, run, device, start.weights_source, probe, settings, history,
                           started)
    evaluation = run.evaluation
    plots = {"confusion_matrix": evaluation.confusion_png, "learning_curves": evaluation.learning_curves_png}
    tracker.finish(finished.evaluation.metrics, {name: path for name, path in plots.items() if path.is_file()})
    if config.output.report:
        with timer.phase("report"):
            _write_report(run, model, finished, history, summary, dataset, val_set, device,
                          config.runtime.resolved_decode_cache())
    log.info("trained in %.0fs: %s", timer.wall_seconds(), timer.line())
    return TrainResult(run.root, finished.bundle_dir, finished.evaluation.metrics, history, skipped, timer.summary())


def _head_only(config: TrainConfig) -> bool:
    """Whether the run is a head fitted in one go on cached frozen features, with no training loop."""
    return config.model.resolved_mode() == "freeze" and config.data.augment == "none" and config.model.cache_features


def _probe_history(run: RunDir, probe: ProbeResult) -> list[dict]:
    """One history row for a head fitted in one go, so the report and curves have it."""
    history = [{"epoch": 1, "train_loss": float("nan"), "train_accuracy": probe.train_accuracy, "lr": 0.0,
                "seconds": probe.seconds, "val_loss": probe.val_loss, "val_accuracy": probe.val_accuracy}]
    run.write_history(history)
    return history


def _write_report(run: RunDir, model: Classifier, finished: Finished, history: list[dict], summary: DataSummary,
                  dataset: LabelledImages, val_set: DecodedSplit, device: torch.device, cache: DecodeCacheOptions) -> None:
    """report.html closes every run, built from what training holds: the model in memory, the decoded
    validation images and their predictions, and an audit of the split it trained on. A report problem
    must not cost the trained model."""
    from ..data.audit import audit_dataset
    from ..predict.predictor import Predictor
    from ..report.builder import ReportInputs, write_report

    try:
        # Grad-CAM needs gradients through the layers that a frozen-backbone run switched off.
        predictor = Predictor(model.to(device).eval().requires_grad_(True), finished.bundle_config, device)
        pixels = {str(sample.path): row for sample, row in zip(val_set.samples, val_set.pixels)}
        inputs = ReportInputs(finished.bundle_config, finished.evaluation.metrics, finished.evaluation.predictions,
                              history, summary, audit_dataset(dataset, cache=cache), predictor, pixels)
        write_report(run, inputs)
    except Exception as err:  # the bundle is saved; `imgcls report RUN_DIR` can write it again
        log.warning("%s not written (%s: %s); run `imgcls report %s`", run.report.name, type(err).__name__, err,
                    run.root)


def _warn_about_batch_size(images: int, batch_size: int | None) -> None:
    """Warn when a batch size the user gave (--batch-size, or a recipe's) leaves an epoch too few steps; None, the
    default, is fitted to the data instead (defaults.choose_schedule)."""
    if batch_size is None:
        return
    steps = -(-images // batch_size)
    if steps < FEW_STEPS:
        suggested = max(MIN_BATCH, 1 << max(0, (images // MIN_STEPS_PER_EPOCH).bit_length() - 1))  # a power of two
        advice = f"use --batch-size {suggested} or smaller" if suggested < batch_size else "more images would help"
        log.warning("%d training images make %d step%s of batch %d per epoch, too few to learn much; %s",
                    images, steps, "" if steps == 1 else "s", batch_size, advice)


def _warn_about_imbalance(dataset: LabelledImages) -> None:
    """The cheap part of `imgcls audit` that needs no file read: class imbalance."""
    counts = dataset.counts()["train"]
    smallest, largest = min(counts, key=counts.get), max(counts, key=counts.get)
    if counts[smallest] * IMBALANCE_WARNING < counts[largest]:
        log.warning("classes are imbalanced: '%s' has %d training images, '%s' %d; consider --class-weights",
                    smallest, counts[smallest], largest, counts[largest])


def _warn_about_leakage(dataset: LabelledImages, records: dict[Path, FileRecord], cache: DecodeCacheOptions) -> None:
    """The part of `imgcls audit` training runs: files shared between splits, from the hashes the decode
    pass computed (`records`)."""
    leaks = find_leakage(dataset, records, cache)
    if leaks:
        example = leaks[0]["paths"]
        log.warning("%d images appear in both train and validation/test (e.g. %s); validation accuracy will be "
                    "optimistic. Run `imgcls audit %s` for the full list.", len(leaks), " = ".join(map(str, example[:2])), dataset.root)


def _data_summary(dataset: LabelledImages, data_dir: Path, fingerprint: str, img_size: int, skipped: list[dict],
                  config: TrainConfig) -> DataSummary:
    """What the run saw, and how it split it, so look-alikes and the report rebuild the same split."""
    return DataSummary(
        data_dir=str(data_dir), classes=dataset.classes, counts=dataset.counts(), img_size=img_size,
        fingerprint=fingerprint, skipped=skipped, val_split=config.data.val_split, test_split=config.data.test_split,
        seed=config.runtime.seed, multi_label=config.data.multi_label, labels_csv=config.data.labels_csv,
        manifest=config.data.manifest,
        manifest_sha256=read_manifest(config.data.manifest, data_dir).sha256 if config.data.manifest else None)
