"""What the understanding branch reads of an image, whichever und_input the model has:

    latents  the image tokenizer's continuous latents (N, L, latent_dim), at the tokenizer's size
    codes    the tokenizer's codes (N, L)
    vision   pixels (N, 3, S, S) in [-1, 1] at the vision encoder's size S; the model's encoder reads them

Training pools, Pipeline.ask, the VQA evaluation and the alignment analysis all prepare understanding images
here, so a model is asked about an image exactly as it was trained on one.
"""

from __future__ import annotations

import numpy as np
import torch

from unifork.images import fit_image
from unifork.model.config import ModelConfig
from unifork.tokenizers.codec import ImageCodec
from unifork.tokenizers.image import images_to_tensor


def und_image_size(cfg: ModelConfig, tokenizer: ImageCodec) -> int:
    return cfg.vision["image_size"] if cfg.und_input == "vision" else tokenizer.cfg.image_size


@torch.no_grad()
def und_inputs(cfg: ModelConfig, tokenizer: ImageCodec, images: list, device: torch.device | str = "cpu",
               batch_size: int = 256) -> tuple[torch.Tensor, torch.Tensor | None]:  # fmt: skip
    """(codes (N, L), latents or pixels (N, ...) or None) of images in any form images.fit_image reads.

    A vision model's rows carry no codes: (N, 0)."""
    size = und_image_size(cfg, tokenizer)
    x = images_to_tensor(np.stack([fit_image(image, size) for image in images])).to(device)
    if cfg.und_input == "vision":
        return torch.zeros(len(x), 0, dtype=torch.long, device=device), x
    codes, latents = [], []
    for chunk in x.split(batch_size):
        codes.append(tokenizer.encode(chunk))
        if cfg.und_input == "latents":
            latents.append(tokenizer.encode_latents(chunk))
    return torch.cat(codes), torch.cat(latents) if latents else None
