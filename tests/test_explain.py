"""Explanations on generated images whose class is decided by one known region, for a built-in
CNN and a timm vision transformer, each trained here with imgcls's own `train`.

The data: grey noise, plus a red square (class 'red') or a blue square (class 'blue') in the
top-left quadrant, or no square (class 'none'). 'none' makes both colours positive evidence: with
only red and blue, a model may learn "red = not blue", and the map of 'red' would then rightly
point nowhere.
"""
from __future__ import annotations

import io
import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from imgcls.cli.main import main
from imgcls.errors import UsageError
from imgcls.explain.faithfulness import deletion_test
from imgcls.explain.layers import block_layers, default_layer, find_layers
from imgcls.explain import maps
from imgcls.explain.maps import EXPLAIN_METHODS, explain, to_png
from imgcls.models.classifier import Classifier
from imgcls.models.registry import create_model
from imgcls.predict.predictor import Predictor
from imgcls.train.config import TrainConfig
from imgcls.train.run import train

from conftest import FAST_CONFIG

SIZE = 64  # the files; the CNN sees them at 32 px, the ViT (16 px patches) at 64 px, a 4 x 4 token grid
SQUARE = SIZE // 4  # 16 px, from 8 to 24: well inside the top-left quadrant [0, 32)
COLOURS = {"red": (255, 0, 0), "blue": (0, 0, 255), "none": None}
MAP_METHODS = ("gradcam", "gradcam++", "saliency", "smoothgrad", "integrated-gradients")


def _write_square_dataset(root: Path, per_class: int = 40, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    start = SQUARE // 2
    for split, count in (("train", per_class), ("validation", per_class // 4)):
        for name, colour in COLOURS.items():
            folder = root / split / name
            folder.mkdir(parents=True)
            for index in range(count):
                image = np.repeat(rng.integers(0, 256, (SIZE, SIZE, 1), dtype=np.uint8), 3, axis=2)
                if colour:
                    image[start: start + SQUARE, start: start + SQUARE] = colour
                Image.fromarray(image).save(folder / f"{name}{index}.png")
    return root


@pytest.fixture(scope="module")
def squares(tmp_path_factory):
    return _write_square_dataset(tmp_path_factory.mktemp("squares"))


@pytest.fixture(scope="module")
def cnn_run(squares, tmp_path_factory) -> Path:
    config = TrainConfig.from_options(**{**FAST_CONFIG, "augment": "none"})  # a shifted square would blur "where"
    result = train(squares, tmp_path_factory.mktemp("runs") / "cnn", config, progress=False)
    assert result.metrics["accuracy"] == 1.0
    return result.run_dir


@pytest.fixture(scope="module")
def vit_run(squares, tmp_path_factory) -> Path:
    config = TrainConfig.from_options(**{**FAST_CONFIG, "model": "test_vit", "img_size": SIZE, "epochs": 8, "augment": "none"})
    result = train(squares, tmp_path_factory.mktemp("runs") / "vit", config, progress=False)
    assert result.metrics["accuracy"] >= 0.9
    return result.run_dir


@pytest.fixture(scope="module")
def cnn(cnn_run):
    return Predictor.load(cnn_run)


@pytest.fixture(scope="module")
def vit(vit_run):
    return Predictor.load(vit_run)


def _squares(root: Path, per_colour: int = 4) -> list[Path]:
    """Validation images with a square: the first `per_colour` red ones, then as many blue."""
    return [path for colour in ("red", "blue") for path in sorted((root / "validation" / colour).glob("*.png"))[:per_colour]]


def _top_left_share(heatmap: np.ndarray) -> float:
    half = heatmap.shape[0] // 2
    return float(heatmap[:half, :half].sum() / heatmap.sum())


def _points_top_left(heatmap: np.ndarray) -> bool:
    row, col = np.unravel_index(heatmap.argmax(), heatmap.shape)
    return row < heatmap.shape[0] // 2 and col < heatmap.shape[1] // 2


# --- where the maps point ----------------------------------------------------------------------

def test_gradcam_of_a_cnn_puts_most_of_its_mass_on_the_deciding_square(cnn, squares):
    explanations = explain(cnn, _squares(squares), "gradcam")
    assert [e.label for e in explanations] == [p.parent.name for p in _squares(squares)]
    assert all(_points_top_left(e.heatmap) for e in explanations)  # the pointing game: 100% hits
    assert np.mean([_top_left_share(e.heatmap) for e in explanations]) > 0.5  # a quarter of the image, over half the mass


@pytest.mark.parametrize("method", MAP_METHODS)
def test_every_map_method_points_into_the_deciding_quadrant_of_a_cnn(cnn, squares, method):
    explanations = explain(cnn, _squares(squares), method)
    assert np.mean([_points_top_left(e.heatmap) for e in explanations]) >= 0.9
    assert np.mean([_top_left_share(e.heatmap) for e in explanations]) > 0.4  # uniform would be 0.25


def test_deletion_test_finds_gradcam_far_better_than_random_removal_on_a_cnn(cnn, squares):
    result = deletion_test(cnn, explain(cnn, _squares(squares), "gradcam"))
    assert result["faithfulness"] > 0.2 and result["salient_drop"] > 0.5
    assert all(row["salient_drop"] > row["random_drop"] for row in result["per_image"])


def test_deletion_test_finds_integrated_gradients_better_than_random_removal_on_a_vit(vit, squares):
    # This ViT reads the colour from all over the image more than from where the square is, and
    # we claim less than for the CNN. Integrated gradients beats random removal clearly (+0.22
    # here); its Grad-CAM does not reliably (-0.08 on these 8 images, +0.09 on 20), so that is
    # not asserted: the Grad-CAM mechanics on tokens are checked exactly below instead.
    result = deletion_test(vit, explain(vit, _squares(squares), "integrated-gradients"))
    assert result["faithfulness"] > 0.1


def test_vit_gradcam_equals_a_hand_computed_gradcam_on_the_patch_tokens(vit, squares):
    """Proves the token handling: class token dropped, tokens laid out row by row on the grid."""
    image = _squares(squares)[0]
    (explanation,) = explain(vit, [image], "gradcam")
    assert explanation.layers == ["blocks.5.norm1"]
    model, captured = vit.model, []
    handle = model.net.get_submodule("blocks.5.norm1").register_forward_hook(lambda m, i, out: captured.append(out))
    pixels = torch.as_tensor(explanation.image).permute(2, 0, 1)[None].float() / 255
    try:
        logit = model(pixels)[0, vit.classes.index(explanation.label)]
    finally:
        handle.remove()
    (grads,) = torch.autograd.grad(logit, captured)
    tokens, grads = captured[0][0, 1:].detach(), grads[0, 1:]  # (16, C): the class token dropped
    cam = (tokens * grads.mean(0)).sum(1).clamp(min=0).reshape(1, 1, 4, 4)
    cam = torch.nn.functional.interpolate(cam, size=(SIZE, SIZE), mode="bilinear", align_corners=False)[0, 0]
    np.testing.assert_allclose(explanation.heatmap, (cam / cam.max()).numpy(), atol=1e-4)


# --- every method, every kind of model ----------------------------------------------------------

@pytest.mark.parametrize("model_name", ["cnn", "vit"])
@pytest.mark.parametrize("method", EXPLAIN_METHODS)
def test_every_method_gives_a_drawn_panel_and_a_well_formed_raw_map(request, monkeypatch, squares, model_name, method):
    monkeypatch.setattr(maps, "FILTERS_SHOWN", 2)  # synthesis costs per filter; two show the mechanics
    predictor = request.getfixturevalue(model_name)
    size = predictor.config.img_size
    (item,) = explain(predictor, [_squares(squares)[0]], method)
    assert item.label == "red" and 0.5 < item.score <= 1 and item.method == method
    assert item.image.shape == (size, size, 3) and item.image.dtype == np.uint8
    assert item.panel.ndim == 3 and item.panel.shape[2] == 3 and item.panel.dtype == np.uint8
    assert np.isfinite(item.raw).all()
    if method in MAP_METHODS:
        assert item.heatmap.shape == (size, size) and item.heatmap.dtype == np.float32
        assert item.heatmap.min() >= 0 and item.heatmap.max() == pytest.approx(1) and item.heatmap.std() > 0.01
        assert item.raw is item.heatmap
    else:
        assert item.heatmap is None
        blocks = [b.name for b in block_layers(predictor.model.net, find_layers(predictor.model, size))]
        channels = 256 if model_name == "cnn" else 64  # cnn-bn's last block; test_vit's width, on its 4 x 4 patch grid
        expected = {"blocks": (len(blocks), size, size), "feature-maps": (channels, 4, 4), "filters": (1 + 2, size, size, 3)}
        assert item.raw.shape == expected[method]
        if method == "blocks":
            assert item.layers == blocks and item.raw.min() >= 0 and item.raw.max() <= 1
        if method == "filters":  # the first input is synthesised for the class: the model must agree
            assert item.raw.min() >= 0 and item.raw.max() <= 1 and item.raw.std() > 0.01
            synthesised = np.round(item.raw[:1] * 255).astype(np.uint8)
            assert predictor.classes[predictor.probabilities(synthesised)[0].argmax()] == "red"


def test_layers_are_found_for_builtin_cnns_timm_cnns_and_transformers():
    def layers_of(name: str, size: int):
        model = Classifier(create_model(name, num_classes=3, img_size=size)).eval()
        layers = find_layers(model, size)
        return default_layer(layers), [b.name for b in block_layers(model.net, layers)]

    default, blocks = layers_of("cnn-bn", 32)
    assert default.name == "blocks.2" and default.grid == (4, 4) and blocks == ["blocks.0.0", "blocks.0", "blocks.1", "blocks.2"]
    default, blocks = layers_of("resnet18", 64)  # x += shortcut in place: the block, not its last BatchNorm
    assert default.name == "layer4.1" and blocks == ["bn1", "layer1.1", "layer2.1", "layer3.1", "layer4.1"]
    default, blocks = layers_of("test_vit", 64)
    # after the last block only the class token goes on, so its patch tokens get no gradient
    assert default.name == "blocks.5.norm1" and default.tokens and default.prefix_tokens == 1 and default.grid == (4, 4)
    assert blocks == ["patch_embed.proj"] + [f"blocks.{i}" for i in range(5)] + ["blocks.5.norm1"]


# --- classes and labels -------------------------------------------------------------------------

def test_class_option_explains_the_named_class_instead_of_the_prediction(cnn, squares):
    (item,) = explain(cnn, [_squares(squares)[0]], "gradcam", class_name="blue")
    assert item.label == "blue" and item.score < 0.5  # a red square: 'blue' is explained, and unlikely
    with pytest.raises(UsageError, match="unknown class 'bleu'; did you mean 'blue'"):
        explain(cnn, [_squares(squares)[0]], class_name="bleu")


def test_multi_label_bundle_explains_every_class_over_its_threshold(cnn, squares):
    # The trained network under a multi-label configuration whose thresholds make exactly
    # 'blue' and 'none' fire for any image: what is tested is the choice of targets.
    config = replace(cnn.config, task="multi-label", thresholds=[0.0, 0.0, 1.1])  # classes: blue, none, red
    predictor = Predictor(cnn.model, config, cnn.device)
    images = _squares(squares)[:2]
    explanations = explain(predictor, images, "gradcam")
    assert [Path(e.path).name for e in explanations] == [images[0].name] * 2 + [images[1].name] * 2
    assert {e.label for e in explanations[:2]} == {e.label for e in explanations[2:]} == {"blue", "none"}
    assert explanations[0].score >= explanations[1].score  # strongest class first
    assert [e.label for e in explain(predictor, images, "gradcam", class_name="red")] == ["red", "red"]


# --- files and the command line -----------------------------------------------------------------

def test_png_bytes_decode_to_the_panel(cnn, squares):
    (item,) = explain(cnn, [_squares(squares)[0]])
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(to_png(item.panel)))), item.panel)


def run_cli(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_explain_writes_a_png_and_npy_per_image_and_reports_faithfulness(capsys, cnn_run, squares, tmp_path):
    images = _squares(squares)[:3]
    code, out, _ = run_cli(capsys, "explain", cnn_run, *images, "--method", "gradcam++", "--out", tmp_path, "--faithfulness")
    assert code == 0
    for image in images:
        assert np.load(tmp_path / f"{image.stem}_gradcam++.npy").shape == (32, 32)
        assert Image.open(tmp_path / f"{image.stem}_gradcam++.png").format == "PNG"
    result = json.loads((tmp_path / "faithfulness.json").read_text())
    assert result["images"] == 3 and f"faithfulness {result['faithfulness']:.3f}" in out


@pytest.mark.parametrize("argv, message", [
    (["--method", "gradcm"], "unknown explanation method 'gradcm'; did you mean 'gradcam'"),
    (["--class", "rde"], "unknown class 'rde'; did you mean 'red'?"),
    (["--layer", "blocks.3"], "unknown layer 'blocks.3'; did you mean"),
    (["--method", "saliency", "--layer", "blocks.2"], "--layer does not apply to --method saliency"),
])
def test_cli_explain_rejects_bad_options_in_one_line(capsys, cnn_run, squares, argv, message):
    code, out, err = run_cli(capsys, "explain", cnn_run, _squares(squares)[0], *argv)
    assert code == 2 and message in err and err.count("\n") == 1 and out == ""


def test_cli_explain_names_a_missing_image(capsys, cnn_run, tmp_path):
    code, _, err = run_cli(capsys, "explain", cnn_run, tmp_path / "nothere.png")
    assert code == 1 and "'" + str(tmp_path / "nothere.png") + "' does not exist" in err


def test_cli_layers_lists_names_shapes_and_the_default(capsys, vit_run):
    code, out, _ = run_cli(capsys, "layers", vit_run)
    rows = {line.split()[0]: line for line in out.splitlines()[1:]}
    assert code == 0 and "default" in rows["blocks.5.norm1"] and "17x64" in rows["blocks.5.norm1"]
    assert "no gradient" in rows["norm"] and "block" in rows["blocks.0"]


def test_cli_explain_writes_under_the_run_folder_and_never_over_earlier_maps(capsys, cnn_run, squares, tmp_path):
    run, image = shutil.copytree(cnn_run, tmp_path / "run"), _squares(squares)[0]
    code, out, _ = run_cli(capsys, "explain", run, image)
    first = run / "explanations" / f"{image.stem}_gradcam.png"
    assert code == 0 and str(first) in out and (run / "explanations" / f"{image.stem}_gradcam.npy").is_file()
    before = first.read_bytes()

    code, out, err = run_cli(capsys, "explain", run / "model", image, "--method", "saliency")  # the model/ folder too
    assert code == 0 and str(run / "explanations-2" / f"{image.stem}_saliency.png") in out
    assert f"{run / 'explanations'} holds earlier results, kept; writing to {run / 'explanations-2'}" in err
    assert first.read_bytes() == before and sorted(p.name for p in (run / "explanations").iterdir()) == [
        f"{image.stem}_gradcam.npy", first.name]

    code, out, _ = run_cli(capsys, "explain", run, image, "--out", run / "explanations")  # an explicit --out as well
    assert code == 0 and str(run / "explanations-3" / first.name) in out
