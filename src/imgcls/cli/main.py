"""The `imgcls` command: argument parsing, logging, and one error boundary around the library.

Every sub-command calls the same public function a Python user would; known errors become one
line on stderr and an exit status, tracebacks appear only with --debug.
"""
from __future__ import annotations

import argparse
import copy
import functools
import itertools
import json
import logging
import os
import select
import shlex
import sys
import time
from pathlib import Path

# Only light modules here and in the parser builders: `imgcls --help` answers without importing torch,
# timm or matplotlib, which each command imports when it runs (tests/test_cli.py checks it).
from .. import __version__
from ..choices import AUGMENT_PRESETS, ENGINES, EXPLAIN_METHODS, TTA_MODES
from ..errors import ExitStatus, ImgclsError, UsageError

log = logging.getLogger("imgcls")

EPILOG_TRAIN = """examples:
  imgcls train data/                       # data/train/<class>/*, data/validation/<class>/*
  imgcls train photos/ --val-split 0.2     # photos/<class>/*, split here
  imgcls train data/ --time 10m            # as many epochs as end the whole run in 10 minutes
  imgcls train data/ --freeze --augment none   # a linear probe on frozen ImageNet features: seconds
  imgcls train data/ --model resnet50 --weights resnet50.safetensors   # your own starting weights
  imgcls train data/ --no-pretrained --model seed-cnn --img-size 150 --augment seed --epochs 50
  imgcls train --resume runs/data          # continue an interrupted run
  imgcls train data/ --distill-from runs/big --model mobilenetv3_small_100   # a small model taught by a big one

photos (images of 64 px or more) start from ImageNet weights: efficientnet_lite0 fine-tuned from a
linear probe; thumbnails (CIFAR, MNIST) train cnn-bn from scratch. Without cached weights and no
network, the run says so and trains from scratch."""

EPILOG_AUDIT = """examples:
  imgcls audit data/                       counts, sizes, corrupt files, duplicates, leakage (seconds)
  imgcls audit data/ --labels              also wrong labels, off-topic and low-quality images, and a review page
  imgcls train data/ --manifest decisions.csv     train with the decisions saved from that page
"""
EPILOG_SERVE = """examples:
  imgcls serve runs/data                   # page at http://127.0.0.1:8000, API docs at /docs
  imgcls serve runs/data --host 0.0.0.0 --allowed-host mybox.lan   # reachable from other machines,
                                                                    # answering only for that name
  imgcls serve runs/data --cors https://app.example.com             # let that site's pages call the API
  curl -F files=@photo.jpg 'http://127.0.0.1:8000/predict?top_k=3'"""

EPILOG_EXPORT = """examples:
  imgcls export runs/data                  # writes runs/data/model/model.onnx
  imgcls predict runs/data photos/ --engine onnx
  imgcls export runs/data --out deploy/classifier.onnx --check-images photos/
  imgcls export runs/data --int8           # also model.int8.onnx, if it loses at most 1 point of top-1
  imgcls predict runs/data photos/ --engine onnx-int8"""

EPILOG_EXPLAIN = """examples:
  imgcls explain runs/data photo.jpg                          # Grad-CAM of the predicted class: runs/data/explanations/
  imgcls explain runs/data photos/ --method integrated-gradients --out maps/
  imgcls explain runs/data photo.jpg --class cat --layer layer3
  imgcls explain runs/data photos/ --method blocks            # one map per block, shallow to deep
  imgcls explain runs/data photos/ --faithfulness             # deletion test: map order vs random order"""

EPILOG_PREDICT = """examples:
  imgcls predict runs/data photo.jpg                                       # a table on the terminal
  imgcls predict runs/data photos/ --format csv --out predictions.csv           # rows written as they come
  imgcls predict runs/data photos/ --format csv --out predictions.csv --resume  # after a kill: the rest
  imgcls predict runs/data photos/ --format jsonl --shard 0/4 --out part0.jsonl # machine 1 of 4
  cat part0.jsonl part1.jsonl part2.jsonl part3.jsonl > all.jsonl  # = one run's output (csv, table too)
  jq -s add part*.json > all.json                                  # --format json: an array per shard

Images are decoded and predicted a chunk at a time: memory stays bounded for any number of them. Under
torchrun, --shard $RANK/$WORLD_SIZE gives each process its block of the inputs.

exit status:
  0  every image was predicted
  1  some image could not be read: each gets a row with its error, a warning counts them, and the
     others still get their rows (a script sees the failure without parsing the output)
  2  the command line was wrong: a --shard outside 0 <= K < N, an --out FILE that exists without --resume"""

EPILOG_PUSH = """examples:
  imgcls push runs/data alice/flowers                 # the bundle and a model card, as a public repo
  imgcls push runs/data alice/flowers --private --revision v2 --license apache-2.0
  imgcls push runs/data alice/flowers --dry-run staged/   # write the files to read first; upload nothing
  imgcls predict hf://alice/flowers photo.jpg         # anywhere, by anyone who may read the repo
  imgcls predict hf://alice/flowers@v2 photo.jpg      # a branch, tag or commit

Log in once with `hf auth login` (a token with write access), or set HF_TOKEN."""

EPILOG_SIMILAR = """examples:
  imgcls similar runs/data photo.jpg --k 5                    # nearest training images: JSON, PNGs in runs/data/similar/
  imgcls similar runs/data photos/ --data other_train_dir/"""


class _HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Ends each option's help with its default, unless the help names one already or the option is a
    flag. `defaults` stands in for options whose own default is SUPPRESS: train's, which a --recipe fills."""

    def __init__(self, prog: str, defaults: dict | None = None, **kwargs):
        super().__init__(prog, **kwargs)
        self.defaults = defaults or {}

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if (not action.option_strings or text == argparse.SUPPRESS or "default" in text.lower()
                or (action.nargs == 0 and not isinstance(action, argparse.BooleanOptionalAction))):
            return text
        default = self.defaults.get(action.dest) if action.default is argparse.SUPPRESS else action.default
        if isinstance(default, bool):
            shown = "on" if default else "off"
        else:
            shown = "none" if default is None or default == [] else str(default)
        return f"{text} (default: {shown.replace('%', '%%')})".lstrip()  # argparse %-formats help

    def _format_action(self, action: argparse.Action) -> str:
        if action.help is None and action.option_strings:  # argparse writes nothing for it: write the default
            action = copy.copy(action)
            action.help = self._get_help_string(action)
        return super()._format_action(action)


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line and a pointer to help, instead of a full usage dump
        raise UsageError(f"{message} (see '{self.prog} --help')")


GLOBAL_FLAGS = (("--debug", "show tracebacks"), ("--quiet", "warnings and errors only"))


class _CommandParser(_Parser):
    """A sub-command's parser: the global flags also work after the command (`imgcls predict B x.png --quiet`).
    SUPPRESS keeps a flag out of the namespace where it is not given here, so one given before the command stands."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", _HelpFormatter)
        super().__init__(*args, **kwargs)
        group = self.add_argument_group("global options")
        for flag, help_text in GLOBAL_FLAGS:
            group.add_argument(flag, action="store_true", default=argparse.SUPPRESS, help=help_text)


def _duration(text: str) -> float:
    """--time's type, importing train.time_budget (and so torch) only when --time is given."""
    from ..train.time_budget import parse_duration

    return parse_duration(text)


def _train_parser(commands) -> None:
    from ..choices import LOGGERS
    from ..runtime import PRECISIONS
    from ..train.config import OPTIMIZERS, RECIPES, SCHEDULES, TrainConfig

    d = TrainConfig()
    # Options left out are absent from the namespace (SUPPRESS), so a --recipe's values apply only where the user gave none.
    p = commands.add_parser("train", help="train a classifier on a folder of images", epilog=EPILOG_TRAIN,
                            formatter_class=functools.partial(_HelpFormatter, defaults=d.options()),
                            argument_default=argparse.SUPPRESS)
    p.set_defaults(func=cmd_train)
    p.add_argument("data", nargs="?", default=None, help="image folder (optional with --resume)")
    p.add_argument("--out", type=Path, default=None, help="run folder to write (default: runs/<data folder name>)")
    p.add_argument("--resume", type=Path, default=None, metavar="RUN_DIR",
                   help="continue the interrupted run in RUN_DIR (default: start a new run)")
    p.add_argument("--config", type=Path, default=None, metavar="ARGS_YAML",
                   help="train with the settings of an earlier run (its RUN_DIR/args.yaml), data folder included; "
                        "options given here win over the file's")
    p.add_argument("--recipe", choices=RECIPES, default=None,
                   help="a tuned set of defaults; speedrun: small images (CIFAR-sized) to high accuracy in minutes")
    g = p.add_argument_group("model")
    g.add_argument("--model", help="built-in (seed-cnn, lenet5, cnn-bn, speedrun-cnn) or any timm name (default: "
                                    "efficientnet_lite0 for photos, cnn-bn for images under 64 px)")
    g.add_argument("--img-size", type=int, help="square input size in pixels (default: the pretrained weights' size; "
                                                "from scratch the model's, or the images' if smaller)")
    g.add_argument("--max-img-size", type=int, metavar="N",
                   help="the largest --img-size accepted (default 1024: each image costs N*N*3 bytes of decode cache)")
    g.add_argument("--pretrained", action=argparse.BooleanOptionalAction,
                   help="start from timm's ImageNet weights, from the Hugging Face cache or downloaded (default: yes "
                        "for timm models on photos when they can be had)")
    g.add_argument("--weights", metavar="FILE", help="start from a local checkpoint (.safetensors or state dict)")
    g.add_argument("--init-from", metavar="BUNDLE", help="start from another imgcls bundle (transfer to new classes)")
    g = p.add_argument_group("distillation")
    g.add_argument("--distill-from", metavar="TEACHER_BUNDLE",
                   help="also learn from a larger imgcls bundle's answers (same classes): a small --model gains "
                        "accuracy")
    g.add_argument("--distill-temperature", type=float, metavar="T", help="softening of the teacher's answers")
    g.add_argument("--distill-alpha", type=float, metavar="A", help="the teacher's weight in the loss; 1 - A goes to the labels")
    g = p.add_argument_group("transfer learning")
    mode = g.add_mutually_exclusive_group()
    mode.add_argument("--freeze", dest="mode", action="store_const", const="freeze",
                      help="train only a new head on the frozen backbone (with --augment none: on cached features)")
    mode.add_argument("--finetune", dest="mode", action="store_const", const="finetune",
                      help="head first, then the whole network with layer-wise lr decay (default when starting from weights)")
    g.add_argument("--head-epochs", type=int, help="finetune: head-only epochs before unfreezing (default 0: the "
                                                 "head starts as a linear probe)")
    g.add_argument("--layer-decay", type=float, help="finetune: lr multiplier per block towards the input")
    g = p.add_argument_group("optimisation")
    g.add_argument("--epochs", type=int, help="(default: 30 from scratch; transfer: about 10,000 images seen, 5-30 epochs)")
    g.add_argument("--time", dest="time_budget_s", type=_duration, metavar="DURATION",
                   help="end the whole run within this time (90s, 10m, 1.5h; a bare number is minutes): the "
                        "epochs are chosen from a few timed steps, with the full learning-rate schedule "
                        "(default: no time limit)")
    g.add_argument("--batch-size", type=int, help="(default: 64 from scratch, 32 transfer; halved on small data "
                                                  "until an epoch has 8 steps)")
    g.add_argument("--optimizer", choices=OPTIMIZERS)
    g.add_argument("--lr", type=float, help="peak learning rate (default: per optimizer, scaled to the batch size)")
    g.add_argument("--weight-decay", type=float, help="L2 / decoupled weight decay (default: per optimizer)")
    g.add_argument("--schedule", choices=SCHEDULES, help="plateau = reduce-LR-on-plateau")
    g.add_argument("--plateau-patience", type=int)
    g.add_argument("--early-stopping", type=int, metavar="PATIENCE", help="0 turns it off")
    g.add_argument("--label-smoothing", type=float)
    g.add_argument("--ema", type=float, metavar="DECAY", help="average the weights (e.g. 0.999); 0 = off")
    g.add_argument("--lookahead", action=argparse.BooleanOptionalAction,
                   help="every 5 steps pull the weights to their slow average, ending on it")
    g.add_argument("--momentum", type=float, help=f"SGD momentum (default {d.optimisation.momentum})")
    g.add_argument("--norm-lr-scale", type=float, metavar="X", help="lr multiplier for normalisation layers (default 1)")
    g.add_argument("--class-weights", action="store_true", help="weight the loss against class imbalance")
    g.add_argument("--grad-clip", type=float, metavar="NORM")
    g.add_argument("--seed", type=int)
    g = p.add_argument_group("data")
    g.add_argument("--augment", choices=AUGMENT_PRESETS)
    g.add_argument("--val-split", type=float, help="used when there is no validation folder")
    g.add_argument("--test-split", type=float)
    g.add_argument("--multi-label", action="store_true", help="several labels per image (sigmoid + BCE)")
    g.add_argument("--labels", dest="labels_csv", metavar="CSV", help="multi-label labels: path,labels (';'-separated)")
    g.add_argument("--manifest", metavar="CSV", help="review decisions to apply (path,action,label: keep, relabel or "
                                                    "drop), as saved by the page of `imgcls audit --labels`")
    g.add_argument("--tta", choices=TTA_MODES, help="test-time augmentation stored in the bundle (default none)")
    g.add_argument("--device", help="auto, cpu, cuda, cuda:N")
    g.add_argument("--precision", choices=PRECISIONS,
                   help="auto (default): bf16 autocast on CUDA and on CPUs with native bf16 (AVX512-BF16, AMX), else fp32")
    g.add_argument("--compile", action="store_true", help="torch.compile the model (pays on GPUs; slower on small CPUs)")
    g.add_argument("--no-progress", action="store_true", default=False, help="no progress bar (log lines only)")
    g.add_argument("--no-report", dest="report", action="store_false", help="skip report.html at the end")
    g.add_argument("--logger", choices=LOGGERS, help="also track the run in TensorBoard (RUN/tensorboard/) or MLflow "
                                                     "($MLFLOW_TRACKING_URI, else RUN/mlruns/); csv: history.csv only")
    g = p.add_argument_group("more than one process (see also: torchrun ... -m imgcls train)")
    g.add_argument("--nproc", type=int, default=None, metavar="N",
                   help="N processes on this machine, one per GPU (or sharing the CPU cores), through torchrun; "
                        "--batch-size and --lr stay those of the whole batch (default: this one process)")
    g.add_argument("--max-restarts", type=int, default=0, metavar="K",
                   help="with --nproc: after a failure, start the processes again up to K times, continuing from the "
                        "last checkpoint (default 0)")


def _serve_parser(commands) -> None:
    from ..serve.config import ServeConfig

    d = ServeConfig()
    p = commands.add_parser("serve", help="a local web page and JSON API for a bundle", epilog=EPILOG_SERVE)
    p.set_defaults(func=cmd_serve)
    p.add_argument("bundle", help="run folder or its model/ folder")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: this machine only)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--workers", type=int, default=1, help="processes, each with its own copy of the model")
    p.add_argument("--device", default="auto")
    p.add_argument("--engine", choices=("auto", *ENGINES), default="auto",
                   help="what runs predictions; auto = ONNX Runtime on model.int8.onnx (imgcls export --int8), "
                        "else model.onnx (imgcls export), when the bundle has one")
    p.add_argument("--data", dest="data_dir", metavar="TRAIN_DIR",
                   help="training images for look-alikes (default: the run's own, from its data.json)")
    g = p.add_argument_group("limits and batching")
    g.add_argument("--max-upload-mb", type=float, default=d.max_upload_mb, help="per request; larger gets 413")
    g.add_argument("--max-files", type=int, default=d.max_files, help="images per request")
    g.add_argument("--max-megapixels", type=float, default=d.max_megapixels,
                   help="per image, read from its header before decoding; larger gets 413")
    g.add_argument("--decode-threads", type=int, default=d.decode_threads,
                   help="images decoded at once: bounds the memory a burst of large images takes")
    g.add_argument("--max-batch", type=int, default=d.max_batch, help="images per model call; 1 turns batching off")
    g.add_argument("--batch-window-ms", type=float, default=d.batch_window_ms, help="wait for requests to batch together")
    a = p.add_argument_group("access")
    a.add_argument("--allowed-host", dest="allowed_hosts", action="append", default=[], metavar="NAME",
                   help="also answer requests for this Host name (repeatable; e.g. mybox.lan, '*.example.com'). "
                        "Other names get 400, against DNS rebinding. Default: the --host address, and localhost "
                        "on loopback; with --host 0.0.0.0 and no name, any Host")
    a.add_argument("--cors", dest="cors_origins", action="append", default=[], metavar="ORIGIN",
                   help="let pages from this origin read the answers (repeatable; e.g. https://example.com). Default: none")


def _export_parser(commands) -> None:
    p = commands.add_parser("export", help="export a bundle to ONNX, checked against PyTorch", epilog=EPILOG_EXPORT)
    p.set_defaults(func=cmd_export)
    p.add_argument("bundle", help="run folder or its model/ folder")
    p.add_argument("--format", choices=("onnx",), default="onnx")
    p.add_argument("--out", type=Path, metavar="FILE", help="default: BUNDLE/model.onnx, where --engine onnx finds it")
    p.add_argument("--tolerance", type=float, metavar="MAX_DIFF",
                   help="largest score difference from PyTorch accepted (default 1e-4)")
    p.add_argument("--check-images", nargs="+", metavar="PATH",
                   help="images to compare on (default: the bundle's validation images, else generated ones)")
    g = p.add_argument_group("int8 (--int8)")
    g.add_argument("--int8", action="store_true",
                   help="also write model.int8.onnx: quantised on training images, then checked against the fp32 "
                        "export on the validation split (top-1, per-class recall, calibration, agreement)")
    g.add_argument("--max-drop", type=float, metavar="POINTS",
                   help="refuse the int8 model (keeping the fp32 one) if it loses more top-1 percentage points than "
                        "this (default 1.0)")
    g.add_argument("--calibration-images", type=int, metavar="N",
                   help="training images that set the int8 activation ranges (default 256)")
    g.add_argument("--data", dest="data_dir", metavar="DATA_DIR",
                   help="the run's data folder, if it moved (default: the one its data.json records)")


def _explain_parser(commands) -> None:
    p = commands.add_parser("explain", help="why the model decided: maps over the images", epilog=EPILOG_EXPLAIN)
    p.set_defaults(func=cmd_explain)
    p.add_argument("bundle", help="run folder or its model/ folder")
    p.add_argument("inputs", nargs="+", metavar="IMAGE", help="image files, folders or glob patterns")
    p.add_argument("--method", default="gradcam", metavar="M", help=f"{', '.join(EXPLAIN_METHODS)} (default gradcam)")
    p.add_argument("--out", type=Path, metavar="DIR",
                   help="folder for the PNGs and .npy maps (default: RUN_DIR/explanations); one holding earlier "
                        "maps is kept and DIR-2, DIR-3, ... written instead")
    p.add_argument("--class", dest="class_name", metavar="NAME", help="explain this class (default: the prediction)")
    p.add_argument("--layer", metavar="NAME",
                   help="layer for gradcam, gradcam++, feature-maps, filters (default: the model's; see imgcls layers)")
    p.add_argument("--faithfulness", action="store_true",
                   help="deletion test: how much faster the score drops removing salient pixels than random ones")
    p.add_argument("--device", default="auto")


def _similar_parser(commands) -> None:
    p = commands.add_parser("similar", help="the training images the model finds most alike", epilog=EPILOG_SIMILAR)
    p.set_defaults(func=cmd_similar)
    p.add_argument("bundle", help="run folder or its model/ folder")
    p.add_argument("inputs", nargs="+", metavar="IMAGE", help="image files, folders or glob patterns")
    p.add_argument("--k", type=int, default=5, help="look-alikes per image")
    p.add_argument("--data", metavar="TRAIN_DIR", help="training images (default: the run's data folder)")
    p.add_argument("--out", type=Path, metavar="DIR",
                   help="folder for the side-by-side PNGs and similar.json (default: RUN_DIR/similar); one holding "
                        "earlier results is kept and DIR-2, DIR-3, ... written instead")
    p.add_argument("--device", default="auto")


def _push_parser(commands) -> None:
    p = commands.add_parser("push", help="share a bundle on the Hugging Face Hub, with a model card", epilog=EPILOG_PUSH)
    p.set_defaults(func=cmd_push)
    p.add_argument("bundle", metavar="RUN_OR_BUNDLE", help="run folder or its model/ folder")
    p.add_argument("repo_id", metavar="USER/REPO", help="the Hub model repo, created if absent")
    p.add_argument("--private", action="store_true", help="create the repo private (an existing one keeps its visibility)")
    p.add_argument("--token", metavar="T", help="a Hugging Face token with write access (default: HF_TOKEN, else the "
                                                 "one `hf auth login` saved; both keep it out of the shell history)")
    p.add_argument("--revision", metavar="BRANCH", help="push to this branch, created if absent (default: main)")
    p.add_argument("--license", metavar="ID", help="license named in the model card, e.g. apache-2.0, mit, cc-by-4.0 "
                                                   "(default: none stated)")
    p.add_argument("--dry-run", type=Path, metavar="DIR", help="write the files into DIR (new or empty) and upload nothing")


def _explain_commands(commands) -> None:
    _explain_parser(commands)
    p = commands.add_parser("layers", help="list the layers explain can map, with their output shapes")
    p.set_defaults(func=cmd_layers)
    p.add_argument("bundle", help="run folder or its model/ folder")
    p.add_argument("--device", default="auto")
    _similar_parser(commands)
    p = commands.add_parser("report", help="write report.html for a training run: data, metrics, mistakes, calibration")
    p.set_defaults(func=cmd_report)
    p.add_argument("run_dir", metavar="RUN_DIR")
    p.add_argument("--out", type=Path, metavar="FILE", help="default: RUN_DIR/report.html")
    p.add_argument("--device", default="auto")


TTA_HELP = ("test-time augmentation: flip averages with the mirrored image, flip-shift also with two shifted "
            "pairs (default: the bundle's, set by its recipe)")


ENGINE_HELP = ("onnx: run model.onnx (after imgcls export); onnx-int8: model.int8.onnx (after imgcls export --int8), "
               "smaller and faster on CPUs")


def _add_commands(parser: argparse.ArgumentParser) -> None:
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True, parser_class=_CommandParser)
    _train_parser(commands)
    p = commands.add_parser("evaluate", help="score a bundle on labelled images")
    p.set_defaults(func=cmd_evaluate)
    p.add_argument("bundle", help="run folder or its model/ folder")
    p.add_argument("data", help="image folder (its test split, else validation, else every image)")
    p.add_argument("--out", type=Path, help="folder for metrics and plots (default: RUN_DIR/evaluation-<data folder name>-<split>, "
                                           "or its -2, -3, ... when that holds an earlier evaluation)")
    p.add_argument("--split", help="train, validation or test (default: test, else validation, else every image)")
    p.add_argument("--labels", dest="labels_csv", metavar="CSV")
    p.add_argument("--format", choices=("table", "json"), default="table")
    p.add_argument("--device", default="auto")
    p.add_argument("--tta", choices=TTA_MODES, help=TTA_HELP)
    p.add_argument("--engine", choices=ENGINES, default="torch", help=ENGINE_HELP)
    p = commands.add_parser("predict", help="predict classes of new images", epilog=EPILOG_PREDICT)
    p.set_defaults(func=cmd_predict)
    p.add_argument("bundle")
    p.add_argument("inputs", nargs="+", metavar="PATH", help="image files, folders or glob patterns")
    p.add_argument("--top-k", type=int, default=5)
    p.add_argument("--format", choices=("table", "json", "jsonl", "csv"), default="table",
                   help="jsonl: a JSON object per line; csv: a line per rank")
    p.add_argument("--unknown-below", type=float, metavar="P",
                   help="answer 'unknown' when the top score is below P (default: the bundle's, from calibrate-unknown; "
                        "else never)")
    p.add_argument("--device", default="auto")
    p.add_argument("--tta", choices=TTA_MODES, help=TTA_HELP)
    p.add_argument("--engine", choices=ENGINES, default="torch", help=ENGINE_HELP)
    g = p.add_argument_group("large folders")
    g.add_argument("--out", type=Path, metavar="FILE",
                   help="write the rows to FILE, a chunk at a time, and a summary to stdout; an existing FILE is "
                        "never overwritten (default: the rows to stdout)")
    g.add_argument("--resume", action="store_true",
                   help="continue the --out FILE of an interrupted run: keep its rows, predict the others (csv, jsonl)")
    g.add_argument("--shard", metavar="K/N", help="predict only block K (from 0) of N near-equal blocks of the inputs, "
                                                   "in their order: shards 0/N ... N-1/N together are the whole output "
                                                   "(default: all)")
    p = commands.add_parser("calibrate-unknown", help="choose when predict answers 'unknown', from outlier images")
    p.set_defaults(func=cmd_calibrate_unknown)
    p.add_argument("bundle")
    p.add_argument("--data", required=True, help="labelled in-distribution images (test, else validation, split)")
    p.add_argument("--outliers", required=True, help="folder of images of none of the classes")
    p.add_argument("--no-save", action="store_true", help="report only; do not store the threshold in the bundle")
    p.add_argument("--format", choices=("table", "json"), default="table")
    p = commands.add_parser("audit", help="check a dataset: counts, imbalance, corrupt files, duplicates, leakage; "
                                          "with --labels also wrong labels, off-topic and low-quality images",
                            epilog=EPILOG_AUDIT)
    p.set_defaults(func=cmd_audit)
    p.add_argument("data")
    p.add_argument("--format", choices=("table", "json"), default="table")
    p.add_argument("--val-split", type=float, default=0.2)
    p.add_argument("--seed", type=int, default=0)
    g = p.add_argument_group("labels (--labels)")
    g.add_argument("--labels", dest="check_labels", action="store_true",
                   help="find images whose label looks wrong, that fit no class, or are of poor quality, and write a "
                        "review page (minutes on a CPU for thousands of images)")
    g.add_argument("--review", type=Path, metavar="HTML",
                   help="where to write the review page (default: DATA-review.html in the current folder)")
    g.add_argument("--folds", type=int, default=5, help="cross-validation folds for the label check (default 5)")
    g.add_argument("--no-pretrained", dest="pretrained", action="store_false",
                   help="compare images by their pixels rather than an ImageNet backbone's features")
    g.add_argument("--device", default="auto")
    p = commands.add_parser("models", help="list built-in models and timm architectures, with their pretrained "
                                           "weights and good starting points per device")
    p.set_defaults(func=cmd_models)
    p.add_argument("pattern", nargs="?", default="", help="substring filter, e.g. mobilenet")
    p = commands.add_parser("demo", help="train, evaluate and predict on the bundled digits dataset")
    p.set_defaults(func=cmd_demo)
    p.add_argument("--out", type=Path, default=Path("demo-output"))
    _serve_parser(commands)
    _export_parser(commands)
    _explain_commands(commands)
    _push_parser(commands)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="imgcls", description="From a folder of labelled images to a trained, evaluated classifier.")
    parser.add_argument("--version", action="version", version=f"imgcls {__version__}")
    for flag, help_text in GLOBAL_FLAGS:
        parser.add_argument(flag, action="store_true", help=help_text)
    _add_commands(parser)
    return parser


def _launch_processes(args) -> int:
    """--nproc N: this same command as N processes under torchrun, all writing one run folder,
    which is therefore decided here (a restarted job finds its checkpoint there)."""
    from .. import distributed
    from ..rundir import choose_run_dir

    if distributed.from_environment().active:
        raise UsageError("--nproc starts the processes itself; under torchrun leave it out")
    argv = distributed.without_option(distributed.without_option(args.argv, "--nproc"), "--max-restarts")
    run_dir = args.resume
    if not args.resume:
        run_dir = choose_run_dir(args.data, args.out).root
        argv = distributed.without_option(argv, "--out") + ["--out", str(run_dir)]
    distributed.launch(args.nproc, args.max_restarts, argv, run_dir)
    return ExitStatus.OK


def cmd_train(args) -> int:
    from .. import distributed
    from ..rundir import RunDir, choose_run_dir
    from ..runtime import resolve_device
    from ..train.config import OPTIONS, TrainConfig, read_settings
    from ..train.run import train

    file_data, file_options = read_settings(args.config) if args.config else (None, {})
    args.data = args.data or file_data  # DATA given here wins over the file's, as every option does
    if args.nproc is not None:
        return _launch_processes(args)
    given = {name: getattr(args, name) for name in OPTIONS if getattr(args, name, None) is not None}
    config = TrainConfig.from_options({**file_options, **given}, args.recipe)
    # Under torchrun every process runs this; they agree on one run folder, process 0's.
    ranks, _ = distributed.join(resolve_device(config.runtime.device))
    if args.resume:
        run, resume = RunDir(args.resume), True
    elif distributed.restarted() and args.out and RunDir(args.out).checkpoint.exists():  # torchrun --max-restarts
        run, resume = RunDir(args.out), True
    else:  # train() refuses a folder that holds a run, on every process, before any writes
        run, resume = RunDir(distributed.broadcast_object(args.out or choose_run_dir(args.data, None).root, ranks)), False
    result = train(args.data, run.root, None if resume else config, resume=resume, progress=not args.no_progress)
    if not ranks.is_main:  # process 0 tells
        return ExitStatus.OK
    from . import render

    run = RunDir(result.run_dir)
    print(render.metrics_summary(result.metrics))
    print(f"\nmodel:      {result.bundle_dir}\nevaluation: {run.evaluation.root}\nhistory:    {run.history}"
          + (f"\nreport:     {run.report}" if run.report.is_file() else ""))
    return ExitStatus.OK


def cmd_evaluate(args) -> int:
    from ..evaluate.evaluation import evaluate
    from . import render

    metrics, out_dir = evaluate(args.bundle, args.data, args.out, args.split, args.labels_csv, args.device, args.tta,
                                args.engine)
    if args.format == "json":
        print(json.dumps(metrics, indent=2))
    else:
        scored = "every image" if metrics["split"] == "all" else f"the {metrics['split']} split"
        print(f"{scored} of {args.data}\n{render.metrics_summary(metrics)}\n\nwritten to {out_dir}")
    return ExitStatus.OK


def _write_predictions(predictor, paths: list, writer, errors: dict, total: int, top_k: int,
                       unknown_below: float | None) -> None:
    """Predict `paths` a chunk at a time and write each chunk's rows as it comes, but those of images that
    `errors` already holds (written before --resume); `errors` gains each new image's error (None when read).
    The bar, on terminals only, counts `total` images, those done before included."""
    from tqdm.auto import tqdm

    written_before = set(errors)
    with tqdm(total=total, initial=len(written_before), desc="predicting", unit="img", disable=None) as bar:
        for results in predictor.predict_chunks(paths, top_k, unknown_below):
            new = [r for r in results if r["path"] not in written_before]
            writer.write(new)
            errors.update((r["path"], r["error"]) for r in new)
            bar.update(len(new))
    writer.close()


def cmd_predict(args) -> int:
    from ..data.folders import find_inputs
    from ..predict.batch import Shard, check_rows_file, finished_rows, open_rows, resume_from
    from ..predict.predictor import UNKNOWN, Predictor
    from . import render

    shard = Shard() if args.shard is None else Shard.parse(args.shard)
    check_rows_file(args.out, args.format, args.resume)
    inputs = find_inputs(args.inputs)
    if not inputs:
        raise ImgclsError("no images found in the given paths")
    predictor = Predictor.load(args.bundle, args.device, args.engine, args.tta)
    # from every input, not this shard's: the tables of all shards line up as one
    widths = render.table_widths([i.path for i in inputs], [*predictor.classes, UNKNOWN])
    block, head = shard.block(inputs, predictor.batch_size), shard.index == 0
    errors, keep = finished_rows(args.out, args.format, render.CSV_COLUMNS, head) if args.resume else ({}, None)
    start, before = resume_from([i.path for i in block], errors, args.out, predictor.batch_size), len(errors)
    stream = open_rows(args.out, keep) if args.out else sys.stdout
    try:
        writer = render.PredictionWriter(stream, args.format, widths, head and not keep)  # a continued file has it
        _write_predictions(predictor, [i.path for i in block[start:]], writer, errors, len(block), args.top_k,
                           args.unknown_below)
    finally:  # on Ctrl-C too: main's interrupted_message says how to continue
        if args.out:
            stream.close()
    failed = [i for i in block if errors[str(i.path)]]
    named = sum(i.named for i in failed)
    if failed:
        log.warning("%d of %d images could not be read%s", len(failed), len(block),
                    f" ({named} named on the command line)" if named else "")
    if args.out:
        print(f"wrote the predictions of {len(block)} images to {args.out} ({len(failed)} unreadable"
              + (f"; {before} were there before --resume)" if args.resume else ")"))
    return ExitStatus.ERROR if failed else ExitStatus.OK


def cmd_export(args) -> int:
    from ..data.folders import expand_inputs
    from ..export.onnx import TOLERANCE, export_onnx

    tolerance = TOLERANCE if args.tolerance is None else args.tolerance
    result = export_onnx(args.bundle, args.out, tolerance, expand_inputs(args.check_images) if args.check_images else None)
    checked = ", ".join(f"{count} {source}" for source, count in result.checked.items())
    print(f"{result.path}\nmax difference from PyTorch: {result.max_score_diff:.1e} in scores (tolerance {tolerance:.0e}), "
          f"{result.max_logit_diff:.1e} in logits; on {checked}")
    if args.int8:
        from ..export.quantize import CALIBRATION_IMAGES, MAX_DROP_POINTS, export_int8
        from . import render

        int8 = export_int8(args.bundle, result.path, MAX_DROP_POINTS if args.max_drop is None else args.max_drop,
                           CALIBRATION_IMAGES if args.calibration_images is None else args.calibration_images,
                           args.data_dir)
        print(f"{int8.path}\n{render.int8_check(int8.record)}")
        _refresh_report(args.bundle)
    return ExitStatus.OK


def _refresh_report(bundle: str) -> None:
    """The run's report.html, written again to show what was just added to its bundle's config.json."""
    from ..models.bundle import outputs_folder
    from ..rundir import RunDir

    run = RunDir(outputs_folder(bundle))
    if run.report.is_file():
        from ..report.builder import report_run

        report_run(run.root)


def cmd_push(args) -> int:
    from ..export.hub import push

    result = push(args.bundle, args.repo_id, args.private, args.token, args.revision, args.dry_run, args.license)
    files = "\n".join(f"  {name}" for name in result.files)
    if result.url is None:
        print(f"wrote {len(result.files)} files to {result.folder} (nothing uploaded):\n{files}\n"
              f"push them with: imgcls push {args.bundle} {result.repo_id}")
    else:
        where = result.repo_id + (f"@{args.revision}" if args.revision else "")
        print(f"pushed {len(result.files)} files to {result.url}:\n{files}\nuse it with: imgcls predict hf://{where} IMAGE")
    return ExitStatus.OK


def cmd_calibrate_unknown(args) -> int:
    from ..predict.unknown import calibrate_unknown
    from . import render

    report = calibrate_unknown(args.bundle, args.data, args.outliers, save=not args.no_save)
    print(json.dumps(report, indent=2) if args.format == "json" else render.unknown_trade_off(report))
    return ExitStatus.OK


def cmd_audit(args) -> int:
    from ..data.audit import audit
    from .audit_text import render_audit

    report = audit(args.data, val_split=args.val_split, seed=args.seed)
    if args.check_labels:
        from ..clean.labels import audit_labels
        from ..clean.review import write_review_page

        if args.folds < 2:
            raise UsageError(f"--folds must be 2 or more, got {args.folds}")
        report.update(audit_labels(args.data, args.val_split, args.seed, args.folds, args.device, args.pretrained))
        page = args.review or Path(f"{Path(args.data).resolve().name}-review.html")
        report["review_page"] = str(write_review_page(report, page))
    print(json.dumps(report, indent=2) if args.format == "json" else render_audit(report))
    return ExitStatus.OK


def cmd_models(args) -> int:
    from ..models.registry import STARTING_POINTS, list_models
    from . import render

    print(render.models(list_models(args.pattern), None if args.pattern else STARTING_POINTS))
    return ExitStatus.OK


def cmd_demo(args) -> int:
    from ..demo import run_demo

    paths, metrics = run_demo(args.out)
    print(f"test accuracy {100 * metrics['accuracy']:.1f}% on {metrics['n_images']} held-out digits\n")
    print("\n".join(f"{name + ':':12} {path}" for name, path in paths.items()))
    return ExitStatus.OK


def cmd_serve(args) -> int:
    from ..serve.config import ServeConfig
    from ..serve.server import serve

    config = ServeConfig(max_upload_mb=args.max_upload_mb, max_files=args.max_files,
                         max_megapixels=args.max_megapixels, decode_threads=args.decode_threads,
                         max_batch=args.max_batch, batch_window_ms=args.batch_window_ms,
                         allowed_hosts=args.allowed_hosts, cors_origins=args.cors_origins)
    serve(args.bundle, args.host, args.port, args.workers, args.device, args.engine, args.data_dir, config)
    return ExitStatus.OK


def cmd_explain(args) -> int:
    from ..data.folders import expand_inputs
    from ..explain.faithfulness import deletion_test, save_faithfulness
    from ..explain.maps import check_method, explain, save_explanations
    from ..fileio import fresh_folder
    from ..predict.predictor import Predictor
    from ..rundir import RunDir

    check_method(args.method)
    predictor = Predictor.load(args.bundle, device=args.device)
    explanations = explain(predictor, expand_inputs(args.inputs), args.method, args.class_name, args.layer)
    out_dir = fresh_folder(args.out) if args.out else RunDir(predictor.run_dir).new_explanations()
    written = save_explanations(explanations, out_dir, predictor.config.multi_label or args.class_name is not None)
    print("\n".join(f"{path}  {item.label} {item.score:.1%}" for item, path in zip(explanations, written)))
    if args.faithfulness:
        result = deletion_test(predictor, explanations)
        details = save_faithfulness(result, out_dir)
        print(f"faithfulness {result['faithfulness']:.3f}: removing the most salient pixels first drops the score by "
              f"{result['salient_drop']:.3f} on average, removing random pixels by {result['random_drop']:.3f} "
              f"({result['images']} maps; details in {details})")
    return ExitStatus.OK


def cmd_layers(args) -> int:
    from ..explain.layers import describe_layers
    from ..predict.predictor import Predictor
    from . import render

    predictor = Predictor.load(args.bundle, device=args.device)
    print(render.layers(describe_layers(predictor.model, predictor.config.img_size)))
    return ExitStatus.OK


def cmd_similar(args) -> int:
    from ..data.folders import expand_inputs
    from ..explain.similar import find_similar, save_similar
    from ..fileio import fresh_folder
    from ..predict.predictor import Predictor
    from ..rundir import RunDir

    paths = expand_inputs(args.inputs)
    predictor = Predictor.load(args.bundle, device=args.device)
    results = find_similar(predictor, paths, args.k, args.data, bundle_dir=predictor.bundle_dir)
    out_dir = fresh_folder(args.out) if args.out else RunDir(predictor.run_dir).new_similar()
    written = save_similar(predictor, paths, results, out_dir)
    print(json.dumps([{"path": str(p), "similar": r} for p, r in zip(paths, results)], indent=2, ensure_ascii=False))
    log.info("side-by-side images and similar.json in %s: %s", out_dir, ", ".join(p.name for p in written))
    return ExitStatus.OK


def cmd_report(args) -> int:
    from ..report.builder import report_run

    print(report_run(args.run_dir, args.out, args.device))
    return ExitStatus.OK


class _LevelPrefix(logging.Formatter):
    """'warning: ' and 'error: ' before those records, as git and compilers write them; progress lines stay bare."""

    def format(self, record: logging.LogRecord) -> str:
        message = super().format(record)
        if record.levelno >= logging.ERROR:
            return f"error: {message}"
        return f"warning: {message}" if record.levelno >= logging.WARNING else message


def _setup_logging(quiet: bool) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_LevelPrefix("%(message)s"))
    logger = logging.getLogger("imgcls")
    logger.handlers[:] = [handler]
    logger.setLevel(logging.WARNING if quiet else logging.INFO)
    logger.propagate = False


def _error_prefix() -> str:
    """'imgcls: error: ', naming the process in a job of several (torchrun), whose lines interleave."""
    from ..distributed import from_environment

    ranks = from_environment()
    return f"imgcls: error: process {ranks.rank} of {ranks.world_size}: " if ranks.active else "imgcls: error: "


def _stdout_reader_gone() -> bool:
    """Whether stdout is a pipe whose reader has closed it (`imgcls models | head` once head has its lines),
    rather than a BrokenPipeError of some other pipe, which is an error to report."""
    try:
        poller = select.poll()
        poller.register(sys.stdout.fileno(), select.POLLOUT)
        return any(events & (select.POLLERR | select.POLLHUP) for _, events in poller.poll(0))
    except (AttributeError, OSError, ValueError):  # no poll (Windows), or stdout is no file (captured)
        return False


def _end_quietly_on_a_closed_pipe() -> int:
    """Stop writing, without the traceback Python would print when it flushes stdout at exit: the shell's
    status for a process ended by SIGPIPE, and no message, as `cat` and `git log` do."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
    return int(ExitStatus.BROKEN_PIPE)


def _interrupted_run(args, started_s: float) -> Path | None:
    """The run folder an interrupted `imgcls train` was writing, when it holds a checkpoint this process wrote."""
    if args.resume:
        return args.resume
    from ..rundir import RunDir, default_run_dirs  # no torch: a Ctrl-C message answers at once

    if args.out:  # refused at the start if it held a run already, so a checkpoint there is this run's
        candidates = [RunDir(args.out)]
    else:  # choose_run_dir took the first free name; --nproc passed it on to the processes as --out
        candidates = itertools.takewhile(lambda run: run.root.exists(), default_run_dirs(args.data)) if args.data else []
    for run in candidates:
        checkpoint = run.checkpoint
        if checkpoint.is_file() and checkpoint.stat().st_mtime >= started_s - 2:  # FAT and SMB stamp to 2 s
            return run.root
    return None


def interrupted_message(args: argparse.Namespace | None, started_s: float) -> str:
    """What Ctrl-C leaves and how to continue, for the command interrupted (`args`, with `argv`; None while
    parsing) in a process started at `started_s` (time.time())."""
    command = getattr(args, "command", None)
    if command == "train":
        run_dir = _interrupted_run(args, started_s)
        if run_dir is None:
            return "imgcls: interrupted before the first epoch was saved; nothing to resume: run the command again"
        return f"imgcls: interrupted; continue with: imgcls train --resume {shlex.quote(str(run_dir))}"
    if command == "predict" and args.out:
        from ..predict.batch import RESUMABLE_FORMATS

        if args.format not in RESUMABLE_FORMATS:
            return (f"imgcls: interrupted; {args.out} holds the rows so far, but a {args.format} file cannot be "
                    f"continued: remove it and run the command again (--format csv or jsonl can --resume)")
        again = shlex.join(["imgcls", *args.argv, *([] if args.resume else ["--resume"])])
        return f"imgcls: interrupted; the rows so far are in {args.out}; predict the others with: {again}"
    if command == "serve":
        return "imgcls: server stopped"
    return "imgcls: interrupted; nothing to continue: run the command again"


def main(argv: list[str] | None = None) -> int:
    started_s, args = time.time(), None
    parser = build_parser()
    debug = "--debug" in (argv if argv is not None else sys.argv[1:])
    try:
        args = parser.parse_args(argv)
        args.argv = list(argv if argv is not None else sys.argv[1:])  # what --nproc starts again in each process
        _setup_logging(args.quiet)
        if args.command != "serve":  # a server's memory must go back after a burst (runtime.keep_freed_memory)
            from ..runtime import keep_freed_memory

            keep_freed_memory()
        status = int(args.func(args))
        sys.stdout.flush()  # within the try: a reader that went away is caught below, not at exit
        return status
    except ImgclsError as err:
        if debug:
            raise
        print(f"{_error_prefix()}{err}", file=sys.stderr)
        return int(err.exit_status)
    except KeyboardInterrupt:
        print(interrupted_message(args, started_s), file=sys.stderr)
        return int(ExitStatus.INTERRUPTED)
    except Exception as err:  # a bug, or an input we did not foresee: still one line
        if isinstance(err, BrokenPipeError) and _stdout_reader_gone():
            return _end_quietly_on_a_closed_pipe()
        if debug:
            raise
        print(f"{_error_prefix()}{type(err).__name__}: {err} (run with --debug for the traceback)", file=sys.stderr)
        return int(ExitStatus.ERROR)


def run() -> None:
    sys.exit(main())


if __name__ == "__main__":
    run()
