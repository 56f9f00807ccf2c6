"""The depth head: the residual codes of one image position, predicted one level after another.

RQ-Transformer's depth transformer (Lee et al. 2022, arXiv 2203.01941), which UniFork puts on its generation branch
over VILA-U's depth-4 codes (6 layers there). The spatial transformer's output at a position is the context; the
head is a small causal transformer over the D levels of that position:

    input at level 0      the context                                      (+ the level's embedding)
    input at level d > 0  the sum of the embeddings of the codes chosen at levels < d: the partial reconstruction
    output at level d     the logits of level d's code (one output matrix per level: the branch's head)

The spatial sequence stays one position per image cell, whatever D is. At D = 1 there is no depth head: the
branch's head reads the context directly, exactly as a one-code model does.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from unifork.model.blocks import Block, RMSNorm, Rotary
from unifork.model.config import ModelConfig


class DepthHead(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.depth, self.num_codes = cfg.residual_depth, cfg.image_vocab_size
        # codes of levels 0 .. D-2 (the last level's code is chosen, never fed)
        self.code_embed = nn.Embedding((self.depth - 1) * self.num_codes, cfg.d_model)
        self.level_embed = nn.Embedding(self.depth, cfg.d_model)
        self.layers = nn.ModuleList(Block(cfg) for _ in range(cfg.depth_head_layers))
        self.norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.rotary = Rotary(cfg.head_dim, self.depth, cfg.rope_theta)

    def forward(self, context: torch.Tensor, levels: torch.Tensor) -> torch.Tensor:
        """Outputs (N, d + 1, C) for levels 0 .. d of N positions: context (N, C), levels (N, d) the codes chosen at
        levels < d (d < D)."""
        n, d = levels.shape
        x = context.unsqueeze(1)
        if d:
            offsets = torch.arange(d, device=levels.device) * self.num_codes
            x = torch.cat([x, self.code_embed(levels + offsets).cumsum(1)], dim=1)
        x = x + self.level_embed.weight[: d + 1]
        positions = torch.arange(d + 1, device=x.device).expand(n, d + 1)
        rope = self.rotary.tables(positions)
        causal = torch.ones(d + 1, d + 1, dtype=torch.bool, device=x.device).tril()[None, None]
        for layer in self.layers:
            x = layer(x, rope, causal)
        return self.norm(x)


def level_logits(head: nn.Linear, outputs: torch.Tensor, num_codes: int) -> torch.Tensor:
    """Logits (..., L, K) of levels 0 .. L-1 from depth-head outputs (..., L, C): level l through rows
    [l*K, (l+1)*K) of the branch's head."""
    levels = outputs.shape[-2]
    weight = head.weight[: levels * num_codes].view(levels, num_codes, -1)
    return torch.einsum("...lc,lkc->...lk", outputs, weight)


def next_level_logits(head: nn.Linear, depth_head: DepthHead, context: torch.Tensor, levels: torch.Tensor) -> torch.Tensor:
    """Logits (N, K) of the next level's code, given the context (N, C) and the codes chosen so far (N, d)."""
    d, k = levels.shape[1], depth_head.num_codes
    out = depth_head(context, levels)[:, -1]
    return F.linear(out, head.weight[d * k : (d + 1) * k])
