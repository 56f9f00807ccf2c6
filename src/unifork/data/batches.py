"""How a global batch is planned, built and split across data-parallel ranks, for every batch source.

A pool plans the rows of a global batch first (cheap: which sample, which text) and builds only the rows a
rank trains on. Per-row choices come from a generator seeded by (seed, stage, step), so batch k is the same
on every run, resume and world size that reached it.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Protocol

import torch

from unifork.model.unifork import Batch
from unifork.sequences import Example, SequenceBuilder


class StageShape(Protocol):
    """What a pool needs of a training stage (train.recipe.StageConfig has it)."""

    name: str
    batch_size: int
    mix: dict


@dataclass
class RankBatch:
    """One rank's rows of a global batch. Rows from `real_rows` on are stand-ins (see rank_share)."""

    batch: Batch
    real_rows: int


def rank_rows(batch_size: int, rank: int, world: int) -> range:
    """The contiguous rows of the global batch that `rank` trains on; sizes differ by at most one."""
    return range(rank * batch_size // world, (rank + 1) * batch_size // world)


def task_counts(stage: StageShape) -> tuple[int, int]:
    """(understanding rows, generation rows) of each global batch of `stage`: its mix, rounded."""
    n_gen = round(stage.batch_size * stage.mix.get("gen", 0.0) / sum(stage.mix.values()))
    return stage.batch_size - n_gen, n_gen


def rank_share(rows: list, rank: int, world: int) -> tuple[list, int]:
    """`rank`'s contiguous slice of a global batch's rows plus one stand-in row per task the slice lacks, and
    the number of real rows (stand-ins come last).

    Every rank must run the same modules each step: FSDP all-gathers a block's weights when the block runs,
    so a rank that skipped a branch would leave the others waiting in a collective. The stand-in (the global
    batch's first row of that task) makes the branch run; the trainer gives it zero loss weight.
    """
    mine = [rows[i] for i in rank_rows(len(rows), rank, world)]
    missing = sorted({r.task for r in rows} - {r.task for r in mine})
    return mine + [next(r for r in rows if r.task == task) for task in missing], len(mine)


def step_generator(seed: int, stage_index: int, step: int) -> torch.Generator:
    """The generator of a step's per-row choices: a pure function of (seed, stage, step)."""
    return torch.Generator().manual_seed(hash((seed, stage_index, step)) & 0x7FFFFFFF)


class PlannedPool(ABC):
    """The batching both pools share; a subclass says how rows are planned (`plan`) and built (`build`)."""

    builder: SequenceBuilder

    @abstractmethod
    def plan(self, stage: StageShape, stage_index: int, step: int) -> list:
        """The rows of the global batch of `step` in `stage`, drawn before anything is built."""

    @abstractmethod
    def build(self, rows: list) -> list[Example]:
        """The training examples of `rows`, in order."""

    def batch(self, stage: StageShape, stage_index: int, step: int) -> Batch:
        """The whole global batch of `step` in `stage` (single-process training)."""
        return self.builder.collate(self.build(self.plan(stage, stage_index, step)))

    def rank_batch(self, stage: StageShape, stage_index: int, step: int, rank: int, world: int) -> RankBatch:
        """`rank`'s contiguous slice of the global batch, plus stand-in rows (see rank_share)."""
        rows, real_rows = rank_share(self.plan(stage, stage_index, step), rank, world)
        return RankBatch(self.builder.collate(self.build(rows)), real_rows=real_rows)
