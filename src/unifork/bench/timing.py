"""Side-by-side timing: the variants of one figure run interleaved, repeat by repeat, and are compared pairwise.

Load from other processes shifts absolute times but hits both variants of an adjacent pair alike, so the ratio
of each pair is steadier than either time; figures report the median, min and max of those pairwise ratios.
Process CPU time is recorded beside wall time: with one thread on a shared machine it leaves out the time spent
waiting for a core, a second opinion on a ratio (with several threads it also counts their spinning).
"""

from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch


@dataclass
class Timings:
    """Seconds per call of each variant, one entry per round: wall clock and this process's CPU time."""

    wall: dict[str, list[float]]
    cpu: dict[str, list[float]]


def interleaved(variants: dict[str, Callable[[], object]], repeats: int, warmup: int = 1) -> Timings:
    """`warmup` untimed rounds, then `repeats` timed rounds of every variant.

    The order alternates each round, so neither variant always runs right after the other.
    """
    if repeats < 1:
        raise ValueError(f"repeats must be at least 1, got {repeats}")
    for _ in range(warmup):
        for fn in variants.values():
            fn()
    timings = Timings({name: [] for name in variants}, {name: [] for name in variants})
    order = list(variants.items())
    for _ in range(repeats):
        for name, fn in order:
            wall, cpu = time.perf_counter(), time.process_time()
            fn()
            timings.wall[name].append(time.perf_counter() - wall)
            timings.cpu[name].append(time.process_time() - cpu)
        order.reverse()
    return timings


def spread(values: list[float]) -> dict:
    """median, min, max (and the raw values) of repeated measurements."""
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "values": list(values)}


def pairwise_ratio(numerator: list[float], denominator: list[float], scale: float = 1.0) -> dict:
    """spread of scale * numerator[i] / denominator[i] over the rounds i, each pair measured side by side."""
    if len(numerator) != len(denominator):
        raise ValueError(f"unpaired measurements: {len(numerator)} against {len(denominator)}")
    return spread([scale * n / d for n, d in zip(numerator, denominator)])


def versus(t: Timings, fast: str, slow: str, tokens: int) -> dict:
    """Each variant's seconds and tokens/s, and how many times faster `fast` is than `slow` (wall and CPU time)."""
    figure = {f"{name}_s": spread(t.wall[name]) for name in (fast, slow)}
    figure |= {f"{name}_tokens_per_s": tokens / figure[f"{name}_s"]["median"] for name in (fast, slow)}
    return figure | {"speedup": pairwise_ratio(t.wall[slow], t.wall[fast]),
                     "speedup_cpu_time": pairwise_ratio(t.cpu[slow], t.cpu[fast])}  # fmt: skip


def machine_info() -> dict:
    """What the figures depend on: torch build, threads, CPU model and the load when the bench started."""
    return {
        "torch": torch.__version__,
        "python": platform.python_version(),
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "cpu_model": _cpu_model(),
        "load_average_1_5_15": list(os.getloadavg()),
        "cuda": torch.cuda.is_available(),
    }


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"
