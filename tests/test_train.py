"""Training end to end on real digits: the bundle, the run folder, resume, seeds, multi-label."""
from __future__ import annotations

import csv
import json
import shutil
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import imgcls
from imgcls.errors import ImgclsError, UsageError
from imgcls.train.config import TrainConfig
from imgcls.train.callbacks import EarlyStopping
from imgcls.train.loop import Trainer
from imgcls.train.run import train

from conftest import FAST_CONFIG


def test_training_writes_a_self_contained_bundle_and_run_folder(trained_run):
    run = trained_run.run_dir
    for name in ("model/config.json", "model/model.safetensors", "model/labels.txt", "history.csv",
                 "checkpoint.pt", "data.json", "evaluation/metrics.json", "evaluation/confusion_matrix.png",
                 "evaluation/learning_curves.png", "report.html"):
        assert (run / name).is_file(), name
    config = json.loads((run / "model/config.json").read_text())
    assert config["architecture"] == "cnn-bn" and config["img_size"] == 32 and config["task"] == "single-label"
    assert config["classes"] == [str(d) for d in range(10)]
    assert (run / "model/labels.txt").read_text().split() == config["classes"]
    assert len(config["settings"]["data_fingerprint"]) == 16 and config["imgcls_version"] == imgcls.__version__


def test_three_epochs_on_real_digits_learn_far_above_chance(trained_run):
    assert trained_run.metrics["accuracy"] > 0.6  # chance is 0.1
    with open(trained_run.run_dir / "history.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3]
    assert float(rows[-1]["train_loss"]) < float(rows[0]["train_loss"])


def test_reloaded_bundle_predicts_what_the_trained_model_predicted(trained_run, digits_dir):
    images = sorted((digits_dir / "validation").rglob("*.png"))
    predictor = imgcls.load(trained_run.run_dir)
    results = predictor.predict(images, top_k=10)
    accuracy = np.mean([r["labels"][0] == p.parent.name for r, p in zip(results, images)])
    assert accuracy == pytest.approx(trained_run.metrics["accuracy"], abs=1e-9)
    for result in results:
        scores = [p["score"] for p in result["predictions"]]
        assert scores == sorted(scores, reverse=True) and sum(scores) == pytest.approx(1, abs=1e-4)


def test_same_seed_gives_the_same_model(digits_dir, tmp_path):
    config = TrainConfig.from_options(**{**FAST_CONFIG, "epochs": 1})
    first = train(digits_dir, tmp_path / "a", config, progress=False)
    second = train(digits_dir, tmp_path / "b", config, progress=False)
    assert first.history[0]["train_loss"] == second.history[0]["train_loss"]
    assert first.history[0]["val_loss"] == second.history[0]["val_loss"]


@pytest.mark.parametrize("config", [  # on the CPU: cuDNN's autotuned kernels are not bitwise repeatable
    TrainConfig.from_options(**{**FAST_CONFIG, "epochs": 2, "device": "cpu"}),
    # whitening fitted once, the Lookahead average and alternating flips carried across the interruption
    TrainConfig.from_options(recipe="speedrun", epochs=2, batch_size=64, report=False, device="cpu"),
], ids=["default", "speedrun"])
def test_resume_continues_an_interrupted_run_to_the_same_result(digits_dir, tmp_path, monkeypatch, config):
    straight = train(digits_dir, tmp_path / "straight", config, progress=False)

    original_epoch = Trainer.train_epoch

    def interrupted_in_epoch_two(self):
        if self.epoch == 1:
            raise KeyboardInterrupt  # as if the user pressed Ctrl-C during epoch 2
        return original_epoch(self)

    monkeypatch.setattr(Trainer, "train_epoch", interrupted_in_epoch_two)
    with pytest.raises(KeyboardInterrupt):
        train(digits_dir, tmp_path / "interrupted", config, progress=False)
    monkeypatch.setattr(Trainer, "train_epoch", original_epoch)

    resumed = train(None, tmp_path / "interrupted", resume=True, progress=False)
    assert [h["epoch"] for h in resumed.history] == [1, 2]
    assert resumed.history[1]["val_loss"] == pytest.approx(straight.history[1]["val_loss"], rel=1e-5)
    assert resumed.metrics["accuracy"] == straight.metrics["accuracy"]


def test_resume_without_a_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(ImgclsError, match="nothing to resume"):
        train(None, tmp_path, resume=True)


def test_early_stopping_stops_after_patience_and_restores_the_best_weights():
    model = torch.nn.Linear(2, 2)
    trainer = SimpleNamespace(model=model, eval_model=model, stop_training=False, history=[])
    stopper = EarlyStopping(patience=2)
    for epoch, val_loss in enumerate([1.0, 0.5, 0.7, 0.9, 0.4], start=1):
        with torch.no_grad():
            model.weight.fill_(epoch)  # weights tell which epoch they are from
        trainer.history.append({"epoch": epoch})
        stopper.on_epoch_end(trainer, {"epoch": epoch, "val_loss": val_loss})
        if trainer.stop_training:
            break
    assert epoch == 4  # epochs 3 and 4 did not beat epoch 2
    stopper.on_train_end(trainer)
    assert model.weight.unique().tolist() == [2.0]


def test_plateau_schedule_cuts_the_learning_rate_when_validation_stalls(digits_dir, tmp_path):
    config = TrainConfig.from_options(**{**FAST_CONFIG, "epochs": 5, "schedule": "plateau", "plateau_patience": 1,
                            "lr": 5.0, "optimizer": "sgd", "label_smoothing": 0.0})
    result = train(digits_dir, tmp_path / "run", config, progress=False)
    rates = [h["lr"] for h in result.history]
    assert rates[0] == 5.0 and min(rates) < 5.0


@pytest.mark.parametrize("option", [{"optimizer": "adam"}, {"optimizer": "rmsprop"}, {"schedule": "cosine"},
                                    {"class_weights": True, "grad_clip": 1.0}, {"augment": "seed"}, {"augment": "strong"},
                                    {"model": "lenet5"}, {"model": "seed-cnn", "img_size": 48}])
def test_every_training_option_trains(digits_dir, tmp_path, option):
    result = train(digits_dir, tmp_path / "run", TrainConfig.from_options(**{**FAST_CONFIG, "epochs": 1, **option}), progress=False)
    assert np.isfinite(result.history[0]["train_loss"])


def test_multi_label_from_a_csv_tunes_and_stores_per_class_thresholds(digits_dir, tmp_path):
    # "small" = digits 0-4, "even" = even digits: two overlapping labels per image.
    rows = ["path,labels"]
    for path in sorted((digits_dir / "train").rglob("*.png")) + sorted((digits_dir / "validation").rglob("*.png")):
        digit = int(path.parent.name)
        labels = [name for name, on in (("small", digit < 5), ("even", digit % 2 == 0)) if on]
        rows.append(f"{path.relative_to(digits_dir)},{';'.join(labels)}")
    (tmp_path / "labels.csv").write_text("\n".join(rows))
    config = TrainConfig.from_options(**{**FAST_CONFIG, "epochs": 4, "multi_label": True, "labels_csv": str(tmp_path / "labels.csv")})
    result = train(digits_dir, tmp_path / "run", config, progress=False)
    bundle = json.loads((result.bundle_dir / "config.json").read_text())
    assert bundle["task"] == "multi-label" and bundle["classes"] == ["even", "small"]
    assert len(bundle["thresholds"]) == 2 and all(0 < t < 1 for t in bundle["thresholds"])
    assert result.metrics["mAP"] > 0.7
    assert (result.run_dir / "evaluation/pr_curves.png").is_file()
    zero = next((digits_dir / "test" / "0").glob("*.png"))
    assert set(imgcls.load(result.run_dir).predict(zero)[0]["labels"]) <= {"even", "small", "unknown"}


def test_bad_options_are_usage_errors_naming_the_value():
    with pytest.raises(UsageError, match="unknown optimizer 'adamm'; did you mean 'adam'"):
        TrainConfig.from_options(optimizer="adamm").validate()
    with pytest.raises(UsageError, match="epochs must be at least 1, got 0"):
        TrainConfig.from_options(epochs=0).validate()


def test_unreadable_training_images_are_skipped_and_listed(digits_dir, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(digits_dir, data)
    broken = data / "train" / "3" / "broken.png"
    broken.write_bytes(b"not a png")
    result = train(data, tmp_path / "run", TrainConfig.from_options(**{**FAST_CONFIG, "epochs": 1}), progress=False)
    assert [s["path"] for s in result.skipped] == [str(broken)]
    assert broken.read_bytes() == b"not a png"
    assert json.loads((result.run_dir / "data.json").read_text())["skipped"][0]["path"] == str(broken)


def test_ema_weights_are_the_ones_validated_and_saved(digits_dir, tmp_path):
    from safetensors.torch import load_file

    result = train(digits_dir, tmp_path / "run", TrainConfig.from_options(**{**FAST_CONFIG, "epochs": 2, "ema": 0.9}), progress=False)
    checkpoint = torch.load(result.run_dir / "checkpoint.pt", map_location="cpu", weights_only=True)
    saved = load_file(str(result.bundle_dir / "model.safetensors"))
    averaged = {k.removeprefix("module."): v for k, v in checkpoint["ema"].items() if k.startswith("module.")}
    raw = checkpoint["model"]
    weight = "net.blocks.0.0.weight"
    assert torch.equal(saved[weight], averaged[weight]) and not torch.equal(saved[weight], raw[weight])


def _image_samples(folder, width, height, count=1):
    from PIL import Image

    from imgcls.data.folders import Sample

    samples = []
    for i in range(count):
        path = folder / f"{i}.png"
        Image.new("RGB", (width, height)).save(path)
        samples.append(Sample(path, (0,)))
    return samples


@pytest.mark.parametrize("side, expected", [(500, 128), (100, 104), (32, 32), (8, 32)])
def test_automatic_image_size_is_the_designed_size_unless_the_images_are_smaller(tmp_path, side, expected):
    from imgcls.train.defaults import choose_img_size, median_side

    side_seen = median_side(_image_samples(tmp_path, side + 40, side, count=5))
    assert side_seen == side
    assert choose_img_size(TrainConfig.from_options(model="cnn-bn", pretrained=False), side_seen) == expected


def test_a_pretrained_backbone_sees_its_own_input_size_whatever_the_images(tmp_path):
    from imgcls.train.defaults import choose_img_size

    assert choose_img_size(TrainConfig.from_options(model="efficientnet_lite0", pretrained=True), 32) == 224
    assert choose_img_size(TrainConfig.from_options(model="efficientnet_lite0", pretrained=True, img_size=160), 32) == 160


def test_photos_shrunk_far_below_their_size_are_flagged(tmp_path, caplog):
    from imgcls.train.defaults import choose_img_size, median_side

    side = median_side(_image_samples(tmp_path, 200, 150))
    assert choose_img_size(TrainConfig.from_options(model="speedrun-cnn", pretrained=False), side) == 32
    assert "about 150 px but speedrun-cnn is designed for 32 px" in caplog.text and "--img-size" in caplog.text
    caplog.clear()
    side = median_side(_image_samples(tmp_path, 1600, 1200))
    assert choose_img_size(TrainConfig.from_options(model="cnn-bn", pretrained=False), side) == 128  # as designed
    assert caplog.text == ""


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_a_bundle_trained_on_cuda_predicts_the_same_on_the_cpu(digits_dir, tmp_path):
    result = train(digits_dir, tmp_path / "run", TrainConfig.from_options(**{**FAST_CONFIG, "device": "cuda"}), progress=False)
    images = sorted((digits_dir / "validation").rglob("*.png"))
    on_gpu = imgcls.load(result.run_dir, device="cuda").predict(images, top_k=3)
    on_cpu = imgcls.load(result.run_dir, device="cpu").predict(images, top_k=3)
    assert [r["labels"][0] for r in on_gpu] == [r["labels"][0] for r in on_cpu]
    for gpu, cpu in zip(on_gpu, on_cpu):
        assert gpu["predictions"][0]["score"] == pytest.approx(cpu["predictions"][0]["score"], abs=2e-3)


@pytest.mark.parametrize("option, message", [({"model": "resnt18"}, "unknown model 'resnt18'; did you mean 'resnet18'"),
                                             ({"val_split": 1.5}, r"--val-split is a share of the images in \[0, 1\)")])
def test_a_wrong_training_option_is_a_usage_error_before_any_work(option, message):
    with pytest.raises(UsageError, match=message):
        TrainConfig.from_options(**option).validate()


# --- the settings a run records, and training again with them ------------------------------------------

def test_a_run_records_every_option_as_used_in_its_bundle_and_in_args_yaml(trained_run, digits_dir):
    from datetime import datetime

    from imgcls.train.config import SAVED_OPTIONS, parse_settings_yaml

    bundle = json.loads((trained_run.bundle_dir / "config.json").read_text())
    settings = bundle["settings"]
    assert set(SAVED_OPTIONS) <= set(settings)
    # automatic choices resolved: the learning rate, weight decay, mode, device and precision actually used
    assert settings["lr"] == pytest.approx(2e-3 * 32 / 64) and settings["weight_decay"] == 0.05
    assert settings["mode"] == "scratch" and settings["device"] in ("cpu", "cuda") and settings["precision"] in ("fp32", "bf16")
    assert settings["pretrained"] is False and settings["epochs"] == 3 and settings["img_size"] == 32
    assert settings["data"] == str(digits_dir.resolve()) and settings["data_fingerprint"] == json.loads(
        (trained_run.run_dir / "data.json").read_text())["fingerprint"]
    assert settings["imgcls_version"] == imgcls.__version__ and settings["torch_version"] == torch.__version__
    assert settings["timm_version"] and settings["python_version"].count(".") == 2
    assert datetime.fromisoformat(settings["started_at"]).tzinfo is not None and bundle["wall_time_s"] > 0

    text = (trained_run.run_dir / "args.yaml").read_text()
    assert text.startswith("# ") and "imgcls train --config" in text and "\nepochs: 3\n" in text
    assert parse_settings_yaml(text, "args.yaml") == {**settings, "wall_time_s": bundle["wall_time_s"]}
    yaml = pytest.importorskip("yaml")  # not a dependency; where installed it checks the file is real YAML
    assert yaml.safe_load(text) == {**settings, "wall_time_s": bundle["wall_time_s"]}


def test_a_bundle_saved_before_settings_were_recorded_still_loads(trained_run, tmp_path):
    bundle = tmp_path / "model"
    shutil.copytree(trained_run.bundle_dir, bundle)
    config = json.loads((bundle / "config.json").read_text())
    del config["settings"], config["wall_time_s"]
    (bundle / "config.json").write_text(json.dumps(config))
    predictor = imgcls.load(bundle)
    assert predictor.config.settings == {} and predictor.config.wall_time_s is None
    config["settings"] = "epochs=3"
    (bundle / "config.json").write_text(json.dumps(config))
    with pytest.raises(ImgclsError, match="settings must be an object, got 'epochs=3'"):
        imgcls.load(bundle)


def test_training_again_from_args_yaml_uses_the_same_settings_and_command_line_options_win(trained_run, tmp_path, capsys):
    from imgcls.cli.main import main
    from imgcls.train.config import RECORD_KEYS

    def options(run_dir):
        settings = json.loads((run_dir / "model/config.json").read_text())["settings"]
        return {key: value for key, value in settings.items() if key not in RECORD_KEYS}

    args_yaml = trained_run.run_dir / "args.yaml"
    assert main(["train", "--config", str(args_yaml), "--out", str(tmp_path / "again"), "--no-progress"]) == 0
    assert options(tmp_path / "again") == options(trained_run.run_dir)
    assert main(["train", "--config", str(args_yaml), "--out", str(tmp_path / "shorter"), "--epochs", "1",
                 "--no-report", "--no-progress"]) == 0
    assert options(tmp_path / "shorter") == {**options(trained_run.run_dir), "epochs": 1, "report": False}
    capsys.readouterr()


@pytest.mark.parametrize("value", [None, True, False, 0, 32, 2e-05, 1e20, 0.0015, -3.5, "cnn-bn", "", "a: b # c",
                                   'quote " and \\ back', "ünï €", "line\nbreak", "\u2028", [0.5, 0.25], ["a", "b"], []])
def test_settings_yaml_reads_back_every_value_it_writes(value):
    from imgcls.train.config import parse_settings_yaml, settings_yaml

    text = settings_yaml({"value": value}, "a comment\nover two lines")
    assert parse_settings_yaml(text, "args.yaml") == {"value": value}
    assert text.count("\n") == 3


def test_settings_yaml_reads_what_a_person_writes_and_refuses_what_it_cannot_read(tmp_path):
    from imgcls.train.config import parse_settings_yaml, read_settings

    hand = "# mine\nmodel: resnet18   \nepochs: 5  # more\nlr: 1e-3\npretrained: false\ntta: 'flip'\nworkers:\n"
    assert parse_settings_yaml(hand, "x") == {"model": "resnet18", "epochs": 5, "lr": 0.001, "pretrained": False,
                                              "tta": "flip", "workers": None}
    for text, message in [("model:\n  name: x\n", "line 2: expected a flat `name: value` line"),
                          ("epochs: 3\nepochs: 4\n", "line 2: 'epochs' is set twice"),
                          ("model: [a, b]\n", "line 1: cannot read the value '\\[a, b\\]'"),
                          ("!!python/object: x\n", "line 1: expected a flat")]:
        with pytest.raises(UsageError, match=message):
            parse_settings_yaml(text, "x")
    (tmp_path / "args.yaml").write_text("data: /somewhere\nepoch: 3\n")
    with pytest.raises(UsageError, match="unknown training option 'epoch'; did you mean 'epochs'"):
        read_settings(tmp_path / "args.yaml")
    (tmp_path / "args.yaml").write_text('data: "/somewhere"\nepochs: 3\nwall_time_s: 12.5\n')
    assert read_settings(tmp_path / "args.yaml") == ("/somewhere", {"epochs": 3})
