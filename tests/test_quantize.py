"""Specification of `imgcls export --int8` and `--engine onnx-int8`: an int8 model written only with the proof
that it still works (checked against fp32 on the validation split), and used by predict, evaluate and serve."""
from __future__ import annotations

import json
import shutil

import onnx
import pytest
from fastapi.testclient import TestClient

from imgcls.cli.main import main
from imgcls.models.bundle import CONFIG_FILE, read_bundle_config
from imgcls.predict.predictor import Predictor
from imgcls.predict.session import INT8_ONNX_FILE, ONNX_FILE
from imgcls.rundir import RunDir
from imgcls.serve.app import create_app
from imgcls.serve.service import load_models

TINY_VALIDATION_MAX_DROP = 5.0
RECORD_KEYS = {"top1_fp32", "top1_int8", "drop_points", "agreement", "per_class_recall", "ece_fp32",
               "ece_int8_before_refit", "ece_int8", "temperature", "validation_images", "calibration_images",
               "speedup", "speed_batch", "cpu_has_vnni", "float_layers"}


def run_cli(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def copy_run(trained_run, target):
    """The trained run's bundle and data.json in a folder of our own (the session's run is read-only)."""
    target.mkdir(parents=True)
    shutil.copy(RunDir(trained_run.run_dir).data_summary, RunDir(target).data_summary)
    shutil.copytree(trained_run.bundle_dir, RunDir(target).bundle)
    return target


@pytest.fixture(scope="module")
def int8_run(trained_run, tmp_path_factory):
    """A copy of the whole trained digits run (report.html included) after `imgcls export RUN --int8`, and that
    command's exit status. On its 40 validation images one image is 2.5 points, so the tolerance is two images
    (onnxruntime 1.17, the floor, flips one where the newest flips none)."""
    run = shutil.copytree(trained_run.run_dir, tmp_path_factory.mktemp("int8") / "digits")
    code = main(["export", str(run), "--int8", "--max-drop", str(TINY_VALIDATION_MAX_DROP)])
    return run, code


def test_export_int8_writes_the_int8_model_beside_the_fp32_one_and_records_its_check(int8_run):
    run, code = int8_run
    assert code == 0
    assert (run / "model" / ONNX_FILE).is_file() and (run / "model" / INT8_ONNX_FILE).is_file()
    record = json.loads((run / "model" / CONFIG_FILE).read_text())["int8_export"]
    assert set(record) == RECORD_KEYS
    assert record["drop_points"] <= TINY_VALIDATION_MAX_DROP and record["agreement"] >= 0.9
    assert record["validation_images"] == 40 and record["calibration_images"] > 0
    assert set(record["per_class_recall"]) == set(read_bundle_config(run).classes)
    assert record["temperature"] > 0
    assert record["speedup"] > 0 and record["speed_batch"] == 32  # measured here, on 32 of the validation images
    weighted = [node.name for node in onnx.load(run / "model" / ONNX_FILE).graph.node if node.op_type in ("Conv", "Gemm", "MatMul")]
    assert len(record["float_layers"]) in (2, 4) and set(record["float_layers"]) <= set(weighted)
    assert weighted[-1] in record["float_layers"]  # the classifier, and the stem (named otherwise once fused)


def test_the_run_report_shows_the_int8_check(int8_run):
    run, _ = int8_run
    record = read_bundle_config(run).int8_export
    html = (run / "report.html").read_text(encoding="utf-8")
    assert '<section id="int8">' in html and f"{record['top1_int8']:.2f}%" in html
    assert f"{record['speedup']:.2f}x fp32 on the machine that exported it" in html


def test_an_int8_model_losing_more_than_max_drop_is_refused_and_the_fp32_export_kept(trained_run, tmp_path, capsys):
    run = copy_run(trained_run, tmp_path / "digits")
    (run / "model" / INT8_ONNX_FILE).write_bytes(b"an int8 model of an earlier export")
    # A negative tolerance demands that int8 beat fp32 by 100 points: every check fails it.
    code, out, err = run_cli(capsys, "export", run, "--int8", "--max-drop", "-100")
    assert code == 1
    assert len(err.strip().splitlines()) == 1 and "was not written" in err and "--max-drop" in err
    assert (run / "model" / ONNX_FILE).is_file()
    assert not (run / "model" / INT8_ONNX_FILE).exists()  # nor the earlier one, which would not match the new fp32 file
    assert read_bundle_config(run).int8_export is None
    assert not list((run / "model").glob(".*.tmp"))


def test_int8_export_without_known_training_data_says_to_pass_data(trained_run, tmp_path, capsys):
    run = copy_run(trained_run, tmp_path / "digits")
    (run / "data.json").unlink()
    code, _, err = run_cli(capsys, "export", run, "--int8")
    assert code == 2 and "pass --data" in err
    assert not (run / "model" / INT8_ONNX_FILE).exists()


def test_predict_with_the_int8_engine_mostly_agrees_with_fp32_and_uses_its_own_temperature(int8_run, digits_dir, capsys):
    run, _ = int8_run
    code, by_int8, _ = run_cli(capsys, "predict", run, digits_dir / "test", "--format", "json", "--engine", "onnx-int8")
    _, by_torch, _ = run_cli(capsys, "predict", run, digits_dir / "test", "--format", "json")
    assert code == 0
    int8_labels = [row["labels"] for row in json.loads(by_int8)]
    torch_labels = [row["labels"] for row in json.loads(by_torch)]
    assert sum(a == b for a, b in zip(int8_labels, torch_labels)) >= 0.9 * len(torch_labels)
    predictor = Predictor.load(run, engine="onnx-int8")
    assert predictor.config.temperature == read_bundle_config(run).int8_export["temperature"]


def test_evaluate_with_the_int8_engine_scores_close_to_pytorch(int8_run, digits_dir, capsys, tmp_path):
    run, _ = int8_run
    code, out, _ = run_cli(capsys, "evaluate", run, digits_dir, "--engine", "onnx-int8", "--format", "json",
                           "--out", tmp_path / "int8")
    _, out_torch, _ = run_cli(capsys, "evaluate", run, digits_dir, "--format", "json", "--out", tmp_path / "torch")
    assert code == 0
    assert abs(json.loads(out)["accuracy"] - json.loads(out_torch)["accuracy"]) <= 0.1


def test_the_int8_engine_without_an_int8_export_says_how_to_make_one(trained_run, digits_dir, capsys):
    code, _, err = run_cli(capsys, "predict", trained_run.run_dir, digits_dir / "predict", "--engine", "onnx-int8")
    assert code == 1 and f"no {INT8_ONNX_FILE}" in err and "--int8" in err


def test_serve_runs_predictions_on_the_int8_model_when_the_bundle_has_one(int8_run, digits_dir):
    run, _ = int8_run
    image = sorted((digits_dir / "test" / "3").glob("*.png"))[0]
    app = create_app(run, device="cpu")
    with TestClient(app) as client:
        response = client.post("/predict", files=[("files", ("three.png", image.read_bytes(), "image/png"))])
    assert app.state.service.backend.model.path.name == INT8_ONNX_FILE
    assert response.status_code == 200 and response.json()["results"][0]["labels"]


def test_serve_runs_the_fp32_model_when_asked_for_it_by_engine(int8_run):
    run, _ = int8_run
    _, backend = load_models(run, "cpu", engine="onnx")
    assert backend.model.path.name == ONNX_FILE
