"""Running the app under uvicorn: one process, or N worker processes that each load the model once.

Several workers need an import string uvicorn can call in each child (its documented `factory=True`
pattern); the settings reach the children through one environment variable.

The server answers only requests whose Host header names it (`hosts.trusted_hosts`), which stops DNS rebinding.
"""
from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict, replace
from pathlib import Path

from ..errors import UsageError
from ..extras import require
from ..models.bundle import read_bundle_config
from .app import create_app
from .config import ServeConfig
from .hosts import is_loopback, trusted_hosts

uvicorn = require("serve", "uvicorn")

log = logging.getLogger(__name__)

SETTINGS_ENV = "IMGCLS_SERVE_SETTINGS"  # JSON handed from `serve` to each worker process


def serve(bundle: str | Path, host: str = "127.0.0.1", port: int = 8000, workers: int = 1, device: str = "auto",
          engine: str = "auto", data_dir: str | Path | None = None, config: ServeConfig | None = None) -> None:
    """Serve `bundle` until interrupted. Binds to this machine only unless `host` says otherwise."""
    config = config or ServeConfig()
    if workers < 1:
        raise UsageError(f"--workers must be at least 1, got {workers}")
    read_bundle_config(bundle)  # a wrong path fails here, in one line, not once per worker
    config = replace(config, allowed_hosts=trusted_hosts(host, config.allowed_hosts))
    if not is_loopback(host):
        log.warning("listening on %s: anyone who can reach this machine can use the model", host)
    if not config.allowed_hosts:
        log.warning("any Host header is accepted: name the host names or addresses clients use with "
                    "--allowed-host NAME, so that web pages cannot reach the server through DNS rebinding")
    log.info("serving %s on http://%s:%d (API docs at /docs)", bundle, host, port)
    if workers == 1:
        uvicorn.run(create_app(bundle, config, device, engine, data_dir), host=host, port=port)
        return
    settings = {"bundle": str(bundle), "device": device, "engine": engine, "config": asdict(config),
                "data_dir": str(data_dir) if data_dir else None,
                "torch_threads": max(1, (os.cpu_count() or 1) // workers)}  # N workers share the cores, not N times each
    os.environ[SETTINGS_ENV] = json.dumps(settings)
    uvicorn.run("imgcls.serve.server:app_from_env", factory=True, host=host, port=port, workers=workers)


def app_from_env():
    """The app in one worker process, built from the settings `serve` left in the environment."""
    import torch

    settings = json.loads(os.environ[SETTINGS_ENV])
    torch.set_num_threads(settings["torch_threads"])
    return create_app(settings["bundle"], ServeConfig(**settings["config"]), settings["device"], settings["engine"],
                      settings["data_dir"])
