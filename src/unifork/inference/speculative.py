"""Speculative Jacobi decoding of image codes (Teng et al., arXiv 2410.01699): training-free, and exact.

Plain decoding spends one forward pass per code. Here each pass feeds the last accepted code and a window of
drafted codes after it, so one pass gives the model's distribution at every window position. The drafts are checked
left to right with the speculative-sampling rule (Leviathan et al., arXiv 2211.17192; Chen et al., arXiv
2302.01318): a draft d drawn from q is kept with probability min(1, p(d) / q(d)), where p is the distribution the
plain sampler draws from (guided, tempered, filtered); the first rejected position draws from the residual
max(p - q, 0), normalised, and the pass ends there. So every code comes from exactly p, whatever the drafts were.

The drafts of the next pass are the Jacobi update: this pass's outputs at the positions after the accepted ones,
drawn from (their q is then known); positions past what the pass reached start as uniform random drafts.

The images of one request advance together, by the count every one of them accepted: an image that accepted more
keeps its checked codes up to there and redraws its later drafts from this pass's outputs. So the batch stays in
one column and the cache rewinds by one count; at batch 1 (one image and its guidance twin) nothing is lost.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from unifork.inference.decoding import feed, prefill, rewind
from unifork.inference.draws import draw
from unifork.model.unifork import CODE, Batch, UniFork

Target = Callable[[torch.Tensor], torch.Tensor]  # logits (rows, T, V) -> the distribution of each image (n, T, V)


def speculative_codes(model: UniFork, batch: Batch, image_of_row: torch.Tensor, target: Target, window: int,
                      generator: torch.Generator | None = None) -> tuple[torch.Tensor, int]:  # fmt: skip
    """Codes (n, image_tokens) for the prompt rows of `batch`, and the number of forward passes they took.

    Row r draws image image_of_row[r] (a guided image has two rows: its prompt and its null-prompt twin); `target`
    turns the rows' logits into each image's distribution; `window` drafts per pass.
    """
    length, vocab = model.cfg.image_tokens, model.cfg.image_vocab_size
    n, device = int(image_of_row.max()) + 1, batch.tokens.device
    window = max(1, min(window, length - 1))
    logits, state = prefill(model, "gen", batch, length, capacity=length)
    last = draw(target(logits[:, None])[:, 0], generator)  # (n,) the first code, as plain decoding draws it
    codes, done, passes = [last[:, None]], 1, 1
    drafts = torch.randint(vocab, (n, window), generator=generator, device=device)
    draft_probs = torch.full((n, window, vocab), 1.0 / vocab, device=device)
    while done < length:
        w = min(window, length - done)
        d, q = drafts[:, :w], draft_probs[:, :w]
        fed = torch.cat([last[:, None], d], dim=1)[image_of_row]  # (rows, w + 1)
        p = target(feed(model, state, fed, CODE))  # (n, w + 1, V): p[:, j] is the distribution of code done + j
        passes += 1
        u = torch.rand(n, w, generator=generator, device=device)
        kept = u * q.gather(-1, d[..., None])[..., 0] < p[:, :w].gather(-1, d[..., None])[..., 0]
        accepted = kept.long().cumprod(-1).sum(-1)  # (n,) leading drafts kept
        m = int(accepted.min())
        new = [d[:, :m]]
        if m < w:  # the pass ends at m: an image that kept its draft there has it, the others draw the residual
            residual = (p[:, m] - q[:, m]).clamp_min(0)
            residual = torch.where(residual.sum(-1, keepdim=True) > 0, residual, p[:, m])  # p == q: nothing to correct
            last = torch.where(accepted > m, d[:, m], draw(residual, generator))
            new.append(last[:, None])
        elif done + w < length:  # every draft kept: the pass's last output gives the next code for free
            last = draw(p[:, w], generator)
            new.append(last[:, None])
        codes += new
        step = sum(c.shape[1] for c in new)
        done += step
        rewind(model, state, w - m, CODE)  # keep the fed last code and the m accepted drafts
        # the Jacobi update: this pass's outputs after the new codes become drafts; beyond them, uniform ones
        later = p[:, m + 1 :]
        fresh = window - later.shape[1]
        drafts = torch.cat([draw(later, generator), torch.randint(vocab, (n, fresh), generator=generator, device=device)], 1)
        draft_probs = torch.cat([later, torch.full((n, fresh, vocab), 1.0 / vocab, device=device)], 1)
    return torch.cat(codes, dim=1), passes
