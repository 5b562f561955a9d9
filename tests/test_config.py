"""Training options by concern: each flat option (the command line's, imgcls.train's, args.yaml's) lives in one
section, round-trips through the checkpoint and the settings file, and the decode cache is the caller's choice."""
import json

import pytest

import imgcls
from imgcls.data.cache import DecodeCacheOptions
from imgcls.errors import UsageError
from imgcls.train.config import OPTIONS, SAVED_OPTIONS, SECTIONS, TrainConfig, read_settings

from conftest import FAST_CONFIG


def test_every_option_has_one_section_and_a_name_that_reads_back():
    assert sorted(SECTIONS) == ["data", "model", "optimisation", "output", "runtime"]
    config = TrainConfig.from_options(model="resnet18", img_size=96, lr=0.01, seed=3, logger="tensorboard", augment="none")
    assert (config.model.architecture, config.data.img_size, config.optimisation.lr) == ("resnet18", 96, 0.01)
    assert (config.runtime.seed, config.output.logger, config.data.augment) == (3, "tensorboard", "none")
    assert TrainConfig.from_options(config.options()) == config  # every flat name reads back into its section
    assert set(config.options()) == set(OPTIONS) and set(SAVED_OPTIONS) == set(OPTIONS) - {"decode_cache"}


def test_with_options_changes_only_what_it_names_and_leaves_the_original_alone():
    config = TrainConfig.from_options(recipe="speedrun")
    changed = config.with_options(epochs=2, model="cnn-bn")
    assert (changed.optimisation.epochs, changed.model.architecture) == (2, "cnn-bn")
    assert (config.optimisation.epochs, config.model.architecture) == (11, "speedrun-cnn")
    assert changed.optimisation.lr == config.optimisation.lr and changed.data == config.data
    with pytest.raises(UsageError, match="unknown training option 'epoch'.*did you mean 'epochs'"):
        config.with_options(epoch=2)


def test_a_checkpoints_flat_config_of_an_older_version_still_loads():
    saved = {**TrainConfig.from_options(epochs=4, lr=0.5).options(saved_only=True), "model_kwargs": {}, "retired": 1}
    loaded = TrainConfig.from_saved(saved)
    assert (loaded.optimisation.epochs, loaded.optimisation.lr) == (4, 0.5)


def test_validation_checks_each_section(tmp_path):
    for options, message in ((dict(val_split=1.5), "--val-split"), (dict(mode="thaw"), "unknown mode"),
                             (dict(momentum=1.0), "momentum"), (dict(precision="half"), "unknown precision"),
                             (dict(logger="wandb"), "unknown logger"),
                             (dict(decode_cache=str(tmp_path)), "DecodeCacheOptions")):
        with pytest.raises(UsageError, match=message):
            TrainConfig.from_options(options).validate()


def test_the_decode_cache_is_the_callers_choice_and_is_not_saved_with_the_run(digits_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("IMGCLS_CACHE_DIR", str(tmp_path / "from-environment"))
    chosen = tmp_path / "chosen"
    result = imgcls.train(digits_dir, tmp_path / "run", progress=False, decode_cache=DecodeCacheOptions(chosen, 1.0),
                          **{**FAST_CONFIG, "epochs": 1})
    assert list(chosen.glob("*.npy")) and not (tmp_path / "from-environment").exists()
    settings = json.loads((result.bundle_dir / "config.json").read_text())["settings"]
    assert "decode_cache" not in settings
    _, options = read_settings(result.run_dir / "args.yaml")  # trains again with the same options, cache aside
    assert TrainConfig.from_options(options).runtime.decode_cache is None
