"""One vector per sample from a layer's hidden states over a chosen set of positions (e.g. its image or its text)."""

from __future__ import annotations

import torch

from unifork.errors import UserError, param

POOLINGS = ("mean", "last")


def check_pooling(pooling: str) -> None:
    if pooling not in POOLINGS:
        raise UserError(f"unknown {param('pooling')} '{pooling}'; choose one of: {', '.join(POOLINGS)}")


def pool(states: torch.Tensor, positions: torch.Tensor, pooling: str) -> torch.Tensor:
    """(B, T, C) states, (B, T) bool positions -> (B, C): their mean, or the state at the last of them.

    Every row must select at least one position. "last" is the only state that has attended to all of them
    (causal attention), the way a decoder-only model summarises a sequence.
    """
    check_pooling(pooling)
    counts = positions.sum(dim=1)  # (B,)
    if (counts == 0).any():
        raise UserError(f"row {int((counts == 0).nonzero()[0])} has no positions to pool over")
    if pooling == "mean":
        weights = positions.to(states.dtype).unsqueeze(-1)  # (B, T, 1)
        return (states * weights).sum(dim=1) / counts.unsqueeze(-1).to(states.dtype)
    index = torch.arange(positions.shape[1], device=positions.device)
    last = torch.where(positions, index, -1).amax(dim=1)  # (B,)
    return states[torch.arange(states.shape[0], device=states.device), last]
