"""`unifork bench`: every figure of docs/performance.md in one run, written to one JSON file.

Each headline is a ratio of two things timed side by side (timing.py), so it survives a busy machine better than
absolute times do; the raw times sit beside it under "details".
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch

from unifork.atomic import atomic_write_text
from unifork.bench.hf_generate import hf_generate_figure
from unifork.bench.kv_cache import kv_cache_figure
from unifork.bench.memory import memory_figure
from unifork.bench.speculative import speculative_figure
from unifork.bench.timing import machine_info
from unifork.bench.training import training_figures
from unifork.bench.workload import bench_config, bench_model, bench_tokenizer
from unifork.errors import UserError, param
from unifork.inference.settings import SPECULATIVE_WINDOW
from unifork.model.config import SIZES
from unifork.sequences import SequenceBuilder


@dataclass(frozen=True)
class BenchSettings:
    size: str  # named model size (model/config.py SIZES)
    repeats: int  # timed rounds per figure, after `warmup` untimed ones
    warmup: int = 1
    batch_sizes: tuple[int, ...] = (1, 8)  # images (figure 1) and text rows (figure 2)
    new_text_tokens: int = 32  # figure 2
    train_rows: int = 16  # figures 3 and 4: half understanding, half generation
    matmul_size: int = 2048  # figure 4: the square matmul that measures the machine's fp32 FLOP/s
    memory_repeats: int = 3  # figure 5: fresh processes per loading mode
    speculative_window: int = SPECULATIVE_WINDOW  # figure 6: drafts per forward pass


# The MFU target is for `base` (d_model 512); quick runs `small` to finish in about 3 minutes on 2 cores.
MODES = {
    "full": BenchSettings(size="base", repeats=5),
    "quick": BenchSettings(size="small", repeats=3, train_rows=8, matmul_size=1024, memory_repeats=1),
}

# headline -> (comparison, target), from the performance issue; memory has no target, only its ideal (the weights).
TARGETS = {"kv_cache_speedup": (">=", 5.0), "hf_generate_speedup": (">=", 1.5), "fork_step_ratio": ("<=", 1.05),
           "mixed_batch_ratio": ("<=", 1.05), "mfu": (">=", 0.35), "speculative_speedup": (">=", 1.5)}  # fmt: skip
HEADLINES = ("kv_cache_speedup", "hf_generate_speedup", "fork_step_ratio", "mixed_batch_ratio", "mfu",
             "task_only_memory_ratio", "speculative_speedup", "speculative_steps_ratio")  # fmt: skip


def bench_settings(quick: bool = False, size: str | None = None, repeats: int | None = None) -> BenchSettings:
    """The mode's settings with an explicit size or repeat count (which also caps the memory repeats) applied."""
    settings = MODES["quick" if quick else "full"]
    if size is not None:
        if size not in SIZES:
            raise UserError(f"unknown {param('size')} '{size}'; choose one of: {', '.join(SIZES)}")
        settings = replace(settings, size=size)
    if repeats is not None:
        if repeats < 1:
            raise UserError(f"{param('repeats')} must be at least 1, got {repeats}")
        settings = replace(settings, repeats=repeats, memory_repeats=min(repeats, settings.memory_repeats))
    return settings


def run_bench(out: str | Path, settings: BenchSettings, threads: int | None = None, ckpt: str | Path | None = None,
              log=print) -> dict:  # fmt: skip
    """Measure every figure, write the JSON to `out` and return it; figure 6 samples from `ckpt`'s gen branch when
    given (its acceptance depends on trained weights), else from the bench's random model."""
    if threads is not None:
        if threads < 1:
            raise UserError(f"{param('threads')} must be at least 1, got {threads}")
        torch.set_num_threads(threads)
    start, machine = time.perf_counter(), machine_info()
    text = bench_tokenizer()
    cfg = bench_config(settings.size, text)
    builder = SequenceBuilder(text, cfg)
    model = bench_model(cfg)
    s = settings
    log(f"bench: model '{s.size}' (d_model {cfg.d_model}, {cfg.n_layers} layers), {torch.get_num_threads()} threads")
    log("1/6 sampling: KV cache against full recompute")
    kv = kv_cache_figure(model, builder, s.batch_sizes, s.repeats, s.warmup)
    log("2/6 text decoding: ours against Hugging Face generate")
    hf = hf_generate_figure(model, builder, s.batch_sizes, s.new_text_tokens, s.repeats, s.warmup)
    log("3-4/6 training step: Y-fork against fully shared, mixed against per-task batches, MFU")
    fork, mfu = training_figures(cfg, builder, s.train_rows, s.matmul_size, s.repeats, s.warmup)
    log("5/6 memory: full against task-only loading, fresh processes")
    memory = memory_figure(cfg, s.memory_repeats)
    log("6/6 sampling: speculative Jacobi decoding against plain decoding")
    if ckpt is not None:
        from unifork.inference.pipeline import Pipeline

        pipe = Pipeline.from_pretrained(ckpt, task="gen")
        spec = speculative_figure(pipe.model, pipe.builder, s.batch_sizes, s.speculative_window, s.repeats, s.warmup, str(ckpt))
    else:
        spec = speculative_figure(model, builder, s.batch_sizes, s.speculative_window, s.repeats, s.warmup, "random")
    result = {
        "kv_cache_speedup": kv["speedup"],
        "hf_generate_speedup": hf["speedup"],
        "fork_step_ratio": fork["ratio"]["median"],
        "mixed_batch_ratio": fork["mixed_vs_separate"]["median"],
        "mfu": mfu["mfu"]["median"],
        "task_only_memory_ratio": memory["ratio"]["median"],
        "speculative_speedup": spec["speedup"],
        "speculative_steps_ratio": spec["steps_ratio"],
    }
    result["targets"] = {name: {"target": f"{op} {bound}", "met": _met(result[name], op, bound)}
                         for name, (op, bound) in TARGETS.items()}  # fmt: skip
    result["details"] = {"kv_cache": kv, "hf_generate": hf, "fork_step": fork, "mfu": mfu, "memory": memory,
                         "speculative": spec}  # fmt: skip
    result["machine"] = machine | {"load_average_at_end": list(os.getloadavg())}
    result["settings"] = asdict(settings) | {"model": asdict(cfg)}
    result["wall_seconds"] = time.perf_counter() - start
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, json.dumps(result, indent=2))
    return result


def _met(value: float, op: str, bound: float) -> bool:
    return bool(math.isfinite(value) and (value >= bound if op == ">=" else value <= bound))


def summary_lines(result: dict) -> list[str]:
    """One line per headline, with its spread where it has one and its target."""
    lines = []
    for name in HEADLINES:
        target = result["targets"].get(name)
        verdict = f"  (target {target['target']}: {'met' if target['met'] else 'NOT met'})" if target else ""
        lines.append(f"{name:24s} {result[name]:8.3f}{verdict}")
    m = result["machine"]
    load, wall = m["load_average_1_5_15"][0], result["wall_seconds"]
    lines.append(f"{m['cpu_model']}, {m['threads']} threads, torch {m['torch']}, load {load:.1f}; {wall:.0f} s")
    return lines
