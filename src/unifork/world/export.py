"""The world on disk: PNGs plus one meta.jsonl line per image, and a forgiving image loader for the detector."""

from __future__ import annotations

import json
import warnings
from contextlib import ExitStack
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from unifork.errors import UserError
from unifork.world.dataset import World
from unifork.world.detect import to_canvas_rgb
from unifork.world.prompts import parse_prompt, scene_from_prompt
from unifork.world.render import render
from unifork.world.spec import WorldConfig


def export_world(out: str | Path, n: int, split: str = "train", seed: int = 0) -> int:
    """Write samples 0..n-1 of (seed, split) as out/000000.png ... and out/meta.jsonl; returns n."""
    if n < 1:
        raise UserError(f"the number of scenes (--n) must be at least 1, got {n}")
    world = World(seed=seed, split=split)  # validates split and seed before anything touches the disk
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"output path exists and is not a directory: {out}")
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "meta.jsonl", "w") as meta:
        for i in range(n):
            sample = world.sample(i)
            name = f"{i:06d}.png"
            Image.fromarray(sample.image).save(out / name)
            record = {
                "file": name,
                "split": split,
                "seed": seed,
                "index": i,
                "source": sample.source,
                "spec": sample.scene.to_dict(),
                "captions": [list(c) for c in sample.captions],
                "qa": [list(q) for q in sample.qa],
            }
            meta.write(json.dumps(record) + "\n")
    return n


def load_image(path: str | Path, cfg: WorldConfig = WorldConfig()) -> np.ndarray:
    """uint8 (canvas, canvas, 3) RGB from any image file PIL reads (palette, RGBA on white, 16-bit, CMYK, L).

    A file whose header claims more than PIL's MAX_IMAGE_PIXELS (about 89 megapixels) is refused before any pixel
    is decoded: a decompression-bomb guard (PIL itself only warns below twice that). A file PIL warns about while
    decoding (a truncated TIFF, corrupt metadata) is refused as damaged.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"no such image file: {path}")
    try:
        with ExitStack() as open_image:
            # PIL only warns, then carries on, for too many pixels (at open, nothing decoded yet) or a damaged file
            # such as a truncated TIFF (at open or load): refuse both, so a warning never reaches the user as well.
            with warnings.catch_warnings():
                warnings.simplefilter("error")
                img = open_image.enter_context(Image.open(path))
                img.load()
            return to_canvas_rgb(img, cfg)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise UserError(f"image {path} has more than {Image.MAX_IMAGE_PIXELS} pixels, the limit that guards against "
                        "decompression bombs; downscale it first") from None  # fmt: skip
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Warning) as err:
        if isinstance(err, UserError):
            raise
        raise UserError(f"not an image file, or a damaged one: {path}") from err


def export_prompt_scenes(out: str | Path, prompt: str, n: int, seed: int = 0) -> int:
    """Write n random scenes satisfying `prompt` as out/000000.png ... plus meta.jsonl; returns n."""
    if n < 1:
        raise UserError(f"the number of scenes (--n) must be at least 1, got {n}")
    spec = parse_prompt(prompt)  # a bad word fails here, before anything touches the disk
    rng = np.random.default_rng(seed)
    scenes = [scene_from_prompt(spec, rng) for _ in range(n)]
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "meta.jsonl", "w") as meta:
        for i, scene in enumerate(scenes):
            name = f"{i:06d}.png"
            Image.fromarray(render(scene)).save(out / name)
            meta.write(json.dumps({"file": name, "prompt": prompt, "spec": scene.to_dict()}) + "\n")
    return n
