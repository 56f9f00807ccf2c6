"""Benchmarks: the speed and memory figures of docs/performance.md, each a ratio measured side by side.

    kv_cache.py      1  image sampling with the KV cache against full recompute (with guidance)
    hf_generate.py   2  text decoding on the und branch against Hugging Face generate, same weights
    training.py      3  Y-fork training step against fully shared; mixed against per-task batches
                     4  model FLOP utilisation of a training step (flops.py counts the FLOPs)
    memory.py        5  peak RSS of full against task-only checkpoint loading
    suite.py         all of them into one bench.json (`unifork bench`)

    timing.py (interleaved rounds, pairwise ratios), workload.py (model and sequences), profiling.py (top ops)
"""

from unifork.bench.suite import MODES, BenchSettings, bench_settings, run_bench, summary_lines

__all__ = ["MODES", "BenchSettings", "bench_settings", "run_bench", "summary_lines"]
