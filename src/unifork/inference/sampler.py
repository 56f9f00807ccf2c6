"""Sampling loops over a UniFork model with a KV cache (inference.decoding).

    sample_codes_per_request   gen branch: the image sampling loop, several requests in one batch, each with its
                               own settings and generator; classifier-free guidance in the same batch; a request
                               with a speculative window decodes by speculative Jacobi decoding (speculative.py)
    sample_image_codes         one request of it: N prompts, one set of settings, one generator

Text (the und branch) is inference.answers'.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from unifork.errors import UserError, param
from unifork.inference.decoding import Decoding, cached_decoding
from unifork.inference.draws import sample_next, token_probs
from unifork.inference.settings import DEFAULTS, SamplingSettings
from unifork.inference.speculative import speculative_codes
from unifork.inference.speculative_levels import speculative_level_codes
from unifork.model.unifork import CODE, UniFork
from unifork.sequences import SequenceBuilder
from unifork.tokenizers.residual import pack_levels

MAX_IMAGES = 64  # images per call: 2x that many rows under guidance; more is a memory accident, not a request


@dataclass
class CodeRequest:
    """Images drawn with one set of settings from one generator (None: torch's global one)."""

    prompts: list[str]  # one per image
    settings: SamplingSettings = DEFAULTS
    generator: torch.Generator | None = None


@torch.inference_mode()
def sample_codes_per_request(model: UniFork, builder: SequenceBuilder, requests: list[CodeRequest],
                             decoding: Decoding = cached_decoding) -> list[torch.Tensor]:  # fmt: skip
    """Image codes (n_j, image_tokens) for each request j, sampled autoregressively by the gen branch.

    Classifier-free guidance (Ho & Salimans, arXiv 2207.12598) as LlamaGen does it: a guided request's n
    conditional rows get n unconditional twins (prompt "", the null condition seen in training) in the same batch,
    and each step samples from uncond + scale * (cond - uncond). At scale 1 that is the conditional logits, so the
    twins are skipped and guidance costs nothing.

    Each step draws once per request, over its own rows, from its own generator; never one draw over the batch,
    which would hand a request's random numbers to whichever requests sit before it. So a request samples the same
    codes alone or batched with others. A speculative request runs in a batch of its own for the same reason: how
    far a pass advances depends on its rows' draws, and rows that share passes would share that.
    """
    for r in requests:
        check_images(len(r.prompts))
    check_images(sum(len(r.prompts) for r in requests))
    require_branch(model, "gen")
    plain = [i for i, r in enumerate(requests) if not r.settings.speculative]
    out = dict(zip(plain, _sample_plain(model, builder, [requests[i] for i in plain], decoding) if plain else []))
    for i, r in enumerate(requests):
        if r.settings.speculative:
            out[i] = sample_speculative(model, builder, r)[0]
    return [out[i] for i in range(len(requests))]


def _rows(model: UniFork, builder: SequenceBuilder, requests: list[CodeRequest]):
    """The prompt batch of these requests: every request's conditional rows, then the twins of the guided ones.

    Returns the batch, each request's conditional and unconditional rows (None where unguided), and feeds: for
    each row, the conditional row whose sampled code it is fed next (itself, or its guided twin's).
    """
    cond, uncond, feeds = [], [], list(range(sum(len(r.prompts) for r in requests)))
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
    prompts = [p for r in requests for p in r.prompts] + [""] * (len(feeds) - start)
    device = next(model.parameters()).device
    batch = builder.collate([builder.generate(p) for p in prompts]).to(device)
    return batch, cond, uncond, torch.tensor(feeds, device=device)


def _guided(logits: torch.Tensor, cond: slice, uncond: slice | None, scale: float) -> torch.Tensor:
    """The logits a request samples from, in float32 whatever the model's dtype: uncond + scale * (cond - uncond)."""
    logits = logits.float()
    return logits[cond] if uncond is None else logits[uncond] + scale * (logits[cond] - logits[uncond])


def _sample_plain(model: UniFork, builder: SequenceBuilder, requests: list[CodeRequest],
                  decoding: Decoding) -> list[torch.Tensor]:  # fmt: skip
    """One forward pass per code for the whole batch of requests."""
    batch, cond, uncond, feed_rows = _rows(model, builder, requests)
    length = model.cfg.image_tokens
    logits, step = decoding(model, "gen", batch, length)
    codes = []
    for i in range(length):
        code = _draw_codes(model, logits, requests, cond, uncond, feed_rows)
        codes.append(code)
        if i < length - 1:  # an unconditional row continues from its conditional row's code
            logits = step(code[feed_rows], CODE)
    codes = torch.stack(codes, dim=1)  # (total, image_tokens)
    return [codes[c] for c in cond]


def _draw_codes(model: UniFork, out: torch.Tensor, requests: list[CodeRequest], cond: list[slice],
                uncond: list[slice | None], feed_rows: torch.Tensor) -> torch.Tensor:  # fmt: skip
    """One code for each conditional row from the step's output: each request's guided logits, drawn from its own
    generator. At residual depth D > 1 the output is the context the depth head reads, and the code's D levels are
    drawn one after another, guided at every level: an unconditional row continues from its conditional row's levels."""
    total = cond[-1].stop
    depth = model.cfg.residual_depth
    chosen = torch.empty(out.shape[0], 0, dtype=torch.long, device=out.device)  # every row's levels so far
    for _ in range(depth):
        logits = out if depth == 1 else model.code_logits(out, chosen)
        level = torch.empty(total, dtype=torch.long, device=out.device)
        for r, c, u in zip(requests, cond, uncond):
            s = r.settings
            level[c] = sample_next(_guided(logits, c, u, s.cfg_scale), s.temperature, s.top_k, s.top_p, r.generator)
        if depth == 1:
            return level
        chosen = torch.cat([chosen, level[feed_rows, None]], dim=1)
    return pack_levels(chosen[:total], model.cfg.image_vocab_size)


def sample_speculative(model: UniFork, builder: SequenceBuilder, request: CodeRequest) -> tuple[torch.Tensor, int]:
    """One request's codes (n, image_tokens) by speculative Jacobi decoding, and the forward passes they took."""
    batch, (c,), (u,), feed_rows = _rows(model, builder, [request])
    s = request.settings
    if model.cfg.residual_depth > 1:

        k = model.cfg.image_vocab_size

        def level_probs(contexts: torch.Tensor, levels: torch.Tensor) -> torch.Tensor:
            rows, t, width = contexts.shape
            logits = model.code_logits(contexts.reshape(-1, width), levels[feed_rows].flatten(0, 1)).view(rows, t, k)
            return token_probs(_guided(logits, c, u, s.cfg_scale), s.temperature, s.top_k, s.top_p)

        return speculative_level_codes(model, batch, feed_rows, level_probs, s.speculative, request.generator)

    def target(logits: torch.Tensor) -> torch.Tensor:
        return token_probs(_guided(logits, c, u, s.cfg_scale), s.temperature, s.top_k, s.top_p)

    return speculative_codes(model, batch, feed_rows, target, s.speculative, request.generator)


def sample_image_codes(model: UniFork, builder: SequenceBuilder, prompts: list[str], settings: SamplingSettings = DEFAULTS,
                       generator: torch.Generator | None = None) -> torch.Tensor:  # fmt: skip
    """Image codes (N, image_tokens) for N prompts: one request, so one draw over its N rows per step."""
    return sample_codes_per_request(model, builder, [CodeRequest(list(prompts), settings, generator)])[0]


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
