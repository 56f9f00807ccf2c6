"""Where the time goes: one call under torch.profiler, summarised as the top operators by their own CPU time."""

from __future__ import annotations

from collections.abc import Callable

from torch.profiler import ProfilerActivity, profile


def top_ops(fn: Callable[[], object], n: int = 10, spans: tuple[str, ...] = ()) -> dict:
    """Self CPU time of the n most expensive operators, and the inclusive time of named spans.

    A span is a profiler range whose name starts with the given prefix, e.g. "Optimizer.step" (torch labels every
    optimizer step so): it answers "how much of the step is the optimizer" where operators alone cannot.
    """
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    events = prof.key_averages()
    total_us = sum(e.self_cpu_time_total for e in events) or 1.0
    ranked = sorted(events, key=lambda e: e.self_cpu_time_total, reverse=True)[:n]
    ops = [
        {"op": e.key, "self_ms": e.self_cpu_time_total / 1e3, "share": e.self_cpu_time_total / total_us,
         "calls": e.count}
        for e in ranked
    ]  # fmt: skip
    span_share = {
        prefix: sum(e.cpu_time_total for e in events if e.key.startswith(prefix)) / total_us for prefix in spans
    }
    return {"total_ms": total_us / 1e3, "ops": ops, "span_share": span_share}
