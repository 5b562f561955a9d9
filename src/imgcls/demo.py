"""The embedded demo: the whole pipeline (data -> train -> evaluate -> predict) on real digits, in about a minute."""
from __future__ import annotations

import json
from pathlib import Path

from .data.digits import write_digits_folder
from .evaluate.evaluation import evaluate
from .fileio import atomic_write_bytes
from .predict.predictor import Predictor
from .rundir import choose_run_dir
from .train.config import TrainConfig
from .train.run import train

DEMO_CONFIG = TrainConfig.from_options(model="cnn-bn", epochs=8, batch_size=64, img_size=32)


def run_demo(out_dir: str | Path, progress: bool = True) -> tuple[dict[str, Path], dict]:
    """Returns the paths written and the test-split metrics. A folder that holds a demo run already is refused
    before anything is written (rundir.choose_run_dir)."""
    out_dir = Path(out_dir)
    run = choose_run_dir(None, out_dir / "run")
    data = write_digits_folder(out_dir / "digits")
    result = train(data, run.root, DEMO_CONFIG, progress=progress)
    metrics, evaluation_dir = evaluate(result.bundle_dir, data, split="test")
    predictions = Predictor.load(result.bundle_dir).predict(sorted((data / "predict").glob("*.png")), top_k=3)
    atomic_write_bytes(run.predictions, json.dumps(predictions, indent=2).encode())
    paths = {"data": data, "bundle": result.bundle_dir, "evaluation": evaluation_dir, "report": run.report,
             "predictions": run.predictions}
    return paths, metrics
