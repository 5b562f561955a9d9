"""Shared fixtures: real digits written as image folders, a trained tiny bundle, real ImageNet weights."""
from __future__ import annotations

import logging
import os
import subprocess
import tempfile
from pathlib import Path

# Nothing is downloaded during tests: an empty, offline Hugging Face cache, set before huggingface_hub
# reads its settings at import (a test that needs weights installs them with `with_imagenet_weights`).
os.environ["HF_HOME"] = tempfile.mkdtemp(prefix="imgcls-test-hf-home-")
os.environ["HF_HUB_OFFLINE"] = "1"

import pytest
import torch

from imgcls.data.digits import write_digits_folder
from imgcls.train.config import TrainConfig
from imgcls.train.run import train

# Small, fast, and still real: 3 epochs of cnn-bn on ~20 digits per class learns them well above chance.
FAST_CONFIG = dict(model="cnn-bn", epochs=3, batch_size=32, img_size=32, early_stopping=0, report=False)


@pytest.fixture(autouse=True, scope="session")
def _one_thread_per_test_process():
    """Two threads (the CI machine's cores); IMGCLS_TEST_THREADS=1 when several test runs share the machine."""
    torch.set_num_threads(int(os.environ.get("IMGCLS_TEST_THREADS", "2")))


@pytest.fixture(autouse=True)
def _imgcls_logging_as_imported():
    """Every test starts with the 'imgcls' loggers as the library leaves them: no handler, no level of their
    own, propagating to the root logger, where caplog listens. A test that runs the CLI in this process leaves
    them as a command does (a handler on that test's captured stderr, not propagating, --quiet's level), and
    the floors run's pytest 8.0 then missed the next tests' warnings. setLevel also clears logging's cache of
    which levels each logger lets through, which assigning `.level` would leave stale."""
    loggers = [logging.getLogger("imgcls")] + [logger for name, logger in logging.root.manager.loggerDict.items()
                                               if name.startswith("imgcls.") and isinstance(logger, logging.Logger)]
    for logger in loggers:
        logger.handlers.clear()
        logger.propagate, logger.disabled = True, False
        logger.setLevel(logging.NOTSET)


@pytest.fixture
def cache_dir(tmp_path, monkeypatch) -> Path:
    """A decode cache of the test's own, which every call uses (DecodeCacheOptions.from_environment() included)."""
    folder = tmp_path / "cache"
    monkeypatch.setenv("IMGCLS_CACHE_DIR", str(folder))
    return folder


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


SHARED_WEIGHTS = Path(__file__).resolve().parents[2] / "shared" / "weights"


@pytest.fixture(scope="session")
def imagenet_hf_home(tmp_path_factory):
    """An offline Hugging Face cache holding real ImageNet weights for efficientnet_lite0 (shared/weights)."""
    script = SHARED_WEIGHTS / "install-hf-cache.sh"
    if not (SHARED_WEIGHTS / "efficientnet_lite0_in1k.safetensors").is_file() or not script.is_file():
        pytest.skip(f"no pretrained weights at {SHARED_WEIGHTS}")
    home = tmp_path_factory.mktemp("hf-home")
    subprocess.run(["bash", str(script), str(home)], check=True, capture_output=True)
    return home


@pytest.fixture
def with_imagenet_weights(imagenet_hf_home, monkeypatch):
    """timm.create_model('efficientnet_lite0', pretrained=True) finds real weights, offline."""
    from huggingface_hub import constants

    monkeypatch.setenv("HF_HOME", str(imagenet_hf_home))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(imagenet_hf_home / "hub"))  # read once at import
    return imagenet_hf_home


@pytest.fixture(scope="session")
def digits_dir(tmp_path_factory):
    """ROOT/{train,validation,test}/<digit>/*.png and ROOT/predict/*.png, 30 real scans per digit."""
    return write_digits_folder(tmp_path_factory.mktemp("digits"), per_class=30)


@pytest.fixture(scope="session")
def trained_run(digits_dir, tmp_path_factory):
    """A run folder trained once for the whole session (read-only for tests)."""
    run_dir = tmp_path_factory.mktemp("runs") / "digits"
    return train(digits_dir, run_dir, TrainConfig.from_options(**{**FAST_CONFIG, "report": True}), progress=False)


@pytest.fixture(scope="module")
def run_copy(trained_run, tmp_path_factory):
    """The trained bundle and its data.json in a run folder of our own: a server keeps its
    look-alike index beside the bundle, and the session's run is read-only."""
    import shutil

    run = tmp_path_factory.mktemp("served")
    shutil.copytree(trained_run.bundle_dir, run / "model")
    shutil.copy(trained_run.run_dir / "data.json", run / "data.json")
    return run


@pytest.fixture(scope="module")
def client(run_copy):
    """The server's app on that run, in-process (no socket)."""
    from fastapi.testclient import TestClient

    from imgcls.serve.app import create_app

    with TestClient(create_app(run_copy, device="cpu")) as client:
        yield client
