"""Training data: where batches come from, and how ranks share them.

`[data] source = "world"` (the default): a pool of world samples whose images the frozen image tokenizer
encodes once. Precomputing codes and latents is how real runs save compute (the tokenizer never changes
during training). Its batches are a pure function of (seed, stage, step), so resuming needs no data-loader
state. Any other source streams records from disk (unifork.data, StreamPool); its position is saved with
each checkpoint. Either way a data-parallel rank takes its contiguous slice of the same global batch, so the
data order does not depend on the world size.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from unifork.errors import UserError
from unifork.model.unifork import Batch
from unifork.sequences import Example, SequenceBuilder
from unifork.tokenizers.image import ImageTokenizer, images_to_tensor
from unifork.train.recipe import DataConfig, StageConfig
from unifork.world import World


@dataclass(frozen=True)
class RowPlan:
    """What one row of a batch holds, drawn before anything is built (building is deterministic)."""

    task: str  # "und" or "gen"
    sample: int  # index into the pool
    turns: tuple = ()  # und: (question, answer) pairs in order
    caption: str = ""  # gen: the prompt; "" is the null condition of classifier-free guidance


@dataclass
class RankBatch:
    """One rank's rows of a global batch. Rows from `real_rows` on are stand-ins (see rank_share)."""

    batch: Batch
    real_rows: int


def check_split(stages: tuple[StageConfig, ...], world: int) -> None:
    """Every rank needs at least one row of each global batch."""
    for stage in stages:
        if stage.batch_size < world:
            raise UserError(f"stage '{stage.name}': batch_size {stage.batch_size} is the global batch, smaller than "
                            f"the {world} processes sharing it")  # fmt: skip


def rank_rows(batch_size: int, rank: int, world: int) -> range:
    """The contiguous rows of the global batch that `rank` trains on; sizes differ by at most one."""
    return range(rank * batch_size // world, (rank + 1) * batch_size // world)


def task_counts(stage: StageConfig) -> tuple[int, int]:
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


class SamplePool:
    """The world source: `pool_size` world samples, their images encoded once."""

    def __init__(self, data: DataConfig, image_tokenizer: ImageTokenizer, builder: SequenceBuilder,
                 split: str = "train", encode_batch: int = 256):  # fmt: skip
        self.data, self.builder = data, builder
        world = World(seed=data.seed, split=split)
        samples = [world.sample(i) for i in range(data.pool_size)]
        self.captions = [[c for _, c in s.captions] for s in samples]
        self.qa = [[(q, a) for _, q, a in s.qa] for s in samples]
        images = images_to_tensor(np.stack([s.image for s in samples]))
        codes, latents = [], []
        with torch.no_grad():
            for chunk in images.split(encode_batch):
                codes.append(image_tokenizer.encode(chunk))
                latents.append(image_tokenizer.encode_latents(chunk))
        self.codes = torch.cat(codes)  # (N, L)
        self.latents = torch.cat(latents)  # (N, L, latent_dim)

    def plan(self, stage: StageConfig, stage_index: int, step: int) -> list[RowPlan]:
        """The rows of the global batch of `step` in `stage`: the same on every run, resume and world size."""
        g = torch.Generator().manual_seed(hash((self.data.seed, stage_index, step)) & 0x7FFFFFFF)
        n_und, _ = task_counts(stage)
        samples = torch.randint(len(self.codes), (stage.batch_size,), generator=g).tolist()
        picks = torch.rand(stage.batch_size, 2, generator=g).tolist()
        rows = []
        for i, (sample, (pick, drop)) in enumerate(zip(samples, picks)):
            if i < n_und:
                order = torch.randperm(len(self.qa[sample]), generator=g)[: self.data.und_turns].tolist()
                rows.append(RowPlan("und", sample, turns=tuple(self.qa[sample][k] for k in order)))
            else:
                caption = self.captions[sample][int(pick * len(self.captions[sample]))]
                rows.append(RowPlan("gen", sample, caption="" if drop < self.data.caption_dropout else caption))
        return rows

    def build(self, row: RowPlan) -> Example:
        codes, latents = self.codes[row.sample], self.latents[row.sample]
        if row.task == "gen":
            return self.builder.generate(row.caption, codes)
        turns = list(row.turns)
        example = self.builder.understand_turns(codes, latents, turns)
        while len(example.tokens) > self.builder.cfg.max_seq_len and len(turns) > 1:
            turns = turns[:-1]  # long answers (descriptions) leave room for fewer turns
            example = self.builder.understand_turns(codes, latents, turns)
        return example

    def batch(self, stage: StageConfig, stage_index: int, step: int) -> Batch:
        """The whole global batch of `step` in `stage` (single-process training)."""
        return self.builder.collate([self.build(row) for row in self.plan(stage, stage_index, step)])

    def rank_batch(self, stage: StageConfig, stage_index: int, step: int, rank: int, world: int) -> RankBatch:
        """`rank`'s contiguous slice of the global batch, plus stand-in rows (see rank_share)."""
        rows, real_rows = rank_share(self.plan(stage, stage_index, step), rank, world)
        return RankBatch(self.builder.collate([self.build(row) for row in rows]), real_rows=real_rows)

    def state_dict(self) -> dict:
        return {}  # batches are a pure function of (seed, stage, step): there is no position to save

    def load_state_dict(self, state: dict) -> None:
        pass

    def metrics(self) -> dict:
        return {}


def make_pool(data: DataConfig, image_tokenizer: ImageTokenizer, builder: SequenceBuilder, announce: bool = True):
    """The batch source of a recipe's [data]: SamplePool for the world, StreamPool for data on disk.

    Both give `rank_batch(stage, stage_index, step, rank, world)`, `state_dict()` / `load_state_dict()` (the
    data position a checkpoint holds) and `metrics()` (counters for metrics.jsonl). `announce`: print warnings
    (rank 0 only).
    """
    if data.source == "world":
        return SamplePool(data, image_tokenizer, builder)
    from unifork.data.pool import StreamPool  # readers load pyarrow/datasets: only when a recipe uses them

    return StreamPool(data, image_tokenizer, builder, announce=announce)
