"""The loss of a data-parallel step equals the single-process loss of the whole global batch.

The model returns each task's mean over this rank's supervised tokens. The global mean is not the average of the
ranks' means when ranks hold different token counts, so each rank weights its mean by (its tokens / global
tokens): summed over ranks that is exactly the global mean. Gradient reduction (DDP, FSDP) averages over ranks,
so the weight carries a factor world size as well.
"""

from __future__ import annotations

import torch

from unifork.model.unifork import IGNORE, TASK_ID, TASKS, Batch


def supervised_tokens(batch: Batch, real_rows: int) -> torch.Tensor:
    """(len(TASKS) + 1,) float64: supervised tokens of each task in the real rows, then all their valid tokens."""
    real = torch.arange(batch.task.shape[0], device=batch.task.device) < real_rows
    supervised = (batch.targets != IGNORE).sum(1)  # (B,)
    counts = [supervised[real & (batch.task == TASK_ID[t])].sum() for t in TASKS]
    return torch.stack([*counts, batch.valid[real].sum()]).double()


def task_weights(local: torch.Tensor, total: torch.Tensor, world: int) -> dict[str, float]:
    """Per task, the factor on this rank's mean loss; 0 for a task only stand-in rows hold here.

    Plain floats: with one process every weight is exactly 1.0, so the loss and its gradient keep their bits.
    """
    return {t: world * float(local[i]) / float(total[i]) if local[i] > 0 else 0.0 for i, t in enumerate(TASKS)}


def weighted_loss(losses: dict[str, torch.Tensor], weights: dict[str, float]) -> torch.Tensor:
    """What this rank backpropagates: after gradient averaging, the gradient of the global-batch loss."""
    return sum(weights[t] * losses[t] for t in TASKS if t in losses)
