"""Specification of imgcls.models: building by name, the built-in CNNs, weights files, Classifier."""
from __future__ import annotations

import time

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from imgcls.errors import ImgclsError
from imgcls.models.classifier import Classifier
from imgcls.models.registry import BUILTIN_MODELS, create_model, default_img_size
from imgcls.models.weights import load_weights

# Sizes each built-in must handle besides its design size (default_img_size(name)),
# so a model added to the registry is tested at least at the size it was designed for.
EXTRA_SIZES = {"seed-cnn": (32, 64), "lenet5": (28,), "cnn-bn": (32, 128, 224)}
BUILTIN_CASES = [(name, size) for name in BUILTIN_MODELS
                 for size in sorted({default_img_size(name), *EXTRA_SIZES.get(name, ())})]
TIMM_CNN, TIMM_VIT = "resnet10t", "vit_tiny_patch16_224"
SMALL_VIT = "test_vit"  # timm's own 0.3M-parameter ViT for tests (patch 16, designed for 160 px): 8x faster to build


def images(batch: int, size: int, in_chans: int = 3) -> torch.Tensor:
    """(B, C, H, W) RGB in [0, 1], the same every call."""
    return torch.rand(batch, in_chans, size, size, generator=torch.Generator().manual_seed(0))


def build(name: str, num_classes: int = 3, img_size: int = 32, **kwargs) -> nn.Module:
    torch.manual_seed(0)
    return create_model(name, num_classes=num_classes, img_size=img_size, **kwargs).eval()


def assert_same_weights(a: nn.Module, b: nn.Module, skip: tuple[str, ...] = ()) -> None:
    a_state, b_state = a.state_dict(), b.state_dict()
    assert a_state.keys() == b_state.keys()
    for key in a_state:
        if not key.startswith(skip):
            assert torch.equal(a_state[key], b_state[key]), key


# --- building by name ----------------------------------------------------------------------


@pytest.mark.parametrize("name, img_size", BUILTIN_CASES)
def test_builtin_model_gives_one_row_of_logits_per_image(name, img_size):
    model = build(name, num_classes=3, img_size=img_size)

    with torch.no_grad():
        logits = model(images(2, img_size))

    assert logits.shape == (2, 3)
    assert torch.isfinite(logits).all()


@pytest.mark.parametrize("name", BUILTIN_MODELS)
def test_builtin_model_trains_every_trainable_parameter(name):
    """Only speedrun-cnn freezes anything: its whitening filters, fitted to the data instead, and its
    BatchNorm scales, which stay 1."""
    model = build(name, num_classes=4).train()

    model(images(2, 32)).logsumexp(1).sum().backward()

    frozen = [key for key, p in model.named_parameters() if not p.requires_grad]
    no_grad = [key for key, p in model.named_parameters() if p.requires_grad and (p.grad is None or not p.grad.abs().sum() > 0)]
    if name == "speedrun-cnn":
        norm_scales = [f"blocks.{b}.{i}.weight" for b in range(3) for i in (2, 5)]
        assert frozen == ["whiten.weight", *norm_scales]
    else:
        assert frozen == []
    assert no_grad == []


@pytest.mark.parametrize("name", BUILTIN_MODELS)
def test_builtin_model_takes_grayscale_input(name):
    model = build(name, num_classes=2, in_chans=1)

    with torch.no_grad():
        assert model(images(2, 32, in_chans=1)).shape == (2, 2)


def test_seed_cnn_is_the_keras_tutorial_network():
    model = build("seed-cnn", img_size=150)

    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    dropouts = [m for m in model.modules() if isinstance(m, nn.Dropout)]
    assert [c.out_channels for c in convs] == [32, 32, 64]
    assert all(c.kernel_size == (3, 3) for c in convs)
    assert sum(isinstance(m, nn.MaxPool2d) for m in model.modules()) == 3
    assert [lin.out_features for lin in linears] == [64, 3]
    assert [d.p for d in dropouts] == [0.5]


@pytest.mark.parametrize("name, size", [("seed-cnn", 150), ("lenet5", 32), (TIMM_VIT, 224)])
def test_default_img_size_is_the_design_size(name, size):
    assert default_img_size(name) == size


def test_timm_cnn_builds_by_name_at_a_non_default_size():
    model = build(TIMM_CNN, num_classes=5, img_size=64)

    with torch.no_grad():
        assert model(images(2, 64)).shape == (2, 5)


def test_timm_vit_gets_its_patch_grid_sized_for_img_size():
    model = build(TIMM_VIT, num_classes=3, img_size=32)

    assert model.patch_embed.grid_size == (2, 2)  # 32 px / 16 px patches
    with torch.no_grad():
        assert model(images(2, 32)).shape == (2, 3)


@pytest.mark.parametrize("typo, meant", [("resnt18", "resnet18"), ("seed_cnn", "seed-cnn"), ("lenet", "lenet5")])
def test_unknown_model_name_suggests_the_closest(typo, meant):
    with pytest.raises(ImgclsError, match=f"unknown model '{typo}'; did you mean .*'{meant}'"):
        create_model(typo, num_classes=2, img_size=32)


def test_unknown_model_with_nothing_close_lists_the_builtins():
    with pytest.raises(ImgclsError) as caught:
        create_model("qqqqzzzz", num_classes=2, img_size=32)

    assert "did you mean" not in str(caught.value)
    assert all(name in str(caught.value) for name in BUILTIN_MODELS)


# --- pretrained weights ----------------------------------------------------------------------


@pytest.fixture
def offline_hub(monkeypatch, tmp_path):
    """An empty Hugging Face cache with the hub switched off, as on a machine without network.
    huggingface_hub reads HF_HUB_OFFLINE when imported, so its constants are patched too."""
    import huggingface_hub.constants as hf

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setattr(hf, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hf, "HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))


@pytest.mark.parametrize("name", BUILTIN_MODELS)
def test_pretrained_builtin_is_refused_with_a_way_forward(name):
    with pytest.raises(ImgclsError, match=f"'{name}' has no pretrained weights.*--weights"):
        create_model(name, num_classes=2, img_size=32, pretrained=True)


@pytest.mark.usefixtures("offline_hub")
def test_pretrained_timm_model_offline_fails_at_once_saying_how_to_provide_weights():
    started = time.monotonic()
    with pytest.raises(ImgclsError) as caught:
        create_model(TIMM_CNN, num_classes=2, img_size=32, pretrained=True)

    message = str(caught.value)
    assert time.monotonic() - started < 20  # no network retries
    assert f"'{TIMM_CNN}'" in message and "--weights FILE" in message
    assert "\n" not in message and caught.value.__suppress_context__  # one line for the CLI, no chained traceback


@pytest.mark.usefixtures("offline_hub")
def test_pretrained_vit_is_built_for_img_size(tmp_path):
    # timm loads "pretrained" weights from a local file when its config names one: the hub stays out of it
    source = build(SMALL_VIT, num_classes=3, img_size=160)
    save_file(source.state_dict(), str(tmp_path / "vit.safetensors"))

    model = build(SMALL_VIT, num_classes=3, img_size=32, pretrained=True,
                  pretrained_cfg_overlay={"file": str(tmp_path / "vit.safetensors")})

    assert torch.equal(model.cls_token, source.cls_token)
    assert model.pos_embed.shape[1] == 1 + 2 * 2  # class token + position embeddings resampled to the 2x2 grid
    with torch.no_grad():
        assert model(images(1, 32)).shape == (1, 3)


# --- weights files -----------------------------------------------------------------------


def _record_unpickling(marker: str) -> None:
    with open(marker, "w") as f:
        f.write("code ran while loading weights")


class Payload:
    """Runs _record_unpickling if unpickled: the attack weights_only loading must stop."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return _record_unpickling, (self.marker,)


def test_weights_load_from_safetensors(tmp_path):
    source, target = build("seed-cnn"), build("seed-cnn")
    torch.nn.init.normal_(source.features[0].weight)  # make sure source and target differ
    save_file(source.state_dict(), str(tmp_path / "w.safetensors"))

    load_weights(target, tmp_path / "w.safetensors")

    assert_same_weights(target, source)


@pytest.mark.parametrize("filename, wrap", [
    ("plain.pt", lambda sd: sd),
    ("wrapped.pth", lambda sd: {"state_dict": sd, "epoch": 7}),
    ("data_parallel.pt", lambda sd: {f"module.{k}": v for k, v in sd.items()}),
    ("ddp_checkpoint.pth", lambda sd: {"state_dict": {f"module.{k}": v for k, v in sd.items()}, "epoch": 7}),
])
def test_weights_load_from_torch_state_dicts(tmp_path, filename, wrap):
    source, target = build("cnn-bn"), build("cnn-bn")
    source.train()(images(4, 32))  # BatchNorm running statistics must travel too
    torch.save(wrap(source.state_dict()), tmp_path / filename)

    load_weights(target, tmp_path / filename)

    assert_same_weights(target, source)


def test_weights_from_an_imgcls_bundle_load_into_a_bare_network(tmp_path):
    from imgcls.models.bundle import WEIGHTS_FILE, BundleConfig, save_bundle

    trained = Classifier(build("lenet5"))
    config = BundleConfig("lenet5", ["a", "b", "c"], 32, (0.5,) * 3, (0.25,) * 3)
    folder = save_bundle(trained, config, tmp_path / "model")
    target = build("lenet5", num_classes=3)

    load_weights(target, folder / WEIGHTS_FILE)

    assert_same_weights(target, trained.net)


def test_checkpoint_holding_a_python_object_is_refused_without_running_its_code(tmp_path):
    marker = tmp_path / "code-ran"
    torch.save({"state_dict": build("lenet5").state_dict(), "config": Payload(str(marker))}, tmp_path / "ckpt.pt")

    with pytest.raises(ImgclsError, match=r"ckpt.pt. holds a Python object \(.*_record_unpickling\)") as caught:
        load_weights(build("lenet5"), tmp_path / "ckpt.pt")

    assert not marker.exists()
    assert "state_dict" in str(caught.value) and "\n" not in str(caught.value)


def test_other_class_count_loads_the_backbone_and_leaves_the_head(tmp_path):
    source, target = build("seed-cnn", num_classes=10), build("seed-cnn", num_classes=3)
    head_before = target.head[-1].weight.clone()
    save_file(source.state_dict(), str(tmp_path / "w.safetensors"))

    load_weights(target, tmp_path / "w.safetensors")

    assert_same_weights(target.features, source.features)
    assert torch.equal(target.head[1].weight, source.head[1].weight)  # dense 64 is backbone
    assert torch.equal(target.head[-1].weight, head_before)


@pytest.mark.parametrize("saved_as, loaded_as", [
    ("lenet5", "seed-cnn"),
    (TIMM_CNN, "cnn-bn"),
    ("resnet34", "resnet18"),  # same names for resnet18's layers, but four more blocks
    ("resnet18", "resnet34"),
])
def test_weights_from_another_architecture_are_refused(tmp_path, saved_as, loaded_as):
    save_file(build(saved_as).state_dict(), str(tmp_path / f"{saved_as}.safetensors"))
    target = build(loaded_as)
    before = {k: v.clone() for k, v in target.state_dict().items()}

    with pytest.raises(ImgclsError, match="does not fit this architecture.*--model"):
        load_weights(target, tmp_path / f"{saved_as}.safetensors")

    assert all(torch.equal(v, before[k]) for k, v in target.state_dict().items())  # nothing half-loaded


def test_missing_weights_file_is_a_clear_error(tmp_path):
    with pytest.raises(ImgclsError, match="weights file '.*nope.safetensors' does not exist"):
        load_weights(build("lenet5"), tmp_path / "nope.safetensors")


@pytest.mark.parametrize("filename, content", [("w.safetensors", b"not safetensors"), ("w.pt", b"not a zip")])
def test_unreadable_weights_file_is_a_clear_error(tmp_path, filename, content):
    (tmp_path / filename).write_bytes(content)

    with pytest.raises(ImgclsError, match=f"could not read weights file '.*{filename}'"):
        load_weights(build("lenet5"), tmp_path / filename)


def test_torch_file_without_tensors_is_refused(tmp_path):
    torch.save({"epoch": 3, "lr": 0.1}, tmp_path / "meta.pt")

    with pytest.raises(ImgclsError, match="holds no state dict of tensors"):
        load_weights(build("lenet5"), tmp_path / "meta.pt")


# --- Classifier ----------------------------------------------------------------------------


def test_classifier_normalises_inside_the_model():
    net = build("lenet5")
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
    model = Classifier(net, mean, std).eval()
    x = images(2, 32)  # RGB in [0, 1]

    expected = net((x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1))

    with torch.no_grad():
        assert torch.allclose(model(x), expected, atol=1e-6)


def test_classifier_keeps_its_normalisation_with_its_weights():
    model = Classifier(build("lenet5"), (0.5, 0.4, 0.3), (0.2, 0.25, 0.3))

    state = model.state_dict()

    assert torch.equal(state["mean"].flatten(), torch.tensor([0.5, 0.4, 0.3]))
    assert torch.equal(state["std"].flatten(), torch.tensor([0.2, 0.25, 0.3]))


def test_suggested_starting_points_are_timm_models_with_pretrained_weights():
    import timm

    from imgcls.models.registry import STARTING_POINTS

    names = [name for picks in STARTING_POINTS.values() for name, _ in picks]
    assert {"CPU", "GPU"} <= set(STARTING_POINTS) and len(names) >= 6
    assert all(timm.is_model_pretrained(name) for name in names), names  # --pretrained finds weights for each


def test_model_list_says_which_names_have_pretrained_weights():
    from imgcls.models.registry import list_models

    weights = {name: text for name, _, text in list_models("resnet")}
    assert weights["resnet18"].split(",")[0].isdigit() and "default" in weights["resnet18"]
    assert all(name in weights for name in ("resnet10t", "resnet50"))
    assert {text for name, _, text in list_models() if name in BUILTIN_MODELS} == {"none: trains from scratch"}
