"""Batched augmentation: presets keep the batch contract, are reproducible, and do what they say."""
import pytest
import torch

from imgcls.data.augment import AUGMENT_PRESETS, Augment, build_augment
from imgcls.errors import ImgclsError

NUM_CLASSES = 5


def _batch(n=8, size=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    images = torch.rand(n, 3, size, size, generator=g)
    targets = torch.nn.functional.one_hot(torch.arange(n) % NUM_CLASSES, NUM_CLASSES).float()
    return images, targets


def _run(preset, images, targets, seed=0, size=None):
    augment = build_augment(preset, size or images.shape[-1], NUM_CLASSES)
    return augment(images, targets, torch.Generator().manual_seed(seed))


def test_none_returns_the_inputs_unchanged():
    images, targets = _batch()
    out, out_targets = _run("none", images, targets)
    assert out is images and out_targets is targets


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("size", [32, 64])
@pytest.mark.parametrize("preset", AUGMENT_PRESETS)
def test_every_preset_keeps_shape_dtype_range_and_one_hot_mass(preset, size, dtype):
    images, targets = _batch(size=size)
    images = images.to(dtype)
    for seed in range(4):  # strong: reach both mixup and CutMix
        out, out_targets = _run(preset, images, targets, seed)
        assert out.shape == images.shape and out.dtype == dtype and out.device == images.device
        assert out.min() >= 0 and out.max() <= 1
        assert out_targets.shape == targets.shape
        torch.testing.assert_close(out_targets.sum(1), torch.ones(len(targets)))


def test_strong_keeps_multi_hot_targets_in_unit_interval():
    images, _ = _batch()
    targets = (torch.rand(8, NUM_CLASSES, generator=torch.Generator().manual_seed(1)) > 0.5).float()
    augment = build_augment("strong", 32, NUM_CLASSES, multi_label=True)
    for seed in range(4):
        _, mixed = augment(images, targets, torch.Generator().manual_seed(seed))
        assert mixed.min() >= 0 and mixed.max() <= 1


@pytest.mark.parametrize("preset", ["seed", "standard", "strong"])
def test_same_seed_gives_same_output_and_another_seed_differs(preset):
    images, targets = _batch(size=64)
    first, first_targets = _run(preset, images, targets, seed=3)
    again, again_targets = _run(preset, images, targets, seed=3)
    other, _ = _run(preset, images, targets, seed=4)
    assert torch.equal(first, again) and torch.equal(first_targets, again_targets)
    assert not torch.equal(first, other)


def test_seed_preset_mirrors_about_half_the_images():
    images = torch.zeros(200, 3, 32, 32)
    images[..., :16] = 1  # white left half, black right half
    out, _ = _run("seed", images, torch.ones(200, NUM_CLASSES) / NUM_CLASSES)
    left, right = out[..., :16].mean((1, 2, 3)), out[..., 16:].mean((1, 2, 3))
    assert ((left - right).abs() > 0.5).all()  # zoom and shear blur the edge, never swap the halves
    assert 0.35 < (left < right).float().mean() < 0.65


def test_standard_on_small_images_keeps_a_constant_colour():
    images = torch.tensor([0.2, 0.5, 0.7]).view(1, 3, 1, 1).expand(16, 3, 32, 32).contiguous()
    out, _ = _run("standard", images, _batch(16)[1])
    torch.testing.assert_close(out, images)


def test_standard_on_small_images_only_flips_and_shifts_by_at_most_an_eighth():
    images, targets = _batch(16)
    out, _ = _run("standard", images, targets)
    shifted = 0
    for image, result in zip(images, out):
        interior = result[:, 4:28, 4:28]  # pixels that no 4 px shift pulls from the padding
        matches = [(dy, dx) for source in (image, image.flip(-1))
                   for dy in range(-4, 5) for dx in range(-4, 5)
                   if torch.allclose(interior, source[:, 4 + dy:28 + dy, 4 + dx:28 + dx], atol=1e-5)]
        assert len(matches) == 1
        shifted += matches[0] != (0, 0)
    assert shifted > 8


def test_mixed_target_weight_equals_the_pasted_or_blended_fraction():
    images = torch.stack([torch.ones(3, 32, 32), torch.zeros(3, 32, 32)])
    targets = torch.tensor([[0.0, 1.0], [1.0, 0.0]])  # class 1 is the all-ones image
    augment = Augment(num_classes=2, mix=True)
    saw_cutmix = saw_mixup = False
    for seed in range(40):
        out, mixed = augment(images, targets, torch.Generator().manual_seed(seed))
        torch.testing.assert_close(out.mean((1, 2, 3)), mixed[:, 1], atol=1e-5, rtol=0)
        partial = (mixed[:, 1] > 0.01) & (mixed[:, 1] < 0.99)
        binary = ((out == 0) | (out == 1)).flatten(1).all(1)
        saw_cutmix |= bool((partial & binary).any())
        saw_mixup |= bool((partial & ~binary).any())
    assert saw_cutmix and saw_mixup


def test_strong_applies_a_different_op_to_each_sample():
    images = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0)).expand(32, -1, -1, -1)
    augment = Augment(num_classes=NUM_CLASSES, trivial=True)
    out, _ = augment(images, torch.ones(32, NUM_CLASSES) / NUM_CLASSES, torch.Generator().manual_seed(0))
    unchanged = (out - images).abs().flatten(1).amax(1) < 1e-5
    assert 0 < unchanged.sum() < 16  # identity (and near-zero magnitudes) only, not the whole batch


def test_unknown_preset_names_the_choices_and_a_near_miss():
    with pytest.raises(ImgclsError, match="unknown augmentation 'stong'; choose one of none, shift, seed, "
                                          "standard, strong, speedrun; did you mean 'strong'"):
        build_augment("stong", 224, NUM_CLASSES)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("preset", AUGMENT_PRESETS)
def test_cuda_batch_stays_on_cuda_and_matches_cpu(preset):
    images, targets = _batch(size=64)
    cpu, cpu_targets = _run(preset, images, targets)
    gpu, gpu_targets = _run(preset, images.cuda(), targets.cuda())
    assert gpu.is_cuda and gpu_targets.is_cuda
    torch.testing.assert_close(gpu_targets.cpu(), cpu_targets)
    if preset != "strong":  # posterize floors and solarize thresholds may round apart across devices
        torch.testing.assert_close(gpu.cpu(), cpu, atol=1e-4, rtol=0)
