"""Any image a record holds -> the square uint8 RGB array the image tokenizer encodes."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from unifork.world.detect import pil_to_rgb


class CorruptImage(Exception):
    """An image that does not decode; readers skip and count it (a long run must not die on one bad file)."""


def open_image(image) -> Image.Image:
    """A fully decoded PIL image from bytes, a path, a PIL image or a {"bytes", "path"} cell (HF's Image feature)."""
    if isinstance(image, dict):
        image = image.get("bytes") or image.get("path")
    try:
        if isinstance(image, Image.Image):
            return image
        if isinstance(image, bytes | bytearray | memoryview):
            img = Image.open(io.BytesIO(image))
        elif isinstance(image, str | Path):
            img = Image.open(image)
        else:
            raise CorruptImage(f"no image data ({type(image).__name__})")
        img.load()  # decode now: a truncated file fails here, not later inside the tokenizer
        return img
    except CorruptImage:
        raise
    except Exception as err:  # noqa: BLE001 -- PIL raises OSError, SyntaxError, ValueError, DecompressionBombError...
        raise CorruptImage(f"{type(err).__name__}: {err}") from None


def fit_image(image, size: int) -> np.ndarray:
    """uint8 (size, size, 3): any mode to RGB (transparency on white), centre crop to a square, then resize.

    Cropping rather than padding keeps the tokenizer's training distribution (full-frame images); bicubic
    resampling with PIL's built-in antialiasing, as most image-generation data pipelines downscale.
    """
    img = open_image(image)
    try:
        img = pil_to_rgb(ImageOps.exif_transpose(img))  # camera photos store their rotation in EXIF
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
    except Exception as err:  # noqa: BLE001 -- a mode PIL cannot convert is as unusable as bad bytes
        raise CorruptImage(f"{type(err).__name__}: {err}") from None
