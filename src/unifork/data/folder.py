"""`folder:PATH`: image files plus one jsonl line per image, {"image": "rel/path.png", "caption": ..., "qa": [...]}.

PATH is the jsonl file, or a folder holding exactly one (the world export's meta.jsonl, whose "file" key is
read like "image"). Image paths are relative to the jsonl's folder. The jsonl is cut into shards of
ROWS_PER_SHARD lines, found by one scan of byte offsets, so a shard is read with one seek however long the file.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

from unifork.data.records import Record, record_text
from unifork.errors import UserError

ROWS_PER_SHARD = 1000


def find_jsonl(path: Path, spec: str) -> Path:
    if path.is_file():
        return path
    if not path.is_dir():
        raise UserError(f"data source '{spec}': no such file or folder {path}")
    found = sorted(path.glob("*.jsonl"))
    if len(found) != 1:
        listing = ", ".join(p.name for p in found) or "none"
        raise UserError(f"data source '{spec}': {path} must hold exactly one .jsonl of records (found {listing}); "
                        f"name it as folder:{path}/NAME.jsonl")  # fmt: skip
    return found[0]


class FolderSource:
    def __init__(self, path: Path, spec: str):
        self.spec, self.jsonl = spec, find_jsonl(path, spec)
        self.root = self.jsonl.parent
        self.starts = []  # byte offset of each shard's first line
        rows, offset = 0, 0
        with open(self.jsonl, "rb") as f:
            for line in f:
                if line.strip():
                    if rows % ROWS_PER_SHARD == 0:
                        self.starts.append(offset)
                    rows += 1
                offset += len(line)

    def shards(self) -> list[str]:
        return [f"{self.jsonl.name}@{i * ROWS_PER_SHARD}" for i in range(len(self.starts))]

    def read(self, shard: int, start: int = 0) -> Iterator[Record]:
        with open(self.jsonl, "rb") as f:
            f.seek(self.starts[shard])
            row = 0  # non-empty lines of this shard read so far
            for line in f:
                if row == ROWS_PER_SHARD:
                    return
                if not line.strip():
                    continue
                row += 1
                if row > start:
                    yield self._record(line, f"{self.jsonl.name}:{shard * ROWS_PER_SHARD + row}")

    def _record(self, line: bytes, key: str) -> Record:
        try:
            fields = json.loads(line)
        except json.JSONDecodeError as err:
            raise UserError(f"record {key} is not valid JSON: {err}") from None
        if not isinstance(fields, dict):
            raise UserError(f"record {key} must be a JSON object, got {type(fields).__name__}")
        name = fields.get("image", fields.get("file"))
        if not isinstance(name, str):
            raise UserError(f"record {key} has no 'image' path (relative to {self.root})")
        captions, qa = record_text(fields, key)
        return Record(f"{key} ({name})", self.root / name, captions, qa)
