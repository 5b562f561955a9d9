"""Decoding one image file into an RGB uint8 array, the same way for training and prediction.

Handles what scraped folders contain: EXIF rotation, palette/alpha/CMYK/grayscale/16-bit modes,
animated GIFs (first frame), truncated files and decompression bombs. In memory it takes what Python
users hold: bytes, PIL images, and numpy arrays or torch tensors of pixels, (H, W), (H, W, C) or
(C, H, W), uint8 or float in [0, 1] (torchvision's ToTensor convention); `split_batch` turns a batch
(N, H, W, C) or (N, C, H, W) into its images. Pixels that fit none of these are refused, never guessed.
"""
from __future__ import annotations

import errno
import io
import os
import re
import warnings
from pathlib import Path
from typing import Iterable, Union

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps

from ..errors import UsageError

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".gif", ".bmp", ".webp", ".tif", ".tiff"})
# 89.5 Mpx is Pillow's own warning limit; a 16k x 16k photo is above it, an 8k one is not.
MAX_PIXELS = 89_478_485

# Images at least this many times the target size are box-averaged down to twice it or more before the
# resize, converted a strip at a time. Peak memory decoding a 9000 x 9000 PNG to 224 px: 1-bit, 850 MB
# before (its RGB copies), 97 MB now; RGB, 774 MB before, 335 now (Pillow's decode itself, 4 bytes a pixel).
SHRINK_FROM = 4
STRIP_ROWS = 256  # rows converted at once while shrinking: a few MB of RGB even for the widest image

# Where Pillow finds a JPEG's orientation (EXIF, or XMP since Pillow 10); without either, reading it costs
# a tenth of a CIFAR image's decode for nothing.
_JPEG_ORIENTATION_KEYS = frozenset({"exif", "xmp", "XML:com.adobe.xmp"})

ImageSource = Union[str, Path, bytes, Image.Image, np.ndarray, torch.Tensor]
ACCEPTED_SOURCES = ("a file path, the bytes of an image file, a PIL image, or a numpy array or torch tensor of "
                    "pixels shaped (H, W), (H, W, C) or (C, H, W) with C = 1, 3 or 4, uint8 or float in [0, 1] "
                    "(a batch (N, H, W, C) or (N, C, H, W) is N images)")
CHANNELS = (1, 3, 4)  # grey, RGB, RGBA
MAX_PATH_CHARS = 4096  # PATH_MAX on Linux: a longer string is data, not a file name
_URL = re.compile(r"[a-zA-Z][a-zA-Z0-9+.-]*://|data:")
# We enforce MAX_PIXELS ourselves right after reading the header; Pillow's own warning would
# only repeat it (and catching it per call with warnings.catch_warnings is not thread-safe).
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)


class UnreadableImage(ValueError):
    """A file that is not a decodable image; the message says why."""


def is_image_path(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".")


def file_error(path: str | Path, err: OSError) -> str:
    """Why a file could not be opened, in words: a broken or looping link says so, where the OS
    would only say 'No such file or directory' about a file `ls` shows."""
    if os.path.islink(path):
        if err.errno == errno.ELOOP:
            return f"symbolic link loop: '{path}' leads back to itself"
        if not os.path.exists(path):
            return f"broken symbolic link: '{path}' points to '{os.readlink(path)}', which does not exist"
    return f"cannot read '{path}' ({err.strerror or type(err).__name__})"


def open_image(source) -> Image.Image:
    """Open (header only, no pixel decoding yet), refusing empty files, non-images and bombs."""
    if isinstance(source, Image.Image):
        return source
    if isinstance(source, (bytes, bytearray)):
        source = io.BytesIO(source)
    try:
        image = Image.open(source)
    except Image.DecompressionBombError as err:
        raise UnreadableImage(f"decompression bomb refused: {err}") from None
    except (FileNotFoundError, PermissionError, IsADirectoryError):
        raise  # the file itself, not its contents
    except Exception as err:  # PIL raises many types for non-images
        # Checked only on failure: a stat per image costs 2-5% of decoding a small JPEG.
        empty = source.getbuffer().nbytes == 0 if isinstance(source, io.BytesIO) else os.stat(source).st_size == 0
        if empty:
            raise UnreadableImage("empty file (0 bytes)") from None
        raise UnreadableImage(f"not an image Pillow can read ({type(err).__name__})") from None
    if image.width * image.height > MAX_PIXELS:
        image.close()
        raise UnreadableImage(f"decompression bomb refused: {image.width}x{image.height} is over the {MAX_PIXELS:,}-pixel limit")
    return image


_WIDE_MODES = ("I;16", "I;16B", "I;16L", "I", "F")


def _eight_bit_scale(image: Image.Image) -> float:
    """The factor taking a wide-mode image to 0..255. 16-bit data spans 0..65535 on a fixed scale: dividing
    by the image's own maximum would show a dark 16-bit photo as a bright one. 32-bit "I"/"F" data holding
    0..255 is kept."""
    sixteen_bit = image.mode.startswith("I;16") or (image.width * image.height > 0 and image.getextrema()[1] > 255)
    return 255.0 / 65535.0 if sixteen_bit else 1.0


def _to_rgb(image: Image.Image, scale: float | None = None) -> Image.Image:
    """Convert any mode to 8-bit RGB; alpha is composited on white, as a viewer shows it.
    scale: _eight_bit_scale of the whole image, when this is a strip of it."""
    if image.mode in _WIDE_MODES:
        array = np.asarray(image, dtype=np.float64)
        scale = _eight_bit_scale(image) if scale is None else scale
        image = Image.fromarray(np.clip(np.round(array * scale), 0, 255).astype(np.uint8))
    if image.mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    if image.mode in ("RGBA", "LA", "PA"):
        background = Image.new("RGB", image.size, (255, 255, 255))
        background.paste(image.convert("RGBA"), mask=image.convert("RGBA").getchannel("A"))
        return background
    return image.convert("RGB")


def _shrink(image: Image.Image, size: int) -> np.ndarray:
    """(size, size, 3) uint8 from an image SHRINK_FROM or more times larger. Box-averaged (Image.reduce) to
    twice the size or more a strip at a time, so that no full-size RGB copy exists besides the decoded image
    (Pillow cannot decode a PNG in parts), then resized as Pillow's `reducing_gap` does it: the box keeps the
    geometry exact where the last block is partial (without it, 1200 x 900 px to 64 was off by 5 levels on
    average). Strips are whole multiples of the factor, so they give the same result as the whole image."""
    width, height = image.size
    factor = min(width, height) // (2 * size)
    rows = factor * max(1, STRIP_ROWS // factor)
    scale = _eight_bit_scale(image) if image.mode in _WIDE_MODES else None
    shrunk = Image.new("RGB", (-(-width // factor), -(-height // factor)))
    for top in range(0, height, rows):
        strip = _to_rgb(image.crop((0, top, width, min(top + rows, height))), scale)
        shrunk.paste(strip.reduce(factor), (0, top // factor))
    return np.asarray(shrunk.resize((size, size), Image.BILINEAR, box=(0, 0, width / factor, height / factor)))


def _resize(pixels: np.ndarray, size: int) -> np.ndarray:
    """(H, W, 3) uint8 -> (size, size, 3) with Pillow's antialiased bilinear filter (to within one level),
    run by PyTorch's vectorised uint8 kernel at 2.5x Pillow's speed: Imagenette 224 -> 128 px takes 80 us
    per image, where Pillow took 200 us, as long as decoding the JPEG."""
    batch = torch.from_numpy(pixels).permute(2, 0, 1)[None]  # channels-last strides: the fast kernel
    planes = F.interpolate(batch, size=(size, size), mode="bilinear", antialias=True)[0]  # (3, size, size)
    return planes.permute(1, 2, 0).contiguous().numpy()


def _describe(source) -> str:
    """What the caller passed, for a message: its type, and a shape and dtype, or the start of a string."""
    if isinstance(source, (np.ndarray, torch.Tensor)):
        kind = "numpy array" if isinstance(source, np.ndarray) else "torch tensor"
        return f"a {kind} of shape {tuple(source.shape)} and dtype {str(source.dtype).replace('torch.', '')}"
    if isinstance(source, str):
        return f"the string {source[:60]!r}{'...' if len(source) > 60 else ''}"
    module = type(source).__module__
    return f"a value of type {'' if module == 'builtins' else module.split('.')[0] + '.'}{type(source).__qualname__}"


def _is_source(source) -> bool:
    """One image, or a batch array/tensor: anything decode_image or split_batch reads."""
    return isinstance(source, (str, os.PathLike, bytes, bytearray, Image.Image, np.ndarray, torch.Tensor))


def _check_string(source: str) -> None:
    """A string is a path; a URL or data in a string is refused here rather than reported as a missing file."""
    if _URL.match(source) or len(source) > MAX_PATH_CHARS or "\n" in source or "\0" in source:
        raise UsageError(f"cannot read {_describe(source)}: it is not a file path (download a URL first, and pass "
                         f"decoded data as bytes); images are {ACCEPTED_SOURCES}")


def split_batch(images) -> list:
    """The images of `images`, one entry each, in order: a single image is a list of one, a batch array or
    tensor (4 dimensions) is its N images, and a list or other iterable may hold any of these. Predictors
    call this first, so that they answer once per image. Anything else is refused, naming what it got."""
    if _is_source(images):
        images = [images]
    elif isinstance(images, (dict, set, frozenset)) or not isinstance(images, Iterable):  # no order to answer in
        raise UsageError(f"cannot read {_describe(images)} as images; give one image or a list of them, each "
                         f"{ACCEPTED_SOURCES}")
    found = []
    for image in images:
        if not _is_source(image):
            raise UsageError(f"cannot read {_describe(image)} as an image; images are {ACCEPTED_SOURCES}")
        if isinstance(image, str):
            _check_string(image)
        found += list(image) if isinstance(image, (np.ndarray, torch.Tensor)) and image.ndim == 4 else [image]
    return found


def _to_uint8(pixels: np.ndarray, source) -> np.ndarray:
    """uint8 as given; integers in 0..255 as they are; floats in [0, 1] scaled to 0..255, as ToTensor made them.
    Floats outside [0, 1] are refused: clipping would turn normalised pixels black or white without a word."""
    if pixels.dtype == np.uint8:
        return pixels
    if pixels.dtype.kind in "iu":
        low, high = int(pixels.min()), int(pixels.max())
        if low < 0 or high > 255:
            raise UsageError(f"integer pixels must lie in 0..255, got {low}..{high} in {_describe(source)}; "
                             "scale them to 8 bits (16-bit: // 257)")
        return pixels.astype(np.uint8)
    if pixels.dtype.kind == "f":
        low, high = float(pixels.min()), float(pixels.max())
        if not (0 <= low and high <= 1):  # also refuses NaN
            raise UsageError(f"float pixels must lie in [0, 1], got {low:.4g}..{high:.4g} in {_describe(source)}; "
                             "divide 0..255 values by 255, or undo the mean/std normalisation")
        return np.round(pixels * 255).astype(np.uint8)
    raise UsageError(f"cannot read {_describe(source)} as pixels; images are {ACCEPTED_SOURCES}")


def _array_image(source: np.ndarray | torch.Tensor) -> Image.Image:
    """The PIL image of one image's pixels. (C, H, W) or (H, W, C) is told by where a channel count of
    1, 3 or 4 is; where both ends are (a 4 x 4 RGB image), a tensor is (C, H, W) as in torchvision and
    an array (H, W, C) as in PIL and OpenCV."""
    is_tensor = isinstance(source, torch.Tensor)
    if is_tensor:
        tensor = source.detach().cpu()
        pixels = (tensor.float() if tensor.is_floating_point() else tensor).numpy()  # numpy has no bfloat16
    else:
        pixels = source
    if pixels.ndim == 4 and len(pixels) == 1:
        pixels = pixels[0]
    if pixels.ndim == 4:
        raise UsageError(f"got a batch of {len(pixels)} images ({_describe(source)}) where one image goes; "
                         "predict takes batches, or pass one image of it")
    if pixels.ndim not in (2, 3) or pixels.size == 0:
        raise UsageError(f"cannot read {_describe(source)} as an image; images are {ACCEPTED_SOURCES}")
    if pixels.ndim == 3:
        first, last = pixels.shape[0] in CHANNELS, pixels.shape[2] in CHANNELS
        if first and (is_tensor or not last):
            pixels = np.moveaxis(pixels, 0, -1)
        elif not last:
            raise UsageError(f"cannot find the channels of {_describe(source)}: neither its first nor its last "
                             f"dimension is 1, 3 or 4; images are {ACCEPTED_SOURCES}")
        if pixels.shape[2] == 1:
            pixels = pixels[..., 0]
    return Image.fromarray(np.ascontiguousarray(_to_uint8(pixels, source)))  # (H, W) L, (H, W, 3) RGB, (H, W, 4) RGBA


def decode_image(source: ImageSource, size: int | None = None) -> np.ndarray:
    """Decode to an (H, W, 3) uint8 array, squashed to (size, size) when size is given.

    Squashing (not cropping) keeps every object in frame, as Keras' flow_from_directory does;
    training and prediction both call this function so they can never disagree.
    Sources: ACCEPTED_SOURCES, one image (see split_batch for batches); others raise UsageError.
    """
    if isinstance(source, (np.ndarray, torch.Tensor)):
        image = _array_image(source)
    elif not _is_source(source):
        raise UsageError(f"cannot read {_describe(source)} as an image; images are {ACCEPTED_SOURCES}")
    else:
        if isinstance(source, str):
            _check_string(source)
        image = open_image(source)
    opened = image
    try:
        if size is not None and image.format == "JPEG" and min(image.size) >= 4 * size:
            # DCT-domain downscaling: decoding a 4000 px photo for a 150 px model is ~8x faster.
            # Asked for twice the size, it halves at least: smaller images skip the call (10% of a CIFAR image).
            image.draft("RGB", (size * 2, size * 2))
        image.seek(0)  # first frame of GIF/WebP/TIFF animations
        if image is source:  # the caller's image: never changed
            image = ImageOps.exif_transpose(image)
        elif image.format != "JPEG" or not _JPEG_ORIENTATION_KEYS.isdisjoint(image.info):
            ImageOps.exif_transpose(image, in_place=True)  # ours: rotate in place, sparing a copy of every upright image
        if size is not None and min(image.size) >= SHRINK_FROM * size:  # PNGs and others without a draft mode
            return _shrink(image, size)
        if image.mode != "RGB":  # converting an RGB image would only copy it (a third of a CIFAR image's decode time)
            image = _to_rgb(image)
        if size is not None and image.size != (size, size):
            return _resize(np.array(image), size)
        return np.asarray(image, dtype=np.uint8)
    except UnreadableImage:
        raise
    except Exception as err:  # truncated data surfaces here, at load time
        raise UnreadableImage(f"could not decode ({type(err).__name__}: {err})") from None
    finally:
        if opened is not source:  # animated GIF/WebP/TIFF keep their file open after loading a frame
            opened.close()
