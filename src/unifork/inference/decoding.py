"""KV-cache decoding over a UniFork model: plain functions over the model, no copy of it (as in LlamaGen).

    prefill      run a left-padded prompt batch once, filling the cache; logits at the last column
    feed         feed T new tokens per row at the next positions; logits at each of them
    decode_one   feed of one token: the logits for the token after it
    rewind       forget the last fed positions (speculative decoding drops the drafts it did not accept)

Left padding puts every row's next token in the same column, so one decode step serves the whole batch, and
`Batch.positions` skips the padding, so a padded row computes exactly what it would alone.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import torch

from unifork.errors import UserError
from unifork.model.blocks import LayerCache
from unifork.model.unifork import CODE, LATENT, TASK_ID, Batch, UniFork


@dataclass
class DecodeState:
    """What decoding needs between steps: the per-layer caches and where each row stands."""

    task: str
    cache: list[LayerCache]
    # (B, capacity) bool over the cache's positions, False at left padding; preallocated like the cache, so a step
    # writes its columns in place instead of concatenating a new mask
    valid: torch.Tensor
    length: int  # positions fed so far: valid[:, :length] is the mask of what the cache holds
    next_position: torch.Tensor  # (B, 1) long: the RoPE position of each row's next token (rope_2d: of its image)
    next_cell: torch.Tensor  # (B, 1) long: the image grid cell a next CODE token fills


def prefill(model: UniFork, task: str, batch: Batch, max_new_tokens: int, capacity: int | None = None) -> tuple[torch.Tensor, DecodeState]:
    """Run the prompt batch through `task`'s path; returns its last-column logits (B, V) and the state to decode from.

    The cache holds the prompt plus max_new_tokens - 1 fed-back tokens (the last sampled token is never fed), or
    `capacity` positions after the prompt where a caller feeds more (speculative decoding feeds drafts).
    """
    width = batch.tokens.shape[1]
    if width + max_new_tokens - 1 > model.cfg.max_seq_len:
        raise UserError(
            f"a prompt of {width} tokens plus {max_new_tokens} generated tokens exceeds the model's context of "
            f"{model.cfg.max_seq_len}; shorten the text"
        )
    size = width + (max_new_tokens - 1 if capacity is None else capacity)
    cache = model.new_cache(batch.tokens.shape[0], size)
    positions = model.rope_positions(batch)
    logits = model.step(task, batch, batch.valid, positions, cache)[:, -1]  # (B, V)
    is_image = (batch.kinds == CODE) | (batch.kinds == LATENT)
    next_cell = (is_image & batch.valid).sum(-1, keepdim=True)
    last = positions[0] if positions.dim() == 3 else positions  # the sequence axis; a prompt ends with text
    valid = torch.ones(batch.tokens.shape[0], size, dtype=torch.bool, device=batch.tokens.device)
    valid[:, :width] = batch.valid
    return logits, DecodeState(task, cache, valid, width, last[:, -1:] + 1, next_cell)


def feed(model: UniFork, state: DecodeState, tokens: torch.Tensor, kind: int) -> torch.Tensor:
    """Feed tokens (B, T) of one kind (TEXT or CODE) at each row's next T positions; returns logits (B, T, V)."""
    b, t = tokens.shape
    offsets = torch.arange(t, device=tokens.device)
    cells = state.next_cell + offsets if kind == CODE else torch.zeros_like(tokens)
    new = Batch(
        tokens=tokens,
        kinds=torch.full((b, t), kind, dtype=torch.long, device=tokens.device),
        valid=torch.ones(b, t, dtype=torch.bool, device=tokens.device),
        task=torch.full((b,), TASK_ID[state.task], dtype=torch.long, device=tokens.device),
        image_index=cells,
    )
    shared_start = model.cfg.rope_2d and kind == CODE  # under multimodal RoPE an image's codes share its start
    start = state.next_position.expand(b, t) if shared_start else state.next_position + offsets
    positions = model.decode_positions(start, cells, kind)
    state.length += t
    logits = model.step(state.task, new, state.valid[:, : state.length], positions, state.cache)
    if not shared_start:
        state.next_position = state.next_position + t
    if kind == CODE:
        state.next_cell = state.next_cell + t
    return logits


def rewind(model: UniFork, state: DecodeState, n: int, kind: int) -> None:
    """Forget the last n fed positions of one kind (drafts that were not accepted), in the cache and the row state."""
    state.length -= n
    for layer in state.cache:
        layer.length -= n
    if not (model.cfg.rope_2d and kind == CODE):
        state.next_position = state.next_position - n
    if kind == CODE:
        state.next_cell = state.next_cell - n


def decode_one(model: UniFork, state: DecodeState, tokens: torch.Tensor, kind: int) -> torch.Tensor:
    """Feed tokens (B,) of one kind (TEXT or CODE) at each row's next position; returns logits (B, V)."""
    return feed(model, state, tokens[:, None], kind)[:, -1]


Step = Callable[[torch.Tensor, int], torch.Tensor]  # tokens (B,) of one kind fed -> logits (B, V) of the next
Decoding = Callable[[UniFork, str, Batch, int], tuple[torch.Tensor, Step]]  # (model, task, prompts, new tokens)


def cached_decoding(model: UniFork, task: str, batch: Batch, max_new_tokens: int) -> tuple[torch.Tensor, Step]:
    """Prefill once, then one cached decode step per token: how the samplers here decode (the bench swaps it)."""
    logits, state = prefill(model, task, batch, max_new_tokens)
    return logits, partial(decode_one, model, state)
