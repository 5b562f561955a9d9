"""imgcls: from a folder of labelled images to a trained, evaluated image classifier.

The Python API, the functions the `imgcls` command calls:

    import imgcls
    result = imgcls.train("photos/", epochs=10)           # -> TrainResult (run_dir, bundle_dir, metrics, ...)
    metrics, folder = imgcls.evaluate(result.run_dir, "photos/", split="test")
    imgcls.predict(result.run_dir, ["cat.jpg"], top_k=3)   # -> one dict per image
    model = imgcls.load(result.run_dir)                    # -> Predictor, for repeated predictions
    report = imgcls.audit("photos/")                       # -> the dataset check as a dict

torch and the rest load on the first call, so `import imgcls` stays fast.
"""
from __future__ import annotations

import logging
import sys
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any, Callable, Iterator, Sequence

if TYPE_CHECKING:
    import inspect

    from .data.images import ImageSource
    from .predict.predictor import Predictor
    from .train.callbacks import Callback
    from .train.loop import OptimizerFactory, SchedulerFactory
    from .train.run import TrainResult

__version__ = "0.1.0"
__all__ = ["Callback", "audit", "evaluate", "load", "predict", "train"]


@contextmanager
def _progress_lines() -> Iterator[None]:
    """Epoch lines on stderr for a caller who set up no logging (a notebook, where the progress bar is off):
    an INFO handler on the 'imgcls' logger for the length of the call, removed after. Logging that is
    configured, on that logger or the root one, is left as it is."""
    logger = logging.getLogger("imgcls")
    if logger.handlers or logging.getLogger().handlers:
        yield
        return
    handler, level = logging.StreamHandler(), logger.level  # sys.stderr as it is now: a notebook cell's
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger.addHandler(handler)
    if logger.getEffectiveLevel() > logging.INFO:
        logger.setLevel(logging.INFO)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def train(data: str | Path | None = None, out: str | Path | None = None, *, recipe: str | None = None,
          resume: bool = False, progress: bool = True, callbacks: Sequence[Callback] = (),
          optimizer: OptimizerFactory | None = None, scheduler: SchedulerFactory | None = None,
          **options: Any) -> TrainResult:
    """Train a classifier on the image folder `data` and write the run to `out` (default: a new
    runs/<data folder name>; an `out` that holds a run already is refused with a UsageError, as the command
    refuses it: resume=True continues that run). `options` are TrainConfig's, by their flat names (epochs=10,
    model="resnet18", ...; imgcls.train.config.OPTIONS), over `recipe`'s defaults if one is named; resume=True
    continues the interrupted run in `out`.
    Deeper control from Python: `callbacks`, imgcls.Callback instances whose hooks the loop calls;
    `optimizer`, a function of the model (lambda model: torch.optim.SGD(model.parameters(), lr=0.01));
    `scheduler`, a function of the optimizer and the run's number of optimizer steps, stepped after each
    (a ReduceLROnPlateau after each epoch, on val_loss). A resumed run needs the same ones again.
    Returns the TrainResult: run_dir, bundle_dir, validation metrics, history, skipped images."""
    from .errors import UsageError
    from .train.config import TrainConfig
    from .train.loop import Extensions
    from .train.run import train as train_run

    if resume and (options or recipe):
        raise UsageError(f"resume=True continues with the run's own settings; leave out "
                         f"{', '.join(sorted(options) + (['recipe'] if recipe else []))}")
    config = None if resume else TrainConfig.from_options(options, recipe)
    with _progress_lines():
        return train_run(data, out, config, resume=resume, progress=progress,
                         extensions=Extensions(list(callbacks), optimizer, scheduler))


def evaluate(model_or_run: str | Path | Predictor, data: str | Path, split: str | None = None, *,
             out: str | Path | None = None, labels_csv: str | Path | None = None, device: str = "auto",
             tta: str | None = None) -> tuple[dict, Path]:
    """Score a model (run folder, model/ folder, or what `load` returned) on the labelled images of `data`:
    `split` (train, validation, test), by default test, else validation, else every image. Returns
    (metrics, folder): the metrics as in metrics.json, 'split' naming the images scored, and the folder
    the files went to (default RUN_DIR/evaluation-<data folder>-<split>; an earlier one is never overwritten)."""
    from .evaluate.evaluation import evaluate as evaluate_bundle

    return evaluate_bundle(model_or_run, data, out, split, labels_csv, device, tta)


def predict(model_or_run: str | Path | Predictor, images: Sequence[ImageSource] | ImageSource, top_k: int = 5, *,
            unknown_below: float | None = None, device: str = "auto", tta: str | None = None) -> list[dict]:
    """Classify `images` (one or a list of file paths, image bytes, PIL images, arrays or tensors) with a model
    (run folder, model/ folder, or what `load` returned). Returns one dict per image, in order: 'path',
    'labels' (the decision), 'predictions' (the top_k {'label', 'score'}) and 'error' (None, or why the
    image could not be read)."""
    from .errors import UsageError
    from .predict.predictor import Predictor

    if isinstance(model_or_run, Predictor):
        if tta is not None:
            raise UsageError(f"tta is chosen when the model is loaded: imgcls.load(path, tta={tta!r})")
        predictor = model_or_run
    else:
        predictor = Predictor.load(model_or_run, device=device, tta=tta)
    return predictor.predict(images, top_k=top_k, unknown_below=unknown_below)


def load(path: str | Path, device: str = "cpu", tta: str | None = None, engine: str = "torch") -> Predictor:
    """Load a saved bundle (a run folder or its model/ folder) to predict with again and again; tta: a test-time
    augmentation other than the bundle's own (none, flip, flip-shift); engine: torch, or onnx / onnx-int8 for the
    bundle's ONNX export (`imgcls export`, `--int8`). Returns a Predictor: `.predict(images)` as `predict`
    returns, `.classes`, `.config` (the bundle's config.json)."""
    from .predict.predictor import Predictor

    return Predictor.load(path, device=device, engine=engine, tta=tta)


def audit(data: str | Path, labels: bool = False, *, val_split: float = 0.2, seed: int = 0, folds: int = 5,
          device: str = "auto", pretrained: bool = True, review: str | Path | None = None) -> dict:
    """Check the dataset in `data`: counts, sizes, corrupt files, duplicates, leakage between splits; with
    labels=True also likely wrong labels, off-topic and low-quality images (cross-validated, minutes on a CPU
    for thousands of images), and a review page written to `review` when given. Returns the report as a
    JSON-ready dict, the one `imgcls audit --format json` prints."""
    from .data.audit import audit as audit_data
    from .errors import UsageError

    if labels and folds < 2:
        raise UsageError(f"folds must be 2 or more, got {folds}")
    report = audit_data(data, val_split=val_split, seed=seed)
    if labels:
        from .clean.labels import audit_labels

        report.update(audit_labels(data, val_split, seed, folds, device, pretrained))
        if review is not None:
            from .clean.review import write_review_page

            report["review_page"] = str(write_review_page(report, review))
    return report


def __getattr__(name: str) -> Any:
    """imgcls.Callback, the base of training callbacks, imported on first use (it needs torch)."""
    if name == "Callback":
        from .train.callbacks import Callback

        return Callback
    raise AttributeError(f"module 'imgcls' has no attribute '{name}'")


# train, evaluate and predict are also the names of the subpackages that implement them, and importing a
# subpackage makes it the package's attribute of that name (the import system's rule): after the first
# `imgcls.train(...)`, which imports imgcls.train.run, `imgcls.train` would be a module. Each such
# subpackage is made callable as its function instead, so that imgcls.train(...) keeps working, and so
# do `import imgcls.train.run as run` and patches of "imgcls.train.run.X", which a function would break.
_NAMED_AS_SUBPACKAGES = {"train": train, "evaluate": evaluate, "predict": predict}


class _CallableSubpackage(ModuleType):
    """A subpackage that, called, is the API function of its name."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._function(*args, **kwargs)

    @property
    def _function(self) -> Callable[..., Any]:
        return _NAMED_AS_SUBPACKAGES[self.__name__.rpartition(".")[2]]

    @property
    def __signature__(self) -> inspect.Signature:  # what inspect.signature and help() show
        import inspect

        return inspect.signature(self._function)


class _Package(ModuleType):
    def __setattr__(self, name: str, value: Any) -> None:
        if name in _NAMED_AS_SUBPACKAGES and type(value) is ModuleType:
            value.__class__ = _CallableSubpackage
            value.__doc__ = _NAMED_AS_SUBPACKAGES[name].__doc__
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
