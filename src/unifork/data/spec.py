"""Data source specs, the `[data] source` of a recipe: "world" or "SCHEME:PATH".

    world                 the synthetic shapes world (default; unifork.world)
    folder:PATH           images + a jsonl of records (folder.py)
    webdataset:GLOB       WebDataset tar shards (tar_shards.py)
    hf:PATH               a Hugging Face dataset saved with save_to_disk (hf.py)
    parquet:GLOB          parquet files (parquet.py)
    pretokenized:PATH     the output of `unifork data pretokenize` (pretokenized.py)

Every source but the world is a list of shards, each a sequence of records read in order; stream.py shuffles
and resumes them. Readers are imported when opened, so a world run never loads pyarrow or datasets.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

from unifork.data.globs import expand_glob
from unifork.data.records import Record
from unifork.errors import UserError

SCHEMES = ("world", "folder", "webdataset", "hf", "parquet", "pretokenized")
GLOB_SCHEMES = ("webdataset", "parquet")  # PATH is a glob (or a folder); the others name one file or folder


class Source(Protocol):
    spec: str

    def shards(self) -> list[str]:
        """Shard names, in a fixed order (the unshuffled order of the data)."""

    def read(self, shard: int, start: int = 0) -> Iterator[Record]:
        """The records of shard number `shard` from offset `start` on, in order."""


def parse_source(spec: str) -> tuple[str, str]:
    """(scheme, path) of a spec; an unknown scheme or an empty path is a one-line error naming the allowed ones."""
    scheme, _, path = spec.partition(":")
    if scheme == "world" and not path:
        return "world", ""
    if scheme not in SCHEMES or scheme == "world" or not path:
        allowed = ", ".join(f"{s}:{'GLOB' if s in GLOB_SCHEMES else 'PATH'}" for s in SCHEMES[1:])
        raise UserError(f"unknown data source '{spec}'; use world, {allowed}")
    return scheme, path


def check_source(spec: str) -> None:
    """Fail early (at recipe load, before tokenizers train) on a bad scheme or a path that is not there."""
    scheme, path = parse_source(spec)
    if scheme in GLOB_SCHEMES:
        expand_glob(path, spec)
    elif scheme != "world" and not Path(path).exists():
        raise UserError(f"data source '{spec}': no such file or folder {path}")


def open_source(spec: str) -> Source:
    scheme, path = parse_source(spec)
    if scheme == "folder":
        from unifork.data.folder import FolderSource

        return FolderSource(Path(path), spec)
    if scheme == "webdataset":
        from unifork.data.tar_shards import WebDatasetSource

        return WebDatasetSource(path, spec)
    if scheme == "hf":
        from unifork.data.hf import HFSource

        return HFSource(Path(path), spec)
    if scheme == "parquet":
        from unifork.data.parquet import ParquetSource

        return ParquetSource(path, spec)
    if scheme == "pretokenized":
        from unifork.data.pretokenized import PretokenizedSource

        return PretokenizedSource(Path(path), spec)
    raise UserError(f"data source '{spec}' is not read as records; the world is sampled, not streamed")
