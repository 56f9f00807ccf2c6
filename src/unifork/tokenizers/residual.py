"""The D codes of one image position as one id: little-endian in base K (K codes per level).

    id = c_0 + K * c_1 + K^2 * c_2 + ...     c_0 the coarsest level, c_{D-1} the finest

One id per position keeps every codes tensor (B, positions) at any residual depth; at depth 1 the id is the code.
"""

from __future__ import annotations

import torch


def pack_levels(levels: torch.Tensor, num_codes: int) -> torch.Tensor:
    """(..., D) codes per level -> (...) packed ids."""
    weights = num_codes ** torch.arange(levels.shape[-1], device=levels.device, dtype=torch.long)
    return (levels.long() * weights).sum(-1)


def unpack_levels(ids: torch.Tensor, num_codes: int, depth: int) -> torch.Tensor:
    """(...) packed ids -> (..., D) codes per level."""
    weights = num_codes ** torch.arange(depth, device=ids.device, dtype=torch.long)
    return torch.div(ids.long().unsqueeze(-1), weights, rounding_mode="floor") % num_codes
