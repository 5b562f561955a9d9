"""Every training choice, in one dataclass per concern; the checkpoint stores it so --resume rebuilds exactly.

A run also writes its settings, every option as used, as a YAML file (train.run names it); here they
are written and read back, so that `imgcls train --config RUN/args.yaml` trains with the same options.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import ImgclsError, UsageError, did_you_mean
from ..runtime import PRECISIONS

if TYPE_CHECKING:  # data.cache imports torch, which `imgcls --help` should not wait for
    from ..data.cache import DecodeCacheOptions

OPTIMIZERS = ("adamw", "adam", "sgd", "rmsprop")
SCHEDULES = ("onecycle", "triangular", "cosine", "constant", "plateau")
MODES = ("auto", "scratch", "freeze", "finetune")
# Per-optimizer defaults at batch 64; lr scales linearly with batch size (Goyal et al. 2017).
DEFAULT_LR_AT_64 = {"adamw": 2e-3, "adam": 1e-3, "sgd": 0.05, "rmsprop": 1e-3}
DEFAULT_WEIGHT_DECAY = {"adamw": 0.05, "adam": 0.0, "sgd": 5e-4, "rmsprop": 0.0}

# Named sets of defaults; options given next to a recipe win over it.
RECIPES = {
    # Small images (CIFAR-sized) in a few minutes on a CPU: the CIFAR-10 speed runs' training
    # (Page 2018, https://myrtle.ai/learn/how-to-train-your-resnet/; Jordan 2024,
    # https://arxiv.org/abs/2404.00498, whose hyperparameters these are, for a mean loss at batch 512:
    # on 2 CPU cores it trains faster per image than 1024 and gains from twice the steps): a whitened
    # first layer, shift-only BatchNorm trained 64x faster, Nesterov SGD on a short triangular schedule,
    # heavy label smoothing, Lookahead, alternating flips, and flip-and-shift TTA. 11 epochs: CIFAR-10 in
    # under 10 minutes on 2 cores (bench/cifar10.py).
    "speedrun": dict(model="speedrun-cnn", epochs=11, batch_size=512, optimizer="sgd", lr=0.75, momentum=0.85,
                     weight_decay=1.33e-3, norm_lr_scale=64, schedule="triangular", warmup_fraction=0.23,
                     label_smoothing=0.2, lookahead=True, augment="speedrun", early_stopping=0, tta="flip-shift"),
}


def option(default=None, *, name: str | None = None, saved: bool = True):
    """A field whose flat option name (--model, imgcls.train(model=...)) is `name`, not its own, or that
    args.yaml and the checkpoint leave out (saved=False: what belongs to the machine, not to the run)."""
    return field(default=default, metadata={"name": name, "saved": saved})


@dataclass
class DataOptions:
    """Which images train, how they are split and labelled, and at what size they are decoded."""

    img_size: int | None = None  # pretrained: its training size; scratch: the design size, or the images' if smaller
    max_img_size: int = 1024  # a typo like 100000 px would reserve ~900 GB of decode cache and fail with ENOMEM
    val_split: float = 0.2  # used only when the data has no validation folder
    test_split: float = 0.0  # share of the images held out for a final test, when there is no test folder
    multi_label: bool = False  # several labels per image (sigmoid per class) instead of one
    labels_csv: str | None = None  # multi-label: path,labels CSV (labels ';'-separated)
    manifest: str | None = None  # path,action,label CSV of review decisions (data.manifest): drops and relabels
    augment: str = "standard"  # a preset of data.augment.AUGMENT_PRESETS

    def validate(self) -> None:
        from ..data.augment import AUGMENT_PRESETS
        from ..models.bundle import MAX_BUNDLE_IMG_SIZE, MIN_IMG_SIZE

        _check_choice("augment", self.augment, AUGMENT_PRESETS)
        if not MIN_IMG_SIZE <= self.max_img_size <= MAX_BUNDLE_IMG_SIZE:
            raise UsageError(f"--max-img-size must be between {MIN_IMG_SIZE} and {MAX_BUNDLE_IMG_SIZE} pixels "
                             f"(a bundle may not declare more), got {self.max_img_size}")
        if self.img_size is not None and self.img_size < MIN_IMG_SIZE:
            raise UsageError(f"--img-size must be at least {MIN_IMG_SIZE} pixels, got {self.img_size}")
        if self.img_size is not None and self.img_size > self.max_img_size:
            raise UsageError(f"--img-size {self.img_size} is over the {self.max_img_size}-pixel limit; "
                             f"pass --max-img-size N to allow more (up to {MAX_BUNDLE_IMG_SIZE})")
        for flag, value in (("--val-split", self.val_split), ("--test-split", self.test_split)):
            if not 0 <= value < 1:
                raise UsageError(f"{flag} is a share of the images in [0, 1), e.g. 0.2; got {value}")


@dataclass
class ModelOptions:
    """Which network, which weights it starts from, and how those weights are adapted to the data."""

    # None: chosen for the data by train.defaults (photos: pretrained efficientnet_lite0; thumbnails: cnn-bn), or
    # the --init-from bundle's
    architecture: str | None = option(name="model")
    pretrained: bool | None = None  # None: yes for a timm model on photos, when its weights can be had
    weights: str | None = None  # local checkpoint to start from
    init_from: str | None = None  # an imgcls bundle to start from (train on one dataset, transfer to another)
    mode: str = "auto"  # scratch | freeze | finetune; auto: finetune when starting from weights, else scratch
    # finetune: head-only epochs before the backbone unfreezes (0: the head starts as a linear probe)
    head_epochs: int = 0
    cache_features: bool = True  # freeze + augment none: train the head on backbone features computed once
    layer_decay: float = 0.7  # finetune: lr multiplier per block towards the input (1 = same lr everywhere)
    tta: str = "none"  # test-time augmentation stored in the bundle for predict/evaluate/serve (none, flip)

    def starts_from_pretrained_weights(self) -> bool:
        """timm's weights or a local file of them: trained at the architecture's size, on other images."""
        return bool(self.pretrained) or self.weights is not None

    def resolved_mode(self) -> str:
        starts_trained = self.pretrained or self.weights is not None or self.init_from is not None
        if self.mode == "auto":
            return "finetune" if starts_trained else "scratch"
        return self.mode

    def validate(self) -> None:
        from ..models.classifier import TTA_MODES

        _check_choice("mode", self.mode, MODES)
        _check_choice("tta", self.tta, TTA_MODES)
        if not 0 < self.layer_decay <= 1:
            raise UsageError(f"layer_decay must be in (0, 1], got {self.layer_decay}")
        if self.architecture is not None:
            self._validate_architecture()

    def _validate_architecture(self) -> None:
        """An unknown --model is a mistake on the command line (exit 2); in a bundle it is damage (exit 1)."""
        from ..models.registry import check_model_name

        try:
            check_model_name(self.architecture)
        except ImgclsError as err:
            raise UsageError(str(err)) from None


@dataclass
class OptimisationOptions:
    """How long and how the weights are optimised: epochs, batch, optimiser, schedule, regularisation, loss."""

    epochs: int | None = None  # None: scratch 30; transfer: ~10k images seen, 5-30 epochs
    batch_size: int | None = None  # None: scratch 64, transfer 32; halved until an epoch has 8 steps
    time_budget_s: float | None = None  # --time: epochs chosen so the whole run ends within it
    optimizer: str = "adamw"  # robust across architectures with no tuning
    lr: float | None = None  # None: DEFAULT_LR_AT_64 (fine-tuning: a fifth of it) scaled to batch_size
    weight_decay: float | None = None  # None: DEFAULT_WEIGHT_DECAY (the L2 of Keras tutorials)
    momentum: float = 0.9  # SGD's (Nesterov)
    # lr multiplier for normalisation layers' parameters (the speed runs train BN shifts 64x faster)
    norm_lr_scale: float = 1.0
    schedule: str = "onecycle"  # warm-up then cosine decay: fastest to a good model at a fixed budget
    warmup_fraction: float = 0.15  # of all steps, for onecycle and triangular
    plateau_patience: int = 3  # epochs without val-loss improvement before lr *= plateau_factor
    plateau_factor: float = 0.5  # the lr's multiplier at each plateau
    early_stopping: int = 10  # epochs without val-loss improvement before stopping (0 = off); best weights restored
    ema: float = 0.0  # decay of an exponential moving average of the weights (e.g. 0.999; 0 = off)
    lookahead: bool = False  # pull the weights to their slow average every 5 steps, ending on it (callbacks.Lookahead)
    label_smoothing: float = 0.1  # single-label only; better calibrated and slightly more accurate
    class_weights: bool = False  # weight the loss by inverse class frequency, for imbalanced data
    grad_clip: float = 0.0  # max gradient norm (0 = off)
    # a (larger) imgcls bundle to distil from, trained on the same classes (train.distill)
    distill_from: str | None = None
    # softens the teacher's answers so the small ones carry signal (Hinton et al. use 1-20)
    distill_temperature: float = 4.0
    distill_alpha: float = 0.9  # weight of the teacher's term; 1 - alpha goes to the labels

    def resolved_lr(self) -> float:
        return self.lr if self.lr is not None else DEFAULT_LR_AT_64[self.optimizer] * self.batch_size / 64

    def resolved_weight_decay(self) -> float:
        return self.weight_decay if self.weight_decay is not None else DEFAULT_WEIGHT_DECAY[self.optimizer]

    def validate(self) -> None:
        _check_choice("optimizer", self.optimizer, OPTIMIZERS)
        _check_choice("schedule", self.schedule, SCHEDULES)
        for name in ("epochs", "batch_size"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise UsageError(f"{name} must be at least 1, got {getattr(self, name)}")
        if not 0 <= self.momentum < 1:
            raise UsageError(f"momentum must be in [0, 1), got {self.momentum}")
        if self.norm_lr_scale <= 0:
            raise UsageError(f"norm_lr_scale must be positive, got {self.norm_lr_scale}")
        if not 0 <= self.ema < 1:
            raise UsageError(f"ema is a decay in [0, 1), e.g. 0.999; got {self.ema}")
        if self.lr is not None and self.lr <= 0:
            raise UsageError(f"lr must be positive, got {self.lr}")
        if self.distill_temperature <= 0:
            raise UsageError(f"--distill-temperature must be positive, e.g. 4; got {self.distill_temperature}")
        if not 0 <= self.distill_alpha <= 1:
            raise UsageError(f"--distill-alpha is the teacher's weight in [0, 1], e.g. 0.9; got {self.distill_alpha}")
        if self.time_budget_s is not None and self.time_budget_s <= 0:
            raise UsageError(f"time must be positive, e.g. 10m or 90s; got {self.time_budget_s} s")


@dataclass
class RuntimeOptions:
    """Where and how the run executes; none of it changes what a run learns, except the seed."""

    seed: int = 0  # the split, the initial weights, the augmentations' and batches' order
    device: str = "auto"  # auto: cuda if available, else cpu
    precision: str = "auto"  # auto: bf16 autocast on CUDA and on CPUs with native bf16, else fp32
    compile: bool = False  # torch.compile the training step's model; slower on a 2-core CPU (bench/compile.py), so off
    workers: int | None = None  # decode threads; None: every core
    # where decoded images persist between runs; None: the environment's (the machine's, so not saved with the run)
    decode_cache: DecodeCacheOptions | None = option(saved=False)

    def resolved_decode_cache(self) -> DecodeCacheOptions:
        from ..data.cache import DecodeCacheOptions

        return self.decode_cache if self.decode_cache is not None else DecodeCacheOptions.from_environment()

    def validate(self) -> None:
        from ..data.cache import DecodeCacheOptions

        _check_choice("precision", self.precision, PRECISIONS)
        if self.decode_cache is not None and not isinstance(self.decode_cache, DecodeCacheOptions):
            raise UsageError(f"decode_cache must be an imgcls.data.cache.DecodeCacheOptions, got {self.decode_cache!r}")


@dataclass
class OutputOptions:
    """What a run writes beside its bundle."""

    logger: str = "csv"  # experiment tracking: csv (history.csv only), tensorboard or mlflow (train.tracking)
    # write report.html at the end (~2 s on small data; its audit reuses the decode pass's file hashes)
    report: bool = True

    def validate(self) -> None:
        from ..choices import LOGGERS

        _check_choice("logger", self.logger, LOGGERS)


def _check_choice(name: str, value: str, choices) -> None:
    if value not in choices:
        raise UsageError(f"unknown {name} '{value}'{did_you_mean(value, choices)} (choose from {', '.join(choices)})")


SECTIONS = {"data": DataOptions, "model": ModelOptions, "optimisation": OptimisationOptions,
            "runtime": RuntimeOptions, "output": OutputOptions}
# Flat option name (the command line's and imgcls.train's) -> (section, field): every name is unique across sections.
OPTIONS = {(f.metadata.get("name") or f.name): (section, f.name) for section, cls in SECTIONS.items() for f in fields(cls)}
SAVED_OPTIONS = [name for name, (section, attribute) in OPTIONS.items()
                 if SECTIONS[section].__dataclass_fields__[attribute].metadata.get("saved", True)]


@dataclass
class TrainConfig:
    """Every training choice, by concern. Built and changed through flat option names (from_options,
    with_options, options), the names of the command line, imgcls.train(**options), args.yaml and the
    checkpoint; read by section: config.optimisation.lr, config.model.architecture."""

    data: DataOptions = field(default_factory=DataOptions)
    model: ModelOptions = field(default_factory=ModelOptions)
    optimisation: OptimisationOptions = field(default_factory=OptimisationOptions)
    runtime: RuntimeOptions = field(default_factory=RuntimeOptions)
    output: OutputOptions = field(default_factory=OutputOptions)

    def validate(self) -> "TrainConfig":
        for section in SECTIONS:
            getattr(self, section).validate()
        if self.optimisation.distill_from is not None and self.data.multi_label:
            raise UsageError("--distill-from distils single-label models; leave it out with --multi-label")
        return self

    def options(self, saved_only: bool = False) -> dict:
        """Every option by its flat name (saved_only: those args.yaml and the checkpoint keep)."""
        return {name: getattr(getattr(self, section), attribute) for name, (section, attribute) in OPTIONS.items()
                if not saved_only or name in SAVED_OPTIONS}

    def with_options(self, **changes) -> "TrainConfig":
        """A copy with the options named flat (with_options(epochs=3, model="resnet18")) changed."""
        _check_option_names(changes)
        by_section: dict[str, dict] = {}
        for name, value in changes.items():
            section, attribute = OPTIONS[name]
            by_section.setdefault(section, {})[attribute] = value
        return replace(self, **{section: replace(getattr(self, section), **values) for section, values in by_section.items()})

    @classmethod
    def from_options(cls, options: dict | None = None, recipe: str | None = None, **more) -> "TrainConfig":
        """A config from flat options (from_options(epochs=5), or a dict, as imgcls.train(data, epochs=5) passes),
        over `recipe`'s defaults when one is named. An unknown name is a UsageError suggesting the close ones.
        A recipe's lr is for its batch size: another batch size scales it linearly, unless lr is given too."""
        options = {**(options or {}), **more}
        _check_option_names(options)
        if recipe is None:
            return cls().with_options(**options)
        if recipe not in RECIPES:
            raise UsageError(f"unknown recipe '{recipe}'{did_you_mean(recipe, RECIPES)} (choose from {', '.join(RECIPES)})")
        defaults = dict(RECIPES[recipe])
        if "lr" in defaults and "lr" not in options and "batch_size" in options:
            defaults["lr"] *= options["batch_size"] / defaults["batch_size"]
        return cls().with_options(**{**defaults, **options})

    @classmethod
    def from_saved(cls, values: dict) -> "TrainConfig":
        """The config a checkpoint saved (its options()), ignoring names this version no longer has."""
        return cls.from_options({name: value for name, value in values.items() if name in OPTIONS})


def _check_option_names(options: dict) -> None:
    for name in options:
        if name not in OPTIONS:
            raise UsageError(f"unknown training option '{name}'{did_you_mean(name, list(OPTIONS))} "
                             "(the options are imgcls.train.config.OPTIONS: TrainConfig's fields by section)")


# Settings files --------------------------------------------------------------------------------------
# Flat `key: value` lines, each value written as JSON: a JSON scalar or list is also YAML, so any YAML
# reader loads the file, while reading it back here is json.loads, never a YAML loader (no tags, no
# objects). Written by hand because PyYAML is not a dependency and flat lines need none.

DATA_KEY = "data"  # the data folder the run trained on
# Kept as a record of the run and ignored when training again: what it ran on, when, and for how long.
RECORD_KEYS = ("data_fingerprint", "started_at", "wall_time_s", "imgcls_version", "torch_version",
               "timm_version", "python_version")
# Characters YAML takes for line breaks that JSON leaves unescaped, and YAML's spellings of the floats JSON lacks.
YAML_LINE_BREAKS = {"\u0085": "\\u0085", "\u2028": "\\u2028", "\u2029": "\\u2029"}
YAML_SPECIAL_FLOATS = {".nan": math.nan, ".inf": math.inf, "-.inf": -math.inf}
YAML_WORDS = {"": None, "~": None, "null": None, "true": True, "false": False, "True": True, "False": False,
              **YAML_SPECIAL_FLOATS}


def _yaml_value(value) -> str:
    if isinstance(value, float):
        if not math.isfinite(value):
            return ".nan" if math.isnan(value) else ".inf" if value > 0 else "-.inf"
        mantissa, e, exponent = repr(value).partition("e")
        return (mantissa if "." in mantissa else mantissa + ".0") + e + exponent  # PyYAML reads 1e-05 as a string
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(map(_yaml_value, value)) + "]"
    text = json.dumps(value, ensure_ascii=False)
    for raw, escaped in YAML_LINE_BREAKS.items():
        text = text.replace(raw, escaped)
    return text


def settings_yaml(settings: dict, comment: str = "") -> str:
    """`settings` (flat: scalars and lists) as YAML, after `comment` as # lines."""
    head = "".join(f"# {line}".rstrip() + "\n" for line in comment.splitlines())
    return head + "".join(f"{key}: {_yaml_value(value)}\n" for key, value in settings.items())


def _parse_yaml_value(text: str, where: str):
    text = text.strip()
    if text in YAML_WORDS:
        return YAML_WORDS[text]
    try:
        return json.loads(text)
    except ValueError:
        pass
    if " #" in text:  # a comment after the value, as a person may add one
        return _parse_yaml_value(text.split(" #", 1)[0], where)
    if len(text) >= 2 and text[0] == text[-1] == "'":
        return text[1:-1].replace("''", "'")
    if text[0] in "\"'[]{}&*!|>%@`,":
        raise UsageError(f"{where}: cannot read the value {text!r}; write strings in double quotes and lists "
                         'as [1, 2] or ["a", "b"]')
    return text  # a plain word: `model: resnet18`


def parse_settings_yaml(text: str, where: str) -> dict:
    """The flat `key: value` lines settings_yaml writes (or a person edits), back as a dict; `where` names the
    file in errors."""
    settings: dict = {}
    for number, line in enumerate(text.replace("\r\n", "\n").split("\n"), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        key, colon, value = line.partition(":")
        if not colon or not key.isidentifier() or line[0].isspace():
            raise UsageError(f"{where} line {number}: expected a flat `name: value` line, got {line.strip()[:80]!r}")
        if key in settings:
            raise UsageError(f"{where} line {number}: '{key}' is set twice")
        settings[key] = _parse_yaml_value(value, f"{where} line {number}")
    return settings


def read_settings(path: str | Path) -> tuple[str | None, dict]:
    """The data folder and the training options of a settings file (a run's args.yaml), to train again
    with them; the record of the run it holds (versions, times) is left out."""
    path = Path(path).expanduser()
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, ValueError) as err:
        raise UsageError(f"cannot read the settings file '{path}': {err}") from None
    settings = parse_settings_yaml(text, str(path))
    data = settings.pop(DATA_KEY, None)
    options = {key: value for key, value in settings.items() if key not in RECORD_KEYS}
    for name in options:
        if name not in SAVED_OPTIONS:
            raise UsageError(f"'{path}': unknown training option '{name}'{did_you_mean(name, SAVED_OPTIONS + [DATA_KEY])}")
    return data, options
