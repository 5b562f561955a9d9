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
