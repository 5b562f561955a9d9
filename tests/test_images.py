"""Decoding one image file to RGB uint8, on generated images of every format and mode scraped folders hold."""
from __future__ import annotations

import gc
import io
import os
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import imgcls.data.images as images
from imgcls.data.cache import decode_all
from imgcls.data.images import UnreadableImage, decode_image, split_batch
from imgcls.errors import UsageError

RED, BLUE, WHITE = (255, 0, 0), (0, 0, 255), (255, 255, 255)


def _noise(seed: int, width: int = 24, height: int = 16, levels: int = 256) -> np.ndarray:
    """Random RGB pixels, distinct per seed; `levels` < 256 keeps few enough colours for a GIF palette."""
    step = 256 // levels
    return np.random.default_rng(seed).integers(0, levels, (height, width, 3), dtype=np.uint8) * step


def _save(image: Image.Image, path: Path, **options) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, **options)
    return path


def _halves(left, right, width: int = 40, height: int = 20) -> Image.Image:
    """Left half one colour, right half another: shows which way an image was turned."""
    pixels = np.empty((height, width, 3), dtype=np.uint8)
    pixels[:, : width // 2], pixels[:, width // 2 :] = left, right
    return Image.fromarray(pixels)


def _snapshot(paths) -> dict[Path, bytes]:
    return {p: p.read_bytes() for p in paths}


# --- formats -------------------------------------------------------------------------------

@pytest.mark.parametrize("suffix, options", [
    (".png", {}), (".bmp", {}), (".tiff", {}), (".webp", {"lossless": True}), (".gif", {}),
])
def test_lossless_formats_decode_to_the_exact_rgb_pixels_saved(tmp_path, suffix, options):
    pixels = _noise(1, levels=4)  # 64 colours at most: a GIF palette holds them all exactly
    path = _save(Image.fromarray(pixels), tmp_path / f"picture{suffix}", **options)

    decoded = decode_image(path)

    assert decoded.dtype == np.uint8 and decoded.shape == (16, 24, 3)
    np.testing.assert_array_equal(decoded, pixels)


def test_jpeg_decodes_to_rgb_uint8_close_to_the_saved_pixels(tmp_path):
    # smooth, as photos are: JPEG is lossy mostly on sharp colour edges
    pixels = np.asarray(Image.fromarray(_noise(2, width=6, height=4)).resize((96, 64), Image.BICUBIC))
    path = _save(Image.fromarray(pixels), tmp_path / "photo.jpg", quality=95)

    decoded = decode_image(path)

    assert decoded.dtype == np.uint8 and decoded.shape == (64, 96, 3)
    assert np.abs(decoded.astype(int) - pixels).mean() < 6


@pytest.mark.parametrize("suffix", [".jpg", ".png"])
def test_size_squashes_the_whole_image_to_a_square(tmp_path, suffix):
    path = _save(_halves(RED, BLUE, width=80, height=40), tmp_path / f"wide{suffix}", quality=95)

    decoded = decode_image(path, size=16)

    assert decoded.shape == (16, 16, 3)
    # squashed, not cropped: both halves are still there, side by side
    np.testing.assert_allclose(decoded[8, 2], RED, atol=40)
    np.testing.assert_allclose(decoded[8, 13], BLUE, atol=40)


@pytest.mark.filterwarnings("error::ResourceWarning", "error::pytest.PytestUnraisableExceptionWarning")
def test_decoding_closes_the_files_it_opens(tmp_path, monkeypatch):
    # An animated GIF keeps its file open after its first frame is loaded; thousands of them
    # decoded in one run must not pile up open files.
    frames = [Image.fromarray(_noise(seed, levels=4)) for seed in (30, 31)]
    gif = tmp_path / "anim.gif"
    frames[0].save(gif, save_all=True, append_images=frames[1:], duration=100, loop=0)
    bomb = _save(Image.fromarray(_noise(32)), tmp_path / "bomb.png")

    decode_image(gif)
    monkeypatch.setattr(images, "MAX_PIXELS", 10)
    with pytest.raises(UnreadableImage):
        decode_image(bomb)
    gc.collect()  # an unclosed file would warn here, which this test turns into an error


def test_bytes_and_path_sources_decode_identically(tmp_path):
    path = _save(Image.fromarray(_noise(3)), tmp_path / "same.png")

    np.testing.assert_array_equal(decode_image(path.read_bytes()), decode_image(path))


def test_a_grayscale_ndarray_source_becomes_three_equal_channels():
    grey = np.arange(48, dtype=np.uint8).reshape(6, 8) * 5

    decoded = decode_image(grey)

    assert decoded.shape == (6, 8, 3)
    for channel in range(3):
        np.testing.assert_array_equal(decoded[..., channel], grey)


def test_the_first_frame_of_an_animated_gif_is_decoded(tmp_path):
    frames = [Image.new("RGB", (12, 10), RED), Image.new("RGB", (12, 10), BLUE)]
    path = tmp_path / "blink.gif"
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=100, loop=0)
    with Image.open(path) as saved:
        assert saved.n_frames == 2

    decoded = decode_image(path)

    assert decoded.shape == (10, 12, 3)
    assert (decoded == RED).all()


@pytest.mark.parametrize("size", [None, 16])
def test_exif_orientation_6_turns_a_landscape_jpeg_upright(tmp_path, size):
    # Orientation 6: the camera was turned 90 degrees; a viewer rotates 90 degrees clockwise,
    # so the stored left half ends up on top and a 40x20 file shows as 20 wide, 40 high.
    image = _halves(RED, BLUE, width=40, height=20)
    exif = image.getexif()
    exif[0x0112] = 6
    path = _save(image, tmp_path / "portrait.jpg", exif=exif, quality=95)

    decoded = decode_image(path, size=size)

    if size is None:
        assert decoded.shape == (40, 20, 3)  # (H, W, 3): portrait
    height = decoded.shape[0]
    np.testing.assert_allclose(decoded[height // 4].mean(axis=0), RED, atol=40)
    np.testing.assert_allclose(decoded[3 * height // 4].mean(axis=0), BLUE, atol=40)


# --- modes ---------------------------------------------------------------------------------

def test_grayscale_becomes_three_equal_channels(tmp_path):
    grey = _noise(4)[..., 0]
    path = _save(Image.fromarray(grey, "L"), tmp_path / "grey.png")

    decoded = decode_image(path)

    assert decoded.shape == (16, 24, 3)
    for channel in range(3):
        np.testing.assert_array_equal(decoded[..., channel], grey)


def _palette_image(transparent_index: int | None) -> Image.Image:
    """Left half palette index 0 (red), right half index 1 (blue)."""
    indices = np.zeros((10, 20), dtype=np.uint8)
    indices[:, 10:] = 1
    image = Image.fromarray(indices, "L").convert("P")
    image.putpalette([*RED, *BLUE] + [0] * 762)
    if transparent_index is not None:
        image.info["transparency"] = transparent_index
    return image


@pytest.mark.parametrize("suffix", [".png", ".gif"])
def test_a_palette_image_shows_its_palette_colours(tmp_path, suffix):
    path = _save(_palette_image(None), tmp_path / f"palette{suffix}")

    decoded = decode_image(path)

    assert (decoded[:, :10] == RED).all() and (decoded[:, 10:] == BLUE).all()


@pytest.mark.parametrize("suffix", [".png", ".gif"])
def test_the_transparent_palette_colour_is_shown_as_white(tmp_path, suffix):
    image = _palette_image(transparent_index=1)
    path = _save(image, tmp_path / f"cutout{suffix}", transparency=1)

    decoded = decode_image(path)

    assert (decoded[:, :10] == RED).all()
    assert (decoded[:, 10:] == WHITE).all()


def test_alpha_is_composited_on_white(tmp_path):
    rgba = np.zeros((4, 3, 4), dtype=np.uint8)
    rgba[..., :3] = (200, 40, 0)
    rgba[:, 0, 3], rgba[:, 1, 3], rgba[:, 2, 3] = 255, 0, 128  # opaque, clear, half
    path = _save(Image.fromarray(rgba, "RGBA"), tmp_path / "sticker.png")

    decoded = decode_image(path).astype(int)

    assert (decoded[:, 0] == (200, 40, 0)).all()
    assert (decoded[:, 1] == WHITE).all()
    np.testing.assert_allclose(decoded[:, 2], np.broadcast_to((227, 148, 127), (4, 3)), atol=2)


def test_grayscale_with_alpha_is_composited_on_white(tmp_path):
    la = np.zeros((4, 2, 2), dtype=np.uint8)
    la[:, 0] = (0, 255)  # black, opaque
    la[:, 1] = (0, 0)  # black, fully transparent
    path = _save(Image.fromarray(la, "LA"), tmp_path / "ink.png")

    decoded = decode_image(path)

    assert (decoded[:, 0] == 0).all() and (decoded[:, 1] == 255).all()


@pytest.mark.parametrize("size", [None, 8])
@pytest.mark.parametrize("suffix", [".jpg", ".tiff"])
def test_cmyk_is_converted_to_rgb(tmp_path, suffix, size):
    image = Image.new("CMYK", (12, 8), (0, 255, 255, 0))  # no cyan, full magenta and yellow: red
    path = _save(image, tmp_path / f"print{suffix}", quality=95)
    with Image.open(path) as saved:
        assert saved.mode == "CMYK"

    decoded = decode_image(path, size=size)

    assert decoded.shape == ((8, 12, 3) if size is None else (8, 8, 3))
    np.testing.assert_allclose(decoded.reshape(-1, 3).mean(axis=0), RED, atol=3)


def _save_16_bit(values: np.ndarray, path: Path) -> Path:
    image = Image.fromarray(values.astype(np.uint16))
    assert image.mode == "I;16"
    return _save(image, path)


@pytest.mark.parametrize("suffix", [".png", ".tiff"])
def test_16_bit_grayscale_is_scaled_to_8_bit_not_clipped_to_white(tmp_path, suffix):
    gradient = np.linspace(0, 65535, 64).round().reshape(1, 64).repeat(4, axis=0)
    gradient[:, 32] = 32768  # mid-grey
    path = _save_16_bit(gradient, tmp_path / f"scan{suffix}")

    decoded = decode_image(path)

    assert decoded.shape == (4, 64, 3) and decoded.dtype == np.uint8
    assert decoded.min() == 0 and decoded.max() == 255
    assert 127 <= decoded[0, 32, 0] <= 128
    assert (np.diff(decoded[0, :, 0].astype(int)) >= 0).all()  # still a gradient, not a step to white


def test_a_dark_16_bit_image_stays_dark(tmp_path):
    # 16-bit values are brightness on a fixed 0..65535 scale; the brightest pixel of one
    # picture must not decide how bright the rest of it is shown.
    dark = np.full((4, 4), 1028)  # about 1.6% grey
    dark[0, 0] = 2056
    path = _save_16_bit(dark, tmp_path / "night.png")

    decoded = decode_image(path)

    assert decoded[1, 1, 0] == 4 and decoded[0, 0, 0] == 8


def test_unicode_and_space_file_names_decode(tmp_path):
    pixels = _noise(5)
    path = _save(Image.fromarray(pixels), tmp_path / "crème brûlée" / "café ☕ photo 1.png")

    np.testing.assert_array_equal(decode_image(path), pixels)


# --- unreadable files ----------------------------------------------------------------------

@pytest.fixture
def broken_files(tmp_path) -> dict[str, Path]:
    """Files a scraped folder contains that are not decodable images, by what is wrong."""
    full = _save(Image.fromarray(_noise(6, 64, 64)), tmp_path / "full.jpg", quality=90).read_bytes()
    files = {
        "empty": tmp_path / "empty.jpg",
        "truncated": tmp_path / "truncated.jpg",
        "not an image": tmp_path / "notes.png",
    }
    files["empty"].write_bytes(b"")
    files["truncated"].write_bytes(full[: len(full) // 2])
    files["not an image"].write_text("labelling notes, not a picture\n")
    (tmp_path / "full.jpg").unlink()
    return files


@pytest.mark.parametrize("problem, reason", [
    ("empty", r"empty file \(0 bytes\)"),
    ("truncated", "could not decode"),
    ("not an image", "not an image Pillow can read"),
])
def test_unreadable_files_raise_unreadable_image_with_the_reason(broken_files, problem, reason):
    path = broken_files[problem]
    before = path.read_bytes()

    with pytest.raises(UnreadableImage, match=reason):
        decode_image(path, size=16)

    assert path.read_bytes() == before


def test_an_image_over_the_pixel_limit_is_refused_as_a_decompression_bomb(tmp_path, monkeypatch):
    path = _save(Image.fromarray(_noise(7, 20, 10)), tmp_path / "bomb.png")
    monkeypatch.setattr(images, "MAX_PIXELS", 199)

    with pytest.raises(UnreadableImage, match="decompression bomb refused: 20x10 is over the 199-pixel limit"):
        decode_image(path)

    monkeypatch.setattr(images, "MAX_PIXELS", 200)  # exactly at the limit is allowed
    assert decode_image(path).shape == (10, 20, 3)


def test_decode_all_skips_and_lists_unreadable_files_and_decodes_the_rest(broken_files, tmp_path, monkeypatch):
    good = [_save(Image.fromarray(_noise(10 + i)), tmp_path / f"good{i}.png") for i in range(3)]
    bomb = _save(Image.fromarray(_noise(20, 80, 80)), tmp_path / "bomb.png")
    monkeypatch.setattr(images, "MAX_PIXELS", 5000)  # 24x16 and the 64x64 truncated JPEG pass, 80x80 does not
    paths = [good[0], broken_files["empty"], good[1], broken_files["truncated"],
             broken_files["not an image"], bomb, good[2]]
    before = _snapshot(paths)

    decoded = decode_all(paths, size=8, workers=2)

    assert decoded.kept == [0, 2, 6]
    assert decoded.pixels.shape == (3, 8, 8, 3)
    for row, index in enumerate(decoded.kept):
        np.testing.assert_array_equal(decoded.pixels[row], decode_image(paths[index], size=8))
    reasons = dict(decoded.failed)
    assert list(reasons) == [broken_files["empty"], broken_files["truncated"], broken_files["not an image"], bomb]
    assert "empty file" in reasons[broken_files["empty"]]
    assert "could not decode" in reasons[broken_files["truncated"]]
    assert "not an image" in reasons[broken_files["not an image"]]
    assert "decompression bomb" in reasons[bomb]
    assert _snapshot(paths) == before


# --- pixels in memory: numpy arrays, torch tensors, PIL images, bytes ------------------------

def _float(pixels: np.ndarray) -> np.ndarray:
    """uint8 pixels as float32 in [0, 1], as torchvision's ToTensor gives them."""
    return pixels.astype(np.float32) / 255


def test_a_float_array_in_0_1_decodes_to_the_pixels_not_to_black():
    pixels = _noise(30)

    decoded = decode_image(_float(pixels))

    np.testing.assert_array_equal(decoded, pixels)


@pytest.mark.parametrize("convert", [
    pytest.param(lambda p: p, id="numpy HWC uint8"),
    pytest.param(lambda p: p.transpose(2, 0, 1).copy(), id="numpy CHW uint8"),
    pytest.param(lambda p: _float(p).transpose(2, 0, 1), id="numpy CHW float"),
    pytest.param(lambda p: p.astype(np.int64), id="numpy HWC int64 in 0..255"),
    pytest.param(lambda p: torch.from_numpy(_float(p)).permute(2, 0, 1), id="torch CHW float (ToTensor)"),
    pytest.param(lambda p: torch.from_numpy(_float(p)).permute(2, 0, 1).half(), id="torch CHW float16"),
    pytest.param(lambda p: torch.from_numpy(_float(p)).permute(2, 0, 1).requires_grad_(), id="torch needing grad"),
    pytest.param(lambda p: torch.from_numpy(p.copy()), id="torch HWC uint8"),
    pytest.param(lambda p: Image.fromarray(p), id="PIL image"),
    pytest.param(lambda p: _png_bytes(p), id="PNG bytes"),
    pytest.param(lambda p: bytearray(_png_bytes(p)), id="PNG bytearray"),
])
def test_every_accepted_kind_of_rgb_source_decodes_to_the_same_pixels(convert):
    pixels = _noise(31)

    decoded = decode_image(convert(pixels))

    assert decoded.dtype == np.uint8 and decoded.shape == (16, 24, 3)
    tolerance = 1 if "float16" in str(getattr(convert(pixels), "dtype", "")) else 0  # half keeps 11 bits
    assert np.abs(decoded.astype(int) - pixels).max() <= tolerance


def _png_bytes(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.mark.parametrize("convert", [
    pytest.param(lambda g: g, id="numpy HW uint8"),
    pytest.param(lambda g: g[:, :, None], id="numpy HW1"),
    pytest.param(lambda g: g[None], id="numpy 1HW"),
    pytest.param(lambda g: torch.from_numpy(_float(g))[None], id="torch 1HW float"),
    pytest.param(lambda g: torch.from_numpy(_float(g)), id="torch HW float"),
])
def test_grayscale_pixels_become_three_equal_channels(convert):
    grey = _noise(32)[..., 0]

    decoded = decode_image(convert(grey))

    assert decoded.shape == (16, 24, 3)
    for channel in range(3):
        np.testing.assert_array_equal(decoded[..., channel], grey)


@pytest.mark.parametrize("channels_first", [False, True])
def test_rgba_pixels_are_composited_on_white_as_an_rgba_file_is(tmp_path, channels_first):
    rgba = np.concatenate([_noise(33), np.full((16, 24, 1), 0, np.uint8)], axis=2)
    rgba[:8, :, 3] = 255  # top half opaque, bottom half transparent
    source = torch.from_numpy(_float(rgba)).permute(2, 0, 1) if channels_first else rgba

    decoded = decode_image(source)

    np.testing.assert_array_equal(decoded, decode_image(_save(Image.fromarray(rgba), tmp_path / "rgba.png")))
    assert (decoded[8:] == 255).all()


@pytest.mark.parametrize("make_batch", [
    pytest.param(lambda b: b, id="numpy NHWC uint8"),
    pytest.param(lambda b: _float(b).transpose(0, 3, 1, 2), id="numpy NCHW float"),
    pytest.param(lambda b: torch.from_numpy(_float(b)).permute(0, 3, 1, 2), id="torch NCHW float"),
    pytest.param(lambda b: list(torch.from_numpy(_float(b)).permute(0, 3, 1, 2)), id="list of CHW tensors"),
])
def test_a_batch_splits_into_its_images_in_order(make_batch):
    batch = np.stack([_noise(40 + i) for i in range(3)])

    found = split_batch(make_batch(batch))

    assert len(found) == 3
    for image, pixels in zip(found, batch):
        np.testing.assert_array_equal(decode_image(image), pixels)


def test_a_single_image_and_a_list_mixing_kinds_split_into_one_entry_each(tmp_path):
    path = _save(Image.fromarray(_noise(50)), tmp_path / "one.png")
    chw = torch.rand(3, 16, 24)  # one image, not three grey ones

    assert len(split_batch(chw)) == 1 and split_batch(str(path)) == [str(path)]
    found = split_batch([path, path.read_bytes(), chw, np.stack([_noise(51), _noise(52)])])
    assert [type(image).__name__ for image in found] == ["PosixPath" if os.name == "posix" else "WindowsPath",
                                                         "bytes", "Tensor", "ndarray", "ndarray"]


def test_a_batch_of_one_decodes_as_its_image_and_a_larger_batch_is_an_error_pointing_to_predict():
    pixels = _noise(53)

    np.testing.assert_array_equal(decode_image(pixels[None]), pixels)
    with pytest.raises(UsageError, match=r"got a batch of 2 images .*shape \(2, 16, 24, 3\).*predict takes batches"):
        decode_image(np.stack([pixels, pixels]))


@pytest.mark.parametrize("source, received", [
    (torch.randn(3, 16, 24), r"float pixels must lie in \[0, 1\], got -.*torch tensor of shape \(3, 16, 24\)"),
    (_noise(60).astype(np.float32), r"float pixels must lie in \[0, 1\], got 0\.\.255 in a numpy array.*divide 0\.\.255 values by 255"),
    (np.full((16, 24, 3), np.nan, np.float32), r"float pixels must lie in \[0, 1\], got nan"),
    (np.zeros((16, 24, 2), np.uint8), r"cannot find the channels of a numpy array of shape \(16, 24, 2\)"),
    (torch.zeros(5, 16, 24), r"cannot find the channels of a torch tensor of shape \(5, 16, 24\)"),
    (np.zeros((1, 2, 3, 16, 24), np.uint8), r"a numpy array of shape \(1, 2, 3, 16, 24\)"),
    (np.zeros(16, np.uint8), r"a numpy array of shape \(16,\)"),
    (np.zeros((0, 24, 3), np.uint8), r"a numpy array of shape \(0, 24, 3\)"),
    (np.full((16, 24), 60000, np.uint16), r"integer pixels must lie in 0\.\.255, got 60000\.\.60000"),
    (np.zeros((16, 24), np.complex64), r"cannot read a numpy array of shape \(16, 24\) and dtype complex64 as pixels"),
    ("https://example.com/cat.jpg", r"cannot read the string 'https://example.com/cat.jpg': it is not a file path"),
    ({"image": b""}, r"cannot read a value of type dict as an image"),
    (None, r"cannot read a value of type NoneType as an image"),
])
def test_sources_that_are_not_images_are_refused_naming_what_was_received_and_what_is_accepted(source, received):
    with pytest.raises(UsageError) as raised:
        decode_image(source)

    assert re.search(received, str(raised.value)), str(raised.value)
    if "pixels must lie" not in received and "batch" not in received:
        assert "images are a file path, the bytes of an image file, a PIL image, or a numpy array" in str(raised.value)


@pytest.mark.parametrize("images, received", [
    ({"a.png", "b.png"}, "a value of type set"),
    (42, "a value of type int"),
    ([[0, 1], [2, 3]], "a value of type list"),
    (["photo.png", "data:image/png;base64,iVBORw0KGgo="], "the string 'data:image/png;base64"),
])
def test_a_batch_of_things_that_are_not_images_is_refused_before_any_decoding(images, received):
    with pytest.raises(UsageError, match=re.escape(received)):
        split_batch(images)


# --- Predictor.predict on the same inputs ---------------------------------------------------

@pytest.fixture(scope="module")
def predictor_and_digits(trained_run, digits_dir):
    from imgcls.predict.predictor import Predictor

    paths = sorted((digits_dir / "predict").glob("*.png"))[:4]
    grey = np.stack([np.asarray(Image.open(path).convert("L")) for path in paths])  # (4, 32, 32) uint8
    return Predictor.load(trained_run.bundle_dir), paths, grey


def test_predict_gives_the_same_answer_for_a_file_and_its_pixels_in_every_accepted_form(predictor_and_digits):
    predictor, paths, grey = predictor_and_digits
    rgb = np.repeat(grey[0][..., None], 3, axis=2)
    forms = [paths[0], paths[0].read_bytes(), Image.open(paths[0]), grey[0], rgb, _float(rgb),
             torch.from_numpy(_float(rgb)).permute(2, 0, 1), torch.from_numpy(_float(grey[0]))[None]]

    results = predictor.predict(forms, top_k=3)

    assert len(results) == len(forms) and all(result["error"] is None for result in results)
    by_file = results[0]
    for result in results[1:]:
        assert result["labels"] == by_file["labels"]
        assert [p["label"] for p in result["predictions"]] == [p["label"] for p in by_file["predictions"]]
        assert [p["score"] for p in result["predictions"]] == pytest.approx([p["score"] for p in by_file["predictions"]], abs=1e-4)


@pytest.mark.parametrize("as_batch", [
    pytest.param(lambda g: torch.from_numpy(_float(g))[:, None], id="torch N1HW float"),
    pytest.param(lambda g: g[..., None], id="numpy NHW1 uint8"),
    pytest.param(lambda g: np.repeat(_float(g)[:, None], 3, axis=1), id="numpy N3HW float"),
])
def test_predict_on_a_batch_answers_once_per_image_in_order(predictor_and_digits, as_batch):
    predictor, paths, grey = predictor_and_digits

    results = predictor.predict(as_batch(grey), top_k=2)

    assert [result["labels"] for result in results] == [result["labels"] for result in predictor.predict(paths)]
    assert all(result["path"] is None and result["error"] is None for result in results)


def test_predict_refuses_normalised_pixels_rather_than_predicting_on_a_black_image(predictor_and_digits):
    predictor, _, grey = predictor_and_digits
    normalised = (torch.from_numpy(_float(grey[0]))[None].expand(3, -1, -1) - 0.5) / 0.25

    with pytest.raises(UsageError, match=r"float pixels must lie in \[0, 1\].*undo the mean/std normalisation"):
        predictor.predict(normalised)
