"""The `imgcls` command in-process: exit codes, one-line errors, and the formats users script against."""
from __future__ import annotations

import csv
import io
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

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
    assert {"accuracy", "per_class", "confusion_matrix", "top_k_accuracy"} <= set(metrics) and metrics["split"] == "test"
    assert metrics["n_images"] == sum(1 for _ in (digits_dir / "test").rglob("*.png"))  # the test split is used
    for name in ("confusion_matrix.csv", "confusion_matrix.png", "learning_curves.png", "classification_report.txt"):
        assert (tmp_path / "eval" / name).stat().st_size > 0


def test_train_from_the_command_line_and_refuse_to_overwrite_a_run(capsys, digits_dir, tmp_path):
    args = ["train", digits_dir, "--out", tmp_path / "run", "--epochs", "1", "--img-size", "32", "--no-progress"]
    code, out, _ = run_cli(capsys, *args)
    assert code == 0 and "model:" in out and (tmp_path / "run/model/model.safetensors").is_file()
    code, _, err = run_cli(capsys, *args)
    assert code == 2 and "already holds a run" in err and "--resume" in err


@pytest.mark.parametrize("argv, named", [(["train", "DATA", "--model", "resnt18"], "did you mean 'resnet18'"),
                                         (["train", "DATA", "--val-split", "1.5"], "got 1.5"),
                                         (["audit", "DATA", "--val-split", "1.5"], "got 1.5")])
def test_a_wrong_option_value_is_a_usage_error_naming_it(capsys, digits_dir, tmp_path, argv, named):
    code, _, err = run_cli(capsys, *[digits_dir if a == "DATA" else a for a in argv], *(["--out", tmp_path / "run"]
                                                                                      if argv[0] == "train" else []))
    assert code == 2 and named in err and not (tmp_path / "run").exists()


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
    written = Path(out.rsplit("written to ", 1)[1].strip())
    assert code == 0 and written.parent == trained_run.run_dir and (written / "metrics.json").is_file()
    assert (trained_run.run_dir / "evaluation" / "metrics.json").read_bytes() == training_metrics


def test_evaluate_names_the_split_it_scored_and_never_overwrites_an_earlier_evaluation(capsys, trained_run, digits_dir,
                                                                                      tmp_path):
    run = tmp_path / "run"
    shutil.copytree(trained_run.bundle_dir, run / "model")
    test_folder = run / f"evaluation-{digits_dir.name}-test"

    code, out, _ = run_cli(capsys, "evaluate", run, digits_dir, "--device", "cpu")
    assert code == 0 and out.startswith(f"the test split of {digits_dir}\n") and out.endswith(f"written to {test_folder}\n")
    first = (test_folder / "metrics.json").read_bytes()
    assert json.loads(first)["split"] == "test"

    code, out, _ = run_cli(capsys, "evaluate", run, digits_dir, "--split", "val", "--format", "json", "--device", "cpu")
    assert code == 0 and json.loads(out)["split"] == "validation"
    assert json.loads((run / f"evaluation-{digits_dir.name}-validation" / "metrics.json").read_text())["split"] == "validation"

    code, out, err = run_cli(capsys, "evaluate", run, digits_dir, "--device", "cpu")
    again = run / f"evaluation-{digits_dir.name}-test-2"
    assert code == 0 and out.endswith(f"written to {again}\n") and (again / "metrics.json").is_file()
    assert f"{test_folder} holds earlier results, kept; writing to {again}" in err
    assert (test_folder / "metrics.json").read_bytes() == first


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


# --- help, defaults, Ctrl-C, small data (issue 15) ---------------------------------------------

HEAVY_LIBRARIES = {"torch", "timm", "matplotlib", "sklearn", "fastapi", "onnxruntime", "captum", "pytorch_grad_cam"}


def _commands() -> list[str]:
    from imgcls.cli.main import build_parser

    return list(next(a for a in build_parser()._actions if a.dest == "command").choices)


def _help(capsys, *argv) -> str:
    with pytest.raises(SystemExit) as done:
        main([*map(str, argv), "--help"])
    assert done.value.code == 0
    return capsys.readouterr().out


def test_help_of_every_command_imports_no_heavy_library():
    # A fresh process: this one has torch loaded by other tests. --help must not wait seconds for it.
    script = ("import json, sys\nfrom imgcls.cli.main import main\n"
              f"for argv in ([], *[[c] for c in {_commands()!r}]):\n"
              "    try:\n        main([*argv, '--help'])\n    except SystemExit:\n        pass\n"
              "print(json.dumps(sorted({name.split('.')[0] for name in sys.modules})), file=sys.stderr)")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "usage: imgcls train" in done.stdout and "usage: imgcls similar" in done.stdout
    assert HEAVY_LIBRARIES.isdisjoint(json.loads(done.stderr.splitlines()[-1]))


def _option_entries(help_text: str) -> dict[str, str]:
    """'--top-k TOP_K' -> its help, joined over its lines, for every option of a --help text."""
    entries, current = {}, None
    for line in help_text.splitlines():
        if line.startswith("  -"):
            current = line.strip().split("  ")[0]
            entries[current] = line.strip()[len(current):].strip()
        elif current and line.startswith("   "):
            entries[current] += " " + line.strip()
        else:
            current = None
    return entries


@pytest.mark.parametrize("command", ["train", "predict", "serve"])
def test_every_option_of_train_predict_and_serve_shows_its_default(capsys, command):
    entries = _option_entries(_help(capsys, command))
    assert len(entries) > 8
    for option, text in entries.items():
        is_flag = all(len(part.split()) == 1 for part in option.split(", "))  # --compile, --lookahead/--no-lookahead
        if not is_flag:
            assert "default" in text.lower(), f"{command} {option}: {text!r}"
    if command == "train":  # train's defaults come from TrainConfig (its options are left out for --recipe)
        assert "(default: adamw)" in entries["--optimizer {adamw,adam,sgd,rmsprop}"]
        assert "(default: 0.1)" in entries["--label-smoothing LABEL_SMOOTHING"]
        assert "(default: off)" in entries["--lookahead, --no-lookahead"]
    if command == "predict":
        assert "(default: 5)" in entries["--top-k TOP_K"]


def test_models_says_which_have_pretrained_weights_and_suggests_starting_points(capsys):
    code, out, _ = run_cli(capsys, "models")
    rows = {line.split()[0]: line for line in out.splitlines() if line.strip()}
    assert code == 0 and out.splitlines()[0].split() == ["model", "source", "pretrained", "weights"]
    assert "none: trains from scratch" in rows["cnn-bn"]
    assert "default" in rows["resnet18"] and "in1k" in rows["resnet18"]  # e.g. '4, default a1_in1k'
    suggestions = out.split("good starting points")[1]
    assert all(name in suggestions for name in ("efficientnet_lite0", "resnet18", "convnext_tiny", "resnet50"))
    assert "CPU" in suggestions and "GPU" in suggestions
    code, out, _ = run_cli(capsys, "models", "lite0")
    assert "efficientnet_lite0" in out and "good starting points" not in out  # a filtered list is just the list


def _interrupted(started_s: float, *argv) -> str:
    from imgcls.cli.main import build_parser, interrupted_message

    argv = [str(a) for a in argv]
    args = build_parser().parse_args(argv)
    args.argv = argv  # as main sets it
    return interrupted_message(args, started_s)


def test_ctrl_c_during_train_names_the_run_folder_to_resume(tmp_path, monkeypatch):
    started, run = time.time(), tmp_path / "my run"
    assert "nothing to resume" in _interrupted(started, "train", tmp_path, "--out", run)  # before the first checkpoint
    run.mkdir()
    (run / "checkpoint.pt").write_bytes(b"")
    assert f"continue with: imgcls train --resume '{run}'" in _interrupted(started, "train", tmp_path, "--out", run)
    assert f"imgcls train --resume '{run}'" in _interrupted(started, "train", "--resume", run)

    # Without --out: the runs/<data>-N folder this process wrote, not an older run of the same data.
    monkeypatch.chdir(tmp_path)
    for name, age_s in (("photos", 3600), ("photos-2", 0)):
        (tmp_path / "runs" / name).mkdir(parents=True)
        checkpoint = tmp_path / "runs" / name / "checkpoint.pt"
        checkpoint.write_bytes(b"")
        os.utime(checkpoint, (started - age_s, started - age_s))
    assert _interrupted(started, "train", "photos").endswith("imgcls train --resume runs/photos-2")


def test_ctrl_c_during_predict_says_how_to_continue_or_that_there_is_nothing_to(tmp_path):
    started, rows = time.time(), tmp_path / "rows.csv"
    message = _interrupted(started, "predict", "runs/x", "photos/", "--format", "csv", "--out", rows)
    assert message.endswith(f"imgcls predict runs/x photos/ --format csv --out {rows} --resume")
    assert "cannot be continued" in _interrupted(started, "predict", "runs/x", "photos/", "--format", "json", "--out", rows)
    assert "nothing to continue" in _interrupted(started, "predict", "runs/x", "photos/")
    assert "nothing to continue" in _interrupted(started, "evaluate", "runs/x", "data/")


def _tiny_dataset(root, per_class: int = 20):
    """ROOT/{train,validation}/{dark,light}/*.png: 32 px squares, 2 * per_class training images."""
    for split, count in (("train", per_class), ("validation", 4)):
        for name, level in (("dark", 40), ("light", 210)):
            (root / split / name).mkdir(parents=True)
            for index in range(count):
                Image.new("RGB", (32, 32), (level + index, level, level)).save(root / split / name / f"{index}.png")
    return root


def test_small_data_gets_a_smaller_default_batch_and_a_given_batch_size_is_kept(capsys, tmp_path):
    data = _tiny_dataset(tmp_path / "tiny")
    common = ["--epochs", "1", "--no-progress", "--no-report"]
    code, _, err = run_cli(capsys, "train", data, "--out", tmp_path / "chosen", *common)
    assert code == 0 and "batch size 8 instead of 64, so that 40 training images make 5 steps per epoch" in err
    assert "too few to learn much" not in err
    assert _trained_config(tmp_path / "chosen")["batch_size"] == 8

    code, _, err = run_cli(capsys, "train", data, "--out", tmp_path / "given", "--batch-size", "64", *common)
    assert code == 0 and "instead of" not in err
    assert "40 training images make 1 step of batch 64 per epoch, too few to learn much; use --batch-size 8" in err
    assert _trained_config(tmp_path / "given")["batch_size"] == 64


def _trained_config(run_dir) -> dict:
    import torch

    return torch.load(run_dir / "checkpoint.pt", map_location="cpu", weights_only=True)["config"]
