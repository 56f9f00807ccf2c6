"""Round trips through the image tokenizer a person can look at: one image file (codes out, reconstruction and
its PSNR), or a sheet of held-out images above their reconstructions."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from einops import rearrange
from PIL import Image

from unifork.atomic import atomic_write
from unifork.images import fit_image
from unifork.tokenizers.codec import ImageCodec
from unifork.tokenizers.image import images_to_tensor, tensor_to_images
from unifork.tokenizers.loading import load_image_tokenizer

SHEET_COLUMNS = 8
SHEET_MIN_SIDE = 128  # small images are enlarged (nearest neighbour, so code-sized blocks stay visible)


def reconstruct_image(tokenizer_dir: str | Path, image_path: str | Path, out: str | Path) -> dict:
    """Encode `image_path` to codes, decode them to `out` (PNG); returns the codes and the PSNR in dB."""
    tokenizer = load_image_tokenizer(tokenizer_dir)
    image = fit_image(image_path, tokenizer.cfg.image_size)  # prepared as training data is
    codes = tokenizer.encode(images_to_tensor(image[None]))
    recon = tensor_to_images(tokenizer.decode(codes))[0]
    Image.fromarray(recon).save(out)
    mse = np.mean((recon.astype(np.float64) - image.astype(np.float64)) ** 2)
    psnr = float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)
    return {"codes": codes[0].tolist(), "psnr": psnr}


@torch.no_grad()
def reconstruction_sheet(tokenizer: ImageCodec, images: torch.Tensor, out: str | Path) -> None:
    """A PNG of float (N, 3, H, W) images in [-1, 1]: each row of originals above the row of their reconstructions."""
    recon = tokenizer.decode(tokenizer.encode(images))
    n, side = len(images), images.shape[-1]
    columns = min(SHEET_COLUMNS, n)
    pad = (-n) % columns  # blank (white) cells fill the last row
    blank = torch.ones(pad, *images.shape[1:])
    originals, recon = torch.cat([images.cpu(), blank]), torch.cat([recon.cpu(), blank])
    pairs = rearrange([originals, recon], "two (r c) ch h w -> (r two h) (c w) ch", c=columns)
    sheet = Image.fromarray(tensor_to_images(rearrange(pairs, "h w ch -> 1 ch h w"))[0])
    scale = max(1, -(-SHEET_MIN_SIDE // side))
    sheet = sheet.resize((sheet.width * scale, sheet.height * scale), Image.NEAREST)
    atomic_write(Path(out), lambda tmp: sheet.save(tmp, format="PNG"))
