"""Specification of imgcls.models.bundle: the saved model folder, how it reloads, how it fails."""
from __future__ import annotations

import json
import os
from dataclasses import asdict

import pytest
import torch

from imgcls import __version__
from imgcls.errors import ImgclsError
from imgcls.models import bundle
from imgcls.models.bundle import (
    CONFIG_FILE,
    LABELS_FILE,
    WEIGHTS_FILE,
    BundleConfig,
    build_classifier,
    find_bundle,
    load_bundle,
    read_bundle_config,
    save_bundle,
)

CLASSES = ["chat", "chien", "狗", "café au lait"]  # output order; unicode must survive the round trip


def make_config(architecture: str = "cnn-bn", classes=CLASSES, **overrides) -> BundleConfig:
    fields = dict(architecture=architecture, classes=list(classes), img_size=32,
                  mean=(0.5, 0.4, 0.3), std=(0.2, 0.25, 0.3))
    return BundleConfig(**{**fields, **overrides})


def trained_model(config: BundleConfig):
    """A model as training leaves it: moved weights and BatchNorm statistics, in eval mode."""
    torch.manual_seed(0)
    model = build_classifier(config)
    model.train()(images(4, config.img_size))
    return model.eval()


def images(batch: int, size: int) -> torch.Tensor:
    return torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(1))


def outputs(model, size: int = 32) -> torch.Tensor:
    with torch.no_grad():
        return model(images(3, size))


@pytest.fixture
def saved(tmp_path):
    """(model, config, folder) of a lenet5 bundle saved in RUN/model."""
    config = make_config("lenet5")
    model = trained_model(config)
    return model, config, save_bundle(model, config, tmp_path / "run" / "model")


# --- what a bundle holds -------------------------------------------------------------------


def test_bundle_holds_config_weights_and_labels(saved):
    _, config, folder = saved

    assert sorted(p.name for p in folder.iterdir()) == sorted([CONFIG_FILE, WEIGHTS_FILE, LABELS_FILE])
    written = json.loads((folder / CONFIG_FILE).read_text(encoding="utf-8"))
    assert written["architecture"] == "lenet5" and written["img_size"] == 32
    assert written["classes"] == CLASSES
    assert written["mean"] == [0.5, 0.4, 0.3] and written["std"] == [0.2, 0.25, 0.3]
    assert written["task"] == "single-label" and written["thresholds"] is None
    assert written["imgcls_version"] == __version__


def test_labels_file_has_one_class_per_line_in_output_order(saved):
    _, _, folder = saved

    assert (folder / LABELS_FILE).read_text(encoding="utf-8").splitlines() == CLASSES


def test_config_reads_back_as_written(tmp_path):
    config = make_config(task="multi-label", thresholds=[0.3, 0.5, 0.7, 0.45], metrics={"f1_macro": 0.8})
    save_bundle(trained_model(config), config, tmp_path / "model")

    loaded = read_bundle_config(tmp_path / "model")

    assert asdict(loaded) == json.loads(json.dumps(asdict(config)))  # the same, in JSON's types
    assert loaded.multi_label


# --- reloading -------------------------------------------------------------------------------


@pytest.mark.parametrize("architecture", [
    "cnn-bn",
    "seed-cnn",
    "mobilenetv3_small_050",
    "test_vit",  # timm's tiny test ViT, rebuilt for 32 px, not its 160 px default
])
def test_loaded_bundle_gives_the_saved_models_outputs(tmp_path, architecture):
    config = make_config(architecture)
    model = trained_model(config)
    save_bundle(model, config, tmp_path / "model")

    loaded, loaded_config = load_bundle(tmp_path / "model")

    assert loaded_config.architecture == architecture
    assert not loaded.training
    assert torch.equal(outputs(loaded), outputs(model))


def test_a_bundle_with_the_fields_older_versions_wrote_loads_quietly_as_before(saved, caplog):
    model, _, folder = saved
    as_saved = read_bundle_config(folder)
    written = json.loads((folder / CONFIG_FILE).read_text(encoding="utf-8"))
    written.update(model_kwargs={}, data_fingerprint="sha256:0123abcd")  # as bundles saved before they were retired hold them
    (folder / CONFIG_FILE).write_text(json.dumps(written), encoding="utf-8")

    loaded, loaded_config = load_bundle(folder)

    assert loaded_config == as_saved and torch.equal(outputs(loaded), outputs(model))
    assert "ignoring" not in caplog.text


def test_find_bundle_accepts_the_run_folder_or_its_model_folder(saved):
    _, _, folder = saved

    assert find_bundle(folder.parent) == folder
    assert find_bundle(folder) == folder


def test_folder_without_a_bundle_is_a_clear_error(tmp_path):
    with pytest.raises(ImgclsError, match="is not a model bundle"):
        load_bundle(tmp_path)


@pytest.mark.parametrize("damage", [
    pytest.param(lambda text: text[: len(text) // 2], id="truncated"),
    pytest.param(lambda text: "[1, 2, 3]", id="not-an-object"),
    pytest.param(lambda text: json.dumps({"architecture": "lenet5"}), id="fields-missing"),
    pytest.param(lambda text: "\udcff", id="not-utf8"),
])
def test_damaged_config_is_a_clear_error(saved, damage):
    _, _, folder = saved
    (folder / CONFIG_FILE).write_bytes(damage((folder / CONFIG_FILE).read_text("utf-8")).encode("utf-8", "surrogateescape"))

    with pytest.raises(ImgclsError, match=f"bundle config '.*{CONFIG_FILE}' is damaged"):
        load_bundle(folder)


def test_unknown_task_is_a_clear_error(saved):
    _, _, folder = saved
    config = json.loads((folder / CONFIG_FILE).read_text(encoding="utf-8"))
    (folder / CONFIG_FILE).write_text(json.dumps({**config, "task": "regression"}), encoding="utf-8")

    with pytest.raises(ImgclsError, match="unknown task 'regression'.*single-label"):
        load_bundle(folder)


def test_missing_weights_are_a_clear_error(saved):
    _, _, folder = saved
    (folder / WEIGHTS_FILE).unlink()

    with pytest.raises(ImgclsError, match=f"weights in '.*{WEIGHTS_FILE}' do not load"):
        load_bundle(folder)


def test_damaged_weights_are_a_clear_error(saved):
    _, _, folder = saved
    (folder / WEIGHTS_FILE).write_bytes((folder / WEIGHTS_FILE).read_bytes()[:1000])

    with pytest.raises(ImgclsError, match=f"weights in '.*{WEIGHTS_FILE}' do not load"):
        load_bundle(folder)


def test_weights_of_another_architecture_are_a_clear_error(saved):
    _, _, folder = saved
    config = json.loads((folder / CONFIG_FILE).read_text(encoding="utf-8"))
    (folder / CONFIG_FILE).write_text(json.dumps({**config, "architecture": "cnn-bn"}), encoding="utf-8")

    with pytest.raises(ImgclsError, match="do not load"):
        load_bundle(folder)


# --- saving safely ---------------------------------------------------------------------------


def test_saving_over_a_bundle_replaces_it_completely(saved):
    _, _, folder = saved
    (folder / "notes.txt").write_text("left by hand")
    config = make_config("seed-cnn", classes=["yes", "no"])
    model = trained_model(config)

    save_bundle(model, config, folder)

    assert not (folder / "notes.txt").exists()
    assert (folder / LABELS_FILE).read_text(encoding="utf-8").splitlines() == ["yes", "no"]
    assert torch.equal(outputs(load_bundle(folder)[0]), outputs(model))
    assert [p.name for p in folder.parent.iterdir()] == ["model"]  # no staging or .old folder left


def test_failed_save_leaves_the_previous_bundle_loadable(saved, monkeypatch):
    model, _, folder = saved

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(bundle, "save_file", disk_full)
    config = make_config("seed-cnn", classes=["yes", "no"])
    with pytest.raises(OSError, match="No space left"):
        save_bundle(trained_model(config), config, folder)

    reloaded, reloaded_config = load_bundle(folder)
    assert reloaded_config.classes == CLASSES
    assert torch.equal(outputs(reloaded), outputs(model))
    assert [p.name for p in folder.parent.iterdir()] == ["model"]


@pytest.mark.skipif(os.name != "posix", reason="POSIX permission bits")
def test_bundle_folder_gets_ordinary_permissions(saved, tmp_path):
    # A server or a colleague under another user must be able to read a saved model.
    _, _, folder = saved
    (tmp_path / "ordinary").mkdir()

    assert folder.stat().st_mode == (tmp_path / "ordinary").stat().st_mode


@pytest.mark.skipif(os.name != "posix", reason="POSIX permission bits")
def test_every_bundle_file_weights_included_gets_the_mode_of_a_new_file(saved, tmp_path):
    # safetensors alone writes 0600: the weights would be unreadable where config.json is readable.
    _, _, folder = saved
    (tmp_path / "ordinary.txt").write_bytes(b"")

    modes = {path.name: path.stat().st_mode for path in folder.iterdir()}

    assert set(modes) == {CONFIG_FILE, WEIGHTS_FILE, LABELS_FILE}
    assert set(modes.values()) == {(tmp_path / "ordinary.txt").stat().st_mode}
