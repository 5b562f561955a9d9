"""Running the app under uvicorn: one process, or N worker processes that each load the model once.

Several workers need an import string uvicorn can call in each child (its documented `factory=True`
pattern); the settings reach the children through one environment variable.

The server answers only requests whose Host header names it (`trusted_hosts`): a web page whose domain
is re-pointed at 127.0.0.1 (DNS rebinding) sends its own domain as Host, and gets 400.
"""
from __future__ import annotations

import ipaddress
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

uvicorn = require("serve", "uvicorn")

log = logging.getLogger(__name__)

SETTINGS_ENV = "IMGCLS_SERVE_SETTINGS"  # JSON handed from `serve` to each worker process
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "[::1]")  # as Starlette parses a Host header: IPv6 in brackets
ANY_ADDRESS = ("0.0.0.0", "::", "")


def serve(bundle: str | Path, host: str = "127.0.0.1", port: int = 8000, workers: int = 1, device: str = "auto",
          engine: str = "auto", data_dir: str | Path | None = None, config: ServeConfig | None = None) -> None:
    """Serve `bundle` until interrupted. Binds to this machine only unless `host` says otherwise."""
    config = config or ServeConfig()
    if workers < 1:
        raise UsageError(f"--workers must be at least 1, got {workers}")
    read_bundle_config(bundle)  # a wrong path fails here, in one line, not once per worker
    config = replace(config, allowed_hosts=trusted_hosts(host, config.allowed_hosts))
    if not _is_loopback(host):
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


def trusted_hosts(host: str, named: tuple[str, ...] = ()) -> tuple[str, ...]:
    """The Host names a server bound to `host` answers to: its own address (with the loopback names
    when it listens on loopback) and those `named`. Empty, meaning any, when bound to every address
    with none named: the server cannot know every name and address clients reach it by (LAN
    addresses, mDNS names, proxies), refusing them would break `--host 0.0.0.0` for its common use,
    and such a server is already open to whoever can reach the machine."""
    if host in ANY_ADDRESS and not named:
        return ()
    own = () if host in ANY_ADDRESS else (f"[{host}]" if ":" in host else host,)
    if host in ANY_ADDRESS or _is_loopback(host):  # every address includes loopback
        own += LOOPBACK_NAMES
    return tuple(dict.fromkeys((*own, *named)))


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name: assume it is reachable from elsewhere
        return False
