"""The `imgcls` command in-process: exit codes, one-line errors, and the formats users script against."""
from __future__ import annotations

import csv
import io
import json
import os
import shutil
import subprocess
import sys

import pytest
from PIL import Image

from imgcls.cli.main import main
from imgcls.errors import ImgclsError


def run_cli(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_predict_json_gives_path_labels_and_scores_per_image(capsys, trained_run, digits_dir):
    code, out, _ = run_cli(capsys, "predict", trained_run.run_dir, digits_dir / "predict", "--format", "json", "--top-k", "3")
    results = json.loads(out)
    assert code == 0 and len(results) == 10
    for result in results:
        assert set(result) == {"path", "labels", "predictions", "error"} and result["error"] is None
        assert len(result["predictions"]) == 3 and result["labels"] == [result["predictions"][0]["label"]]


def test_predict_reports_unreadable_files_and_still_predicts_the_others(capsys, trained_run, digits_dir, tmp_path):
    shutil.copy(next((digits_dir / "predict").glob("*.png")), tmp_path / "good image ü.png")
    (tmp_path / "empty.jpg").write_bytes(b"")
    code, out, err = run_cli(capsys, "predict", trained_run.run_dir, tmp_path, "--format", "json")
    by_name = {r["path"].rsplit("/", 1)[-1]: r for r in json.loads(out)}
    assert code == 1, "a script must see that an image was not predicted"
    assert by_name["empty.jpg"]["error"] == "empty file (0 bytes)" and by_name["empty.jpg"]["predictions"] == []
    assert by_name["good image ü.png"]["error"] is None and by_name["good image ü.png"]["predictions"]
    assert "1 of 2 images could not be read" in err


def test_predict_says_unknown_when_no_class_is_confident_enough(capsys, trained_run, digits_dir):
    code, out, _ = run_cli(capsys, "predict", trained_run.run_dir, digits_dir / "predict", "--format", "json", "--unknown-below", "1.0")
    assert code == 0 and all(r["labels"] == ["unknown"] for r in json.loads(out))


def test_predict_table_and_csv_show_percentages(capsys, trained_run, digits_dir):
    image = next((digits_dir / "predict").glob("*.png"))
    code, out, _ = run_cli(capsys, "predict", trained_run.run_dir, image, "--top-k", "2")
    assert code == 0 and "%" in out and image.name in out
    code, out, _ = run_cli(capsys, "predict", trained_run.run_dir, image, "--format", "csv", "--top-k", "2")
    rows = list(csv.DictReader(io.StringIO(out)))
    assert [r["rank"] for r in rows] == ["1", "2"] and float(rows[0]["score"]) >= float(rows[1]["score"])


def test_evaluate_writes_metrics_report_and_confusion_matrix(capsys, trained_run, digits_dir, tmp_path):
    code, out, _ = run_cli(capsys, "evaluate", trained_run.run_dir, digits_dir, "--out", tmp_path / "eval")
    assert code == 0 and "accuracy" in out and "precision" in out
    metrics = json.loads((tmp_path / "eval/metrics.json").read_text())
    assert {"accuracy", "per_class", "confusion_matrix", "top_k_accuracy"} <= set(metrics)
    assert metrics["n_images"] == sum(1 for _ in (digits_dir / "test").rglob("*.png"))  # the test split is used
    for name in ("confusion_matrix.csv", "confusion_matrix.png", "learning_curves.png", "classification_report.txt"):
        assert (tmp_path / "eval" / name).stat().st_size > 0


def test_train_from_the_command_line_and_refuse_to_overwrite_a_run(capsys, digits_dir, tmp_path):
    args = ["train", digits_dir, "--out", tmp_path / "run", "--epochs", "1", "--img-size", "32", "--no-progress"]
    code, out, _ = run_cli(capsys, *args)
    assert code == 0 and "model:" in out and (tmp_path / "run/model/model.safetensors").is_file()
    code, _, err = run_cli(capsys, *args)
    assert code == 2 and "already holds a run" in err and "--resume" in err


def test_audit_reports_counts_as_json(capsys, digits_dir):
    code, out, _ = run_cli(capsys, "audit", digits_dir, "--format", "json")
    report = json.loads(out)
    assert code == 0 and report["counts"]["train"]["7"] == 21 and report["corrupt"] == []


def test_models_lists_built_ins_and_timm_names(capsys):
    code, out, _ = run_cli(capsys, "models", "mobilenetv2")
    assert code == 0 and "mobilenetv2_100" in out
    code, out, _ = run_cli(capsys, "models")
    assert all(name in out for name in ("seed-cnn", "lenet5", "cnn-bn", "resnet18"))


@pytest.mark.parametrize("argv, status, message", [
    (["train", "{missing}"], 1, "does not exist"),
    (["train", "{data}", "--model", "resnt18"], 2, "did you mean 'resnet18'"),
    (["train", "{data}", "--epochs", "0"], 2, "epochs must be at least 1"),
    (["train", "{data}", "--optimizer", "adamm"], 2, "invalid choice"),
    (["train"], 2, "needs a data folder"),
    (["predict", "{missing}", "{data}"], 1, "is not a model bundle"),
    (["evaluate", "{data}", "{data}"], 1, "is not a model bundle"),
    (["train", "--resume", "{missing}"], 1, "nothing to resume"),
    (["frobnicate"], 2, "invalid choice"),
])
def test_bad_input_gives_one_line_and_an_exit_status(capsys, digits_dir, tmp_path, argv, status, message):
    argv = [a.format(missing=tmp_path / "nope", data=digits_dir) for a in argv]
    code, _, err = run_cli(capsys, *argv)
    assert code == status and message in err
    assert err.strip().count("\n") == 0 and "Traceback" not in err


def test_a_single_class_is_a_clear_error(capsys, digits_dir, tmp_path):
    shutil.copytree(digits_dir / "train" / "1", tmp_path / "only" / "1")
    code, _, err = run_cli(capsys, "train", tmp_path / "only")
    assert code == 1 and "need at least 2 classes" in err


def test_evaluate_never_overwrites_the_validation_results_written_by_training(capsys, trained_run, digits_dir):
    training_metrics = (trained_run.run_dir / "evaluation" / "metrics.json").read_bytes()
    code, out, _ = run_cli(capsys, "evaluate", trained_run.run_dir, digits_dir)
    assert code == 0 and (trained_run.run_dir / f"evaluation-{digits_dir.name}" / "metrics.json").is_file()
    assert (trained_run.run_dir / "evaluation" / "metrics.json").read_bytes() == training_metrics


# --- behaving like a Unix command -----------------------------------------------------------

def test_output_into_a_pipe_closed_early_ends_quietly(tmp_path):
    # `imgcls models | head -1`: head exits after its line. The read end is closed before imgcls writes,
    # so the write fails every time, not only when the output outgrows the pipe's buffer.
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        done = subprocess.run([sys.executable, "-m", "imgcls.cli.main", "models"], stdout=write_end,
                              stderr=subprocess.PIPE, text=True, timeout=120)
    finally:
        os.close(write_end)

    assert done.returncode in (0, 141) and done.stderr == ""


def test_global_flags_work_after_the_command_too(capsys, tmp_path):
    data = tmp_path / "data"
    for cls in ("cat", "dog"):
        for index in range(3):
            (data / cls).mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (8, 8), (index * 40, 0, 200 if cls == "cat" else 0)).save(data / cls / f"{index}.png")

    for argv in (["audit", data], ["--quiet", "audit", data], ["audit", data, "--quiet"]):
        code, _, err = run_cli(capsys, *argv)
        assert code == 0 and ("auditing 6 images" in err) == (argv[0] == "audit" and argv[-1] != "--quiet"), argv
    with pytest.raises(ImgclsError, match="class folders inside the class folder 'data'"):
        main(["audit", str(tmp_path), "--debug"])  # --debug: the exception itself, with its traceback
    code, _, err = run_cli(capsys, "audit", tmp_path)
    assert code == 1 and "class folders inside the class folder 'data'" in err


def test_warnings_in_the_log_are_prefixed_and_progress_lines_are_not(capsys, trained_run, digits_dir, tmp_path):
    (tmp_path / "empty").mkdir()
    image = next((digits_dir / "predict").glob("*.png"))

    code, out, err = run_cli(capsys, "predict", trained_run.run_dir, tmp_path / "empty", image, "--format", "json")

    assert code == 0 and len(json.loads(out)) == 1
    assert f"warning: no images in folder '{tmp_path / 'empty'}'" in err.splitlines()
