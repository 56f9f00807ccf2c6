"""`parquet:GLOB`: parquet files with an "image" column (bytes, or a {"bytes", "path"} struct as Hugging Face
exports images) beside the text columns of records.py. Each row group is a shard: parquet's unit of reading.
"""

from __future__ import annotations

from collections.abc import Iterator

from unifork.data.globs import expand_glob
from unifork.data.records import Record, record_text
from unifork.errors import UserError


class ParquetSource:
    def __init__(self, pattern: str, spec: str):
        import pyarrow.parquet as pq

        self.spec = spec
        files = [f for f in expand_glob(pattern, spec) if f.suffix == ".parquet"]
        if not files:
            raise UserError(f"data source '{spec}': no .parquet files match {pattern}")
        self.groups = []  # (file, row group)
        for f in files:
            meta = pq.ParquetFile(f).metadata
            if "image" not in meta.schema.names:
                raise UserError(f"data source '{spec}': {f} has no 'image' column (columns: {', '.join(meta.schema.names)})")
            self.groups += [(f, g) for g in range(meta.num_row_groups)]

    def shards(self) -> list[str]:
        return [f"{f.name}#{g}" for f, g in self.groups]

    def read(self, shard: int, start: int = 0) -> Iterator[Record]:
        import pyarrow.parquet as pq

        path, group = self.groups[shard]
        rows = pq.ParquetFile(path).read_row_group(group).slice(start).to_pylist()
        for i, fields in enumerate(rows, start=start):
            key = f"{path.name}#{group}:{i}"
            yield Record(key, fields.pop("image"), *record_text(fields, key))
