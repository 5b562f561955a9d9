"""The Python API: `import imgcls` and its five functions, the ones the `imgcls` command calls."""
from __future__ import annotations

import inspect
import json
import logging
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import imgcls
from imgcls.cli.main import main
from imgcls.errors import UsageError

from conftest import FAST_CONFIG


def test_import_imgcls_is_fast_because_torch_loads_on_the_first_call():
    code = "import sys, imgcls; print(sorted(m for m in ('torch', 'timm', 'numpy') if m in sys.modules))"
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert loaded.strip() == "[]"


def test_the_api_is_exported_typed_and_documented():
    assert set(imgcls.__all__) == {"train", "evaluate", "predict", "load", "audit", "Callback"}
    assert "on_epoch_begin" in vars(imgcls.Callback) and "Subclass" in imgcls.Callback.__doc__
    for name in set(imgcls.__all__) - {"Callback"}:
        function = getattr(imgcls, name)
        signature = inspect.signature(function)
        assert "Returns" in (function.__doc__ or ""), name
        assert signature.return_annotation is not inspect.Signature.empty, name
        assert all(p.annotation is not inspect.Parameter.empty for p in signature.parameters.values()), name
    assert (Path(imgcls.__file__).parent / "py.typed").is_file()


def test_an_unknown_training_option_is_a_usage_error_suggesting_the_close_ones(digits_dir, tmp_path):
    with pytest.raises(UsageError, match="unknown training option 'epoch'; did you mean 'epochs'"):
        imgcls.train(digits_dir, tmp_path / "run", epoch=3)
    assert not (tmp_path / "run").exists()  # refused before any work


def test_train_refuses_a_folder_that_holds_a_run_as_the_command_does(trained_run, digits_dir, capsys):
    model = (trained_run.bundle_dir / "model.safetensors").read_bytes()
    with pytest.raises(UsageError, match=r"already holds a run; continue it with --resume .* or choose another --out"):
        imgcls.train(digits_dir, trained_run.run_dir, progress=False, **FAST_CONFIG)
    assert main(["train", str(digits_dir), "--out", str(trained_run.run_dir)]) == 2
    assert "already holds a run" in capsys.readouterr().err
    assert (trained_run.bundle_dir / "model.safetensors").read_bytes() == model  # untouched


@pytest.fixture
def logging_as_a_fresh_notebook_has_it(monkeypatch):
    """No handler on the 'imgcls' logger (the CLI tests leave theirs) and its level unset."""
    logger = logging.getLogger("imgcls")
    monkeypatch.setattr(logger, "handlers", [])
    monkeypatch.setattr(logger, "propagate", True)
    level = logger.level
    logger.setLevel(logging.NOTSET)
    yield logger
    logger.setLevel(level)


def test_train_shows_epoch_lines_where_no_logging_was_set_up(digits_dir, tmp_path, capsys, monkeypatch,
                                                             logging_as_a_fresh_notebook_has_it):
    logger = logging_as_a_fresh_notebook_has_it
    # pytest's capture handler goes on the root logger as the test starts: set it aside for the call only
    with monkeypatch.context() as patch:
        patch.setattr(logging.getLogger(), "handlers", [])
        imgcls.train(digits_dir, tmp_path / "run", progress=False, **{**FAST_CONFIG, "epochs": 1})
    assert "epoch 1/1  loss" in capsys.readouterr().err
    assert logger.handlers == [] and logger.level == logging.NOTSET  # removed after the call


def test_train_takes_config_fields_as_options_and_leaves_configured_logging_alone(digits_dir, tmp_path, capsys,
                                                                                 logging_as_a_fresh_notebook_has_it):
    root = logging.getLogger()
    handlers = list(root.handlers)
    assert handlers, "pytest's capture handler stands for the user's logging.basicConfig()"
    result = imgcls.train(digits_dir, tmp_path / "run", progress=False, **{**FAST_CONFIG, "epochs": 1})
    assert "epoch 1/1" not in capsys.readouterr().err and root.handlers == handlers
    assert result.run_dir == tmp_path / "run" and (result.bundle_dir / "model.safetensors").is_file()
    assert [h["epoch"] for h in result.history] == [1] and 0 <= result.metrics["accuracy"] <= 1
    assert json.loads((result.bundle_dir / "config.json").read_text())["settings"]["batch_size"] == 32


def test_evaluate_takes_a_run_folder_or_a_loaded_model_and_names_the_split(trained_run, digits_dir, tmp_path):
    metrics, folder = imgcls.evaluate(trained_run.run_dir, digits_dir, "validation", out=tmp_path / "a", device="cpu")
    assert metrics["split"] == "validation" and folder == tmp_path / "a"
    assert metrics["accuracy"] == pytest.approx(trained_run.metrics["accuracy"], abs=1e-9)  # what training measured
    loaded = imgcls.load(trained_run.run_dir)
    metrics, _ = imgcls.evaluate(loaded, digits_dir, out=tmp_path / "b")
    assert metrics["split"] == "test" and json.loads((tmp_path / "b/metrics.json").read_text())["split"] == "test"
    with pytest.raises(UsageError, match=r"imgcls.load\(path, tta='flip'\)"):
        imgcls.evaluate(loaded, digits_dir, out=tmp_path / "c", tta="flip")


def test_predict_takes_a_run_folder_or_a_loaded_model(trained_run, digits_dir):
    images = sorted((digits_dir / "predict").glob("*.png"))
    results = imgcls.predict(trained_run.run_dir, images, top_k=3, device="cpu")
    assert results == imgcls.load(trained_run.run_dir).predict(images, top_k=3)
    assert imgcls.predict(imgcls.load(trained_run.run_dir), images[:1], top_k=1)[0]["labels"] == results[0]["labels"]
    assert [r["path"] for r in results] == [str(p) for p in images] and len(results[0]["predictions"]) == 3


def test_audit_returns_the_report_the_command_prints(digits_dir, capsys):
    report = imgcls.audit(digits_dir)
    assert report["counts"]["train"]["7"] == 21 and report["corrupt"] == []
    assert main(["audit", str(digits_dir), "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out) == json.loads(json.dumps(report))


def test_audit_with_labels_cross_checks_them_and_writes_the_review_page_asked_for(digits_dir, tmp_path):
    for digit in "012":  # a small class-folder tree: the check is cross-validated, so its time grows with the images
        shutil.copytree(digits_dir / "train" / digit, tmp_path / "small" / digit)
    report = imgcls.audit(tmp_path / "small", labels=True, folds=2, pretrained=False, device="cpu",
                          review=tmp_path / "r.html")
    assert report["label_check"]["folds"] == 2 and Path(report["review_page"]).is_file()
    with pytest.raises(UsageError, match="folds must be 2 or more, got 1"):
        imgcls.audit(digits_dir, labels=True, folds=1)


def test_the_functions_stay_callable_after_their_subpackages_are_imported(trained_run, digits_dir):
    import imgcls.evaluate.evaluation as evaluation  # the import makes imgcls.evaluate the subpackage
    import imgcls.predict.predictor
    import imgcls.train.run as run

    assert imgcls.train.run is run and imgcls.evaluate.evaluation is evaluation
    assert list(inspect.signature(imgcls.train).parameters)[:2] == ["data", "out"] and "Returns" in imgcls.train.__doc__
    image = next((digits_dir / "predict").glob("*.png"))
    assert imgcls.predict(trained_run.run_dir, image, device="cpu")[0]["error"] is None
