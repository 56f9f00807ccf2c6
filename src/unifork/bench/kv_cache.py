"""Figure 1: image sampling with the KV cache against full recompute, with classifier-free guidance.

The recompute sampler is the sampler without its cache: every step re-runs the whole prefix through
`UniFork.logits` and keeps the last column. Same prompts, same guidance, same draws; greedy, both give the same
codes (tests/test_bench.py), so the two differ in cost only.
"""

from __future__ import annotations

import torch

from unifork.bench.timing import interleaved, pairwise_ratio, spread
from unifork.bench.workload import world_text
from unifork.inference.sampler import sample_image_codes, sample_next
from unifork.model.unifork import CODE, Batch, UniFork
from unifork.sequences import SequenceBuilder

CFG_SCALE = 3.0  # the `unifork generate` default: guided, so each image costs two rows


@torch.inference_mode()
def sample_image_codes_recompute(model: UniFork, builder: SequenceBuilder, captions: list[str],
                                 cfg_scale: float = CFG_SCALE, temperature: float = 1.0,
                                 generator: torch.Generator | None = None) -> torch.Tensor:  # fmt: skip
    """Image codes (N, image_tokens) as sample_image_codes draws them, but recomputing the prefix at every step."""
    n, guided = len(captions), cfg_scale != 1.0
    prompts = [builder.generate(c) for c in captions] + [builder.generate("")] * (n if guided else 0)
    batch = builder.collate(prompts)
    codes = []
    for _ in range(model.cfg.image_tokens):
        logits = model.logits("gen", batch)[:, -1].float()  # (rows, V)
        if guided:
            cond, uncond = logits[:n], logits[n:]
            logits = uncond + cfg_scale * (cond - uncond)
        code = sample_next(logits, temperature, generator=generator)  # (N,)
        codes.append(code)
        batch = _append_codes(batch, code.repeat(2 if guided else 1))
    return torch.stack(codes, dim=1)


def _append_codes(batch: Batch, codes: torch.Tensor) -> Batch:
    """batch with one more column holding an image code per row; grid cells are counted from the kinds."""
    column = torch.ones_like(codes)[:, None]  # (B, 1)
    return Batch(
        tokens=torch.cat([batch.tokens, codes[:, None]], dim=1),
        kinds=torch.cat([batch.kinds, column * CODE], dim=1),
        valid=torch.cat([batch.valid, column.bool()], dim=1),
        task=batch.task,
    )


def kv_cache_figure(model: UniFork, builder: SequenceBuilder, batch_sizes: tuple[int, ...], repeats: int,
                    warmup: int) -> dict:  # fmt: skip
    """Image tokens/s of both samplers per batch size; the headline is the smallest speedup over batch sizes."""
    captions, _ = world_text(max(batch_sizes))
    per_batch = {}
    for b in batch_sizes:
        t = interleaved(samplers(model, builder, captions[:b]), repeats, warmup)
        tokens = b * model.cfg.image_tokens
        per_batch[f"batch_{b}"] = {
            "image_tokens": tokens,
            "kv_cache_s": spread(t.wall["kv_cache"]),
            "recompute_s": spread(t.wall["recompute"]),
            "kv_cache_tokens_per_s": tokens / spread(t.wall["kv_cache"])["median"],
            "recompute_tokens_per_s": tokens / spread(t.wall["recompute"])["median"],
            "speedup": pairwise_ratio(t.wall["recompute"], t.wall["kv_cache"]),
            "speedup_cpu_time": pairwise_ratio(t.cpu["recompute"], t.cpu["kv_cache"]),
        }
    headline = min(v["speedup"]["median"] for v in per_batch.values())
    return {"speedup": headline, "cfg_scale": CFG_SCALE, "sequence": _sequence_note(builder, captions), **per_batch}


def samplers(model: UniFork, builder: SequenceBuilder, captions: list[str]) -> dict:
    """Both samplers on the same captions, each drawing from a generator seeded alike."""

    def kv_cache():
        generator = torch.Generator().manual_seed(0)
        return sample_image_codes(model, builder, captions, cfg_scale=CFG_SCALE, generator=generator)

    def recompute():
        return sample_image_codes_recompute(model, builder, captions, generator=torch.Generator().manual_seed(0))

    return {"kv_cache": kv_cache, "recompute": recompute}


def _sequence_note(builder: SequenceBuilder, captions: list[str]) -> dict:
    prompt = max(len(builder.generate(c).tokens) for c in captions)
    return {"prompt_tokens": prompt, "image_tokens": builder.cfg.image_tokens}
