"""The one way an image becomes what the image tokenizer encodes, for training data and for inference alike.

    open_image   a path, bytes, a {"bytes", "path"} cell, a PIL image or an array -> a decoded PIL image
    to_rgb       -> upright RGB: EXIF rotation applied, transparency on white, 16-bit and float rescaled
    fit_image    -> uint8 (size, size, 3): centre crop to a square, then a bicubic (antialiased) resize

Data readers, Pipeline.ask, the server and `unifork tokenizer reconstruct` all end in fit_image, so a model
sees a photo prepared the same way when it is trained and when it is asked about it. A leaf module: it
imports nothing of unifork but the error type.
"""

from __future__ import annotations

import io
import sys
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from unifork.errors import UserError

BACKGROUND = (255, 255, 255)  # transparency lands on white, the world's background too (world/spec.py)
_ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")


class CorruptImage(UserError):
    """An image that cannot be used (missing, undecodable, damaged, not an image at all).

    Training readers skip and count it, since a long run must not die on one bad file; anywhere else it is a
    UserError like any other.
    """


WARN_FIRST = 5  # corrupt images a training reader announces one by one; later ones are only counted


def announce_corrupt(count: int, key: str, detail: str, counted_in: str) -> None:
    """The warning for the count-th corrupt image a reader skipped, while count <= WARN_FIRST."""
    if count <= WARN_FIRST:
        more = f"; further ones are counted in {counted_in} (skipped_corrupt)" if count == WARN_FIRST else ""
        print(f"warning: skipped corrupt image {key}: {detail}{more}", file=sys.stderr)


def to_uint8(arr: np.ndarray) -> np.ndarray:
    """Any numeric array to 0..255 uint8: floats in [0, 1] are scaled up, values above 255 (16-bit) divided by 257."""
    if arr.dtype == bool:
        return arr.astype(np.uint8) * 255
    if arr.dtype == np.uint8:
        return arr
    if not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
        raise CorruptImage(f"an image array must hold integers or floats, got dtype {arr.dtype}")
    values = np.nan_to_num(arr.astype(np.float64))
    top = values.max()
    if np.issubdtype(arr.dtype, np.floating) and top <= 1.0:
        values = values * 255
    elif top > 255:
        values = values / 257
    return np.clip(values, 0, 255).round().astype(np.uint8)


def _from_array(arr: np.ndarray) -> Image.Image:
    """A PIL image from an (H, W), (H, W, 1), (H, W, 3) or (H, W, 4) array of any numeric dtype."""
    flat = arr[..., 0] if arr.ndim == 3 and arr.shape[2] == 1 else arr
    bad_channels = flat.ndim == 3 and flat.shape[2] not in (3, 4)
    if flat.ndim not in (2, 3) or bad_channels or min(flat.shape[:2], default=0) == 0:
        raise CorruptImage(f"an image array must be (H, W), (H, W, 3) or (H, W, 4), got shape {arr.shape}")
    return Image.fromarray(to_uint8(flat))


def _decode(data: bytes, name: str) -> Image.Image:
    """Decode now, so a truncated file fails here and not later inside the tokenizer.

    PIL only warns, then carries on, for too many pixels (at open, nothing decoded yet) or a damaged file such
    as a truncated TIFF: both are refused, the first as a decompression-bomb guard.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            image = Image.open(io.BytesIO(data))
            image.load()
        return image
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise CorruptImage(f"{name} has more than {Image.MAX_IMAGE_PIXELS} pixels, the limit that guards against "
                           "decompression bombs; downscale it first") from None  # fmt: skip
    except Exception:  # noqa: BLE001 -- PIL raises OSError, SyntaxError, ValueError, warnings... on bad bytes
        raise CorruptImage(f"not an image file, or a damaged one: {name}") from None


def open_image(image) -> Image.Image:
    """A decoded PIL image from a path, bytes, a PIL image, a numeric array or a {"bytes", "path"} cell (HF's Image)."""
    if isinstance(image, dict):
        image = image.get("bytes") or image.get("path")
    if isinstance(image, Image.Image):
        return image
    if isinstance(image, np.ndarray):
        return _from_array(image)
    if isinstance(image, bytes | bytearray | memoryview):
        return _decode(bytes(image), f"image data ({len(image)} bytes)")
    if isinstance(image, str | Path):
        path = Path(image)
        if not path.is_file():
            raise CorruptImage(f"no such image file: {path}")
        return _decode(path.read_bytes(), str(path))
    raise CorruptImage(f"expected an image (a path, bytes, a PIL image or an array), got {type(image).__name__}")


def to_rgb(image: Image.Image) -> Image.Image:
    """Upright RGB: EXIF rotation applied (camera photos store it there), 16-bit and float greys rescaled,
    transparency composited onto the white background."""
    with warnings.catch_warnings():  # the pixels are decoded; PIL's advice about palettes is no fault of the file
        warnings.simplefilter("ignore")
        image = ImageOps.exif_transpose(image)
        if image.mode.startswith("I;16"):
            image = Image.fromarray((np.asarray(image, dtype=np.float64) / 257).round().astype(np.uint8), "L")
        elif image.mode in ("I", "F"):
            image = Image.fromarray(to_uint8(np.asarray(image)), "L")
        if image.mode in _ALPHA_MODES or "transparency" in image.info:
            background = Image.new("RGBA", image.size, (*BACKGROUND, 255))
            image = Image.alpha_composite(background, image.convert("RGBA"))
        return image.convert("RGB")


def fit_image(image, size: int) -> np.ndarray:
    """uint8 (size, size, 3) from anything open_image reads: upright RGB, centre-cropped to a square, resized.

    Cropping rather than padding or stretching keeps shapes and the full frame as in the tokenizer's training
    images; bicubic with PIL's antialiasing, as most image-generation data pipelines downscale photographs.
    """
    if isinstance(image, np.ndarray) and image.dtype == np.uint8 and image.shape == (size, size, 3):
        return image  # already what the path below would make of it
    img = open_image(image)
    try:
        img = to_rgb(img)
        w, h = img.size
        side = min(w, h)
        if side == 0:
            raise CorruptImage("empty image")
        if w != h:
            left, top = (w - side) // 2, (h - side) // 2
            img = img.crop((left, top, left + side, top + side))
        if side != size:
            img = img.resize((size, size), Image.BICUBIC)
        return np.asarray(img, dtype=np.uint8)
    except CorruptImage:
        raise
    except Exception as err:  # noqa: BLE001 -- a lazily loaded PIL image may fail only now; a mode PIL cannot convert
        raise CorruptImage(f"not an image, or a damaged one: {type(err).__name__}: {err}") from None
