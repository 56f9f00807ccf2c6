"""One image path (unifork.images): EXIF, transparency, centre crop, and the same tensor for training and for ask."""

import io
import json

import numpy as np
import pytest
import torch
from PIL import Image

from unifork.data.config import DataConfig
from unifork.data.stream_pool import StreamPool
from unifork.images import BACKGROUND, CorruptImage, fit_image, to_rgb
from unifork.inference import Pipeline
from unifork.serve.images import decode_image
from unifork.train.recipe import StageConfig
from unifork.world import Scene, render

pytestmark = pytest.mark.usefixtures("one_thread")

ORIENTATION = 0x0112  # the EXIF tag; 6 = "rotate 90 degrees clockwise to display"

RED, GREEN, BLUE = (220, 30, 30), (30, 160, 50), (30, 70, 220)


def upright() -> Image.Image:
    """A portrait 48 x 96: red bands top and bottom (cropped away), the centre square blue on the left, green right."""
    image = Image.new("RGB", (48, 96), RED)
    image.paste(BLUE, (0, 24, 24, 72))
    image.paste(GREEN, (24, 24, 48, 72))
    return image


def exif_rotated_jpeg(image: Image.Image) -> bytes:
    """The bytes a camera writes: pixels stored sideways, the rotation that makes them upright in EXIF."""
    exif = Image.Exif()
    exif[ORIENTATION] = 6
    out = io.BytesIO()
    image.transpose(Image.Transpose.ROTATE_90).save(out, format="JPEG", quality=95, exif=exif.tobytes())
    return out.getvalue()


def photo_like_rgba(w=80, h=50) -> bytes:
    """Smooth colour gradients, noise and varying transparency, larger than the tokenizer's size and not square."""
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:h, 0:w] / max(w, h)
    rgb = np.stack([np.sin(6 * x + 1), np.cos(5 * y), np.sin(4 * (x + y))], -1) * 90 + 128
    rgb = np.clip(rgb + rng.normal(0, 12, rgb.shape), 0, 255)
    alpha = np.clip(255 * (1.5 - 2 * np.hypot(x - 0.5, y - 0.3)), 0, 255)[..., None]
    out = io.BytesIO()
    Image.fromarray(np.concatenate([rgb, alpha], -1).round().astype(np.uint8), "RGBA").save(out, format="PNG")
    return out.getvalue()


def near(pixel, color, tol=12) -> bool:
    return bool(np.abs(pixel.astype(int) - color).max() <= tol)


def test_exif_rotation_is_applied_before_the_crop():
    out = fit_image(exif_rotated_jpeg(upright()), 32)
    assert out.shape == (32, 32, 3) and out.dtype == np.uint8
    assert near(out[16, 4], BLUE) and near(out[16, 27], GREEN)  # upright: blue left, green right
    assert not any(near(out[r, c], RED, 40) for r in (0, 31) for c in (4, 27))  # the red bands are cropped away
    assert np.abs(out.astype(int) - fit_image(upright(), 32)).mean() < 3  # what the camera meant, up to JPEG


def test_transparency_lands_on_the_worlds_white():
    image = Image.new("RGBA", (40, 40), (255, 0, 0, 0))
    image.paste((255, 0, 0, 128), (0, 0, 20, 40))  # half-transparent red on the left
    out = fit_image(image, 40)
    assert (out[:, 25:] == BACKGROUND).all()  # fully transparent: the background
    assert near(out[20, 5], (255, 127, 127), 1)  # half red, half white
    assert (render(Scene([])) == out[0, -1]).all()  # the world renders on the same white


@pytest.mark.parametrize("size", [(96, 48), (48, 96)])
def test_centre_crop_keeps_the_middle_square(size):
    w, h = size
    image = Image.new("RGB", size, RED)
    side = min(w, h)
    image.paste(BLUE, ((w - side) // 2, (h - side) // 2, (w + side) // 2, (h + side) // 2))
    out = fit_image(image, 16)
    assert (np.abs(out.astype(int) - BLUE).max((0, 1)) <= 1).all()  # no red left: cropped, not stretched or padded


def test_the_downscale_is_antialiased():
    stripes = np.zeros((64, 64, 3), np.uint8)
    stripes[:, ::2] = 255  # one-pixel stripes: nearest would keep every other column, all black or all white
    out = fit_image(stripes, 16).astype(int)
    assert np.abs(out[:, 1:-1] - 128).max() <= 2  # grey; the border columns see only part of the filter


@pytest.mark.parametrize("source", ["path", "bytes", "pil", "uint8", "float"])
def test_every_input_kind_gives_the_same_pixels(tmp_path, source):
    data = photo_like_rgba()
    rgb = to_rgb(Image.open(io.BytesIO(data)))
    (tmp_path / "a.png").write_bytes(data)
    inputs = {"path": tmp_path / "a.png", "bytes": data, "pil": Image.open(io.BytesIO(data)),
              "uint8": np.asarray(rgb), "float": np.asarray(rgb) / 255.0}  # fmt: skip
    assert (fit_image(inputs[source], 32) == fit_image(data, 32)).all()


def test_bad_images_are_user_errors_naming_the_problem(tmp_path):
    (tmp_path / "notes.png").write_text("not pixels")
    cases = [(tmp_path / "notes.png", "not an image file, or a damaged one"), (tmp_path / "no.png", "no such image file"),
             (b"\x89PNG", "not an image file"), (np.zeros((2, 2, 2, 3)), r"must be \(H, W\)"), (None, "expected an image")]
    for image, message in cases:
        with pytest.raises(CorruptImage, match=message):
            fit_image(image, 32)


@pytest.mark.parametrize("name, data", [("rgba.png", photo_like_rgba()), ("rotated.jpg", exif_rotated_jpeg(upright()))])
def test_a_file_gives_the_same_tensor_to_training_and_to_ask(ckpt, tmp_path, monkeypatch, name, data):
    """The tensor the image tokenizer encodes for a `folder:` record in a training batch is the one `ask` encodes."""
    (tmp_path / name).write_bytes(data)
    record = {"image": name, "caption": "a red circle", "qa": [{"question": "how many?", "answer": "one"}]}
    (tmp_path / "records.jsonl").write_text(json.dumps(record) + "\n")
    pipe = Pipeline.from_pretrained(ckpt)
    seen, encode = [], pipe.image_tokenizer.encode
    monkeypatch.setattr(pipe.image_tokenizer, "encode", lambda x: seen.append(x.clone()) or encode(x))

    pool = StreamPool(DataConfig(source=f"folder:{tmp_path}"), pipe.image_tokenizer, pipe.builder, announce=False)
    pool.batch(StageConfig(name="s", steps=1, batch_size=2, mix={"und": 0.5, "gen": 0.5}), 0, 0)
    (trained,) = seen  # one call: both rows hold the one record
    pipe.ask(tmp_path / name, "how many?", max_new_tokens=1)
    pipe.ask_batch([decode_image(data, "image")], ["how many?"], max_new_tokens=1)  # the server's path
    assert trained.shape == (2, 3, 32, 32) and len(seen) == 3
    for asked in seen[1:]:
        assert torch.equal(asked[0], trained[0]) and torch.equal(asked[0], trained[1])
