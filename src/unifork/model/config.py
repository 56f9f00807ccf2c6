"""ModelConfig: everything that fixes the shape of a UniFork model, saved next to its weights as config.json."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

from unifork.atomic import atomic_write_text
from unifork.config_fields import checked_fields
from unifork.errors import UserError
from unifork.model.sharing import sharing_plan

UND_INPUTS = ("latents", "codes", "vision")


@dataclass(frozen=True)
class ModelConfig:
    text_vocab_size: int = 512
    image_vocab_size: int = 512  # codes of the image tokenizer (per residual level)
    # Codes per image position (the tokenizer's residual_depth); at D > 1 a depth head (model/depth_head.py) of
    # depth_head_layers blocks predicts them one level after another, and an input position embeds their sum.
    residual_depth: int = 1
    depth_head_layers: int = 2
    image_tokens: int = 64  # codes per image (grid * grid): the generation branch predicts this many
    image_latent_dim: int = 64  # width of the tokenizer's continuous latents (understanding input)
    d_model: int = 256
    n_layers: int = 6
    n_heads: int = 8
    n_kv_heads: int = 4  # grouped-query attention: n_heads / n_kv_heads query heads share one key/value head
    mlp_hidden: int = 704  # SwiGLU width, ~ 8/3 * d_model rounded to a multiple of 64
    fork_layer: int = 3  # where y and inverted_y change: y shares layers [0, fork_layer), the rest exist once per task
    # Which layers both tasks share (model/sharing.py): y, x, inverted_y, shared, separate, or one letter per layer
    # (s = shared, t = per task), e.g. "tsssst".
    sharing: str = "y"
    max_seq_len: int = 192
    rope_theta: float = 10000.0
    norm_eps: float = 1e-6
    attention_bias: bool = True  # biases on q/k/v (Qwen2, the paper's backbone); False for Llama checkpoints
    tie_word_embeddings: bool = False  # the text head reuses the text embedding matrix (Qwen2.5-0.5B does)
    # "latents": tokenizer latents through an MLP projector (LLaVA-style); "codes": code embeddings; "vision": the
    # patch features of a pretrained vision encoder (model/vision.py) through the projector
    und_input: str = "latents"
    vision: dict = field(default_factory=dict)  # und_input "vision": the encoder's spec (hf/vision.py writes it)
    # Image positions as (row, column) under multimodal RoPE (model/unifork.py rope_positions); text attends as
    # with 1-D RoPE either way, so a pretrained LM's text logits are unchanged.
    rope_2d: bool = False

    def __post_init__(self):
        for f in fields(self):  # every size at least 1 (fork_layer is checked below), every float finite and > 0
            value = getattr(self, f.name)
            if f.type == "int" and f.name != "fork_layer" and value < 1:
                raise UserError(f"invalid model config: {f.name} must be at least 1, got {value}")
            if f.type == "float" and not 0 < value < math.inf:
                raise UserError(f"invalid model config: {f.name} must be a finite number > 0, got {value}")
        checks = [
            (0 <= self.fork_layer <= self.n_layers, f"fork_layer must be in [0, n_layers={self.n_layers}], got {self.fork_layer}"),
            (self.d_model % self.n_heads == 0, f"d_model ({self.d_model}) must be divisible by n_heads ({self.n_heads})"),
            (self.n_heads % self.n_kv_heads == 0, f"n_heads ({self.n_heads}) must be divisible by n_kv_heads ({self.n_kv_heads})"),
            ((self.d_model // self.n_heads) % 2 == 0, "the head dimension d_model / n_heads must be even for RoPE"),
            (self.und_input in UND_INPUTS, f"und_input must be one of {', '.join(UND_INPUTS)}, got '{self.und_input}'"),
            ((self.und_input == "vision") == bool(self.vision), "und_input 'vision' and a vision encoder spec go together"),
            (self.image_vocab_size**self.residual_depth < 2**62,
             f"image_vocab_size ** residual_depth must fit an int64 (packed codes), got {self.image_vocab_size}**{self.residual_depth}"),
            (not self.rope_2d or math.isqrt(self.image_tokens) ** 2 == self.image_tokens,
             f"rope_2d needs a square image grid, got image_tokens {self.image_tokens}"),
        ]  # fmt: skip
        for ok, message in checks:
            if not ok:
                raise UserError(f"invalid model config: {message}")
        try:
            self.plan
        except ValueError as err:
            raise UserError(f"invalid model config: {err}") from None

    @property
    def plan(self) -> str:
        """The sharing plan, one letter per layer: s (shared by both tasks) or t (once per task)."""
        return sharing_plan(self.sharing, self.n_layers, self.fork_layer)

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    @property
    def und_image_tokens(self) -> int:
        """Image positions of an understanding sequence: the codes' grid, or the vision encoder's patches."""
        if self.und_input == "vision":
            from unifork.model.vision import patch_tokens

            return patch_tokens(self.vision)
        return self.image_tokens

    @classmethod
    def from_dict(cls, d: dict, source: str = "model config") -> "ModelConfig":
        d = checked_fields(d, cls, source)
        try:
            return cls(**d)
        except UserError as err:
            raise UserError(f"{err} (in {source})") from None

    def save(self, directory: str | Path) -> None:
        atomic_write_text(Path(directory) / "config.json", json.dumps(asdict(self), indent=2))

    @classmethod
    def load(cls, directory: str | Path) -> "ModelConfig":
        path = Path(directory) / "config.json"
        if not path.is_file():
            raise UserError(f"missing model config {path}; is {directory} a unifork checkpoint directory?")
        try:
            data = json.loads(path.read_text())
        except ValueError as err:
            raise UserError(f"corrupt model config {path}: {err}") from None
        return cls.from_dict(data, source=str(path))


# Named sizes. `debug` is what unit tests build; `tiny` is the quickstart model: on 2 CPU cores and a ~6-minute
# budget it beat `small` (d_model 256) on both tasks, because it gets 2.2x the steps (measured, see README).
SIZES = {
    "debug": ModelConfig(d_model=64, n_layers=4, n_heads=4, n_kv_heads=2, mlp_hidden=128, fork_layer=2),
    "tiny": ModelConfig(d_model=128, n_layers=6, n_heads=4, n_kv_heads=2, mlp_hidden=352, fork_layer=3),
    "small": ModelConfig(d_model=256, n_layers=6, n_heads=8, n_kv_heads=4, mlp_hidden=704, fork_layer=3),
    "base": ModelConfig(d_model=512, n_layers=8, n_heads=8, n_kv_heads=4, mlp_hidden=1408, fork_layer=4),
}


def named_config(size: str, **overrides) -> ModelConfig:
    if size not in SIZES:
        raise UserError(f"unknown model size '{size}'; choose one of: {', '.join(SIZES)}")
    return replace(SIZES[size], **overrides)
