"""What every command needs of an image tokenizer, whichever network is inside (ours, or a pretrained one).

    cfg             image_size (pixels per side it encodes), grid (codes per side), num_codes (its vocabulary, per
                    residual level), residual_depth (codes per position), latent_dim (width of the continuous
                    latents the understanding branch may read), to_json()
    encode          float (B, 3, H, W) images in [-1, 1] -> long codes (B, grid*grid), row-major; at residual
                    depth > 1 each a position's levels packed into one id (tokenizers/residual.py)
    decode          codes -> images (B, 3, H, W) clamped to [-1, 1]
    encode_latents  images -> continuous latents (B, grid*grid, latent_dim)
    save            a directory that tokenizers/loading.py's load_image_tokenizer reads back
"""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from pathlib import Path

import torch
from torch import nn

from unifork.errors import UserError


class ImageCodec(nn.Module, ABC):
    cfg: object

    @abstractmethod
    def encode(self, images: torch.Tensor) -> torch.Tensor: ...

    @abstractmethod
    def decode(self, codes: torch.Tensor) -> torch.Tensor: ...

    @abstractmethod
    def encode_latents(self, images: torch.Tensor) -> torch.Tensor: ...

    @abstractmethod
    def save(self, directory: str | Path) -> None: ...

    def check_codes(self, codes: torch.Tensor) -> None:
        g = self.cfg.grid
        if codes.shape[-1] != g * g:
            raise UserError(f"expected {g * g} image codes per image, got {codes.shape[-1]}")

    def identity(self) -> str:
        """What, beside the weights, decides the codes: the config (less any provenance)."""
        return self.cfg.to_json()

    def fingerprint(self) -> str:
        """sha256 of the identity and weights: codes made by one tokenizer mean nothing to another."""
        digest = hashlib.sha256(self.identity().encode())
        for name, tensor in sorted(self.state_dict().items()):
            digest.update(name.encode())
            digest.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
        return digest.hexdigest()
