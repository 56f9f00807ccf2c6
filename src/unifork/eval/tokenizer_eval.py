"""`unifork tokenizer eval`: what an image tokenizer keeps of the shapes world, before any model is trained on it.

    reconstruction   PSNR and SSIM of code round trips of unseen test scenes and of held-out compositions
    ceiling          the exact rule (the world's detector and judge) on true renderings of ShapeEval prompts after a
                     round trip: the best any generator on these codes can score, per category
    codes            positions per image, codes per position (residual depth), codes per level

Tokenizers that differ only in how they quantize (e.g. residual depth 1, 2, 4) compare on these at no training cost.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from unifork.atomic import atomic_write_text
from unifork.errors import UserError, param
from unifork.eval.geneval import tokenizer_ceiling
from unifork.eval.image_quality import reconstruction_quality
from unifork.tokenizers.loading import load_image_tokenizer


def evaluate_tokenizer(directory: str | Path, out: str | Path | None = None, n_images: int = 512,
                       prompts_per_category: int = 16, seed: int = 0) -> dict:  # fmt: skip
    for name, value in (("images", n_images), ("prompts", prompts_per_category)):
        if value < 1:
            raise UserError(f"{param(name)} must be at least 1, got {value}")
    start = time.perf_counter()
    tokenizer = load_image_tokenizer(directory)
    cfg = tokenizer.cfg
    result = {
        "tokenizer": str(directory),
        "codes": {"positions": cfg.grid**2, "residual_depth": cfg.residual_depth, "codes_per_level": cfg.num_codes},
        "reconstruction": {split: reconstruction_quality(tokenizer, split, n_images, seed=seed) for split in ("test", "heldout")},
        "ceiling": tokenizer_ceiling(tokenizer, prompts_per_category=prompts_per_category, seed=seed),
    }
    result["seconds"] = round(time.perf_counter() - start, 1)
    if out is not None:
        atomic_write_text(Path(out), json.dumps(result, indent=2) + "\n")
    return result
