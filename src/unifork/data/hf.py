"""`hf:PATH`: a Hugging Face `datasets` dataset written by `save_to_disk`: an "image" column (the Image feature,
bytes, or a path) beside the text columns of records.py (caption / captions / question + answer / qa).

Rows are cut into shards of ROWS_PER_SHARD; the dataset is memory-mapped Arrow, so a shard is a cheap slice.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from unifork.data.records import Record, record_text
from unifork.errors import UserError

ROWS_PER_SHARD = 1000


class HFSource:
    def __init__(self, path: Path, spec: str):
        import datasets

        self.spec = spec
        if not path.is_dir():
            raise UserError(f"data source '{spec}': no such folder {path}")
        try:
            ds = datasets.load_from_disk(str(path))
        except FileNotFoundError as err:
            raise UserError(f"data source '{spec}': {path} is not a dataset written by save_to_disk ({err})") from None
        if isinstance(ds, datasets.DatasetDict):
            splits = ", ".join(ds)
            raise UserError(f"data source '{spec}' holds the splits {splits}; name one, e.g. hf:{path}/{next(iter(ds))}")
        if "image" not in ds.column_names:
            raise UserError(f"data source '{spec}' has no 'image' column (columns: {', '.join(ds.column_names)})")
        if isinstance(ds.features["image"], datasets.Image):
            # undecoded bytes: a corrupt image must reach our decoder, which skips it, not fail inside datasets
            ds = ds.cast_column("image", datasets.Image(decode=False))
        self.ds = ds

    def shards(self) -> list[str]:
        return [f"rows@{i}" for i in range(0, len(self.ds), ROWS_PER_SHARD)]

    def read(self, shard: int, start: int = 0) -> Iterator[Record]:
        first = shard * ROWS_PER_SHARD
        rows = self.ds[first + start : min(first + ROWS_PER_SHARD, len(self.ds))]  # {column: [values]}
        for i in range(len(rows["image"])):
            fields = {name: values[i] for name, values in rows.items()}
            key = f"row {first + start + i}"
            yield Record(key, fields.pop("image"), *record_text(fields, key))
