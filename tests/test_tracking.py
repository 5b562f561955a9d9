"""--logger tensorboard|mlflow: the real libraries write each epoch's scalars, the settings and the plots."""
from __future__ import annotations

import pytest

from imgcls.errors import UsageError
from imgcls.train.config import TrainConfig
from imgcls.train.run import train

from conftest import FAST_CONFIG


def test_tensorboard_gets_every_epoch_the_settings_and_the_plots(digits_dir, tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    result = train(digits_dir, tmp_path / "run", TrainConfig.from_options(**FAST_CONFIG, logger="tensorboard"), progress=False)

    events = EventAccumulator(str(tmp_path / "run" / "tensorboard"), size_guidance={"images": 0, "scalars": 0})
    events.Reload()
    val_accuracy = [event.value for event in events.Scalars("val_accuracy")]
    assert val_accuracy == pytest.approx([row["val_accuracy"] for row in result.history])
    assert {"train_loss", "val_loss", "lr"} <= set(events.Tags()["scalars"])
    assert {"confusion_matrix", "learning_curves"} <= set(events.Tags()["images"])
    assert "settings/text_summary" in events.Tags()["tensors"]


def test_mlflow_gets_the_settings_as_parameters_and_the_metrics_per_epoch(digits_dir, tmp_path, monkeypatch):
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    result = train(digits_dir, tmp_path / "run", TrainConfig.from_options(**FAST_CONFIG, logger="mlflow"), progress=False)

    client = MlflowClient(tracking_uri=(tmp_path / "run" / "mlruns").as_uri())
    [run] = client.search_runs([client.get_experiment_by_name("imgcls").experiment_id])
    assert run.data.params["model"] == "cnn-bn" and run.data.params["epochs"] == str(FAST_CONFIG["epochs"])
    history = client.get_metric_history(run.info.run_id, "val_accuracy")
    assert [(m.step, m.value) for m in history] == [(row["epoch"], pytest.approx(row["val_accuracy"])) for row in result.history]
    assert run.data.metrics["final_accuracy"] == pytest.approx(result.metrics["accuracy"])
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"confusion_matrix.png", "learning_curves.png"} <= artifacts


def test_an_unknown_logger_is_a_usage_error_naming_the_choices():
    with pytest.raises(UsageError, match="unknown logger 'tensorbord'; did you mean 'tensorboard'"):
        TrainConfig.from_options(logger="tensorbord").validate()
