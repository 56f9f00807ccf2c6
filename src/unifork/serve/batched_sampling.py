"""Image codes for several requests in one batched forward, each with its own settings and its own generator.

sample_image_codes serves one call with one generator; a server batching strangers needs more: each request
keeps its own cfg / temperature / top-k / top-p, and draws only from its own torch.Generator. A request's
generator therefore sees exactly the draws it would see alone (one multinomial over its n rows per step, as in
sample_image_codes), so the same request and seed give the same codes whether it is served alone or batched.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from unifork.errors import UserError
from unifork.inference.sampler import (
    MAX_IMAGES,
    decode_one,
    prefill,
    require_branch,
    sample_next,
    validate_sampling,
)
from unifork.model.unifork import CODE, UniFork
from unifork.sequences import SequenceBuilder


@dataclass
class CodeRequest:
    caption: str
    n: int
    cfg_scale: float
    temperature: float
    top_k: int
    top_p: float
    generator: torch.Generator


@torch.inference_mode()
def sample_codes_per_request(model: UniFork, builder: SequenceBuilder, requests: list[CodeRequest]) -> list[torch.Tensor]:
    """Codes (n_j, image_tokens) for each request j; the batch holds every request's rows at once.

    Rows: the conditional rows of all requests first, then the unconditional ("" caption) rows of the guided
    ones, as in sample_image_codes; a request at cfg_scale 1 has no unconditional rows.
    """
    for r in requests:
        validate_sampling(r.n, r.cfg_scale, r.temperature, r.top_k, r.top_p)
    total = sum(r.n for r in requests)
    if not 1 <= total <= MAX_IMAGES:
        raise UserError(f"a batch holds 1 to {MAX_IMAGES} images, got {total}")
    require_branch(model, "gen")
    # feeds[row]: the conditional row whose sampled code `row` is fed next (itself, or its guided twin)
    cond, uncond, feeds = [], [], list(range(total))
    start = 0
    for r in requests:
        cond.append(slice(start, start + r.n))
        if r.cfg_scale != 1.0:
            uncond.append(slice(len(feeds), len(feeds) + r.n))
            feeds += range(start, start + r.n)
        else:
            uncond.append(None)
        start += r.n
    captions = [r.caption for r in requests for _ in range(r.n)] + [""] * (len(feeds) - total)
    device = next(model.parameters()).device
    batch = builder.collate([builder.generate(c) for c in captions]).to(device)
    feed_rows = torch.tensor(feeds, device=device)
    length = model.cfg.image_tokens
    logits, state = prefill(model, "gen", batch, length)
    codes = []
    for i in range(length):
        logits = logits.float()  # guidance and filtering in float32 whatever the model's dtype
        code = torch.empty(total, dtype=torch.long, device=device)
        # One draw per request, never one over the batch: a shared draw would hand a request's random numbers
        # to whichever requests happen to sit before it.
        for r, c, u in zip(requests, cond, uncond):
            guided = logits[c] if u is None else logits[u] + r.cfg_scale * (logits[c] - logits[u])
            code[c] = sample_next(guided, r.temperature, r.top_k, r.top_p, r.generator)
        codes.append(code)
        if i < length - 1:  # an unconditional row continues from its conditional row's code
            logits = decode_one(model, state, code[feed_rows], CODE)
    codes = torch.stack(codes, dim=1)  # (total, image_tokens)
    return [codes[c] for c in cond]
