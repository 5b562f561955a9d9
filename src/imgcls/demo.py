"""The embedded demo: the whole pipeline (data -> train -> evaluate -> predict) on real digits, in about a minute."""
from __future__ import annotations

import json
from pathlib import Path

from .data.digits import write_digits_folder
from .evaluate.evaluation import evaluate
from .predict.predictor import Predictor
from .train.config import TrainConfig
from .train.run import train

DEMO_CONFIG = TrainConfig(model="cnn-bn", epochs=8, batch_size=64, img_size=32)


def run_demo(out_dir: str | Path, progress: bool = True) -> tuple[dict[str, Path], dict]:
    """Returns the paths written and the test-split metrics."""
    out_dir = Path(out_dir)
    data = write_digits_folder(out_dir / "digits")
    result = train(data, out_dir / "run", DEMO_CONFIG, progress=progress)
    metrics, evaluation_dir = evaluate(result.bundle_dir, data, out_dir / "run" / "test-evaluation")
    predictions = Predictor.load(result.bundle_dir).predict(sorted((data / "predict").glob("*.png")), top_k=3)
    predictions_path = out_dir / "run" / "predictions.json"
    predictions_path.write_text(json.dumps(predictions, indent=2))
    paths = {"data": data, "bundle": result.bundle_dir, "evaluation": evaluation_dir,
             "report": result.run_dir / "report.html", "predictions": predictions_path}
    return paths, metrics
