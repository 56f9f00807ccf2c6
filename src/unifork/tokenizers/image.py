"""The image tokenizer: a VQ-VAE (conv encoder -> vector quantizer -> conv decoder).

It gives the two views UniFork needs of an image: discrete codes (the generation branch predicts them) and
continuous latents (the understanding branch reads them through an MLP projector, LLaVA-style).

With residual_depth D > 1 the quantizer is residual (RQ-VAE, Lee et al. 2022, arXiv 2203.01941; VILA-U uses
depth 4): each position gets D codes, each quantizing what the ones before it left. The D codes of a position travel
as one id, packed little-endian in base num_codes (tokenizers/residual.py), so a codes tensor is (B, grid*grid)
at any depth and the data, sequences and servers never see the difference; the model unpacks them.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from einops import rearrange
from safetensors.torch import load_file
from torch import nn
from vector_quantize_pytorch import FSQ, ResidualFSQ, ResidualVQ, VectorQuantize

from unifork.atomic import atomic_save_tensors, atomic_write_text
from unifork.config_fields import checked_fields
from unifork.tokenizers.codec import ImageCodec
from unifork.tokenizers.residual import pack_levels, unpack_levels
from unifork.errors import UserError

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
KIND = "vqvae"  # config.json's "kind": ours; tokenizers/pretrained.py names the imported ones


@dataclass(frozen=True)
class ImageTokenizerConfig:
    image_size: int = 64
    channels: tuple[int, ...] = (64, 128, 128)  # one stage per halving: 64 -> 32 -> 16 -> 8
    latent_dim: int = 64  # continuous latent width (understanding input)
    quantizer: str = "fsq"  # "fsq" (finite scalar quantization) or "vq" (EMA codebook + dead-code replacement)
    codebook_size: int = 512  # for "vq"; for "fsq" it is the product of fsq_levels
    fsq_levels: tuple[int, ...] = (8, 8, 8)
    codebook_dim: int = 8  # for "vq": low-dimensional codes with l2-normalized lookup train far better on CPU budgets
    residual_depth: int = 1  # codes per position: 1 = one quantizer; D > 1 = residual quantization
    shared_codebook: bool = False  # "vq" at depth > 1: one codebook for every level (RQ-VAE's choice) or one each
    quantize_dropout: bool = False  # depth > 1: train with the later levels dropped at random (coarse-to-fine codes)

    @property
    def grid(self) -> int:
        return self.image_size // 2 ** len(self.channels)

    @property
    def code_space(self) -> int:
        """How many packed ids there are: num_codes ** residual_depth."""
        return self.num_codes**self.residual_depth

    @property
    def num_codes(self) -> int:
        if self.quantizer == "fsq":
            n = 1
            for level in self.fsq_levels:
                n *= level
            return n
        return self.codebook_size

    def to_json(self) -> str:
        return json.dumps({"kind": KIND, **asdict(self)}, indent=2)

    @classmethod
    def from_dict(cls, d: dict) -> "ImageTokenizerConfig":
        where = "image tokenizer config"
        if isinstance(d, dict):
            d = {k: v for k, v in d.items() if k != "kind"}
        d = checked_fields(d, cls, where)
        for key, value in d.items():  # every size is at least 1
            if not isinstance(value, (bool, str)) and min(value if isinstance(value, tuple) else (value,)) < 1:
                raise UserError(f"'{key}' in {where} must be at least 1 (every entry), got {value!r}")
        cfg = cls(**d)
        if cfg.code_space >= 2**62:
            raise UserError(f"num_codes ** residual_depth = {cfg.num_codes}**{cfg.residual_depth} in {where} is too many ids to "
                            "pack into one int64; lower the depth or the codebook")  # fmt: skip
        if cfg.image_size % 2 ** len(cfg.channels):
            raise UserError(f"image_size {cfg.image_size} in image tokenizer config must be a multiple of "
                            f"2**len(channels) = {2 ** len(cfg.channels)} (one halving per stage)")  # fmt: skip
        return cfg


class ResBlock(nn.Module):
    def __init__(self, ch: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.GroupNorm(8, ch), nn.SiLU(), nn.Conv2d(ch, ch, 3, padding=1),
            nn.GroupNorm(8, ch), nn.SiLU(), nn.Conv2d(ch, ch, 3, padding=1),
        )  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class Encoder(nn.Module):
    def __init__(self, cfg: ImageTokenizerConfig):
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(3, cfg.channels[0], 3, padding=1)]
        ch_in = cfg.channels[0]
        for ch in cfg.channels:
            layers += [nn.Conv2d(ch_in, ch, 4, stride=2, padding=1), ResBlock(ch)]
            ch_in = ch
        layers += [nn.GroupNorm(8, ch_in), nn.SiLU(), nn.Conv2d(ch_in, cfg.latent_dim, 1)]
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)  # (B, latent_dim, grid, grid)


class Decoder(nn.Module):
    def __init__(self, cfg: ImageTokenizerConfig):
        super().__init__()
        chs = cfg.channels[::-1]
        layers: list[nn.Module] = [nn.Conv2d(cfg.latent_dim, chs[0], 3, padding=1), ResBlock(chs[0])]
        ch_in = chs[0]
        for ch in chs:
            layers += [nn.ConvTranspose2d(ch_in, ch, 4, stride=2, padding=1), ResBlock(ch)]
            ch_in = ch
        layers += [nn.GroupNorm(8, ch_in), nn.SiLU(), nn.Conv2d(ch_in, 3, 3, padding=1)]
        self.net = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z)  # (B, 3, H, W) in [-1, 1] (not clamped: the loss sees the raw output)


class ImageTokenizer(ImageCodec):
    """Images are float tensors (B, 3, H, W) in [-1, 1]; codes are long tensors (B, grid*grid), row-major."""

    def __init__(self, cfg: ImageTokenizerConfig = ImageTokenizerConfig()):
        super().__init__()
        self.cfg = cfg
        self.encoder = Encoder(cfg)
        self.decoder = Decoder(cfg)
        self.quantizer = _quantizer(cfg)

    def encode_latents(self, images: torch.Tensor) -> torch.Tensor:
        """Continuous pre-quantization latents, (B, grid*grid, latent_dim): the understanding input."""
        return rearrange(self.encoder(images), "b d h w -> b (h w) d")

    def quantize(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(B, D, h, w) latents -> (quantized latents, codes (B, h, w) packed over the residual levels, auxiliary loss)."""
        h = z.shape[-2]
        sequence = rearrange(z, "b d h w -> b (h w) d")
        if self.cfg.quantizer == "fsq":  # FSQ has no loss of its own
            (zq, codes), aux = self.quantizer(sequence), z.new_zeros(())
        else:
            zq, codes, aux = self.quantizer(sequence)
        if self.cfg.residual_depth > 1:
            codes = pack_levels(codes, self.cfg.num_codes)  # (B, hw, levels) -> (B, hw)
        return rearrange(zq, "b (h w) d -> b d h w", h=h), rearrange(codes, "b (h w) -> b h w", h=h), aux.sum()

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Reconstruction, codes (B, grid*grid), auxiliary quantizer loss."""
        zq, codes, aux = self.quantize(self.encoder(images))
        return self.decoder(zq), rearrange(codes, "b h w -> b (h w)"), aux

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Discrete codes (B, grid*grid): the generation targets."""
        _, codes, _ = self.quantize(self.encoder(images))
        return rearrange(codes, "b h w -> b (h w)")

    @torch.no_grad()
    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """Codes (B, grid*grid) -> images (B, 3, H, W) clamped to [-1, 1]."""
        self.check_codes(codes)
        g, depth = self.cfg.grid, self.cfg.residual_depth
        indices = unpack_levels(codes, self.cfg.num_codes, depth) if depth > 1 else codes
        if self.cfg.quantizer == "fsq" and depth == 1:
            zq = self.quantizer.indices_to_codes(indices)  # (B, hw, D)
        else:
            zq = self.quantizer.get_output_from_indices(indices)  # (B, hw, D): the sum over the levels at depth > 1
        return self.decoder(rearrange(zq, "b (h w) d -> b d h w", h=g)).clamp(-1, 1)

    def save(self, directory: str | Path) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        atomic_write_text(directory / CONFIG_FILE, self.cfg.to_json())
        atomic_save_tensors(_first_names(self.state_dict()), directory / WEIGHTS_FILE)

    @classmethod
    def load(cls, directory: str | Path) -> "ImageTokenizer":
        directory = Path(directory)
        cfg_path, weights_path = directory / CONFIG_FILE, directory / WEIGHTS_FILE
        for path in (cfg_path, weights_path):
            if not path.is_file():
                raise UserError(f"missing image tokenizer file {path}; train one with `unifork tokenizer train --out DIR`")
        try:
            cfg = ImageTokenizerConfig.from_dict(json.loads(cfg_path.read_text()))
        except (ValueError, TypeError) as err:
            raise UserError(f"corrupt image tokenizer config {cfg_path}: {err}") from None
        model = cls(cfg)
        try:
            state = load_file(str(weights_path))
        except Exception as err:  # safetensors raises its own error types for truncated/garbled files
            raise UserError(f"corrupt image tokenizer weights {weights_path}: {err}") from None
        for alias, name in _aliases(model.state_dict()).items():  # a shared codebook is stored once
            if name in state:
                state.setdefault(alias, state[name])
        try:
            model.load_state_dict(state, strict=True)
        except RuntimeError as err:
            raise UserError(f"image tokenizer weights {weights_path} do not match {cfg_path}: {str(err).splitlines()[1].strip()}") from None
        return model.eval()


def _aliases(state: dict[str, torch.Tensor]) -> dict[str, str]:
    """Each name whose tensor is an earlier name's (one codebook shared by the residual levels) -> that name."""
    first, aliases = {}, {}
    for name, tensor in state.items():
        key = (tensor.data_ptr(), tensor.shape, tensor.dtype)
        if tensor.numel() and key in first:
            aliases[name] = first[key]
        else:
            first.setdefault(key, name)
    return aliases


def _first_names(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The state without aliases: safetensors refuses to store one tensor under two names."""
    aliases = _aliases(state)
    return {name: tensor for name, tensor in state.items() if name not in aliases}


def _quantizer(cfg: ImageTokenizerConfig) -> nn.Module:
    """The quantizer the config names, fed (B, h*w, latent_dim) sequences (the library's image-fmap mode mis-orders
    axes when codebook_dim != dim)."""
    depth = cfg.residual_depth
    if cfg.quantizer == "fsq":
        # FSQ (Mentzer et al. 2023, arXiv 2309.15505): a fixed grid, so no codebook collapse to fight.
        if depth == 1:
            return FSQ(levels=list(cfg.fsq_levels), dim=cfg.latent_dim)
        return ResidualFSQ(levels=list(cfg.fsq_levels), dim=cfg.latent_dim, num_quantizers=depth,
                           quantize_dropout=cfg.quantize_dropout)  # fmt: skip
    if cfg.quantizer != "vq":
        raise UserError(f"unknown quantizer '{cfg.quantizer}' in image tokenizer config; use 'fsq' or 'vq'")
    vq = dict(dim=cfg.latent_dim, codebook_size=cfg.codebook_size, codebook_dim=cfg.codebook_dim, decay=0.9,
              commitment_weight=0.25, kmeans_init=True, use_cosine_sim=True,
              threshold_ema_dead_code=2)  # re-seed codes unused in recent batches (dead-code replacement)  # fmt: skip
    if depth == 1:
        return VectorQuantize(**vq)
    return ResidualVQ(**vq, num_quantizers=depth, shared_codebook=cfg.shared_codebook, quantize_dropout=cfg.quantize_dropout)


def images_to_tensor(images) -> torch.Tensor:
    """uint8 (B, H, W, 3) array/tensor -> float (B, 3, H, W) in [-1, 1]."""
    x = images if isinstance(images, torch.Tensor) else torch.from_numpy(np.array(images))  # a copy: PIL's are read-only
    return rearrange(x, "b h w c -> b c h w").float().div(127.5).sub(1.0)


def tensor_to_images(x: torch.Tensor):
    """float (B, 3, H, W) in [-1, 1] -> uint8 numpy (B, H, W, 3)."""
    return rearrange(((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8), "b c h w -> b h w c").cpu().numpy()
