"""Shared fixtures: real digits written as image folders, and a trained tiny bundle."""
from __future__ import annotations

import os

import pytest
import torch

from imgcls.data.digits import write_digits_folder
from imgcls.train.config import TrainConfig
from imgcls.train.run import train

# Small, fast, and still real: 3 epochs of cnn-bn on ~20 digits per class learns them well above chance.
FAST_CONFIG = dict(model="cnn-bn", epochs=3, batch_size=32, img_size=32, early_stopping=0, report=False)


@pytest.fixture(autouse=True, scope="session")
def _one_thread_per_test_process():
    torch.set_num_threads(2)


@pytest.fixture(autouse=True, scope="session")
def _decode_cache_in_a_temp_folder(tmp_path_factory):
    """Tests never write into the user's ~/.cache (the decode cache is on by default)."""
    previous = os.environ.get("IMGCLS_CACHE_DIR")
    os.environ["IMGCLS_CACHE_DIR"] = str(tmp_path_factory.mktemp("decode-cache"))
    yield
    if previous is None:
        del os.environ["IMGCLS_CACHE_DIR"]
    else:
        os.environ["IMGCLS_CACHE_DIR"] = previous


@pytest.fixture(scope="session")
def digits_dir(tmp_path_factory):
    """ROOT/{train,validation,test}/<digit>/*.png and ROOT/predict/*.png, 30 real scans per digit."""
    return write_digits_folder(tmp_path_factory.mktemp("digits"), per_class=30)


@pytest.fixture(scope="session")
def trained_run(digits_dir, tmp_path_factory):
    """A run folder trained once for the whole session (read-only for tests)."""
    run_dir = tmp_path_factory.mktemp("runs") / "digits"
    return train(digits_dir, run_dir, TrainConfig(**{**FAST_CONFIG, "report": True}), progress=False)
