"""Transformer blocks, bottom-up: RMSNorm -> RoPE -> grouped-query attention (with KV cache) -> SwiGLU -> Block."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from unifork.model.config import ModelConfig


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.rms_norm(x, (x.shape[-1],), self.weight, self.eps)


class Rotary(nn.Module):
    """Rotary position embedding (Su et al., arXiv 2104.09864), rotate-half layout as in Llama/Qwen2.

    Same inv_freq and layout as transformers' Qwen2/Llama RoPE (tests/test_hf.py compares the tables); the angles
    are computed in float64 and rounded once, where HF computes them in float32: equal for short contexts, off by
    float32 rounding of the angle at far positions.
    """

    def __init__(self, head_dim: int, max_len: int, theta: float):
        super().__init__()
        inv_freq = 1.0 / theta ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)
        angles = torch.outer(torch.arange(max_len, dtype=torch.float64), inv_freq)  # (max_len, head_dim/2)
        angles = torch.cat([angles, angles], dim=-1)
        self.register_buffer("cos", angles.cos().float(), persistent=False)
        self.register_buffer("sin", angles.sin().float(), persistent=False)
        # Multimodal RoPE (Qwen2-VL, arXiv 2409.12191): the frequencies split into (sequence, row, column)
        # sections in Qwen2-VL's 16 : 24 : 24 proportion, fastest first; each rotates by its own axis' position.
        half = head_dim // 2
        first = half // 4
        row_end = first + (half - first) // 2
        self.sections = (slice(0, first), slice(first, row_end), slice(row_end, half))

    def tables(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """cos and sin at positions (B, T), or (3, B, T) for multimodal RoPE, each (B, 1, T, hd): gathered once,
        applied to both q and k. Equal axes give exactly the 1-D tables (text under multimodal RoPE)."""
        if positions.dim() == 2:
            return self.cos[positions].unsqueeze(1), self.sin[positions].unsqueeze(1)
        out = []
        for table in (self.cos, self.sin):
            half = torch.cat([table[axis][..., section] for axis, section in zip(positions, self.sections)], dim=-1)
            out.append(torch.cat([half, half], dim=-1).unsqueeze(1))  # the rotate-half layout repeats the halves
        return out[0], out[1]

    @staticmethod
    def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        """x (B, H, T, hd) rotated by tables from `tables`."""
        x1, x2 = x.chunk(2, dim=-1)
        return x * cos + torch.cat([-x2, x1], dim=-1) * sin

    def forward(self, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """x (B, H, T, hd), positions (B, T) or (3, B, T) -> rotated x."""
        return self.rotate(x, *self.tables(positions))


class LayerCache:
    """Preallocated keys/values of one attention layer; `length` positions are filled."""

    def __init__(self, batch: int, n_kv_heads: int, max_len: int, head_dim: int, dtype, device):
        self.k = torch.zeros(batch, n_kv_heads, max_len, head_dim, dtype=dtype, device=device)
        self.v = torch.zeros_like(self.k)
        self.length = 0

    def append(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        t = k.shape[2]
        if self.length + t > self.k.shape[2]:
            raise ValueError(f"KV cache overflow: {self.length} + {t} positions > capacity {self.k.shape[2]}")
        self.k[:, :, self.length : self.length + t] = k
        self.v[:, :, self.length : self.length + t] = v
        self.length += t
        return self.k[:, :, : self.length], self.v[:, :, : self.length]


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.n_heads, self.n_kv_heads, self.head_dim = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
        # Biases on q/k/v as in Qwen2 (the paper's backbone), none as in Llama, so checkpoints map one to one.
        bias = cfg.attention_bias
        self.q_proj = nn.Linear(cfg.d_model, cfg.n_heads * cfg.head_dim, bias=bias)
        self.k_proj = nn.Linear(cfg.d_model, cfg.n_kv_heads * cfg.head_dim, bias=bias)
        self.v_proj = nn.Linear(cfg.d_model, cfg.n_kv_heads * cfg.head_dim, bias=bias)
        self.o_proj = nn.Linear(cfg.n_heads * cfg.head_dim, cfg.d_model, bias=False)

    def forward(self, x, rope: tuple[torch.Tensor, torch.Tensor], mask, cache: LayerCache | None = None):
        """x (B, T, C); rope: Rotary.tables of the positions; mask (B, 1, T, S) bool, True = may attend; S = T, or
        cached + T with a cache."""
        b, t, _ = x.shape
        # view + transpose rather than einops.rearrange: 2.7 against 7.5 us a call, four calls a layer, and a decode
        # step is made of such small calls
        q = self.q_proj(x).view(b, t, self.n_heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(b, t, self.n_kv_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(b, t, self.n_kv_heads, self.head_dim).transpose(1, 2)
        q, k = Rotary.rotate(q, *rope), Rotary.rotate(k, *rope)
        if cache is not None:
            k, v = cache.append(k, v)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=self.n_heads != self.n_kv_heads)
        return self.o_proj(y.transpose(1, 2).reshape(b, t, self.n_heads * self.head_dim))


class SwiGLU(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.gate_proj = nn.Linear(cfg.d_model, cfg.mlp_hidden, bias=False)
        self.up_proj = nn.Linear(cfg.d_model, cfg.mlp_hidden, bias=False)
        self.down_proj = nn.Linear(cfg.mlp_hidden, cfg.d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Block(nn.Module):
    """Pre-norm decoder block."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.attn_norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.attn = Attention(cfg)
        self.mlp_norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.mlp = SwiGLU(cfg)

    def forward(self, x, rope, mask, cache=None):
        """rope: the cos and sin tables of x's positions (Rotary.tables), gathered once for every layer."""
        x = x + self.attn(self.attn_norm(x), rope, mask, cache)
        return x + self.mlp(self.mlp_norm(x))
