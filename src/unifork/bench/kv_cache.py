"""Figure 1: image sampling with the KV cache against full recompute, with classifier-free guidance.

Both sides run the one sampling loop (inference.sampler.sample_codes_per_request) on the same prompts, settings
and draws; only its decoding differs: the cached prefill + decode_one, or `recompute_decoding`, which re-runs the
whole prefix through `UniFork.logits` at every step and keeps the last column. Greedy, both give the same codes
(tests/test_bench.py), so the two differ in cost only.
"""

from __future__ import annotations

import torch

from unifork.bench.timing import interleaved, versus
from unifork.bench.workload import world_text
from unifork.inference.decoding import Step, cached_decoding
from unifork.inference.sampler import CodeRequest, sample_codes_per_request
from unifork.inference.settings import DEFAULTS
from unifork.model.unifork import Batch, UniFork
from unifork.sequences import SequenceBuilder


def recompute_decoding(model: UniFork, task: str, batch: Batch, max_new_tokens: int) -> tuple[torch.Tensor, Step]:
    """Decoding without a cache: each step appends the fed tokens and re-runs the whole sequence."""

    def step(tokens: torch.Tensor, kind: int) -> torch.Tensor:
        nonlocal batch
        batch = _append(batch, tokens, kind)
        return model.logits(task, batch)[:, -1]  # (B, V)

    return model.logits(task, batch)[:, -1], step


def _append(batch: Batch, tokens: torch.Tensor, kind: int) -> Batch:
    """batch with one more column holding a token (B,) of one kind per row; grid cells are counted from the kinds."""
    column = torch.ones_like(tokens)[:, None]  # (B, 1)
    return Batch(
        tokens=torch.cat([batch.tokens, tokens[:, None]], dim=1),
        kinds=torch.cat([batch.kinds, column * kind], dim=1),
        valid=torch.cat([batch.valid, column.bool()], dim=1),
        task=batch.task,
    )


def kv_cache_figure(model: UniFork, builder: SequenceBuilder, batch_sizes: tuple[int, ...], repeats: int,
                    warmup: int) -> dict:  # fmt: skip
    """Image tokens/s of both samplers per batch size; the headline is the smallest speedup over batch sizes."""
    prompts, _ = world_text(max(batch_sizes))
    per_batch = {}
    for b in batch_sizes:
        t = interleaved(samplers(model, builder, prompts[:b]), repeats, warmup)
        tokens = b * model.cfg.image_tokens
        per_batch[f"batch_{b}"] = {"image_tokens": tokens, **versus(t, "kv_cache", "recompute", tokens)}
    headline = min(v["speedup"]["median"] for v in per_batch.values())
    return {"speedup": headline, "cfg_scale": DEFAULTS.cfg_scale, "sequence": _sequence_note(builder, prompts), **per_batch}


def samplers(model: UniFork, builder: SequenceBuilder, prompts: list[str]) -> dict:
    """The sampling loop with each decoding, at the `unifork generate` defaults, drawing from generators seeded alike."""

    def run(decoding):
        request = CodeRequest(prompts, DEFAULTS, torch.Generator().manual_seed(0))
        return sample_codes_per_request(model, builder, [request], decoding)[0]

    return {"kv_cache": lambda: run(cached_decoding), "recompute": lambda: run(recompute_decoding)}


def _sequence_note(builder: SequenceBuilder, prompts: list[str]) -> dict:
    longest = max(len(builder.generate(p).tokens) for p in prompts)
    return {"prompt_tokens": longest, "image_tokens": builder.cfg.image_tokens}
