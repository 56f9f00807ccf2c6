"""Speculative Jacobi decoding over the positions of residual codes (residual depth D > 1): exact, as speculative.py.

The passes, drafts and acceptance rule are speculative.py's; what changes is that a position's code is a packed tuple
of D levels (tokenizers/residual.py). Its probability under the model is the product of the depth head's level
probabilities, each guided, tempered and filtered as the plain sampler draws it; a draft's probability q is recorded
the same way by the pass that drafted it (or is uniform, 1 / K^D). The residual max(p - q, 0) of the first rejected
position lives on K^D codes, too many to write down, so it is drawn by rejection: y ~ p, kept with probability
1 - min(1, q(y) / p(y)), which samples the normalised residual exactly. Where a rejection happened that takes
1 / TV(p, q) draws on average (TV the total variation distance, the rejection's own probability): one extra draw
of a position per position, on average, over the whole image.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from unifork.inference.decoding import feed, prefill, rewind
from unifork.inference.draws import draw
from unifork.model.unifork import CODE, Batch, UniFork
from unifork.tokenizers.residual import pack_levels, unpack_levels

# contexts (rows, T, C) and the levels chosen so far (n images, T, d) -> each image's next-level distribution (n, T, K)
LevelProbs = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
# After this many rejected draws, p itself: at total variation TV a rejection happens with probability TV and then
# runs out of draws with probability (1 - TV)^N, so the cap moves at most TV (1 - TV)^N <= 1 / (e N) ~ 4e-6 of a
# position's probability; speculative.py takes p where p == q the same way.
MAX_RESIDUAL_DRAWS = 100_000


@dataclass
class Codes:
    """The distribution of packed codes at T positions of n images: the depth head over `contexts` (rows, T, C) of
    a pass, or uniform over the K^D codes where contexts is None."""

    level_probs: LevelProbs
    contexts: torch.Tensor | None
    num_codes: int
    depth: int
    n: int
    positions: int
    device: torch.device

    def take(self, start: int, stop: int) -> Codes:
        contexts = None if self.contexts is None else self.contexts[:, start:stop]
        return Codes(self.level_probs, contexts, self.num_codes, self.depth, self.n, stop - start, self.device)

    def prob(self, codes: torch.Tensor) -> torch.Tensor:
        """(n, T) probability of each image's code (n, T)."""
        if self.contexts is None:
            return torch.full(codes.shape, float(self.num_codes) ** -self.depth, dtype=torch.float64, device=codes.device)
        levels = unpack_levels(codes, self.num_codes, self.depth)
        p = torch.ones(codes.shape, dtype=torch.float64, device=codes.device)  # a product of D small numbers
        for d in range(self.depth):
            probs = self.level_probs(self.contexts, levels[..., :d])
            p = p * probs.gather(-1, levels[..., d : d + 1])[..., 0].double()
        return p

    def draw(self, generator: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor]:
        """(codes (n, T), their probability (n, T)): level after level from the depth head, or uniformly."""
        shape = (self.n, self.positions)
        if self.contexts is None or not self.positions:
            levels = torch.randint(self.num_codes, (*shape, self.depth), generator=generator, device=self.device)
            codes = pack_levels(levels, self.num_codes)
            return codes, self.prob(codes)
        chosen = torch.empty(*shape, 0, dtype=torch.long, device=self.device)
        p = torch.ones(shape, dtype=torch.float64, device=self.device)
        for _ in range(self.depth):
            probs = self.level_probs(self.contexts, chosen)
            level = draw(probs, generator)
            p = p * probs.gather(-1, level[..., None])[..., 0].double()
            chosen = torch.cat([chosen, level[..., None]], dim=-1)
        return pack_levels(chosen, self.num_codes), p


def residual_draw(p: Codes, q: Codes, pending: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """A code (n,) from the normalised max(p - q, 0) at one position, by rejection from p, for the images where
    `pending` (n,) is True (the others' entries are any code)."""
    pending, out = pending.clone(), None
    for _ in range(MAX_RESIDUAL_DRAWS):
        y, py = p.draw(generator)
        y, py = y[:, 0], py[:, 0]
        if out is None:
            out = y.clone()
        u = torch.rand(y.shape, generator=generator, device=y.device, dtype=torch.float64)
        take = pending & (u * py < py - q.prob(y[:, None])[:, 0])  # kept with probability (p - q)+ / p
        out[take] = y[take]
        pending &= ~take
        if not pending.any():
            return out
    out[pending] = y[pending]
    return out


def speculative_level_codes(model: UniFork, batch: Batch, image_of_row: torch.Tensor, level_probs: LevelProbs,
                            window: int, generator: torch.Generator | None = None) -> tuple[torch.Tensor, int]:  # fmt: skip
    """Packed codes (n, image_tokens) for the prompt rows of `batch`, and the forward passes they took; the arguments
    are speculative_codes', with `level_probs` giving the depth head's guided, filtered level distributions."""
    length, k, depth = model.cfg.image_tokens, model.cfg.image_vocab_size, model.cfg.residual_depth
    n = int(image_of_row.max()) + 1
    window = max(1, min(window, length - 1))
    codes_of = lambda contexts, positions: Codes(level_probs, contexts, k, depth, n, positions, batch.tokens.device)  # noqa: E731
    contexts, state = prefill(model, "gen", batch, length, capacity=length)
    last = codes_of(contexts[:, None], 1).draw(generator)[0][:, 0]  # the first code, as plain decoding draws it
    codes, done, passes = [last[:, None]], 1, 1
    drafted = codes_of(None, window)  # where the drafts come from: a pass's contexts, then uniform
    drafts, draft_q = drafted.draw(generator)
    while done < length:
        w = min(window, length - done)
        d = drafts[:, :w]
        out = feed(model, state, torch.cat([last[:, None], d], dim=1)[image_of_row], CODE)  # (rows, w + 1, C)
        p = codes_of(out, w + 1)  # position j: the distribution of code done + j
        passes += 1
        u = torch.rand(n, w, generator=generator, device=d.device, dtype=torch.float64)
        kept = u * draft_q[:, :w] < p.take(0, w).prob(d)
        accepted = kept.long().cumprod(-1).sum(-1)
        m = int(accepted.min())
        new = [d[:, :m]]
        if m < w:
            q = _draft_source(drafted, m, codes_of)
            last = torch.where(accepted > m, d[:, m], residual_draw(p.take(m, m + 1), q, accepted <= m, generator))
            new.append(last[:, None])
        elif done + w < length:  # every draft kept: the pass's last output gives the next code for free
            last = p.take(w, w + 1).draw(generator)[0][:, 0]
            new.append(last[:, None])
        codes += new
        done += sum(c.shape[1] for c in new)
        rewind(model, state, w - m, CODE)
        # the Jacobi update: this pass's outputs after the new codes become drafts; beyond them, uniform ones
        later = p.take(m + 1, w + 1)
        fresh = codes_of(None, window - later.positions)
        (later_codes, later_q), (fresh_codes, fresh_q) = later.draw(generator), fresh.draw(generator)
        drafts, draft_q = torch.cat([later_codes, fresh_codes], 1), torch.cat([later_q, fresh_q], 1)
        drafted = later  # positions past later.positions are the uniform ones
    return torch.cat(codes, dim=1), passes


def _draft_source(drafted: Codes, position: int, codes_of) -> Codes:
    """The distribution draft `position` was drawn from: a pass's contexts, or uniform past them."""
    if drafted.contexts is not None and position < drafted.positions:
        return drafted.take(position, position + 1)
    return codes_of(None, 1)
