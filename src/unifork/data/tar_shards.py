"""`webdataset:GLOB`: WebDataset tar shards, files grouped by key: KEY.png|jpg|jpeg|webp + KEY.json and/or KEY.txt.

KEY.json holds the record's text fields (records.py); KEY.txt is a caption. The GLOB may use braces as in
WebDataset's own shard specs (`shards/train-{0000..0127}.tar`). The webdataset library does the tar reading
and key grouping; order, shuffling and resume are ours (stream.py), since its pipeline has no exact resume.
"""

from __future__ import annotations

import json
import sys
import tarfile
from collections.abc import Iterator

from unifork.data.globs import expand_glob
from unifork.data.records import Record, record_text
from unifork.errors import UserError

IMAGE_EXTENSIONS = ("png", "jpg", "jpeg", "webp")


class WebDatasetSource:
    def __init__(self, pattern: str, spec: str):
        self.spec = spec
        self.files = [f for f in expand_glob(pattern, spec) if f.suffix == ".tar"]
        if not self.files:
            raise UserError(f"data source '{spec}': no .tar shards match {pattern}")

    def shards(self) -> list[str]:
        return [f.name for f in self.files]

    def read(self, shard: int, start: int = 0) -> Iterator[Record]:
        from webdataset import tarfile_samples

        path = self.files[shard]
        samples = tarfile_samples([{"url": str(path)}])
        index = 0
        try:
            for sample in samples:
                if index >= start:
                    yield self._record(sample, f"{path.name}:{sample['__key__']}")
                index += 1
        except (tarfile.TarError, OSError, EOFError) as err:  # a truncated shard: keep what came before
            print(f"warning: shard {path} is damaged after {index} records ({err}); reading on from the next shard",
                  file=sys.stderr)  # fmt: skip

    @staticmethod
    def _record(sample: dict, key: str) -> Record:
        fields = {}
        if "json" in sample:
            try:
                fields = json.loads(sample["json"])
            except (json.JSONDecodeError, UnicodeDecodeError) as err:
                raise UserError(f"record {key}: its .json is not valid JSON: {err}") from None
            if not isinstance(fields, dict):
                raise UserError(f"record {key}: its .json must be an object, got {type(fields).__name__}")
        captions, qa = record_text(fields, key)
        if "txt" in sample:
            captions += tuple(c for c in [sample["txt"].decode("utf-8", "replace").strip()] if c)
        image = next((sample[ext] for ext in IMAGE_EXTENSIONS if ext in sample), None)
        return Record(key, image, captions, qa)
