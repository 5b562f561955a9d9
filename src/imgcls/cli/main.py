"""The `imgcls` command: argument parsing, logging, and one error boundary around the library.

Every sub-command calls the same public function a Python user would; known errors become one
line on stderr and an exit status, tracebacks appear only with --debug.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from dataclasses import fields
from pathlib import Path

from .. import __version__
from ..errors import ExitStatus, ImgclsError, UsageError

log = logging.getLogger("imgcls")

EPILOG_TRAIN = """examples:
  imgcls train data/                       # data/train/<class>/*, data/validation/<class>/*
  imgcls train photos/ --val-split 0.2     # photos/<class>/*, split here
  imgcls train data/ --model seed-cnn --img-size 150 --augment seed --epochs 50
  imgcls train data/ --model resnet18 --pretrained
  imgcls train --resume runs/data          # continue an interrupted run"""


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line and a pointer to help, instead of a full usage dump
        raise UsageError(f"{message} (see '{self.prog} --help')")


def _train_parser(commands) -> None:
    from ..data.augment import AUGMENT_PRESETS
    from ..train.config import OPTIMIZERS, SCHEDULES, TrainConfig

    d = TrainConfig()
    p = commands.add_parser("train", help="train a classifier on a folder of images", epilog=EPILOG_TRAIN,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("data", nargs="?", help="image folder (optional with --resume)")
    p.add_argument("--out", type=Path, help="run folder to write (default: runs/<data folder name>)")
    p.add_argument("--resume", type=Path, metavar="RUN_DIR", help="continue the interrupted run in RUN_DIR")
    g = p.add_argument_group("model")
    g.add_argument("--model", default=d.model, help=f"built-in (seed-cnn, lenet5, cnn-bn) or any timm name (default {d.model})")
    g.add_argument("--img-size", type=int, help="square input size in pixels (default: the model's, or the images' if smaller)")
    g.add_argument("--pretrained", action="store_true", help="start from timm's pretrained weights (hub or cache)")
    g.add_argument("--weights", metavar="FILE", help="start from a local checkpoint (.safetensors or state dict)")
    g = p.add_argument_group("optimisation")
    g.add_argument("--epochs", type=int, default=d.epochs)
    g.add_argument("--batch-size", type=int, default=d.batch_size)
    g.add_argument("--optimizer", choices=OPTIMIZERS, default=d.optimizer)
    g.add_argument("--lr", type=float, help="peak learning rate (default: per optimizer, scaled to the batch size)")
    g.add_argument("--weight-decay", type=float, help="L2 / decoupled weight decay (default: per optimizer)")
    g.add_argument("--schedule", choices=SCHEDULES, default=d.schedule, help="plateau = reduce-LR-on-plateau")
    g.add_argument("--plateau-patience", type=int, default=d.plateau_patience)
    g.add_argument("--early-stopping", type=int, default=d.early_stopping, metavar="PATIENCE", help="0 turns it off")
    g.add_argument("--label-smoothing", type=float, default=d.label_smoothing)
    g.add_argument("--class-weights", action="store_true", help="weight the loss against class imbalance")
    g.add_argument("--grad-clip", type=float, default=d.grad_clip, metavar="NORM")
    g.add_argument("--seed", type=int, default=d.seed)
    g = p.add_argument_group("data")
    g.add_argument("--augment", choices=AUGMENT_PRESETS, default=d.augment)
    g.add_argument("--val-split", type=float, default=d.val_split, help="used when there is no validation folder")
    g.add_argument("--test-split", type=float, default=d.test_split)
    g.add_argument("--multi-label", action="store_true", help="several labels per image (sigmoid + BCE)")
    g.add_argument("--labels", dest="labels_csv", metavar="CSV", help="multi-label labels: path,labels (';'-separated)")
    g.add_argument("--device", default=d.device, help="auto, cpu, cuda, cuda:N")
    g.add_argument("--no-progress", action="store_true", help="no progress bar (log lines only)")


def _add_commands(parser: argparse.ArgumentParser) -> None:
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True, parser_class=_Parser)
    _train_parser(commands)
    p = commands.add_parser("evaluate", help="score a bundle on labelled images")
    p.add_argument("bundle", help="run folder or its model/ folder")
    p.add_argument("data", help="image folder (its test split, else validation, else every image)")
    p.add_argument("--out", type=Path, help="folder for metrics and plots (default: RUN_DIR/evaluation)")
    p.add_argument("--split", help="train, validation or test")
    p.add_argument("--labels", dest="labels_csv", metavar="CSV")
    p.add_argument("--format", choices=("table", "json"), default="table")
    p.add_argument("--device", default="auto")
    p = commands.add_parser("predict", help="predict classes of new images")
    p.add_argument("bundle")
    p.add_argument("inputs", nargs="+", metavar="PATH", help="image files, folders or glob patterns")
    p.add_argument("--top-k", type=int, default=5)
    p.add_argument("--format", choices=("table", "json", "csv"), default="table")
    p.add_argument("--unknown-below", type=float, metavar="P", help="answer 'unknown' when the top score is below P")
    p.add_argument("--device", default="auto")
    p = commands.add_parser("audit", help="check a dataset: counts, imbalance, corrupt files, duplicates, leakage")
    p.add_argument("data")
    p.add_argument("--format", choices=("table", "json"), default="table")
    p.add_argument("--val-split", type=float, default=0.2)
    p.add_argument("--seed", type=int, default=0)
    p = commands.add_parser("models", help="list built-in models and timm architectures")
    p.add_argument("pattern", nargs="?", default="", help="substring filter, e.g. mobilenet")
    p = commands.add_parser("demo", help="train, evaluate and predict on the bundled digits dataset")
    p.add_argument("--out", type=Path, default=Path("demo-output"))


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="imgcls", description="From a folder of labelled images to a trained, evaluated classifier.")
    parser.add_argument("--version", action="version", version=f"imgcls {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    parser.add_argument("--quiet", action="store_true", help="warnings and errors only")
    _add_commands(parser)
    return parser


def _default_run_dir(data: str) -> Path:
    base = Path("runs") / (Path(data).resolve().name or "run")
    candidate, n = base, 2
    while candidate.exists():
        candidate, n = base.with_name(f"{base.name}-{n}"), n + 1
    return candidate


def cmd_train(args) -> int:
    from ..train.config import TrainConfig
    from ..train.run import train

    if args.resume:
        result = train(args.data, args.resume, resume=True, progress=not args.no_progress)
    else:
        if args.data is None:
            raise UsageError("train needs a data folder: imgcls train DATA (or --resume RUN_DIR)")
        run_dir = args.out or _default_run_dir(args.data)
        if (run_dir / "checkpoint.pt").exists():
            raise UsageError(f"'{run_dir}' already holds a run; continue it with --resume {run_dir} or choose another --out")
        config = TrainConfig(**{f.name: getattr(args, f.name) for f in fields(TrainConfig) if hasattr(args, f.name)})
        result = train(args.data, run_dir, config, progress=not args.no_progress)
    from . import render

    print(render.metrics_summary(result.metrics))
    print(f"\nmodel:      {result.bundle_dir}\nevaluation: {result.run_dir / 'evaluation'}\nhistory:    {result.run_dir / 'history.csv'}")
    return ExitStatus.OK


def cmd_evaluate(args) -> int:
    from ..evaluate.evaluation import evaluate
    from . import render

    metrics, out_dir = evaluate(args.bundle, args.data, args.out, args.split, args.labels_csv, args.device)
    print(json.dumps(metrics, indent=2) if args.format == "json" else f"{render.metrics_summary(metrics)}\n\nwritten to {out_dir}")
    return ExitStatus.OK


def cmd_predict(args) -> int:
    from ..data.folders import expand_inputs
    from ..predict.predictor import Predictor
    from . import render

    paths = expand_inputs(args.inputs)
    if not paths:
        raise ImgclsError("no images found in the given paths")
    results = Predictor.load(args.bundle, device=args.device).predict(paths, args.top_k, args.unknown_below)
    print(render.predictions(results, args.format))
    failed = sum(1 for r in results if r["error"])
    if failed:
        log.warning("%d of %d images could not be read", failed, len(results))
    return ExitStatus.ERROR if failed == len(results) else ExitStatus.OK


def cmd_audit(args) -> int:
    from ..data.audit import audit
    from .audit_text import render_audit

    report = audit(args.data, val_split=args.val_split, seed=args.seed)
    print(json.dumps(report, indent=2) if args.format == "json" else render_audit(report))
    return ExitStatus.OK


def cmd_models(args) -> int:
    from ..models.registry import list_models
    from . import render

    print(render.models(list_models(args.pattern)))
    return ExitStatus.OK


def cmd_demo(args) -> int:
    from ..demo import run_demo

    paths = run_demo(args.out)
    print("\n".join(f"{name + ':':12} {path}" for name, path in paths.items()))
    return ExitStatus.OK


def _setup_logging(quiet: bool) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger = logging.getLogger("imgcls")
    logger.handlers[:] = [handler]
    logger.setLevel(logging.WARNING if quiet else logging.INFO)
    logger.propagate = False


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    debug = "--debug" in (argv if argv is not None else sys.argv[1:])
    try:
        args = parser.parse_args(argv)
        _setup_logging(args.quiet)
        return int(globals()[f"cmd_{args.command}"](args))
    except ImgclsError as err:
        if debug:
            raise
        print(f"imgcls: error: {err}", file=sys.stderr)
        return int(err.exit_status)
    except KeyboardInterrupt:
        print("imgcls: interrupted (a training run continues with: imgcls train --resume RUN_DIR)", file=sys.stderr)
        return int(ExitStatus.INTERRUPTED)
    except Exception as err:  # a bug, or an input we did not foresee: still one line
        if debug:
            raise
        print(f"imgcls: error: {type(err).__name__}: {err} (run with --debug for the traceback)", file=sys.stderr)
        return int(ExitStatus.ERROR)


def run() -> None:
    sys.exit(main())


if __name__ == "__main__":
    run()
