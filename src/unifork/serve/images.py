"""Image bytes in and out of the API: untrusted uploads to RGB, generated images to base64 PNG."""

from __future__ import annotations

import base64
import binascii
import io
import re
import warnings

from PIL import Image, UnidentifiedImageError

from unifork.images import to_rgb
from unifork.serve.errors import FieldError
from unifork.serve.limits import MAX_IMAGE_BYTES, MAX_IMAGE_PIXELS, MAX_IMAGE_SIDE

DATA_URL = re.compile(r"^data:image/[\w.+-]+;base64,", re.IGNORECASE)


def decode_base64_image(text: str, field: str) -> Image.Image:
    payload = DATA_URL.sub("", text.strip(), count=1)
    try:
        data = base64.b64decode("".join(payload.split()), validate=True)
    except (binascii.Error, ValueError):
        raise FieldError(field, "is not valid base64") from None
    return decode_image(data, field)


def decode_image(data: bytes, field: str) -> Image.Image:
    """An upright RGB image from the bytes of any file PIL reads (unifork.images.to_rgb; the pipeline crops and
    resizes it as training data is); every way it can fail is a FieldError naming `field`."""
    if not data:
        raise FieldError(field, "is empty; send an image file")
    if len(data) > MAX_IMAGE_BYTES:
        raise FieldError(field, f"is {len(data)} bytes; the limit is {MAX_IMAGE_BYTES}", status=413)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            w, h = image.size  # from the header: a 100 kB file may claim a billion pixels
            if max(w, h) > MAX_IMAGE_SIDE or w * h > MAX_IMAGE_PIXELS:
                raise FieldError(field, f"is {w}x{h} pixels; the limit is {MAX_IMAGE_SIDE} per side and "
                                        f"{MAX_IMAGE_PIXELS} in all", status=413)  # fmt: skip
            image.load()  # a truncated file fails here, not later in the worker
            return to_rgb(image)
    except FieldError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise FieldError(field, f"claims more pixels than the limit of {MAX_IMAGE_PIXELS}", status=413) from None
    except UnidentifiedImageError:
        raise FieldError(field, "is not an image file PIL can read (PNG, JPEG, GIF, BMP, WebP, TIFF, ...)") from None
    except Exception:  # noqa: BLE001 - decoders fail on hostile bytes in many ways; each is the client's file
        raise FieldError(field, "is a damaged or truncated image file") from None


def png_base64(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")
