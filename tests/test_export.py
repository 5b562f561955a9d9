"""Specification of `imgcls export` and `--engine onnx`: one ONNX file per bundle, checked against
PyTorch as it is written, and predictions through onnxruntime equal to PyTorch's."""
from __future__ import annotations

import json
import shutil

import onnx
import pytest
import torch

from imgcls.cli.main import main
from imgcls.errors import ImgclsError, UsageError
from imgcls.export import onnx as export_module
from imgcls.export.onnx import OPSET, export_onnx
from imgcls.export.session import ONNX_FILE, OnnxModel
from imgcls.models.bundle import (
    CONFIG_FILE, LABELS_FILE, WEIGHTS_FILE, BundleConfig, build_classifier, load_bundle, save_bundle,
)
from imgcls.predict.predictor import Predictor


def run_cli(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def copy_run(trained_run, target):
    """The trained bundle and its data.json in a run folder of our own (the fixture is read-only)."""
    target.mkdir(parents=True)
    shutil.copy(trained_run.run_dir / "data.json", target / "data.json")
    return shutil.copytree(trained_run.bundle_dir, target / "model")


@pytest.fixture(scope="module")
def exported(trained_run, tmp_path_factory):
    """(bundle folder, ExportResult) of the trained digits bundle, exported once."""
    bundle = copy_run(trained_run, tmp_path_factory.mktemp("export") / "digits")
    return bundle, export_onnx(bundle)


@pytest.fixture
def unexported(trained_run, tmp_path):
    return copy_run(trained_run, tmp_path / "digits")


def random_bundle(architecture: str, img_size: int, folder):
    """A bundle as training leaves one (BatchNorm statistics moved off their defaults), without data.json."""
    config = BundleConfig(architecture=architecture, classes=["ant", "bee", "cicada"], img_size=img_size,
                          mean=(0.5, 0.4, 0.3), std=(0.2, 0.25, 0.3))
    torch.manual_seed(0)
    model = build_classifier(config)
    model.train()(torch.rand(4, 3, img_size, img_size))
    return save_bundle(model.eval(), config, folder)


# --- the export ------------------------------------------------------------------------------


def test_export_of_the_trained_bundle_matches_pytorch_within_1e_4_on_random_and_validation_images(exported, digits_dir):
    bundle, result = exported

    assert result.path == bundle / ONNX_FILE and result.path.is_file()
    assert 0 <= result.max_score_diff <= 1e-4 and 0 <= result.max_logit_diff <= 1e-4
    assert result.checked == {"random": 8, f"images from {digits_dir / 'validation'}": 32}


def test_exported_graph_takes_a_dynamic_batch_of_rgb_images_and_names_its_classes(exported):
    bundle, result = exported
    graph = onnx.load(result.path)
    config = json.loads((bundle / CONFIG_FILE).read_text())

    (image,), (logits,) = graph.graph.input, graph.graph.output
    dims = [d.dim_param or d.dim_value for d in image.type.tensor_type.shape.dim]
    assert image.name == "image" and image.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert dims == ["batch", 3, 32, 32]
    assert logits.name == "logits" and [d.dim_param or d.dim_value for d in logits.type.tensor_type.shape.dim] == ["batch", 10]
    assert [o.version for o in graph.opset_import if o.domain in ("", "ai.onnx")] == [OPSET]
    assert json.loads({p.key: p.value for p in graph.metadata_props}["classes"]) == config["classes"]


@pytest.mark.parametrize("batch", [1, 7])
def test_exported_model_takes_any_batch_size(exported, batch):
    bundle, result = exported
    model, _ = load_bundle(bundle)
    images = torch.rand(batch, 3, 32, 32, generator=torch.Generator().manual_seed(batch))

    logits = OnnxModel(result.path)(images)

    assert logits.shape == (batch, 10)
    with torch.no_grad():
        assert (logits - model(images)).abs().max() <= 1e-4


@pytest.mark.parametrize("architecture, img_size", [
    ("lenet5", 32), ("seed-cnn", 48), ("speedrun-cnn", 32), ("resnet10t", 64), ("mobilenetv3_small_050", 64), ("test_vit", 32),
])
def test_builtin_and_timm_cnns_and_vits_export_within_1e_4(architecture, img_size, tmp_path):
    bundle = random_bundle(architecture, img_size, tmp_path / "model")

    result = export_onnx(bundle)

    assert result.max_score_diff <= 1e-4 and result.max_logit_diff <= 1e-4
    assert result.checked == {"random": 8, "generated": 32}  # no data.json beside it: photo-like stand-ins


def test_an_existing_export_is_replaced_atomically_with_no_temporary_files_left(unexported):
    (unexported / ONNX_FILE).write_bytes(b"an old, broken export")

    export_onnx(unexported)

    assert sorted(p.name for p in unexported.iterdir()) == sorted([CONFIG_FILE, WEIGHTS_FILE, LABELS_FILE, ONNX_FILE])
    assert OnnxModel(unexported / ONNX_FILE)(torch.rand(2, 3, 32, 32)).shape == (2, 10)


def test_an_export_that_disagrees_with_pytorch_is_refused_and_the_old_file_kept(unexported, monkeypatch):
    class Miswired(OnnxModel):  # classes in the wrong order: a broken graph
        def __call__(self, images):
            return super().__call__(images).flip(1)

    monkeypatch.setattr(export_module, "OnnxModel", Miswired)
    (unexported / ONNX_FILE).write_bytes(b"previous export")

    with pytest.raises(ImgclsError, match=r"differs from PyTorch by \d\.\d\de[-+]\d\d in the scores \(tolerance 1e-04\) and was not"):
        export_onnx(unexported)
    assert (unexported / ONNX_FILE).read_bytes() == b"previous export"
    assert not [p for p in unexported.iterdir() if p.name.startswith(".")]


def test_check_images_given_by_the_user_replace_the_training_images(unexported, digits_dir):
    result = export_onnx(unexported, images=sorted((digits_dir / "predict").glob("*.png")))
    assert result.checked == {"random": 8, "given images": 10}


def test_a_negative_tolerance_is_refused():
    with pytest.raises(UsageError, match="at least 0; got -1"):
        export_onnx("unused", tolerance=-1)


# --- predicting with onnxruntime -------------------------------------------------------------


def test_onnx_engine_gives_the_labels_and_scores_of_the_torch_engine(exported, digits_dir):
    bundle, _ = exported
    images = sorted((digits_dir / "predict").glob("*.png")) + sorted((digits_dir / "test").rglob("*.png"))

    by_torch = Predictor.load(bundle).predict(images, top_k=10)
    by_onnx = Predictor.load(bundle, engine="onnx").predict(images, top_k=10)

    assert [r["labels"] for r in by_onnx] == [r["labels"] for r in by_torch]
    for onnx_result, torch_result in zip(by_onnx, by_torch):
        scores = {p["label"]: p["score"] for p in torch_result["predictions"]}
        assert all(abs(p["score"] - scores[p["label"]]) <= 1e-4 for p in onnx_result["predictions"])


def test_onnx_engine_without_an_export_says_to_run_export_first(unexported):
    with pytest.raises(ImgclsError, match=r"has no model\.onnx; run `imgcls export .*` first"):
        Predictor.load(unexported, engine="onnx")


def test_an_unknown_engine_is_a_usage_error(unexported):
    with pytest.raises(UsageError, match="unknown engine 'tensorrt'; use one of torch, onnx"):
        Predictor.load(unexported, engine="tensorrt")


# --- the command line ------------------------------------------------------------------------


def test_cli_export_prints_the_path_and_the_max_difference(capsys, unexported, digits_dir, tmp_path):
    out_file = tmp_path / "deploy" / "digits.onnx"

    code, out, _ = run_cli(capsys, "export", unexported, "--format", "onnx", "--out", out_file)

    path_line, diff_line = out.strip().splitlines()
    assert code == 0 and path_line == str(out_file) and out_file.is_file()
    assert diff_line.startswith("max difference from PyTorch: ") and "in scores (tolerance 1e-04)" in diff_line
    assert diff_line.endswith(f"in logits; on 8 random, 32 images from {digits_dir / 'validation'}")
    assert float(diff_line.split(": ")[1].split()[0]) <= 1e-4
    assert not (unexported / ONNX_FILE).exists()


def test_cli_predict_with_onnx_engine_matches_torch(capsys, exported, digits_dir):
    bundle, _ = exported
    _, by_torch, _ = run_cli(capsys, "predict", bundle, digits_dir / "predict", "--format", "json", "--device", "cpu")
    code, by_onnx, _ = run_cli(capsys, "predict", bundle, digits_dir / "predict", "--format", "json", "--engine", "onnx")

    assert code == 0
    assert [r["labels"] for r in json.loads(by_onnx)] == [r["labels"] for r in json.loads(by_torch)]


def test_cli_predict_with_onnx_engine_and_no_export_fails_in_one_line(capsys, unexported, digits_dir):
    code, out, err = run_cli(capsys, "predict", unexported, digits_dir / "predict", "--engine", "onnx")

    assert code == 1 and out == ""
    assert err.count("\n") == 1 and err.startswith("imgcls: error: bundle ") and "run `imgcls export" in err
