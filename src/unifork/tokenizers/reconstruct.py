"""Round-trip one image file through the image tokenizer: codes out, reconstruction and its PSNR."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from unifork.images import fit_image
from unifork.tokenizers.image import ImageTokenizer, images_to_tensor, tensor_to_images


def reconstruct_image(tokenizer_dir: str | Path, image_path: str | Path, out: str | Path) -> dict:
    """Encode `image_path` to codes, decode them to `out` (PNG); returns the codes and the PSNR in dB."""
    tokenizer = ImageTokenizer.load(tokenizer_dir)
    image = fit_image(image_path, tokenizer.cfg.image_size)  # prepared as training data is
    codes = tokenizer.encode(images_to_tensor(image[None]))
    recon = tensor_to_images(tokenizer.decode(codes))[0]
    Image.fromarray(recon).save(out)
    mse = np.mean((recon.astype(np.float64) - image.astype(np.float64)) ** 2)
    psnr = float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)
    return {"codes": codes[0].tolist(), "psnr": psnr}
