"""Training curves for TensorBoard: every metrics.jsonl record as scalars in OUT/tensorboard/ (`[logging]`).

One step axis for the whole run: step k of a stage is plotted at (the steps of the stages before it) + k, so a
recipe's stages read as one curve, each record's scalars under `train/` (loss, und, gen, lr, grad_norm,
tokens_per_s, skipped_nonfinite, the data counters). A resumed stage purges what was logged after its checkpoint
(SummaryWriter's purge_step), as metrics.jsonl forgets those lines, so both show only the steps the model kept.
metrics.jsonl stays the record; this is a view of it for the tool people already use. The quickstart adds its
evaluation figures (and its learning curve's points) under `eval/` at the steps they measure.
"""

from __future__ import annotations

import numbers
from pathlib import Path

NOT_SCALARS = ("stage", "step")


class Curves:
    """Scalars of one stage's records, written to `directory` at run-wide steps."""

    def __init__(self, directory: Path, offset: int, resumed_at: int):
        from torch.utils.tensorboard import SummaryWriter

        self.offset = offset
        # events past the checkpoint a resume starts from were never kept: drop them as the run rewrites them
        self.writer = SummaryWriter(str(directory), purge_step=offset + resumed_at + 1 if resumed_at else None)

    def add(self, record: dict) -> None:
        step = self.offset + record["step"]
        for key, value in record.items():
            if key not in NOT_SCALARS and isinstance(value, numbers.Real):
                self.writer.add_scalar(f"train/{key}", float(value), step)

    def close(self) -> None:
        self.writer.close()


def log_evaluation(directory: Path, points: list[tuple[int, dict[str, float]]]) -> None:
    """Evaluation figures as `eval/` scalars beside the training curves: (run-wide step, {name: value}) each."""
    from torch.utils.tensorboard import SummaryWriter

    with SummaryWriter(str(directory)) as writer:
        for step, figures in points:
            for name, value in figures.items():
                writer.add_scalar(f"eval/{name}", float(value), step)


def run_steps_before(stages, index: int) -> int:
    """Where stage `index` starts on the run-wide step axis."""
    return sum(stage.steps for stage in stages[:index])
