"""Optional parts of imgcls and the extra that installs each: `pip install 'imgcls[serve]'`.

The core (train, evaluate, predict, audit) needs none of them. Each optional feature imports its
third-party modules through `require` where it starts, so a missing one is a one-line message naming
the extra to install, not a ModuleNotFoundError from deep inside. pyproject.toml's
[project.optional-dependencies] lists what each extra installs.
"""
from __future__ import annotations

import importlib
import importlib.util
from types import ModuleType

from .errors import ImgclsError

# extra -> what needs it, for the message
FEATURES = {
    "serve": "imgcls serve",
    "explain": "imgcls explain",
    "onnx": "ONNX export and --engine onnx",
    "tensorboard": "--logger tensorboard",
    "mlflow": "--logger mlflow",
}


class MissingExtra(ImgclsError, ImportError):
    """An optional dependency is not installed; the message names the extra that installs it.
    An ImportError too, for code that already catches that."""


def installed(module: str) -> bool:
    """Whether `module` can be imported, without importing it (for a choice such as serve's engine 'auto')."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def require(extra: str, module: str) -> ModuleType:
    """`module`, imported; if it is not installed, MissingExtra naming `extra`. A module that is installed
    but fails to import (a broken build, a missing system library) keeps its own error: reinstalling the
    extra would not mend it."""
    if extra not in FEATURES:
        raise ValueError(f"unknown extra {extra!r}; one of {', '.join(FEATURES)}")
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as err:
        if err.name is None or not (module == err.name or module.startswith(f"{err.name}.")):
            raise
        raise MissingExtra(f"{FEATURES[extra]} needs the {extra} extra (no module '{err.name}'): "
                           f"pip install 'imgcls[{extra}]'") from None
