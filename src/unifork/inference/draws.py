"""From logits to tokens: top-k / nucleus filtering, the distribution a setting samples from, and one draw."""

from __future__ import annotations

import math

import torch


def filter_logits(logits: torch.Tensor, top_k: int = 0, top_p: float = 1.0) -> torch.Tensor:
    """Set logits outside the top k and outside the nucleus of mass top_p to -inf (0 and 1.0 switch them off)."""
    if top_k > 0 and top_k < logits.shape[-1]:
        kth = logits.topk(top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, -math.inf)
    if top_p < 1.0:
        # Nucleus sampling (Holtzman et al., arXiv 1904.09751): keep the most likely tokens until their mass
        # reaches top_p; a token is dropped when the tokens ranked above it already cover top_p.
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        probs = sorted_logits.softmax(dim=-1)
        drop = probs.cumsum(dim=-1) - probs >= top_p
        drop[..., 0] = False  # the most likely token always stays, even where a tiny top_p rounds to 0 in float32
        logits = logits.scatter(-1, order, sorted_logits.masked_fill(drop, -math.inf))
    return logits


def token_probs(logits: torch.Tensor, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0) -> torch.Tensor:
    """The distribution (..., V) that a setting draws the next token from: the filtered softmax of logits / temperature,
    at temperature 0 one-hot on the argmax (speculative decoding compares it with a draft's distribution)."""
    if temperature == 0:
        return torch.zeros_like(logits, dtype=torch.float32).scatter_(-1, logits.argmax(-1, keepdim=True), 1.0)
    # A tiny temperature (0 once cast to float32) or a huge guidance scale gives +-inf, and softmax of inf is NaN:
    # divide by at least the smallest normal float32 and clamp to the largest, the limit of the same distribution.
    # NaN from a broken model still fails loudly.
    f32 = torch.finfo(torch.float32)
    scaled = (logits.float() / max(temperature, f32.tiny)).clamp(-f32.max, f32.max)
    return filter_logits(scaled, top_k, top_p).softmax(dim=-1)


def draw(probs: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """One token per distribution in probs (..., V) -> (...)."""
    flat = probs.reshape(-1, probs.shape[-1])
    return torch.multinomial(flat, 1, generator=generator).reshape(probs.shape[:-1])


def sample_next(logits: torch.Tensor, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
                generator: torch.Generator | None = None) -> torch.Tensor:  # fmt: skip
    """One token per row from logits (B, V): argmax at temperature 0, else a draw from the filtered softmax."""
    if temperature == 0:
        return logits.argmax(dim=-1)
    return draw(token_probs(logits, temperature, top_k, top_p), generator)
