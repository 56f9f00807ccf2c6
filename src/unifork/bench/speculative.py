"""Figure 6: image sampling by speculative Jacobi decoding against plain decoding, with classifier-free guidance.

Both sides run `sample_codes_per_request` on the same prompts and settings (`unifork generate`'s, with a
speculative window or without) and generators seeded alike. Forward passes are counted by a hook on the gen
head, which every pass runs once. How many drafts a pass keeps depends on what the model learned, so this figure
means something only on a trained checkpoint (`unifork bench --ckpt DIR`); on the bench's random weights, whose
distributions are near uniform, drafts are kept far more often than on any trained model, and the JSON says so.
"""

from __future__ import annotations

from dataclasses import replace

import torch

from unifork.bench.timing import interleaved, spread, versus
from unifork.bench.workload import world_text
from unifork.inference.sampler import CodeRequest, sample_codes_per_request
from unifork.inference.settings import DEFAULTS
from unifork.model.unifork import UniFork
from unifork.sequences import SequenceBuilder


def speculative_figure(model: UniFork, builder: SequenceBuilder, batch_sizes: tuple[int, ...], window: int,
                       repeats: int, warmup: int, weights: str) -> dict:  # fmt: skip
    """Speedup and forward passes per batch size; the headlines are those at the smallest batch."""
    prompts, _ = world_text(max(batch_sizes))
    per_batch = {}
    for b in batch_sizes:
        variants = {name: _sampler(model, builder, prompts[:b], w) for name, w in (("speculative", window), ("plain", 0))}
        passes = {name: _passes(model, fn) for name, fn in variants.items()}
        t = interleaved(variants, repeats, warmup)
        tokens = b * model.cfg.image_tokens
        per_batch[f"batch_{b}"] = {
            "image_tokens": tokens,
            **versus(t, "speculative", "plain", tokens),
            "forward_passes": {name: spread(v) for name, v in passes.items()},
            "steps_ratio": spread([s / p for s, p in zip(passes["speculative"], passes["plain"])]),
        }
    first = per_batch[f"batch_{min(batch_sizes)}"]
    return {"speedup": first["speedup"]["median"], "steps_ratio": first["steps_ratio"]["median"], "window": window,
            "cfg_scale": DEFAULTS.cfg_scale, "weights": weights, **per_batch}  # fmt: skip


def _sampler(model: UniFork, builder: SequenceBuilder, prompts: list[str], window: int):
    settings = replace(DEFAULTS, speculative=window)
    seeds = iter(range(10**9))  # a new draw each call, the same sequence of draws for both variants

    def run():
        request = CodeRequest(prompts, settings, torch.Generator().manual_seed(next(seeds)))
        return sample_codes_per_request(model, builder, [request])[0]

    return run


def _passes(model: UniFork, run, calls: int = 3) -> list[int]:
    """Forward passes of the gen branch in each of `calls` runs (the draws differ from run to run)."""
    count = [0]
    handle = model.gen.norm.register_forward_hook(lambda *_: count.__setitem__(0, count[0] + 1))
    try:
        out = []
        for _ in range(calls):
            count[0] = 0
            run()
            out.append(count[0])
        return out
    finally:
        handle.remove()
