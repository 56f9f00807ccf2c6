"""What every trainer here shares: the learning-rate schedule and the progress bar."""

from __future__ import annotations

import math

from tqdm import tqdm


def warmup_cosine(step: int, steps: int, lr: float, warmup: int, min_lr_ratio: float) -> float:
    """Linear warmup over `warmup` steps, then cosine decay to lr * min_lr_ratio at `steps`."""
    if step < warmup:
        return lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    floor = lr * min_lr_ratio
    return floor + (lr - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def progress_bar(start: int, steps: int, desc: str, enabled: bool) -> tqdm:
    """Steps [start, steps) with a bar on stderr; redrawn at most every 2 s, so logs of long runs stay short."""
    return tqdm(range(start, steps), desc=desc, disable=not enabled, mininterval=2.0)
