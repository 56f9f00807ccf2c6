"""Pretrained image tokenizers run by the libraries that define them, behind our ImageCodec interface.

    janus_vqvae        transformers' JanusVQVAE: LlamaGen's VQ-16 design (Janus, Janus-Pro), 16x downsampling
    emu3_vqvae         transformers' Emu3VQVAE (Emu3), used on still images
    diffusers_vqmodel  diffusers' VQModel: the VQGAN of aMUSEd, and of latent diffusion's VQ models

The maths (encoder, nearest-code lookup, decoder) is the library's own; this file only converts our images
(float, [-1, 1]) to the pixel normalisation the checkpoint expects and back, and lays codes out row-major as
(B, grid*grid). The understanding branch's latents are the encoder's continuous output before quantisation.
A tokenizer directory holds our config.json (kind, sizes, normalisation, where it came from) and the network
saved by its library in model/. The network is frozen: the tokenizer is never trained here.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from einops import rearrange

from unifork.atomic import atomic_write_text
from unifork.config_fields import checked_fields
from unifork.errors import UserError
from unifork.quiet import quiet_transformers
from unifork.tokenizers.codec import ImageCodec
from unifork.tokenizers.image import CONFIG_FILE

MODEL_DIR = "model"  # the library's own save_pretrained output, inside a tokenizer directory


@dataclass(frozen=True)
class PretrainedTokenizerConfig:
    kind: str
    image_size: int
    grid: int
    num_codes: int
    latent_dim: int
    pixel_mean: tuple[float, ...] = (0.5, 0.5, 0.5)  # the checkpoint's input normalisation over [0, 1] pixels
    pixel_std: tuple[float, ...] = (0.5, 0.5, 0.5)  # (0.5, 0.5): the [-1, 1] range every VQGAN here trains on
    source: str = ""  # the checkpoint it was imported from, for provenance

    @property
    def residual_depth(self) -> int:
        return 1  # one code per position: no imported tokenizer here is residual

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)

    @classmethod
    def from_dict(cls, d: dict) -> "PretrainedTokenizerConfig":
        return cls(**checked_fields(d, cls, "pretrained image tokenizer config"))


class _Janus:
    library, class_name, load_options = "transformers", "JanusVQVAE", {}

    @staticmethod
    def encode(model, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = model.encode(x)
        return out.image_tokens.view(len(x), -1), out.last_hidden_state

    @staticmethod
    def decode(model, codes: torch.Tensor, grid: int) -> torch.Tensor:
        return model.decode(codes)


class _Emu3:
    library, class_name, load_options = "transformers", "Emu3VQVAE", {}

    @staticmethod
    def encode(model, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        sizes = torch.tensor([x.shape[-2:]] * len(x))
        out = model.encode(x, image_sizes=sizes)  # a still image is repeated over the temporal window, which folds to 1
        return torch.stack(out.image_tokens).flatten(1), out.last_hidden_state[:, 0]

    @staticmethod
    def decode(model, codes: torch.Tensor, grid: int) -> torch.Tensor:
        return model.decode(rearrange(codes, "b (h w) -> b h w", h=grid))


class _DiffusersVQ:
    # without accelerate diffusers falls back to this anyway, after a warning on every load
    library, class_name, load_options = "diffusers", "VQModel", {"low_cpu_mem_usage": False}

    @staticmethod
    def encode(model, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        latents = model.encode(x).latents
        _, _, (_, _, indices) = model.quantize(latents)
        return indices.view(len(x), -1), latents

    @staticmethod
    def decode(model, codes: torch.Tensor, grid: int) -> torch.Tensor:
        shape = (len(codes), grid, grid, model.quantize.vq_embed_dim)
        if model.config.lookup_from_codebook:  # aMUSEd's: decode takes the indices themselves
            return model.decode(codes, force_not_quantize=True, shape=shape).sample
        quantized = model.quantize.get_codebook_entry(codes.flatten(), shape)
        return model.decode(quantized, force_not_quantize=True).sample


KINDS = {"janus_vqvae": _Janus, "emu3_vqvae": _Emu3, "diffusers_vqmodel": _DiffusersVQ}


def load_network(kind: str, directory: Path) -> torch.nn.Module:
    with quiet_transformers():
        return library_class(kind).from_pretrained(str(directory), **KINDS[kind].load_options).float()


def library_class(kind: str):
    """The library class that builds and loads a kind's network (diffusers only where it is installed)."""
    adapter = KINDS[kind]
    if adapter.library == "diffusers":
        try:
            import diffusers
        except ImportError:
            raise UserError(f"image tokenizers of kind {kind} run on diffusers: pip install diffusers") from None
        return getattr(diffusers, adapter.class_name)
    import transformers

    return getattr(transformers, adapter.class_name)


class PretrainedImageTokenizer(ImageCodec):
    def __init__(self, cfg: PretrainedTokenizerConfig, network: torch.nn.Module):
        super().__init__()
        self.cfg, self.adapter, self.network = cfg, KINDS[cfg.kind], network.eval().requires_grad_(False)
        mean, std = torch.tensor(cfg.pixel_mean).view(1, -1, 1, 1), torch.tensor(cfg.pixel_std).view(1, -1, 1, 1)
        # ((x + 1) / 2 - mean) / std as one multiply-add: exactly x at (0.5, 0.5), so codes equal the library's own
        self.register_buffer("scale", 1 / (2 * std), persistent=False)
        self.register_buffer("shift", (0.5 - mean) / std, persistent=False)

    def _to_network(self, images: torch.Tensor) -> torch.Tensor:
        if images.shape[-1] != self.cfg.image_size or images.shape[-2] != self.cfg.image_size:
            raise UserError(f"this image tokenizer encodes {self.cfg.image_size} px images, got {tuple(images.shape[-2:])}")
        return images * self.scale + self.shift

    def _from_network(self, pixels: torch.Tensor) -> torch.Tensor:
        return ((pixels - self.shift) / self.scale).clamp(-1, 1)

    def identity(self) -> str:
        return json.dumps(asdict(self.cfg) | {"source": ""})  # the same network imported from elsewhere is the same

    def train(self, mode: bool = True) -> "PretrainedImageTokenizer":
        super().train(mode)
        self.network.eval()  # frozen: no dropout, no codebook updates, whatever a caller asks
        return self

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        return self.adapter.encode(self.network, self._to_network(images))[0]

    @torch.no_grad()
    def encode_latents(self, images: torch.Tensor) -> torch.Tensor:
        latents = self.adapter.encode(self.network, self._to_network(images))[1]
        return rearrange(latents, "b d h w -> b (h w) d")

    @torch.no_grad()
    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        self.check_codes(codes)
        return self._from_network(self.adapter.decode(self.network, codes, self.cfg.grid))

    def save(self, directory: str | Path) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        with quiet_transformers():
            self.network.save_pretrained(str(directory / MODEL_DIR))
        atomic_write_text(directory / CONFIG_FILE, self.cfg.to_json())  # last: the directory is whole once it exists

    @classmethod
    def load(cls, directory: str | Path) -> "PretrainedImageTokenizer":
        directory = Path(directory)
        path = directory / CONFIG_FILE
        try:
            cfg = PretrainedTokenizerConfig.from_dict(json.loads(path.read_text()))
        except (ValueError, TypeError, UserError) as err:
            raise UserError(f"corrupt image tokenizer config {path}: {err}") from None
        if cfg.kind not in KINDS:
            raise UserError(f"image tokenizer {path} is of unknown kind '{cfg.kind}'; known: vqvae, {', '.join(KINDS)}")
        if not (directory / MODEL_DIR / CONFIG_FILE).is_file():
            raise UserError(f"missing {directory / MODEL_DIR}, the network of image tokenizer {directory}; import it "
                            "again with `unifork tokenizer from-hf`")  # fmt: skip
        try:
            network = load_network(cfg.kind, directory / MODEL_DIR)
        except (OSError, ValueError, RuntimeError) as err:
            raise UserError(f"corrupt image tokenizer network in {directory / MODEL_DIR}: {str(err).splitlines()[0]}") from None
        return cls(cfg, network)
