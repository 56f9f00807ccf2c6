"""Sampling from a UniFork model with a KV cache: plain functions over the model, no copy of it (as in LlamaGen).

    prefill       run a left-padded prompt batch once, filling the cache; logits at the last column
    decode_one    feed one new token per row at the next position; logits for the token after it
    sample_image_codes   gen branch: autoregressive image codes, classifier-free guidance in one batch
    answer_questions     und branch: greedy text until EOS

Left padding puts every row's next token in the same column, so one decode step serves the whole batch, and
`Batch.positions` skips the padding, so a padded row computes exactly what it would alone.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from unifork.errors import UserError
from unifork.model.blocks import LayerCache
from unifork.model.unifork import CODE, LATENT, TASK_ID, TEXT, Batch, UniFork
from unifork.sequences import SequenceBuilder

MAX_IMAGES = 64  # images per call: 2x that many rows under guidance; more is a memory accident, not a request


@dataclass
class DecodeState:
    """What decoding needs between steps: the per-layer caches and where each row stands."""

    task: str
    cache: list[LayerCache]
    valid: torch.Tensor  # (B, S) bool over every position fed so far (False at left padding)
    next_position: torch.Tensor  # (B, 1) long: the RoPE position of the next token of each row
    next_cell: torch.Tensor  # (B, 1) long: the image grid cell a next CODE token fills


def prefill(model: UniFork, task: str, batch: Batch, max_new_tokens: int) -> tuple[torch.Tensor, DecodeState]:
    """Run the prompt batch through `task`'s path; returns its last-column logits (B, V) and the state to decode from.

    The cache holds the prompt plus max_new_tokens - 1 fed-back tokens (the last sampled token is never fed).
    """
    width = batch.tokens.shape[1]
    if width + max_new_tokens - 1 > model.cfg.max_seq_len:
        raise UserError(
            f"a prompt of {width} tokens plus {max_new_tokens} generated tokens exceeds the model's context of "
            f"{model.cfg.max_seq_len}; shorten the text"
        )
    cache = model.new_cache(batch.tokens.shape[0], width + max_new_tokens - 1)
    positions = batch.positions
    logits = model.step(task, batch, batch.valid, positions, cache)[:, -1]  # (B, V)
    is_image = (batch.kinds == CODE) | (batch.kinds == LATENT)
    next_cell = (is_image & batch.valid).sum(-1, keepdim=True)
    return logits, DecodeState(task, cache, batch.valid, positions[:, -1:] + 1, next_cell)


def decode_one(model: UniFork, state: DecodeState, tokens: torch.Tensor, kind: int) -> torch.Tensor:
    """Feed tokens (B,) of one kind (TEXT or CODE) at each row's next position; returns logits (B, V)."""
    b = tokens.shape[0]
    new = Batch(
        tokens=tokens[:, None],
        kinds=torch.full((b, 1), kind, dtype=torch.long, device=tokens.device),
        valid=torch.ones(b, 1, dtype=torch.bool, device=tokens.device),
        task=torch.full((b,), TASK_ID[state.task], dtype=torch.long, device=tokens.device),
        image_index=state.next_cell if kind == CODE else torch.zeros_like(state.next_cell),
    )
    state.valid = torch.cat([state.valid, new.valid], dim=1)
    logits = model.step(state.task, new, state.valid, state.next_position, state.cache)[:, -1]
    state.next_position = state.next_position + 1
    if kind == CODE:
        state.next_cell = state.next_cell + 1
    return logits


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


def sample_next(logits: torch.Tensor, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
                generator: torch.Generator | None = None) -> torch.Tensor:  # fmt: skip
    """One token per row from logits (B, V): argmax at temperature 0, else a draw from the filtered softmax."""
    if temperature == 0:
        return logits.argmax(dim=-1)
    # A tiny temperature (0 once cast to float32) or a huge guidance scale gives +-inf, and softmax of inf is NaN:
    # divide by at least the smallest normal float32 and clamp to the largest, the limit of the same distribution.
    # NaN from a broken model still fails loudly.
    f32 = torch.finfo(torch.float32)
    scaled = (logits.float() / max(temperature, f32.tiny)).clamp(-f32.max, f32.max)
    probs = filter_logits(scaled, top_k, top_p).softmax(dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(1)


@torch.inference_mode()
def sample_image_codes(model: UniFork, builder: SequenceBuilder, captions: list[str], cfg_scale: float = 3.0,
                       temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
                       generator: torch.Generator | None = None) -> torch.Tensor:  # fmt: skip
    """Image codes (N, image_tokens) for N captions, sampled autoregressively by the gen branch.

    Classifier-free guidance (Ho & Salimans, arXiv 2207.12598) as LlamaGen does it: the N conditional rows and N
    unconditional rows (caption "", the null condition seen in training) run as one batch of 2N, and each step
    samples from uncond + scale * (cond - uncond). At scale 1 that is the conditional logits, so the unconditional
    rows are skipped and guidance costs nothing.
    """
    validate_sampling(len(captions), cfg_scale, temperature, top_k, top_p)
    require_branch(model, "gen")
    n, guided = len(captions), cfg_scale != 1.0
    prompts = [builder.generate(c) for c in captions] + [builder.generate("")] * (n if guided else 0)
    device = next(model.parameters()).device
    batch = builder.collate(prompts).to(device)
    length = model.cfg.image_tokens
    logits, state = prefill(model, "gen", batch, length)
    codes = []
    for i in range(length):
        logits = logits.float()  # guidance and filtering in float32 whatever the model's dtype
        if guided:
            cond, uncond = logits[:n], logits[n:]
            logits = uncond + cfg_scale * (cond - uncond)
        code = sample_next(logits, temperature, top_k, top_p, generator)  # (N,)
        codes.append(code)
        if i < length - 1:  # both halves continue from the same sampled code
            logits = decode_one(model, state, code.repeat(2 if guided else 1), CODE)
    return torch.stack(codes, dim=1)


@torch.inference_mode()
def answer_questions(model: UniFork, builder: SequenceBuilder, codes: torch.Tensor, latents: torch.Tensor | None,
                     questions: list[str], max_new_tokens: int = 32) -> list[str]:  # fmt: skip
    """Greedy answers from the und branch, one per (image, question) row; codes (N, L), latents (N, L, D) or None.

    Rows that reach EOS keep stepping with the batch (their output is cut at EOS); decoding stops once every row
    has finished, after max_new_tokens, or at the model's context, whichever comes first.
    """
    n = len(questions)
    if n < 1:
        raise UserError("questions must hold at least one question")
    if codes.shape[0] != n or (latents is not None and latents.shape[0] != n):
        raise UserError(f"got {n} questions but {codes.shape[0]} images; give one image per question")
    if max_new_tokens < 1:
        raise UserError(f"max_new_tokens must be at least 1, got {max_new_tokens}")
    require_branch(model, "und")
    param = next(model.parameters())
    if latents is not None:
        latents = latents.to(param.device, param.dtype)  # the projector runs in the model's dtype
    codes = codes.cpu()  # the builder reads codes one by one into Python lists
    examples = [builder.understand(q, codes[i], None if latents is None else latents[i]) for i, q in enumerate(questions)]
    batch = builder.collate(examples).to(param.device)
    # An answer that runs into the context limit is cut there rather than failing the whole batch.
    max_new_tokens = min(max_new_tokens, model.cfg.max_seq_len - batch.tokens.shape[1] + 1)
    eos = builder.text.eos_id
    logits, state = prefill(model, "und", batch, max_new_tokens)
    tokens, finished = [], torch.zeros(n, dtype=torch.bool, device=param.device)
    for i in range(max_new_tokens):
        token = logits.argmax(dim=-1)  # (N,)
        tokens.append(token)
        finished |= token == eos
        if finished.all() or i == max_new_tokens - 1:
            break
        logits = decode_one(model, state, token, TEXT)
    answers = []
    for row in torch.stack(tokens, dim=1).tolist():
        answers.append(builder.text.decode(row[: row.index(eos)] if eos in row else row))
    return answers


def validate_sampling(n: int, cfg_scale: float, temperature: float, top_k: int, top_p: float) -> None:
    """Raise a UserError naming the first sampling setting out of range."""
    checks = [
        (_integer(n) and 1 <= n <= MAX_IMAGES, f"n (the number of images) must be between 1 and {MAX_IMAGES}, got {n}"),
        (_finite(cfg_scale) and cfg_scale >= 0, f"cfg_scale must be a finite number >= 0, got {cfg_scale}"),
        (_finite(temperature) and temperature >= 0, f"temperature must be a finite number >= 0, got {temperature}"),
        (_integer(top_k) and top_k >= 0, f"top_k must be an integer >= 0 (0 = off), got {top_k}"),
        (_finite(top_p) and 0 < top_p <= 1, f"top_p must be in (0, 1] (1 = off), got {top_p}"),
    ]  # fmt: skip
    for ok, message in checks:
        if not ok:
            raise UserError(message)


def require_branch(model: UniFork, task: str) -> None:
    if task not in model.tasks:
        action = {"gen": "generate images", "und": "answer questions"}[task]
        raise UserError(
            f"cannot {action}: the '{task}' branch is not loaded (loaded: {', '.join(model.tasks)}); "
            f"load the checkpoint with task='{task}' or with both branches"
        )


def _integer(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _finite(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)
