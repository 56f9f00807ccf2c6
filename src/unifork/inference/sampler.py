"""Sampling from a UniFork model with a KV cache: plain functions over the model, no copy of it (as in LlamaGen).

    prefill       run a left-padded prompt batch once, filling the cache; logits at the last column
    decode_one    feed one new token per row at the next position; logits for the token after it
    sample_codes_per_request   gen branch: the image sampling loop, several requests in one batch, each with its
                               own settings and generator; classifier-free guidance in the same batch
    sample_image_codes         one request of it: N prompts, one set of settings, one generator
    sample_text / answer_questions   und branch: text tokens; greedy answers until EOS

Left padding puts every row's next token in the same column, so one decode step serves the whole batch, and
`Batch.positions` skips the padding, so a padded row computes exactly what it would alone.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import torch

from unifork.errors import UserError, param
from unifork.inference.settings import DEFAULT_ANSWER_TOKENS, DEFAULTS, SamplingSettings
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
    next_position: torch.Tensor  # (B, 1) long: the RoPE position of each row's next token (rope_2d: of its image)
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
    positions = model.rope_positions(batch)
    logits = model.step(task, batch, batch.valid, positions, cache)[:, -1]  # (B, V)
    is_image = (batch.kinds == CODE) | (batch.kinds == LATENT)
    next_cell = (is_image & batch.valid).sum(-1, keepdim=True)
    last = positions[0] if positions.dim() == 3 else positions  # the sequence axis; a prompt ends with text
    return logits, DecodeState(task, cache, batch.valid, last[:, -1:] + 1, next_cell)


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
    positions = model.decode_positions(state.next_position, state.next_cell, kind)
    logits = model.step(state.task, new, state.valid, positions, state.cache)[:, -1]
    if not (model.cfg.rope_2d and kind == CODE):  # under multimodal RoPE an image's codes share its start
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


Step = Callable[[torch.Tensor, int], torch.Tensor]  # tokens (B,) of one kind fed -> logits (B, V) of the next
Decoding = Callable[[UniFork, str, Batch, int], tuple[torch.Tensor, Step]]  # (model, task, prompts, new tokens)


def cached_decoding(model: UniFork, task: str, batch: Batch, max_new_tokens: int) -> tuple[torch.Tensor, Step]:
    """Prefill once, then one cached decode step per token: how the samplers here decode (the bench swaps it)."""
    logits, state = prefill(model, task, batch, max_new_tokens)
    return logits, partial(decode_one, model, state)


@dataclass
class CodeRequest:
    """Images drawn with one set of settings from one generator (None: torch's global one)."""

    prompts: list[str]  # one per image
    settings: SamplingSettings = DEFAULTS
    generator: torch.Generator | None = None


@torch.inference_mode()
def sample_codes_per_request(model: UniFork, builder: SequenceBuilder, requests: list[CodeRequest],
                             decoding: Decoding = cached_decoding) -> list[torch.Tensor]:  # fmt: skip
    """Image codes (n_j, image_tokens) for each request j, sampled autoregressively by the gen branch in one batch.

    Classifier-free guidance (Ho & Salimans, arXiv 2207.12598) as LlamaGen does it: a guided request's n
    conditional rows get n unconditional twins (prompt "", the null condition seen in training) in the same batch,
    and each step samples from uncond + scale * (cond - uncond). At scale 1 that is the conditional logits, so the
    twins are skipped and guidance costs nothing. Rows: every request's conditional rows, then the twins.

    Each step draws once per request, over its own rows, from its own generator; never one draw over the batch,
    which would hand a request's random numbers to whichever requests sit before it. So a request samples the same
    codes alone or batched with others.
    """
    for r in requests:
        check_images(len(r.prompts))
    total = sum(len(r.prompts) for r in requests)
    check_images(total)
    require_branch(model, "gen")
    # feeds[row]: the conditional row whose sampled code `row` is fed next (itself, or its guided twin)
    cond, uncond, feeds = [], [], list(range(total))
    start = 0
    for r in requests:
        n = len(r.prompts)
        cond.append(slice(start, start + n))
        if r.settings.cfg_scale != 1.0:
            uncond.append(slice(len(feeds), len(feeds) + n))
            feeds += range(start, start + n)
        else:
            uncond.append(None)
        start += n
    prompts = [p for r in requests for p in r.prompts] + [""] * (len(feeds) - total)
    device = next(model.parameters()).device
    batch = builder.collate([builder.generate(p) for p in prompts]).to(device)
    feed_rows = torch.tensor(feeds, device=device)
    length = model.cfg.image_tokens
    logits, step = decoding(model, "gen", batch, length)
    codes = []
    for i in range(length):
        logits = logits.float()  # guidance and filtering in float32 whatever the model's dtype
        code = torch.empty(total, dtype=torch.long, device=device)
        for r, c, u in zip(requests, cond, uncond):
            s = r.settings
            guided = logits[c] if u is None else logits[u] + s.cfg_scale * (logits[c] - logits[u])
            code[c] = sample_next(guided, s.temperature, s.top_k, s.top_p, r.generator)
        codes.append(code)
        if i < length - 1:  # an unconditional row continues from its conditional row's code
            logits = step(code[feed_rows], CODE)
    codes = torch.stack(codes, dim=1)  # (total, image_tokens)
    return [codes[c] for c in cond]


def sample_image_codes(model: UniFork, builder: SequenceBuilder, prompts: list[str], settings: SamplingSettings = DEFAULTS,
                       generator: torch.Generator | None = None) -> torch.Tensor:  # fmt: skip
    """Image codes (N, image_tokens) for N prompts: one request, so one draw over its N rows per step."""
    return sample_codes_per_request(model, builder, [CodeRequest(list(prompts), settings, generator)])[0]


@torch.inference_mode()
def sample_text(model: UniFork, batch: Batch, max_new_tokens: int, temperature: float = 0.0,
                generator: torch.Generator | None = None, eos_id: int | None = None) -> torch.Tensor:  # fmt: skip
    """Text tokens (B, T <= max_new_tokens) from the und branch for a prompt batch; greedy at temperature 0.

    With eos_id, decoding stops once every row has produced it (a finished row keeps stepping with the batch).
    """
    logits, step = cached_decoding(model, "und", batch, max_new_tokens)
    tokens, finished = [], torch.zeros(batch.tokens.shape[0], dtype=torch.bool, device=batch.tokens.device)
    for i in range(max_new_tokens):
        token = sample_next(logits, temperature, generator=generator)  # (B,)
        tokens.append(token)
        if eos_id is not None:
            finished |= token == eos_id
        if i == max_new_tokens - 1 or (eos_id is not None and finished.all()):  # .all() waits for the device
            break
        logits = step(token, TEXT)
    return torch.stack(tokens, dim=1)


@torch.inference_mode()
def answer_questions(model: UniFork, builder: SequenceBuilder, codes: torch.Tensor, latents: torch.Tensor | None,
                     questions: list[str], max_new_tokens: int = DEFAULT_ANSWER_TOKENS) -> list[str]:  # fmt: skip
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
    answers = []
    for row in sample_text(model, batch, max_new_tokens, eos_id=eos).tolist():
        answers.append(builder.text.decode(row[: row.index(eos)] if eos in row else row))
    return answers


def check_images(n) -> None:
    """n, the number of images one call samples: an integer from 1 to MAX_IMAGES."""
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= MAX_IMAGES:
        raise UserError(f"{param('n')} (the number of images) must be between 1 and {MAX_IMAGES}, got {n}")


def require_branch(model: UniFork, task: str) -> None:
    if task not in model.tasks:
        action = {"gen": "generate images", "und": "answer questions"}[task]
        raise UserError(
            f"cannot {action}: the '{task}' branch is not loaded (loaded: {', '.join(model.tasks)}); "
            f"load the checkpoint with task='{task}' or with both branches"
        )
