"""Open-set answers: 'unknown' from a threshold chosen on outliers, and test-time augmentation."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from PIL import Image

import imgcls
from imgcls.cli.main import main
from imgcls.errors import UsageError
from imgcls.predict.predictor import Predictor
from imgcls.predict.unknown import youden_threshold


@pytest.fixture()
def outliers(tmp_path):
    """Images of none of the digit classes: coloured noise."""
    folder = tmp_path / "outliers"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(30):
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(folder / f"noise{i}.png")
    return folder


def test_calibrate_unknown_stores_a_threshold_that_predict_then_uses(capsys, trained_run, digits_dir, outliers, tmp_path):
    bundle = shutil.copytree(trained_run.bundle_dir, tmp_path / "model")
    code = main(["calibrate-unknown", str(bundle), "--data", str(digits_dir), "--outliers", str(outliers), "--format", "json"])
    report = json.loads(capsys.readouterr().out)
    assert code == 0 and report["saved"] and report["n_outliers"] == 30
    threshold = report["chosen"]["threshold"]
    assert json.loads((bundle / "config.json").read_text())["unknown_below"] == threshold
    kept = report["chosen"]["in_distribution_kept"]
    assert 0 < kept <= 1 and 0 <= report["chosen"]["outliers_rejected"] <= 1

    digits = sorted((digits_dir / "test").rglob("*.png"))
    answers = imgcls.load(bundle).predict(digits)
    assert np.mean([r["labels"] != ["unknown"] for r in answers]) == pytest.approx(kept, abs=1e-6)


def test_calibrate_unknown_without_saving_leaves_the_bundle_unchanged(capsys, trained_run, digits_dir, outliers, tmp_path):
    bundle = shutil.copytree(trained_run.bundle_dir, tmp_path / "model")
    before = (bundle / "config.json").read_bytes()
    assert main(["calibrate-unknown", str(bundle), "--data", str(digits_dir), "--outliers", str(outliers), "--no-save"]) == 0
    assert "chosen threshold" in capsys.readouterr().out and (bundle / "config.json").read_bytes() == before


def test_flip_tta_averages_the_image_and_its_mirror(trained_run, digits_dir):
    images = sorted((digits_dir / "validation").rglob("*.png"))[:8]
    plain, tta = Predictor.load(trained_run.run_dir), Predictor.load(trained_run.run_dir, tta="flip")
    pixels = np.stack([np.asarray(Image.open(p).convert("RGB")) for p in images])
    expected = (plain.logits(pixels) + plain.logits(pixels[:, :, ::-1].copy())) / 2
    np.testing.assert_allclose(tta.logits(pixels), expected, atol=1e-5)
    with pytest.raises(UsageError, match="unknown test-time augmentation 'rot'"):
        Predictor.load(trained_run.run_dir, tta="rot")


def youden_threshold_by_trying_every_score(known_top: np.ndarray, outlier_top: np.ndarray) -> float:
    """The search calibrate-unknown ran before it used scikit-learn's ROC curve (N^2): the reference."""
    candidates = np.unique(np.concatenate([known_top, outlier_top]))
    youden = [(known_top >= t).mean() + (outlier_top < t).mean() for t in candidates]
    best = int(np.argmax(youden))
    return float(candidates[best] + candidates[best - 1]) / 2 if best > 0 else float(candidates[0])


@pytest.mark.parametrize("seed", range(20))
def test_the_unknown_threshold_is_the_one_trying_every_score_finds(seed):
    generator = np.random.default_rng(seed)
    known = generator.beta(5, 1.5, size=generator.integers(5, 300))  # confident on most in-distribution images
    outliers = generator.beta(2, 2, size=generator.integers(5, 200))
    if seed % 4 == 0:  # scores as a float32 softmax gives them: many ties
        known, outliers = known.round(2), outliers.round(2)
    assert youden_threshold(known, outliers) == pytest.approx(youden_threshold_by_trying_every_score(known, outliers),
                                                              abs=1e-12)


def test_the_unknown_threshold_keeps_every_image_when_nothing_separates_them():
    scores = np.array([0.5, 0.7, 0.9])
    assert youden_threshold(scores, scores) == 0.5  # the lowest score: no threshold rejects more outliers than images
