"""The [data] table of a recipe: where training samples come from and how they are drawn."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class DataConfig:
    seed: int = 0
    pool_size: int = 8000  # world samples encoded once by the frozen image tokenizer and reused
    caption_dropout: float = 0.1  # captions replaced by the null condition, for classifier-free guidance
    und_turns: int = 4  # questions packed per understanding example (one image, several answers)
    # "world" or SCHEME:PATH for data on disk: folder, webdataset, hf, parquet, pretokenized (unifork/data/spec.py)
    source: str = "world"
    shuffle_buffer: int = 1000  # data on disk: records held for shuffling (shard order is shuffled too)
    # The world's training questions (evaluation always asks every type): pair each relation question with its
    # opposite twin (world/questions.py), and keep only some types (empty: all; for curricula and probes).
    relation_pairs: bool = False
    question_types: tuple = ()
