"""Text from the und branch with a KV cache (inference.decoding): answers to questions about images.

    sample_answers     several requests in one batch, each with its own question, image, number of answers, token
                       budget, temperature / top-k / top-p and generator; tokens reported as they are drawn
    answer_questions   greedy answers, one per (image, question) row
    sample_text        tokens for a prompt batch, one setting for every row (the benchmark's loop)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from unifork.errors import UserError
from unifork.inference.decoding import cached_decoding
from unifork.inference.draws import sample_next
from unifork.inference.sampler import require_branch
from unifork.inference.settings import DEFAULT_ANSWER_TOKENS
from unifork.model.unifork import TEXT, Batch, UniFork
from unifork.sequences import SequenceBuilder


@dataclass
class AnswerRequest:
    """n answers to one question, drawn with one setting from one generator (None: torch's global one)."""

    question: str
    n: int = 1
    max_new_tokens: int = DEFAULT_ANSWER_TOKENS  # cut earlier where the model's context ends
    temperature: float = 0.0  # 0 = greedy
    top_k: int = 0
    top_p: float = 1.0
    generator: torch.Generator | None = None
    # called from the decoding loop with (answer index, position in the answer, token id) as each token is drawn;
    # EOS is not reported. It must not raise: it runs inside the batch's loop
    on_token: Callable[[int, int, int], None] | None = None


@dataclass
class Answer:
    tokens: list[int]  # without EOS
    text: str
    stopped: bool  # True: the model ended it (EOS); False: cut at the token budget or the context
    prompt_tokens: int  # the question's sequence: image tokens, question and markers


@torch.inference_mode()
def sample_answers(model: UniFork, builder: SequenceBuilder, codes: torch.Tensor, latents: torch.Tensor | None,
                   requests: list[AnswerRequest]) -> list[list[Answer]]:  # fmt: skip
    """request.n answers per request j about image j (codes (N, L), latents (N, L, D) or None), in one batch.

    Each step draws once per request, over its own rows, from its own generator, so a request gets the same
    answers alone or batched with others. Rows that finished keep stepping with the batch (their output is cut);
    decoding stops once every row has finished.
    """
    if not requests:
        raise UserError("requests must hold at least one question")
    if codes.shape[0] != len(requests) or (latents is not None and latents.shape[0] != len(requests)):
        raise UserError(f"got {len(requests)} questions but {codes.shape[0]} images; give one image per question")
    for r in requests:
        if r.n < 1 or r.max_new_tokens < 1:
            raise UserError(f"a request needs n >= 1 and max_new_tokens >= 1, got {r.n} and {r.max_new_tokens}")
    require_branch(model, "und")
    param = next(model.parameters())
    if latents is not None:
        latents = latents.to(param.device, param.dtype)  # the projector runs in the model's dtype
    codes = codes.cpu()  # the builder reads codes one by one into Python lists
    examples = [builder.understand(r.question, codes[j], None if latents is None else latents[j])
                for j, r in enumerate(requests) for _ in range(r.n)]  # fmt: skip
    batch = builder.collate(examples).to(param.device)
    room = model.cfg.max_seq_len - batch.tokens.shape[1] + 1  # an answer running into the context is cut there
    rows, start = [], 0
    for r in requests:
        rows.append(slice(start, start + r.n))
        start += r.n
    budget = torch.tensor([min(r.max_new_tokens, room) for r in requests for _ in range(r.n)], device=param.device)
    prompt_tokens = batch.valid.sum(-1).tolist()

    def pick(logits: torch.Tensor) -> torch.Tensor:
        token = torch.empty(logits.shape[0], dtype=torch.long, device=logits.device)
        for r, s in zip(requests, rows):
            token[s] = sample_next(logits[s].float(), r.temperature, r.top_k, r.top_p, r.generator)
        return token

    report = None
    if any(r.on_token is not None for r in requests):
        owners = [(r, i) for r in requests for i in range(r.n)]

        def report(position: int, token: torch.Tensor, live: torch.Tensor) -> None:
            tokens = token.tolist()  # one copy from the device, not one per row
            for row in live.nonzero().flatten().tolist():
                request, index = owners[row]
                if request.on_token is not None:
                    request.on_token(index, position, tokens[row])

    tokens, stopped = _decode_text(model, batch, budget, pick, builder.text.eos_id, report)
    answers = []
    for r, s in zip(requests, rows):
        answers.append([Answer(tokens[row], builder.text.decode(tokens[row]), stopped[row], prompt_tokens[row])
                        for row in range(s.start, s.stop)])  # fmt: skip
    return answers


def answer_questions(model: UniFork, builder: SequenceBuilder, codes: torch.Tensor, latents: torch.Tensor | None,
                     questions: list[str], max_new_tokens: int = DEFAULT_ANSWER_TOKENS) -> list[str]:  # fmt: skip
    """Greedy answers from the und branch, one per (image, question) row; codes (N, L), latents (N, L, D) or None."""
    if max_new_tokens < 1:
        raise UserError(f"max_new_tokens must be at least 1, got {max_new_tokens}")
    requests = [AnswerRequest(q, max_new_tokens=max_new_tokens) for q in questions]
    return [answers[0].text for answers in sample_answers(model, builder, codes, latents, requests)]


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


def _decode_text(model: UniFork, batch: Batch, budget: torch.Tensor, pick: Callable[[torch.Tensor], torch.Tensor],
                 eos_id: int, report: Callable[[int, torch.Tensor, torch.Tensor], None] | None) -> tuple[list[list[int]], list[bool]]:  # fmt: skip
    """Each row's tokens up to its EOS (not included) or its budget of tokens, and whether it ended at EOS."""
    steps = int(budget.max())
    logits, step = cached_decoding(model, "und", batch, steps)
    done = torch.zeros_like(budget, dtype=torch.bool)
    ended = torch.zeros_like(done)
    drawn = []
    for i in range(steps):
        token = pick(logits)
        live = ~done & (token != eos_id)
        if report is not None:
            report(i, token, live)
        drawn.append(token)
        ended |= ~done & (token == eos_id)
        done |= (token == eos_id) | (budget <= i + 1)
        if i == steps - 1 or done.all():
            break
        logits = step(token, TEXT)
    drawn = torch.stack(drawn, dim=1).tolist()
    lengths = budget.tolist()
    out = []
    for row, limit in zip(drawn, lengths):
        row = row[:limit]
        out.append(row[: row.index(eos_id)] if eos_id in row else row)
    return out, ended.tolist()

