"""The interface the trainer draws batches through, and the pool a recipe's [data] source asks for.

    WorldPool    (world_pool.py)   the shapes world: samples encoded once, batches a pure function of the step
    StreamPool   (stream_pool.py)  data on disk: shuffled resumable streams, their position saved in checkpoints
"""

from __future__ import annotations

from typing import Protocol

from unifork.data.batches import RankBatch, StageShape
from unifork.data.config import DataConfig
from unifork.sequences import SequenceBuilder
from unifork.tokenizers.codec import ImageCodec


class Pool(Protocol):
    def rank_batch(self, stage: StageShape, stage_index: int, step: int, rank: int, world: int) -> RankBatch:
        """`rank`'s rows of the global batch of `step` in `stage` (data.batches.rank_share)."""

    def state_dict(self) -> dict:
        """The data position a checkpoint holds (empty where batches depend on the step alone)."""

    def load_state_dict(self, state: dict) -> None: ...

    def metrics(self) -> dict:
        """Counters for metrics.jsonl, e.g. images skipped as corrupt."""


def make_pool(data: DataConfig, image_tokenizer: ImageCodec, builder: SequenceBuilder, announce: bool = True) -> Pool:
    """The pool of a recipe's [data] source; `announce`: print warnings (rank 0 only)."""
    if data.source == "world":
        from unifork.data.world_pool import WorldPool

        return WorldPool(data, image_tokenizer, builder)
    from unifork.data.stream_pool import StreamPool  # readers load pyarrow/datasets: only when a recipe uses them

    return StreamPool(data, image_tokenizer, builder, announce=announce)
