"""Specification of "a bundle is data, never instructions" (issue 14): what config.json, labels.txt and
weights files may hold, and that loading a bundle never downloads, never reads outside it, never unpickles."""
from __future__ import annotations

import json
import logging
import shutil
import socket
from pathlib import Path

import pytest
import torch

import imgcls
from imgcls.cli.main import main
from imgcls.errors import ImgclsError, UsageError
from imgcls.models.bundle import CONFIG_FILE, LABELS_FILE, BundleConfig, build_classifier, load_bundle, save_bundle
from imgcls.models.registry import create_model
from imgcls.models.weights import load_weights
from imgcls.train.config import TrainConfig

HOSTILE_URL = "http://127.0.0.1:9/evil.pth"  # the discard port: nothing answers, and nothing may even try
TIMM_MODEL = "resnet10t"


class Note:
    """A custom class, as a training script's checkpoint holds (its config object, say)."""


@pytest.fixture(autouse=True)
def network(monkeypatch):
    """Every connection attempt, refused and recorded: loading a bundle must make none."""
    attempts = []

    def refuse(sock, address):
        attempts.append(address)
        raise ConnectionRefusedError(f"test: network access to {address} attempted")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    return attempts


@pytest.fixture
def bundle(trained_run, tmp_path) -> Path:
    """A private copy of the session's trained bundle, free to doctor."""
    return Path(shutil.copytree(trained_run.bundle_dir, tmp_path / "model"))


@pytest.fixture
def image(digits_dir) -> Path:
    return next((digits_dir / "predict").glob("*.png"))


def edit_config(folder: Path, **fields) -> None:
    config = json.loads((folder / CONFIG_FILE).read_text(encoding="utf-8"))
    (folder / CONFIG_FILE).write_text(json.dumps({**config, **fields}), encoding="utf-8")


def assert_refused(folder: Path, image: Path, capsys, *fragments: str) -> None:
    """imgcls.load() and `imgcls predict` both refuse the bundle, in one line holding every fragment."""
    with pytest.raises(ImgclsError) as caught:
        imgcls.load(folder)
    code = main(["predict", str(folder), str(image)])
    err = capsys.readouterr().err
    assert code == 1 and err.startswith("imgcls: error: ") and err.count("\n") == 1
    for message in (str(caught.value), err):
        for fragment in fragments:
            assert fragment in message


# --- model_kwargs: retired, never applied ---------------------------------------------------


@pytest.mark.parametrize("architecture, model_kwargs", [
    (TIMM_MODEL, {"pretrained": True, "pretrained_cfg_overlay": {"url": HOSTILE_URL, "hf_hub_id": None}}),
    (TIMM_MODEL, {"pretrained_cfg": {"url": HOSTILE_URL}}),
    (TIMM_MODEL, {"checkpoint_path": "/etc/shadow"}),
    ("cnn-bn", {"pretrained": True}),
    ("cnn-bn", {"checkpoint_path": "/etc/shadow"}),
])
def test_arguments_a_bundle_gives_its_architecture_never_reach_it(bundle, caplog, network, tmp_path,
                                                                  architecture, model_kwargs):
    """Older imgcls passed a bundle's model_kwargs to the architecture; none does any more: a doctored one
    is ignored with a warning, and loading neither downloads nor reads the files it names."""
    if architecture != "cnn-bn":  # a bundle of that architecture, so that its weights fit
        config = BundleConfig(architecture, ["a", "b"], 32, (0.5,), (0.25,))
        bundle = save_bundle(build_classifier(config), config, tmp_path / "timm")
    edit_config(bundle, model_kwargs=model_kwargs)

    model, config = load_bundle(bundle)

    assert not model.training and not hasattr(config, "model_kwargs")
    assert f"'{bundle / CONFIG_FILE}'" in caplog.text and "ignoring model_kwargs" in caplog.text
    assert network == []


# --- the other fields: types and ranges --------------------------------------------------------


@pytest.mark.parametrize("field, value, fragment", [
    ("architecture", "resnt18", "architecture: unknown model 'resnt18'"),
    ("architecture", ["cnn-bn"], "architecture must be a model name"),
    ("classes", [], "classes must be a non-empty list of unique, non-empty class names, got []"),
    ("classes", ["0", "0", "1"], "classes must be a non-empty list of unique"),
    ("classes", ["0", "", "2"], "classes must be a non-empty list of unique"),
    ("img_size", 100000, "img_size must be a whole number of pixels in [8, 4096], got 100000"),
    ("img_size", 4, "img_size must be a whole number of pixels in [8, 4096], got 4"),
    ("img_size", "32", "img_size must be a whole number of pixels in [8, 4096], got '32'"),
    ("img_size", True, "img_size must be a whole number of pixels in [8, 4096], got True"),
    ("mean", [0.5, 0.5], "mean must be 1 or 3 numbers"),
    ("std", [0.2, 0.0, 0.2], "std must be 1 or 3 numbers above 0"),
    ("std", [float("nan")] * 3, "std must be 1 or 3 numbers above 0"),
    ("task", "regression", "unknown task 'regression' (choose from single-label, multi-label)"),
    ("temperature", 0, "temperature must be a finite number above 0, got 0"),
    ("temperature", float("inf"), "temperature must be a finite number above 0, got inf"),
    ("thresholds", [0.5], "thresholds must be null or one probability in [0, 1] per class (10), got [0.5]"),
    ("thresholds", [1.5] * 10, "thresholds must be null or one probability in [0, 1] per class (10)"),
    ("unknown_below", 2, "unknown_below must be null or a probability in [0, 1], got 2"),
    ("resize", "crop", "unknown resize 'crop' (choose from squash)"),
    ("tta", "rotate", "unknown tta 'rotate' (choose from none, flip, flip-shift)"),
])
def test_config_field_outside_the_schema_is_refused_naming_file_field_and_value(bundle, image, capsys,
                                                                                field, value, fragment):
    edit_config(bundle, **{field: value})

    assert_refused(bundle, image, capsys, f"bundle config '{bundle / CONFIG_FILE}'", fragment)


def test_unknown_fields_are_ignored_with_a_warning(bundle, image, caplog):
    edit_config(bundle, field_from_a_newer_imgcls={"url": HOSTILE_URL})

    with caplog.at_level(logging.WARNING, logger="imgcls"):
        results = imgcls.load(bundle).predict([image])

    assert results[0]["error"] is None
    assert "field_from_a_newer_imgcls" in caplog.text and str(bundle / CONFIG_FILE) in caplog.text


# --- labels.txt and config.json agree ----------------------------------------------------------


@pytest.mark.parametrize("change, detail", [
    (lambda labels: labels[1::-1] + labels[2:], "line 1 is '1' in labels.txt, '0' in config.json"),
    (lambda labels: labels[:-1], "9 names in labels.txt, 10 classes in config.json"),
    (lambda labels: labels + ["ten"], "11 names in labels.txt, 10 classes in config.json"),
    (lambda labels: ["zero"] + labels[1:], "line 1 is 'zero' in labels.txt, '0' in config.json"),
])
def test_labels_file_that_disagrees_with_the_config_is_refused(bundle, image, capsys, change, detail):
    labels = (bundle / LABELS_FILE).read_text(encoding="utf-8").splitlines()
    (bundle / LABELS_FILE).write_text("\n".join(change(labels)) + "\n", encoding="utf-8")

    assert_refused(bundle, image, capsys, f"'{bundle / LABELS_FILE}' and '{bundle / CONFIG_FILE}' disagree", detail)


def test_bundle_without_a_labels_file_still_loads(bundle, image, trained_run):
    (bundle / LABELS_FILE).unlink()

    assert imgcls.load(bundle).predict([image]) == imgcls.load(trained_run.bundle_dir).predict([image])


def test_valid_copy_of_a_bundle_predicts_like_the_original(bundle, trained_run, digits_dir, capsys, network):
    images = sorted((digits_dir / "predict").glob("*.png"))

    assert imgcls.load(bundle).predict(images) == imgcls.load(trained_run.bundle_dir).predict(images)
    assert main(["predict", str(bundle), *map(str, images), "--format", "json"]) == 0
    assert len(json.loads(capsys.readouterr().out)) == len(images)
    assert network == []


# --- weights: the file and the reason, never "weights_only=False" ------------------------------


def test_bundle_weights_that_do_not_fit_the_config_name_the_file_and_the_reason(bundle, image, capsys):
    classes = [str(digit) for digit in range(3)]
    edit_config(bundle, classes=classes)
    (bundle / LABELS_FILE).write_text("\n".join(classes) + "\n", encoding="utf-8")

    assert_refused(bundle, image, capsys, f"weights in '{bundle / 'model.safetensors'}' do not load",
                   "do not fit the cnn-bn with 3 classes that config.json describes", "size mismatch")


@pytest.mark.parametrize("zipfile", [True, False], ids=["zip-format", "legacy-format"])
def test_weights_file_holding_a_pickled_object_names_it_and_never_suggests_weights_only_false(tmp_path, zipfile):
    net = create_model("lenet5", num_classes=3, img_size=32)
    torch.save({"state_dict": net.state_dict(), "config": Note()}, tmp_path / "ckpt.pt",
               _use_new_zipfile_serialization=zipfile)

    with pytest.raises(ImgclsError) as caught:
        load_weights(net, tmp_path / "ckpt.pt")

    message = str(caught.value)
    assert f"weights file '{tmp_path / 'ckpt.pt'}' holds a Python object (" in message
    assert f"{__name__}.Note" in message and "never unpickles code" in message
    assert "weights_only" not in message and "\n" not in message


# --- image sizes -------------------------------------------------------------------------------


def test_training_refuses_an_image_size_over_the_limit_saying_how_to_raise_it(digits_dir, tmp_path, capsys):
    code = main(["train", str(digits_dir), "--out", str(tmp_path / "run"), "--img-size", "100000"])

    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert "--img-size 100000 is over the 1024-pixel limit; pass --max-img-size N to allow more" in err
    assert not (tmp_path / "run").exists()


def test_image_size_limit_is_a_setting():
    assert TrainConfig.from_options(img_size=2048, max_img_size=2048).validate().data.img_size == 2048
    with pytest.raises(UsageError, match="--img-size must be at least 8 pixels, got 4"):
        TrainConfig.from_options(img_size=4).validate()
    with pytest.raises(UsageError, match=r"--max-img-size must be between 8 and 4096 pixels .*got 100000"):
        TrainConfig.from_options(max_img_size=100000).validate()


# --- saving: no staging folder outlives a save -------------------------------------------------


def test_a_save_removes_staging_folders_left_by_a_killed_save_and_nothing_else(trained_run, tmp_path):
    model, config = load_bundle(trained_run.bundle_dir)
    leftovers = [tmp_path / ".model.tmp-0123abcd", tmp_path / ".model.tmp-ffffffff"]
    unrelated = [tmp_path / name for name in (".model.tmp-notours1", ".model.tmp-0123abcd9", ".other.tmp-0123abcd",
                                              "model.tmp-0123abcd", ".model.old-0123abcd", "notes")]
    for folder in leftovers + unrelated:
        folder.mkdir()
        (folder / "model.safetensors").write_bytes(b"half-written")

    save_bundle(model, config, tmp_path / "model")

    assert not any(folder.exists() for folder in leftovers)
    assert all((folder / "model.safetensors").is_file() for folder in unrelated)
    assert load_bundle(tmp_path / "model")[1] == config
