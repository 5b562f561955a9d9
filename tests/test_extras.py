"""Optional extras: a feature whose extra is not installed says, in one line, which extra to install."""
from __future__ import annotations

import logging
import shutil
import sys
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from imgcls.cli.main import main
from imgcls.errors import ImgclsError
from imgcls.extras import FEATURES, MissingExtra, require

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"


def run_cli(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_a_missing_module_names_the_extra_and_the_command_that_installs_it():
    with pytest.raises(MissingExtra) as raised:
        require("serve", "imgcls_test_no_such_module")

    assert str(raised.value) == ("imgcls serve needs the serve extra (no module 'imgcls_test_no_such_module'): "
                                 "pip install 'imgcls[serve]'")
    assert isinstance(raised.value, ImportError) and isinstance(raised.value, ImgclsError)


def test_an_installed_module_is_returned():
    import json

    assert require("onnx", "json") is json


def test_a_module_that_is_installed_but_breaks_on_import_keeps_its_own_error(tmp_path, monkeypatch):
    # Reinstalling the extra would not mend it: the message must not say so.
    (tmp_path / "imgcls_test_broken.py").write_text("import imgcls_test_missing_dependency\n")
    monkeypatch.syspath_prepend(str(tmp_path))

    with pytest.raises(ModuleNotFoundError, match="imgcls_test_missing_dependency") as raised:
        require("onnx", "imgcls_test_broken")
    assert not isinstance(raised.value, MissingExtra)


def test_every_extra_is_declared_in_pyproject_and_dev_installs_them_all():
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    extras = tomllib.loads(PYPROJECT.read_text(encoding="utf-8"))["project"]["optional-dependencies"]

    in_dev = {extra for requirement in map(Requirement, extras["dev"]) if requirement.name == "imgcls"
              for extra in requirement.extras}
    assert set(FEATURES) <= set(extras) and set(FEATURES) <= in_dev


def _without(monkeypatch, module: str, *importers: str) -> None:
    """Python's own way to make `import module` fail as if it were not installed (None in sys.modules),
    with the imgcls modules that import it unloaded, so that they import it again."""
    monkeypatch.setitem(sys.modules, module, None)
    for name in importers:
        monkeypatch.delitem(sys.modules, name, raising=False)


@pytest.mark.parametrize("module, importers, argv, extra", [
    ("uvicorn", ["imgcls.serve.server"], ["serve", "{bundle}"], "serve"),
    ("fastapi", ["imgcls.serve.server", "imgcls.serve.app"], ["serve", "{bundle}"], "serve"),
    ("onnx", ["imgcls.export.onnx"], ["export", "{bundle}"], "onnx"),
    ("onnxruntime", [], ["predict", "{bundle}", "{image}", "--engine", "onnx"], "onnx"),
    ("captum.attr", [], ["explain", "{bundle}", "{image}", "--out", "{out}"], "explain"),
])
def test_a_command_without_its_extra_ends_with_one_line_naming_the_extra(capsys, monkeypatch, trained_run, digits_dir,
                                                                         tmp_path, module, importers, argv, extra):
    bundle = shutil.copytree(trained_run.bundle_dir, tmp_path / "model")
    if module == "onnxruntime":  # --engine onnx runs an exported model: export it while onnxruntime is there
        assert run_cli(capsys, "export", bundle)[0] == 0
    image = next((digits_dir / "predict").glob("*.png"))
    _without(monkeypatch, module, *importers)

    code, _, err = run_cli(capsys, *[a.format(bundle=bundle, image=image, out=tmp_path / "maps") for a in argv])

    assert code == 1 and "Traceback" not in err
    assert err.splitlines()[-1].startswith("imgcls: error: ")
    assert f"needs the {extra} extra (no module '{module}'): pip install 'imgcls[{extra}]'" in err.splitlines()[-1]


def test_the_server_runs_an_exported_bundle_on_pytorch_when_the_onnx_extra_is_missing(capsys, monkeypatch, trained_run,
                                                                                      tmp_path, caplog):
    from imgcls.serve.service import load_models

    bundle = shutil.copytree(trained_run.bundle_dir, tmp_path / "model")
    assert run_cli(capsys, "export", bundle)[0] == 0
    assert load_models(bundle, "cpu", "auto")[1].model.__class__.__name__ == "OnnxModel"
    _without(monkeypatch, "onnxruntime")
    monkeypatch.setattr(logging.getLogger("imgcls"), "propagate", True)  # the CLI's own setup turns it off

    explaining, predicting = load_models(bundle, "cpu", "auto")

    assert predicting is explaining  # the PyTorch model does both
    assert "predictions run on PyTorch: model.onnx needs the onnx extra" in caplog.text
